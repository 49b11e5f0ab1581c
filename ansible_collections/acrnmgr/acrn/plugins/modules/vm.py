#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: acrnmgr developers
# BSD-3-Clause (see the acrnmgr repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm
short_description: Start, stop or remove one acrnmgr VM
version_added: "0.1.0"
description:
  - Manages one VM with acrnmgr on the target. O(state=started) runs it from its spec (a spec file on the
    target, or a spec given inline); a VM already running with the same spec is left alone, one whose
    spec changed is restarted (unless O(allow_restart=false)).
  - O(state=stopped) stops it (graceful shutdown, then forced after O(timeout)); O(state=absent) stops it
    and removes its acrnmgr state folder (logs included).
  - Errors come back as task failures with acrnmgr's own message.
author:
  - acrnmgr developers (!UNKNOWN)
options:
  name:
    description:
      - The VM's name (C(metadata.name) of its spec). Required for O(state=stopped) and O(state=absent)
        unless O(spec) is an inline spec.
    type: str
  spec:
    description:
      - The VM's spec, required for O(state=started). A string is the absolute path of a spec file on the
        target (relative paths inside it are relative to that file); a mapping is the spec itself (its file
        paths should then be absolute).
      - A spec file holds one VM.
    type: raw
  state:
    description: What the VM should be.
    type: str
    default: started
    choices: [started, stopped, absent]
  allow_restart:
    description: Restart a running VM whose spec changed. Without it such a VM is left running and the task fails.
    type: bool
    default: true
  engine:
    description:
      - Engine to start the VM on (C(auto) is acrn on an ACRN Service VM, else qemu). A running VM stays
        on its engine.
    type: str
    default: auto
    choices: [auto, acrn, qemu, libvirt]
  connect:
    description: The libvirt engine's connection URI.
    type: str
  host_profile:
    description:
      - The host profile acrnmgr plans for, a mapping or the path of a profile file on the target.
        Detected on the target when omitted.
    type: raw
  wait:
    description: Return once the VM runs (or has failed).
    type: bool
    default: false
  timeout:
    description: Seconds of graceful shutdown before the VM is forced off.
    type: float
    default: 30
  force:
    description: Stop without the graceful shutdown.
    type: bool
    default: false
  executable:
    description:
      - The acrnmgr executable on the target. Default C(acrnmgr) on PATH, else C(/opt/acrnmgr/venv/bin/acrnmgr).
    type: path
attributes:
  check_mode:
    support: full
    description: Runs C(acrnmgr apply --dry-run) over the spec, or only reads the VM's status.
  diff_mode:
    support: none
    description: Use M(acrnmgr.acrn.apply) for argv differences.
  platform:
    support: full
    platforms: posix
    description: Linux hosts (an ACRN Service VM, or any host for the qemu and libvirt engines).
seealso:
  - module: acrnmgr.acrn.apply
"""

EXAMPLES = r"""
- name: Run the web VM from its spec file
  acrnmgr.acrn.vm:
    spec: /srv/acrn-specs/base/web.yaml
    state: started
    wait: true

- name: Run a VM given inline
  acrnmgr.acrn.vm:
    spec:
      apiVersion: acrnmgr/v1
      kind: VM
      metadata: {name: probe}
      spec:
        cpu: {affinity: [2]}
        memory: 256M
        boot:
          kernel: {path: /srv/images/bzImage, cmdline: "console=ttyS0"}
        console:
          lpc: [{port: com1, backend: stdio}]
    state: started

- name: Stop it
  acrnmgr.acrn.vm:
    name: probe
    state: stopped
"""

RETURN = r"""
name:
  description: The VM's name.
  returned: always
  type: str
  sample: web
state:
  description: The VM's state afterwards as C(acrnmgr status) reports it (C(absent) once removed).
  returned: always
  type: str
  sample: running
action:
  description: What was (or in check mode would be) done.
  returned: always
  type: str
  choices: [create, update, stop, remove, unchanged]
reason:
  description: Why.
  returned: always
  type: str
"""

import json  # noqa: E402 (Ansible: the documentation comes first)
import os  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.acrnmgr.acrn.plugins.module_utils.acrnmgr import (  # noqa: E402
    COMMON_ARGS, acrnmgr_bin, engine_args, error_message, host_args, run)

ACTIVE = ("running", "degraded", "starting", "unsupervised")


def state_root():
    """acrnmgr's state folder root (acrnmgr.lifecycle.state.state_root)."""
    env = os.environ.get("ACRNMGR_STATE_DIR")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/acrnmgr"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "acrnmgr") if runtime else "/tmp/acrnmgr-%d" % os.getuid()


def spec_folder(module):
    """A folder holding only this VM's spec, for `acrnmgr apply`: an inline spec as a file, a spec
    file through a kustomization that names it (so its relative paths keep their meaning)."""
    spec = module.params["spec"]
    folder = os.path.join(module.tmpdir, "spec")
    os.mkdir(folder)
    if isinstance(spec, dict):
        with open(os.path.join(folder, "vm.json"), "w") as f:
            json.dump(spec, f)
    elif isinstance(spec, str):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            module.fail_json(msg="spec %s: no such file on the target" % spec)
        with open(os.path.join(folder, "kustomization.yaml"), "w") as f:
            f.write("resources: [%s]\n" % json.dumps(os.path.relpath(path, folder)))
    else:
        module.fail_json(msg="spec is the path of a spec file or a mapping, not %s" % type(spec).__name__)
    return folder


def started(module, exe):
    p = module.params
    # --root /: the kustomization this module wrote names the spec file the playbook gave, wherever it is
    argv = [exe, "apply", spec_folder(module), "--root", "/", "--output", "json", "--timeout", str(p["timeout"])]
    argv += engine_args(module) + host_args(module)
    if p["allow_restart"]:
        argv.append("--allow-restart")
    if p["wait"]:
        argv.append("--wait")
    if module.check_mode:
        argv.append("--dry-run")
    rc, data, err = run(module, argv, check_rc=False)
    mine = [c for c in data.get("changes", []) if c["action"] != "prune"] if isinstance(data, dict) else []
    if rc != 0 and not mine:
        module.fail_json(msg=error_message("", err, rc), rc=rc, stderr=err)
    if len(mine) != 1:
        module.fail_json(msg="spec must define exactly one VM (it defines %d)" % len(mine), rc=rc, stderr=err)
    c = mine[0]
    if p["name"] and p["name"] != c["name"]:
        module.fail_json(msg="the spec names VM %s, not %s" % (c["name"], p["name"]))
    if c.get("result") == "failed" or rc != 0:
        why = c.get("error") or error_message("", err, rc)
        module.fail_json(msg="%s: %s failed: %s" % (c["name"], c["action"], why), name=c["name"], action=c["action"],
                         rc=rc)
    if c.get("blocked"):
        module.fail_json(msg="%s: its spec changed and allow_restart is false (%s)" % (c["name"], c["reason"]),
                         name=c["name"], action=c["action"], state=c.get("live_state"), reason=c["reason"])
    changed = c["action"] != "unchanged"
    state = c.get("live_state")
    if changed and not module.check_mode:
        state = status(module, exe, c["name"]) or "starting"
    module.exit_json(changed=changed, name=c["name"], action=c["action"], state=state, reason=c["reason"])


def status(module, exe, name):
    """The VM's state, or None when acrnmgr does not know it."""
    argv = [exe, "status", name, "--output", "json"] + engine_args(module, module.params["engine"] != "auto")
    rc, data, err = run(module, argv, check_rc=False)
    # exit codes as `systemctl is-active`: 0 runs, 3 does not run (the JSON says how), 4 no such VM
    if rc == 4 or (rc != 0 and "no VM named" in err):
        return None
    if rc not in (0, 3):
        run(module, argv)  # fails the task with acrnmgr's message
    return data.get("state") if isinstance(data, dict) else None


def stopped(module, exe, absent):
    p = module.params
    name = p["name"]
    if not name and isinstance(p["spec"], dict):
        name = (p["spec"].get("metadata") or {}).get("name")
    if not name:
        module.fail_json(msg="name is required for state=%s (or an inline spec with metadata.name)" % p["state"])
    state = status(module, exe, name)
    folder = os.path.join(state_root(), name)
    action, reason = "unchanged", "not running" if state else "acrnmgr does not know this VM"
    if state in ACTIVE:
        action, reason = "stop", "the VM is %s" % state
        if not module.check_mode:
            argv = [exe, "down", name, "--timeout", str(p["timeout"])]
            argv += engine_args(module, p["engine"] != "auto")
            if p["force"]:
                argv.append("--force")
            run(module, argv, json_out=False)
            state = status(module, exe, name)
    if absent and os.path.isdir(folder) and "/" not in name and name not in (".", ".."):
        action = "remove" if action == "unchanged" else action
        reason = reason if action == "stop" else "its state folder exists"
        if not module.check_mode:
            shutil.rmtree(folder)
        state = "absent"
    elif absent:
        state = "absent"
    module.exit_json(changed=action != "unchanged", name=name, action=action, state=state, reason=reason)


def main():
    argument_spec = dict(
        name=dict(type="str"),
        spec=dict(type="raw"),
        state=dict(type="str", default="started", choices=["started", "stopped", "absent"]),
        allow_restart=dict(type="bool", default=True),
        wait=dict(type="bool", default=False),
        timeout=dict(type="float", default=30.0),
        force=dict(type="bool", default=False),
    )
    argument_spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[("state", "started", ("spec",))])
    exe = acrnmgr_bin(module)
    if module.params["state"] == "started":
        started(module, exe)
    stopped(module, exe, module.params["state"] == "absent")


if __name__ == "__main__":
    main()
