#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: acrnmgr developers
# BSD-3-Clause (see the acrnmgr repository)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: apply
short_description: Make the VMs on a host match a folder of acrnmgr specs
version_added: "0.1.0"
description:
  - Runs C(acrnmgr apply) on the target for a folder of VM specs (recursive, multi-document YAML,
    C(kustomization.yaml) overlays) and reports, per VM, the action taken, its state and the reason.
  - Idempotent. The task is C(changed) only when a VM was created, updated (restarted) or pruned
    (stopped). A run whose VMs already match the folder reports no change.
  - In check mode it runs C(acrnmgr apply --dry-run) and changes nothing; it reports C(changed) when
    the real run would create, update or prune a VM.
  - With C(--diff), each VM's difference between its running launch line (the acrn-dm or QEMU argv, or
    the libvirt domain XML) and the one the folder asks for is shown.
  - Errors (invalid specs, a VM that failed to start, an unreachable engine) make the task fail with
    acrnmgr's own message.
author:
  - acrnmgr developers (!UNKNOWN)
options:
  path:
    description:
      - The folder of specs on the target, typically one host's overlay in a checkout of the spec
        repository (for example C(specs/hosts/{{ inventory_hostname }})).
    type: path
    required: true
  root:
    description:
      - The folder kustomization resources and patches may reach (C(acrnmgr apply --root)); default O(path)
        itself. Set it to the checkout of the spec repository when O(path) is a per-host overlay whose
        kustomization names a shared base outside it (C(../../base)).
    type: path
  prune:
    description:
      - Stop running VMs that no spec in O(path) names any more (C(acrnmgr apply --prune)).
      - Without it such a VM is reported with action C(prune) and result C(skipped).
    type: bool
    default: false
  allow_restart:
    description:
      - Restart VMs whose spec changed (C(--allow-restart)). Without it such a VM is reported with
        action C(update) and result C(skipped), and the task does not report a change for it.
    type: bool
    default: false
  engine:
    description:
      - Engine for the VMs to create. C(auto) is acrn on an ACRN Service VM, otherwise qemu (libvirt
        with O(connect)). A VM that runs stays on its engine.
    type: str
    default: auto
    choices: [auto, acrn, qemu, libvirt]
  connect:
    description:
      - The libvirt engine's connection URI (for example C(qemu:///system)).
    type: str
  host_profile:
    description:
      - The host profile acrnmgr plans for. A mapping (for example from inventory variables) is written
        to a temporary file on the target; a string is the path of a profile file on the target.
      - When omitted, acrnmgr detects the target's own profile (C(/dev/acrn_hsm), CPUs, vhost, KVM).
    type: raw
  wait:
    description:
      - Wait until every started VM runs (or has failed) (C(--wait)).
    type: bool
    default: false
  timeout:
    description:
      - Seconds of graceful shutdown for updates and prunes before the VM is forced off.
    type: float
    default: 30
  executable:
    description:
      - The acrnmgr executable on the target. Default C(acrnmgr) on PATH, else
        C(/opt/acrnmgr/venv/bin/acrnmgr) (where the P(acrnmgr.acrn.install#role) role installs it).
    type: path
notes:
  - The target needs acrnmgr (role P(acrnmgr.acrn.install#role)), not the collection's Python code.
  - Two applies on one host never run at once; the second waits for the first.
attributes:
  check_mode:
    support: full
    description: Runs C(acrnmgr apply --dry-run).
  diff_mode:
    support: full
    description: The launch-line difference per VM.
  platform:
    support: full
    platforms: posix
    description: Linux hosts (an ACRN Service VM, or any host for the qemu and libvirt engines).
seealso:
  - module: acrnmgr.acrn.vm
"""

EXAMPLES = r"""
- name: Make this host's VMs match its overlay in the spec repository
  acrnmgr.acrn.apply:
    path: /srv/acrn-specs/hosts/{{ inventory_hostname }}
    root: /srv/acrn-specs
    prune: true
    allow_restart: true
    host_profile: "{{ acrnmgr_host_profile | default(omit) }}"

- name: What would change (check mode, with the argv differences)
  acrnmgr.acrn.apply:
    path: /srv/acrn-specs/hosts/{{ inventory_hostname }}
    root: /srv/acrn-specs
  check_mode: true
  diff: true
"""

RETURN = r"""
vms:
  description: One entry per VM that a spec names or that runs, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The VM's name.
      type: str
      sample: web
    action:
      description: What the folder asks for.
      type: str
      choices: [create, update, prune, unchanged]
      sample: create
    result:
      description: What was done. C(null) for C(unchanged) and in check mode.
      type: str
      choices: [done, skipped, failed]
      sample: done
    state:
      description:
        - The VM's state afterwards as C(acrnmgr status) reports it (running, starting, degraded, stopped,
          crashed). In check mode, its current state (C(null) for a VM that never ran).
      type: str
      sample: running
    reason:
      description: Why this action (for example C(spec hash 1f2e... -> 9a8b...)), with why it was skipped.
      type: str
      sample: no VM running
    blocked:
      description: Why the action is not done without a flag (O(prune), O(allow_restart)), else C(null).
      type: str
    error:
      description: acrnmgr's message when the action failed, else C(null).
      type: str
    engine:
      description: The engine that runs (or would run) the VM.
      type: str
      sample: qemu
    source:
      description: The spec (file, document or overlay) the VM comes from; C(null) for a prune.
      type: str
changed_vms:
  description: The names of the VMs that were (or in check mode would be) created, updated or pruned.
  returned: always
  type: list
  elements: str
  sample: [web]
cmd:
  description: The acrnmgr command line that was run.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.acrnmgr.acrn.plugins.module_utils.acrnmgr import (  # noqa: E402
    COMMON_ARGS, acrnmgr_bin, engine_args, error_message, host_args, run, statuses)


def apply_argv(module, exe, dry_run):
    p = module.params
    argv = [exe, "apply", p["path"], "--output", "json", "--timeout", str(p["timeout"])]
    argv += engine_args(module) + host_args(module)
    if p.get("root"):
        argv += ["--root", p["root"]]
    if p["prune"]:
        argv.append("--prune")
    if p["allow_restart"]:
        argv.append("--allow-restart")
    if p["wait"]:
        argv.append("--wait")
    if dry_run:
        argv.append("--dry-run")
    return argv


def would_change(c):
    return c["action"] != "unchanged" and not c.get("blocked")


def entry(c, states, dry_run):
    reason = c.get("reason") or ""
    if c.get("blocked"):
        reason += "; " + c["blocked"]
    state = c.get("live_state") if dry_run else states.get(c["name"], c.get("live_state"))
    return dict(name=c["name"], action=c["action"], result=c.get("result"), state=state, reason=reason,
                blocked=c.get("blocked"), error=c.get("error"), engine=c.get("engine"), source=c.get("source"))


def diffs(changes):
    out = []
    for c in changes:
        if c["action"] == "unchanged":
            continue
        text = "\n".join(c.get("diff") or []) or "%s: %s (%s)" % (c["name"], c["action"], c.get("reason"))
        out.append(dict(prepared="# %s: %s%s\n%s\n" % (c["name"], c["action"],
                                                       " (%s)" % c["blocked"] if c.get("blocked") else "", text)))
    return out


def main():
    argument_spec = dict(
        path=dict(type="path", required=True),
        root=dict(type="path"),
        prune=dict(type="bool", default=False),
        allow_restart=dict(type="bool", default=False),
        wait=dict(type="bool", default=False),
        timeout=dict(type="float", default=30.0),
    )
    argument_spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    exe = acrnmgr_bin(module)
    result = dict(changed=False, vms=[], changed_vms=[])

    diff_out = None
    if module._diff and not module.check_mode:
        # The real apply computes no argv difference; a dry run with the same flags does, first.
        rc, plan, err = run(module, apply_argv(module, exe, True))
        diff_out = diffs(plan.get("changes", []))

    argv = apply_argv(module, exe, module.check_mode)
    result["cmd"] = argv
    rc, data, err = run(module, argv, check_rc=False)
    changes = data.get("changes", []) if isinstance(data, dict) else []
    if module.check_mode:
        states = {}
        changed = [c["name"] for c in changes if would_change(c)]
        if module._diff:
            diff_out = diffs(changes)
    else:
        states = statuses(module, exe) if changes else {}
        changed = [c["name"] for c in changes if c["action"] != "unchanged" and c.get("result") == "done"]
    result["vms"] = [entry(c, states, module.check_mode) for c in changes]
    result["changed_vms"] = changed
    result["changed"] = bool(changed)
    if diff_out:
        result["diff"] = diff_out
    failed = [c for c in changes if c.get("result") == "failed"]
    if rc != 0 or failed:
        msg = "; ".join("%s: %s failed: %s" % (c["name"], c["action"], c.get("error")) for c in failed)
        module.fail_json(msg="acrnmgr apply: " + (msg or error_message("", err, rc)), rc=rc, stderr=err, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
