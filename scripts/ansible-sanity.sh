#!/usr/bin/env bash
# Run `ansible-test sanity` on the acrnmgr.acrn collection (ansible_collections/acrnmgr/acrn/) here, without
# containers: `bash scripts/ansible-sanity.sh [ansible-test sanity options, e.g. --test validate-modules]`.
#
# ansible-test builds a venv per sanity test and bootstraps pip into each from a get-pip script it downloads
# from its own CI file host, which is out of reach here. A stand-in bootstrap script in ansible-test's cache
# does the same from the standard library's ensurepip and the machine's pip settings (the requirements
# themselves come from the package index, as usual). ansible-test's state lives in its own HOME,
# ${ACRNMGR_ANSIBLE_TEST_HOME:-~/.cache/acrnmgr/ansible-test}, so later runs reuse its venvs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin=$repo/.venv/bin
[[ -x $bin/ansible-test ]] || { echo "ansible-sanity: no ansible-test in .venv (bash scripts/setup.sh)" >&2; exit 1; }
home=${ACRNMGR_ANSIBLE_TEST_HOME:-$HOME/.cache/acrnmgr/ansible-test}
pip_version=$("$bin/python" -c '
import re, ansible_test, pathlib
src = (pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py").read_text()
print(re.search(r"pip=.([0-9.]+).", src)[1])')
mkdir -p "$home/.ansible/test/cache" "$home/.config/pip"
cat > "$home/.ansible/test/cache/get_pip_${pip_version//./_}.py" <<'PY'
# Stand-in for ansible-test's pip bootstrap script (written by acrnmgr's scripts/ansible-sanity.sh):
# pip from ensurepip, then `pip install` with the same arguments, less get-pip's own options.
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
os.environ.pop("PIP_CONFIG_FILE", None)  # ensurepip points it at /dev/null; the machine's settings apply
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + args))
PY
# ansible-test passes HOME but not PIP_* variables: the user's pip settings go along as a file.
user_conf=${PIP_CONFIG_FILE:-$HOME/.config/pip/pip.conf}
if [[ -f $user_conf ]]; then cp "$user_conf" "$home/.config/pip/pip.conf"; fi
cd ansible_collections/acrnmgr/acrn
HOME=$home PATH=$bin:$PATH exec "$bin/ansible-test" sanity --python "$("$bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" --local "$@"
