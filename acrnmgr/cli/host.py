"""`acrnmgr host`: the host profile detected for this machine, as YAML usable as --host elsewhere, with what
each fact means for plans."""

from __future__ import annotations

import json

import typer

from acrnmgr.cli.common import OutputFormat


def _notes(p) -> dict[str, str]:
    """Why a plan on this host chooses what it chooses, fact by fact."""
    return {
        "is_service_vm": ("ACRN Service VM: --engine auto means acrn" if p.is_service_vm else
                          "no /dev/acrn_hsm: not an ACRN Service VM, so --engine auto means qemu"),
        "acrn_dm": ("acrn-dm runs the acrn engine's VMs" if p.acrn_dm else
                    "no acrn-dm in PATH: the acrn engine cannot run"),
        "acrn_dm_version": ("the acrn engine compiles for this acrn-dm version" if p.acrn_dm_version else
                            "unknown acrn-dm version: plans target acrn-dm v3.x"),
        "vhost_net": ("/dev/vhost-net: virtio-net can use the vhost (kernel) backend" if p.vhost_net else
                      "no /dev/vhost-net: virtio-net uses the user-space backend (vbs-u), not vhost"),
        "vhost_vsock": ("/dev/vhost-vsock: virtio-vsock can run" if p.vhost_vsock else
                        "no /dev/vhost-vsock: a VM with virtio-vsock cannot be planned here"),
        "net_tun": ("/dev/net/tun: taps for virtio-net can be made" if p.net_tun else
                    "no /dev/net/tun: no tap devices, so no virtio-net"),
        "cpu_count": "CPUs this machine has",
        "lapic_ids": "spec.cpu.affinity must name these LAPIC IDs (plan and up refuse others)",
        "hugepages_total": "acrn-dm backs guest memory with hugepages",
        "hugepages_free": ("free hugepages" if p.hugepages_free else
                           "no free hugepages: acrn-dm cannot allocate guest memory until some are reserved"),
        "kvm": ("/dev/kvm opens: the qemu engine tries KVM (and falls back to TCG if QEMU cannot run a vCPU)"
                if p.kvm else "no usable /dev/kvm: the qemu engine runs guests under TCG (slower)"),
        "qemu": "the qemu engine runs this QEMU" if p.qemu else "no qemu-system-x86_64: the qemu engine cannot run",
        "qemu_version": ("from QEMU 9.0 on, vhost-user-gpio-pci gives the guest GPIO interrupts" if p.qemu_version
                         else "unknown QEMU version"),
        "iasl": ("acrn-dm builds ACPI tables with iasl" if p.iasl else
                 "no iasl: acrn-dm cannot build the guest's ACPI tables"),
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def host(
        output: OutputFormat = typer.Option(OutputFormat.text, "--output",
                                            help="text (YAML with a comment per fact) or json."),
    ) -> None:
        """Print this machine's host profile, with what each fact means for `plan` and `up`.

        The YAML is usable as `--host FILE` on another machine: acrnmgr host > myhost.yaml"""
        import yaml

        from acrnmgr.host import HostProfile

        profile = HostProfile.detect()
        data = profile.to_dict()
        if output is OutputFormat.json:
            typer.echo(json.dumps(data, indent=2))
            return
        notes = _notes(profile)
        typer.echo("# acrnmgr host profile of this machine; use it with --host FILE")
        for key, value in data.items():
            line = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip().strip("{}")
            typer.echo(f"{line}  # {notes[key]}" if key in notes else line)
