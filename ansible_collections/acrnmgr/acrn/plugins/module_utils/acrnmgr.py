# -*- coding: utf-8 -*-
# Copyright: acrnmgr developers
# BSD-3-Clause (see the acrnmgr repository)
"""What the acrnmgr modules share: finding the acrnmgr executable, the host profile option, running
acrnmgr and reading its JSON, and turning its errors into module failures.

The modules never import acrnmgr: they run its CLI, so the target's Python may be any version
ansible-core supports and acrnmgr may live in its own venv (the acrnmgr.acrn.install role)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

# Where the acrnmgr.acrn.install role puts the venv.
DEFAULT_VENV_BIN = "/opt/acrnmgr/venv/bin/acrnmgr"

ENGINES = ["auto", "acrn", "qemu", "libvirt"]

COMMON_ARGS = dict(
    executable=dict(type="path"),
    engine=dict(type="str", default="auto", choices=ENGINES),
    connect=dict(type="str"),
    host_profile=dict(type="raw"),
)


def acrnmgr_bin(module):
    """The acrnmgr executable: the `executable` option, else acrnmgr on PATH, else the role's venv."""
    exe = module.params.get("executable")
    if exe:
        if not os.access(exe, os.X_OK):
            module.fail_json(msg="acrnmgr executable %s does not exist or is not executable" % exe)
        return exe
    found = module.get_bin_path("acrnmgr")
    if found:
        return found
    if os.access(DEFAULT_VENV_BIN, os.X_OK):
        return DEFAULT_VENV_BIN
    module.fail_json(msg="acrnmgr not found on PATH nor at %s: install it (role acrnmgr.acrn.install) "
                         "or set the executable option" % DEFAULT_VENV_BIN)


def host_args(module):
    """`--host FILE` for the host_profile option: a path on the target, or a mapping (from inventory
    variables) written to a temporary file. None: acrnmgr detects the target's own profile."""
    profile = module.params.get("host_profile")
    if profile is None or profile == "" or profile == {}:
        return []
    if isinstance(profile, dict):
        path = os.path.join(module.tmpdir, "host-profile.json")
        with open(path, "w") as f:
            json.dump(profile, f)  # JSON is YAML: acrnmgr reads it as a profile file
        return ["--host", path]
    if isinstance(profile, str):
        return ["--host", profile]
    module.fail_json(msg="host_profile is a path on the target or a mapping, not %s" % type(profile).__name__)


def engine_args(module, with_engine=True):
    args = []
    if with_engine:
        args += ["--engine", module.params["engine"]]
    if module.params.get("connect"):
        args += ["--connect", module.params["connect"]]
    return args


def error_message(stdout, stderr, rc):
    """acrnmgr's own message for a failed run: its `error: ...` lines (and the diagnostics around
    them), never a Python traceback (should one appear, only its last line is kept)."""
    text = (stderr or "").strip()
    if "Traceback (most recent call last)" in text:
        last = [ln for ln in text.splitlines() if ln.strip()]
        return "acrnmgr crashed (exit %d): %s" % (rc, last[-1] if last else "")
    if not text:
        text = (stdout or "").strip()
    return text or ("acrnmgr exited %d without a message" % rc)


def run(module, argv, json_out=True, check_rc=True):
    """Run acrnmgr; return (rc, parsed JSON (None if there is none) or stdout, stderr). With check_rc, a
    failure, or no JSON to read, is a module failure with acrnmgr's message."""
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C.UTF-8"})
    data = out
    if json_out:
        try:
            data = json.loads(out) if out.strip() else None
        except ValueError:
            data = None
    if check_rc and (rc != 0 or (json_out and data is None)):
        module.fail_json(msg=error_message(out, err, rc), rc=rc, cmd=argv, stderr=err)
    return rc, data, err


def statuses(module, exe):
    """{name: state} of every VM acrnmgr knows on the target (the engine's, with --connect)."""
    argv = [exe, "status", "--output", "json"] + engine_args(module, with_engine=module.params["engine"] != "auto")
    rc, data, err = run(module, argv, check_rc=False)
    # `status` exits as `systemctl is-active` does: 3 when some VM does not run; its JSON is the same
    if rc not in (0, 3) or not isinstance(data, list):
        return {}
    return dict((st.get("name"), st.get("state")) for st in data if isinstance(st, dict))
