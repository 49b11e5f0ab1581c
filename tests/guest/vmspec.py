"""The two files `acrnmgr up` needs to boot the test guest as an acrnmgr VM: a host profile and a VM spec."""

from __future__ import annotations

import json
from pathlib import Path

GUEST_CMDLINE = "console=ttyS0 panic=-1 quiet"


def write_host_profile(path: Path, accel: str, *, net_tun: bool = False, qemu: Path | None = None) -> Path:
    """A host profile with KVM only when the guest boots under it here (`accel`, from pick_accel)."""
    path.write_text(f"kvm: {str(accel == 'kvm').lower()}\n" + ("net_tun: true\n" if net_tun else "")
                    + "lapic_ids: [0, 1]\n" + (f"qemu: {json.dumps(str(qemu))}\n" if qemu else ""))
    return path


def write_guest_spec(path: Path, name: str, image, initrd: Path, devices: str, *, memory: str = "512M",
                     cmdline: str = GUEST_CMDLINE, settings: str = "") -> Path:
    """A VM `name` on CPU 0 that boots `image`'s kernel with `initrd`, its serial console on stdio.
    `devices`: the spec's device list (YAML, at the left margin); `settings`: more spec-level lines (2-space
    indented)."""
    lines = ["apiVersion: acrnmgr/v1", "kind: VM", f"metadata: {{name: {name}}}", "spec:",
             "  cpu: {affinity: [0]}", f"  memory: {memory}"]
    text = "\n".join(lines) + "\n" + settings
    text += (f'  boot:\n    kernel: {{path: {image.kernel}, initrd: {initrd}, cmdline: "{cmdline}"}}\n'
             "  console:\n    lpc: [{port: com1, backend: stdio}]\n  devices:\n")
    text += "".join(f"    {line}\n" if line else "\n" for line in devices.splitlines())
    path.write_text(text)
    return path
