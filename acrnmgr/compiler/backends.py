"""Which backend serves each device, and why.

Backends: `vbs-u` (the VMM's own user-space virtio device: acrn-dm's VBS-U, or QEMU's built-in
device on the qemu engine), `vhost` (kernel vhost: vhost-net, vhost-vsock), `embedded` (our
Python device model over vhost-user), `passthru` (a host PCI function), `acrn-dm` (a non-virtio
device acrn-dm emulates itself) and `hypervisor` (an hv:/ ivshmem region).

acrn-dm has no vhost-user frontend, so an `embedded` device cannot attach to an acrn-dm VM:
on the acrn engine it is a plan error that names what would work instead."""

from __future__ import annotations

from dataclasses import dataclass

from acrnmgr.host import HostProfile
# acrn-dm's virtio devices, the one transport each offers, and what the embedded device model
# serves: the tables the spec checks judge `backend`/`mode` by.
from acrnmgr.spec.checks import ACRNDM_LEGACY_ONLY, EMBEDDED_TYPES, VIRTIO_TYPES

# QEMU 7.2 has vhost-user frontends for blk, net and rng, but none for a console.
QEMU_VHOST_USER = {"virtio-blk", "virtio-net", "virtio-rnd"}

NO_VHOST_USER = "acrn-dm has no vhost-user frontend, so the embedded device model cannot attach to an acrn-dm VM"


@dataclass(frozen=True)
class Choice:
    backend: str | None  # None when there is no valid choice (see error)
    reason: str
    error: str | None = None
    suggestion: str | None = None


def choose(device: dict, host: HostProfile, engine: str = "acrn", family: str = "3") -> Choice:
    """`family` is the acrn-dm grammar ("3" or "2"): v2.x takes the MAC seed globally."""
    kind = device["type"]
    wanted = device.get("backend", "auto")
    mode = device.get("mode")
    if kind not in VIRTIO_TYPES:
        return _non_virtio(device, wanted, engine)
    if engine == "acrn":
        return _acrn_virtio(device, kind, wanted, mode, host, family)
    return _qemu_virtio(device, kind, wanted, mode, host)


def _non_virtio(device: dict, wanted: str, engine: str) -> Choice:
    kind = device["type"]
    if wanted not in ("auto",):
        return Choice(None, "", f"backend: {wanted} only applies to virtio devices; {kind} is not one",
                      "remove `backend` (or set it to auto)")
    if kind == "passthru":
        return Choice("passthru", f"host PCI function {device.get('bdf')} is passed through")
    if kind == "ivshmem" and str(device.get("region", "")).startswith("hv:/"):
        return Choice("hypervisor", "hv:/ regions are shared by the hypervisor (must match a scenario IVSHMEM_REGION)")
    if engine != "acrn":
        return Choice(None, "", f"{kind} is an acrn-dm device; the {engine} engine cannot provide it",
                      "use the acrn engine")
    return Choice("acrn-dm", f"{kind} is emulated by acrn-dm itself")


def _acrn_virtio(device: dict, kind: str, wanted: str, mode: str | None, host: HostProfile,
                 family: str) -> Choice:
    native_mode = "legacy" if kind in ACRNDM_LEGACY_ONLY else "modern"
    mode_ok = mode is None or mode == native_mode
    qemu_hint = "or run the VM with the qemu engine"

    if wanted == "embedded" or (wanted == "auto" and not mode_ok and kind in EMBEDDED_TYPES):
        why = ("backend: embedded asked for" if wanted == "embedded"
               else f"mode: {mode} asked for, and acrn-dm's {kind} is {native_mode}-only")
        native = "vhost" if kind == "vhost-vsock" else "vbs-u"
        return Choice("embedded", f"{why}: needs the embedded device model",
                      f"{why}, which needs the embedded device model over vhost-user; {NO_VHOST_USER}",
                      f"use mode: {native_mode} with backend: auto ({native}, acrn-dm's own {kind}), {qemu_hint}")
    if not mode_ok:
        return Choice(None, "", f"acrn-dm's {kind} is {native_mode}-only; it cannot give mode: {mode}",
                      f"use mode: {native_mode} (or drop `mode`)")

    if kind == "vhost-vsock":
        if wanted == "vbs-u":
            return Choice(None, "", "acrn-dm has no user-space vsock: vhost-vsock always uses kernel vhost",
                          "remove `backend` (or set it to auto or vhost)")
        if not host.vhost_vsock:
            return Choice(None, "", "vhost-vsock needs /dev/vhost-vsock, which the host profile lacks "
                          "(acrn-dm treats the failure to open it as fatal)",
                          "load the vhost_vsock kernel module on the Service VM, or remove the device")
        return Choice("vhost", "vhost-vsock always uses kernel vhost (/dev/vhost-vsock is present)")

    if kind == "virtio-net":
        if wanted in ("auto", "vhost", "vbs-u") and not host.net_tun and device.get("tap"):
            return Choice(None, "", "a tap device needs /dev/net/tun, which the host profile lacks",
                          "load the tun kernel module")
        if wanted == "vbs-u":
            return Choice("vbs-u", "backend: vbs-u asked for (acrn-dm's user-space virtio-net)")
        if device.get("macSeed") and family == "3":
            if wanted == "vhost":
                return Choice(None, "", "acrn-dm takes mac_seed= only right after the tap name and swallows the "
                              "rest of the option string, so `,vhost` cannot be combined with macSeed",
                              "use `mac:` instead of `macSeed:`, or backend: auto/vbs-u")
            return Choice("vbs-u", "macSeed given: acrn-dm reads mac_seed= to the end of the options, "
                          "so ,vhost cannot follow it")
        if host.vhost_net:
            return Choice("vhost", "host has /dev/vhost-net: kernel vhost-net"
                          + (" (backend: vhost asked for)" if wanted == "vhost" else ""))
        if wanted == "vhost":
            return Choice(None, "", "backend: vhost needs /dev/vhost-net, which the host profile lacks "
                          "(acrn-dm would silently fall back to VBS-U)",
                          "load the vhost_net kernel module, or use backend: auto")
        return Choice("vbs-u", "host has no /dev/vhost-net: acrn-dm's user-space virtio-net (VBS-U)")

    if wanted == "vhost":
        return Choice(None, "", f"acrn-dm has kernel vhost only for virtio-net and vhost-vsock, not {kind}",
                      "remove `backend` (or set it to auto or vbs-u)")
    if kind == "virtio-rnd" and wanted == "auto":
        return Choice("vbs-u", "acrn-dm's user-space virtio-rnd (VBS-U; VBS-K is legacy)")
    return Choice("vbs-u", f"acrn-dm's user-space {kind} (VBS-U, {native_mode})"
                  + (" (backend: vbs-u asked for)" if wanted == "vbs-u" else ""))


def _qemu_virtio(device: dict, kind: str, wanted: str, mode: str | None, host: HostProfile) -> Choice:
    if kind == "virtio-console" and wanted == "auto":
        return Choice("vbs-u", "QEMU has no vhost-user console frontend: QEMU's own virtio-serial")
    if wanted == "embedded" or (wanted == "auto" and kind in EMBEDDED_TYPES and kind != "virtio-net"):
        if kind not in EMBEDDED_TYPES:
            return Choice(None, "", f"the embedded device model does not serve {kind}",
                          "remove `backend` (or set it to auto)")
        if kind not in QEMU_VHOST_USER:
            return Choice(None, "", f"QEMU has no vhost-user frontend for {kind}, so backend: embedded "
                          "cannot serve it on the qemu engine",
                          "remove `backend` (QEMU's own device is used)")
        return Choice("embedded", "served by the embedded device model over vhost-user"
                      + (" (backend: embedded asked for)" if wanted == "embedded" else " (qemu engine default)"))
    if kind in ("virtio-net", "vhost-vsock") and wanted in ("auto", "vhost"):
        present = host.vhost_net if kind == "virtio-net" else host.vhost_vsock
        node = "/dev/vhost-net" if kind == "virtio-net" else "/dev/vhost-vsock"
        if present:
            return Choice("vhost", f"host has {node}: kernel vhost")
        if kind == "vhost-vsock" or wanted == "vhost":
            return Choice(None, "", f"{kind} with kernel vhost needs {node}, which the host profile lacks",
                          "load the vhost kernel module")
        return Choice("vbs-u", f"host has no {node}: QEMU's user-space {kind}")
    if wanted == "vhost":
        return Choice(None, "", f"there is no kernel vhost for {kind}", "remove `backend`")
    return Choice("vbs-u", f"QEMU's user-space {kind}")
