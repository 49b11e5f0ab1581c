#!/usr/bin/env bash
# Build the acrnmgr.acrn Ansible collection into a tarball that `ansible-galaxy collection install` takes:
#   bash scripts/build-collection.sh [OUT_DIR]      (default: build/collection)
# The collection (ansible_collections/acrnmgr/acrn/) is copied to a staging folder with this checkout's
# acrnmgr wheel in roles/install/files/, so the install role of a built collection installs the acrnmgr
# it was built with. Prints the tarball's path. Needs the venv of scripts/setup.sh (ansible-core is in the
# `test` extra) or ansible-galaxy and pip on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=$(realpath -m "${1:-build/collection}")
bin=$repo/.venv/bin
galaxy=$bin/ansible-galaxy; [[ -x $galaxy ]] || galaxy=ansible-galaxy
python=$bin/python; [[ -x $python ]] || python=python3

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r ansible_collections/acrnmgr/acrn "$stage/acrn"
rm -f "$stage"/acrn/roles/install/files/*.whl
mkdir -p "$stage/acrn/roles/install/files" "$out"
# The wheel: offline, with what the venv has (setuptools is in the test extra), like tests/test_packaging.py.
"$python" -m pip wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w "$stage/acrn/roles/install/files" "$repo" >&2
# The collection's version is acrnmgr's.
version=$("$python" -c 'import re,sys; print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read())[1])' \
    acrnmgr/__init__.py)
sed -i "s/^version: .*/version: $version/" "$stage/acrn/galaxy.yml"
"$galaxy" collection build --force --output-path "$out" "$stage/acrn" >&2
echo "$out/acrnmgr-acrn-$version.tar.gz"
