"""Every semantic check fires, with its message, line:col and JSON path."""

from __future__ import annotations

import pytest

from acrnmgr.host import HostProfile
from acrnmgr.spec.validation import load_spec, load_spec_text
from acrnmgr.spec.validation import validate_files

from .helpers import devices_text, diagnostics, only, pos, spec_text


def errors(text, **kw):
    return [d for d in diagnostics(text, **kw) if d.severity == "error"]


def test_clean_spec_has_no_diagnostics():
    text = devices_text("""
        - type: virtio-blk
          name: rootfs
          path: disk.img
          slot: 4
        - type: virtio-net
          tap: tap0
          mac: "02:16:3e:00:00:01"
        - type: passthru
          bdf: "00:02.0"
          gpu: true
        - type: vhost-vsock
          cid: 3
    """)
    assert diagnostics(text) == []


def test_memory_below_128m():
    text = spec_text("").replace("memory: 1G", "memory: 64M")
    d = only(errors(text), "spec.memory")
    assert "64M is below acrn-dm's minimum of 128M" in d.message
    assert (d.line, d.col) == pos(text, "memory: 64M", "64M")


def test_memory_integer_is_mib():
    text = spec_text("").replace("memory: 1G", "memory: 100")
    d = only(errors(text), "spec.memory")
    assert "100M is below" in d.message


def test_duplicate_slot():
    text = devices_text("""
        - type: virtio-blk
          path: a.img
          slot: 5
        - type: virtio-rnd
          slot: 5
    """)
    d = only(errors(text), "spec.devices[1].slot")
    assert d.message.startswith("slot 5 is already used by spec.devices[0] (line ")
    assert (d.line, d.col) == pos(text, "slot: 5", "5", nth=2)


@pytest.mark.parametrize("slot,words", [
    (0, "reserved for the host bridge"),
    (1, "reserved for the LPC bridge"),
    (2, "reserved for GPU passthrough"),
    (31, "reserved for igd-lpc"),
    (30, "outside the slots acrn-dm's config tools hand out (3..29)"),
])
def test_reserved_slots(slot, words):
    text = devices_text(f"""
        - type: virtio-rnd
          slot: {slot}
    """)
    d = only(errors(text), "spec.devices[0].slot")
    assert words in d.message
    assert "use a slot from 3 to 29" in d.suggestion
    assert (d.line, d.col) == pos(text, f"slot: {slot}", str(slot))


def test_slot_out_of_schema_range():
    text = devices_text("""
        - type: virtio-rnd
          slot: 32
    """)
    d = only(errors(text), "spec.devices[0].slot")
    assert d.message == "`32` is above the maximum 31"


def test_gpu_passthrough_must_be_slot_2():
    text = devices_text("""
        - type: passthru
          bdf: "00:02.0"
          gpu: true
          slot: 7
    """)
    d = only(errors(text), "spec.devices[0].slot")
    assert d.message == "GPU passthrough must be on slot 2, not 7"
    assert (d.line, d.col) == pos(text, "slot: 7", "7")


def test_too_many_devices_for_free_slots():
    text = devices_text("\n".join(f"- type: virtio-rnd\n  name: r{i}" for i in range(28)))
    d = only(errors(text), "spec.devices[27]")
    assert "no PCI slot left" in d.message
    assert (d.line, d.col) == pos(text, "- type: virtio-rnd", "type", nth=28)


def test_two_stdio_users_lpc_and_console():
    text = spec_text("""
        console:
          lpc:
            - {port: com1, backend: stdio}
        devices:
          - type: virtio-console
            ports:
              - {kind: stdio, name: s0}
    """)
    d = only(errors(text), "spec.devices[0].ports[0].kind")
    assert "stdio is already taken by spec.console.lpc[0] (line 14)" in d.message
    assert "only one device use stdio" in d.message
    assert (d.line, d.col) == pos(text, "kind: stdio", "stdio")


def test_two_stdio_console_ports():
    text = devices_text("""
        - type: virtio-console
          ports:
            - {kind: stdio, name: a}
        - type: virtio-console
          ports:
            - {kind: stdio, name: b}
    """)
    d = only(errors(text), "spec.devices[1].ports[0].kind")
    assert "stdio is already taken by spec.devices[0].ports[0]" in d.message
    assert (d.line, d.col) == pos(text, "kind: stdio", "stdio", nth=2)


def test_lpc_port_twice():
    text = spec_text("""
        console:
          lpc:
            - {port: com2, backend: tcp, tcpPort: 4000}
            - {port: com2, backend: tcp, tcpPort: 4001}
    """)
    d = only(errors(text), "spec.console.lpc[1].port")
    assert d.message.startswith("com2 is already configured at spec.console.lpc[0]")
    assert (d.line, d.col) == pos(text, "4001", "com2")


def test_console_port_names_and_two_console_ports():
    text = devices_text("""
        - type: virtio-console
          ports:
            - {kind: pty, name: p, console: true}
            - {kind: pty, name: p, console: true}
    """)
    diags = errors(text)
    d = only(diags, "spec.devices[0].ports[1].name")
    assert "port name `p` is already used" in d.message
    d = only(diags, "spec.devices[0].ports[1].console")
    assert "already this device's console port" in d.message
    assert (d.line, d.col) == pos(text, "console: true", "true", nth=2)


def test_duplicate_device_names():
    text = devices_text("""
        - type: virtio-rnd
          name: dev0
        - type: wdt
          name: dev0
    """)
    d = only(errors(text), "spec.devices[1].name")
    assert d.message == "device name `dev0` is already used by spec.devices[0] (line 14)"
    assert (d.line, d.col) == pos(text, "name: dev0", "dev0", nth=2)


def test_duplicate_mac_and_tap():
    text = devices_text("""
        - type: virtio-net
          tap: tap0
          mac: "02:00:00:00:00:01"
        - type: virtio-net
          tap: tap0
          mac: "02:00:00:00:00:01"
    """)
    diags = errors(text)
    d = only(diags, "spec.devices[1].mac")
    assert "MAC `02:00:00:00:00:01` is already used by spec.devices[0]" in d.message
    assert (d.line, d.col) == pos(text, "mac:", '"', nth=2)
    d = only(diags, "spec.devices[1].tap")
    assert "interface `tap0` is already used" in d.message


def test_multicast_mac():
    text = devices_text("""
        - type: virtio-net
          tap: tap0
          mac: "01:00:5e:00:00:01"
    """)
    d = only(errors(text), "spec.devices[0].mac")
    assert "multicast" in d.message and "02:16:3e" in d.suggestion


def test_mac_and_mac_seed_both_set():
    text = devices_text("""
        - type: virtio-net
          tap: tap0
          mac: "02:00:00:00:00:01"
          macSeed: vm1
    """)
    # acrn-dm takes both (mac= wins; ACRN's generator writes both when interface_name has mac=): a warning
    assert not errors(text)
    d = only([x for x in diagnostics(text) if not x.is_error], "spec.devices[0].macSeed")
    assert d.message == "`mac` is given, so acrn-dm does not use `macSeed`"
    assert (d.line, d.col) == pos(text, "macSeed: vm1", "vm1")


def test_two_vsock_devices():
    text = devices_text("""
        - type: vhost-vsock
          cid: 3
        - type: vhost-vsock
          cid: 4
    """)
    d = only(errors(text), "spec.devices[1]")
    assert "one vsock context" in d.message


def test_vsock_cid_range_is_schema():
    text = devices_text("""
        - type: vhost-vsock
          cid: 2
    """)
    d = only(errors(text), "spec.devices[0].cid")
    assert d.message == "`2` is below the minimum 3"


def test_gpu_passthrough_twice_and_same_bdf():
    text = devices_text("""
        - type: passthru
          bdf: "00:02.0"
          gpu: true
        - type: passthru
          bdf: "00/02/0"
          gpu: true
    """)
    diags = errors(text)
    d = only(diags, "spec.devices[1].gpu")
    assert "GPU passthrough is already given by spec.devices[0]" in d.message
    assert (d.line, d.col) == pos(text, "gpu: true", "true", nth=2)
    d = only(diags, "spec.devices[1].bdf")
    assert "device 00/02/0 is already passed through" in d.message


@pytest.mark.parametrize("size,words", [
    ("3M", "ivshmem size 3M is not a power of two"),
    ("1G", "ivshmem size 1G is out of range (at least 2M, less than 1G)"),
    ("1M", "ivshmem size 1M is out of range (at least 2M, less than 1G)"),
    ("2560K", "ivshmem size 2560K is not a whole number of MiB"),
])
def test_ivshmem_size(size, words):
    text = devices_text(f"""
        - type: ivshmem
          region: dm:/shm0
          size: {size}
    """)
    d = only(errors(text), "spec.devices[0].size")
    assert d.message == words
    assert (d.line, d.col) == pos(text, f"size: {size}", size)


def test_ivshmem_power_of_two_hint():
    text = devices_text("""
        - type: ivshmem
          region: hv:/shm0
          size: 48
    """)
    d = only(errors(text), "spec.devices[0].size")
    assert d.suggestion == "use 32M or 64M"


def test_ivshmem_region_twice():
    text = devices_text("""
        - type: ivshmem
          region: dm:/shm0
          size: 2M
        - type: ivshmem
          region: dm:/shm0
          size: 4M
    """)
    d = only(errors(text), "spec.devices[1].region")
    assert "region `dm:/shm0` is already mapped" in d.message


def test_missing_paths_resolve_against_spec_folder(tmp_path):
    (tmp_path / "bzImage").write_bytes(b"k")
    (tmp_path / "disk.img").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    text = devices_text("""
        - type: virtio-blk
          path: disk.img
        - type: virtio-blk
          path: missing.img
        - type: ahci
          hd: adir
          cd: /nonexistent/install.iso
        - type: passthru
          bdf: "00:02.0"
          gpu: true
          options: {romfile: vbios.rom}
    """)
    f = tmp_path / "vm.yaml"
    f.write_text(text)
    diags = [d for d in diagnostics(text, base_dir=tmp_path, check_paths=True)]
    assert sorted(d.json_path for d in diags) == [
        "spec.devices[1].path", "spec.devices[2].cd", "spec.devices[2].hd", "spec.devices[3].options.romfile"]
    d = only(diags, "spec.devices[1].path")
    assert d.message == f"`missing.img` does not exist (looked for {tmp_path / 'missing.img'})"
    assert "--no-check-paths" in d.suggestion
    assert (d.line, d.col) == pos(text, "missing.img", "missing.img")
    assert only(diags, "spec.devices[2].hd").message == "`adir` is a directory, not an image file"
    assert only(diags, "spec.devices[2].cd").message == "`/nonexistent/install.iso` does not exist"
    # the same through load_spec (base dir = the file's folder), and skipped on request
    with pytest.raises(Exception) as exc:
        load_spec(f)
    assert len(exc.value.diagnostics) == 4
    assert load_spec(f, check_paths=False).name == "t1"


def test_missing_boot_files(tmp_path):
    text = spec_text("").replace("kernel:\n      path: bzImage",
                                 "ovmf: {code: OVMF_CODE.fd, vars: OVMF_VARS.fd}")
    diags = diagnostics(text, base_dir=tmp_path, check_paths=True)
    assert [d.json_path for d in diags] == ["spec.boot.ovmf.code", "spec.boot.ovmf.vars"]
    assert (diags[1].line, diags[1].col) == pos(text, "vars:", "OVMF_VARS.fd")


@pytest.mark.parametrize("arg,words,hint", [
    ("--mac_seed", "`--mac_seed` is obsolete in acrn-dm v3.x", "set `macSeed` on the virtio-net device instead"),
    ("--mac_seed=abc", "`--mac_seed` is obsolete", "`macSeed`"),
    ("-U", "`-U` was removed in acrn-dm v2.7", "the VM name (metadata.name) identifies the VM"),
    ("-Ud2795438-25d6-11e8-864e-cb7a18b34643", "`-U` was removed", "metadata.name"),
    ("--uuid", "`--uuid` was removed in acrn-dm v2.7", "metadata.name"),
    ("-W", "`-W` was removed in acrn-dm v3.0", "settings.virtioMsi"),
    ("--virtio_msix", "`--virtio_msix` was removed", "drop it"),
    ("-A", "`-A` is obsolete", "drop it"),
    ("-Y", "`-Y` is obsolete", "drop it"),
    ("-i", "`-i` is obsolete", "pmNotifyChannel"),
    ("-G", "`-G` is obsolete", "gpu: true"),
    ("--vsbl", "`--vsbl` is obsolete", "boot.ovmf"),
    ("--part_info", "`--part_info` is obsolete", "drop it"),
    ("--pm_by_vuart", "`--pm_by_vuart` is obsolete", "S5 vUART"),
    ("-p", "`-p` was removed", "spec.cpu.affinity"),
])
def test_obsolete_extra_args(arg, words, hint):
    text = spec_text(f"""
        extraArgs:
          - "--debugexit_unknown"
          - "{arg}"
    """)
    d = only(errors(text), "spec.extraArgs[1]")
    assert d.message.startswith(words)
    assert hint in d.suggestion
    assert (d.line, d.col) == pos(text, f'"{arg}"', '"')


def test_modelled_extra_args_warn():
    text = spec_text("""
        extraArgs: ["--rtvm", "-s 5,virtio-rnd", "--some_new_flag"]
    """)
    diags = diagnostics(text)
    assert [d.severity for d in diags] == ["warning", "warning"]
    assert only(diags, "spec.extraArgs[0]").suggestion == "use spec.vmType: rtvm instead"
    assert only(diags, "spec.extraArgs[1]").suggestion == "use spec.devices instead"


@pytest.mark.parametrize("dtype,backend,mode", [
    ("virtio-blk", "vbs-u", "modern"), ("virtio-net", "vhost", "transitional"),
    ("virtio-console", "vbs-u", "modern"), ("virtio-rnd", "vbs-u", "transitional"),
])
def test_legacy_only_device_with_a_native_backend_is_valid_its_plan_decides(dtype, backend, mode):
    """QEMU's own devices give any mode; acrn-dm's are legacy-only: the engine's plan says (tests/render)."""
    extra = {"virtio-blk": "path: a.img", "virtio-net": "tap: tap0",
             "virtio-console": "ports: [{kind: pty, name: p}]", "virtio-rnd": ""}[dtype]
    text = devices_text(f"""
        - type: {dtype}
          backend: {backend}
          mode: {mode}
          {extra}
    """)
    assert errors(text) == []


def test_legacy_only_device_with_embedded_or_auto_is_fine():
    text = devices_text("""
        - type: virtio-blk
          backend: embedded
          mode: modern
          path: a.img
        - type: virtio-blk
          mode: transitional
          path: b.img
    """)
    assert errors(text) == []


@pytest.mark.parametrize("dtype,extra", [
    ("virtio-input", "device: /dev/input/event0"), ("virtio-gpu", ""),
    ("virtio-i2c", "args: '0:1C@node1'"), ("vhost-vsock", "cid: 3"),
])
def test_modern_only_devices(dtype, extra):
    text = devices_text(f"""
        - type: {dtype}
          mode: legacy
          {extra}
    """)
    d = only(errors(text), "spec.devices[0].mode")
    assert d.message == f"acrn-dm's {dtype} is modern-only, so mode `legacy` cannot be given"
    assert d.suggestion == "use `mode: modern` or remove `mode`"


@pytest.mark.parametrize("dtype,extra,backend,words", [
    ("virtio-blk", "path: a.img", "vhost", "there is no kernel vhost backend for virtio-blk"),
    ("virtio-gpu", "", "embedded", "the embedded device model does not serve virtio-gpu"),
    ("vhost-vsock", "cid: 3", "vbs-u", "vhost-vsock is served only by the kernel's vhost-vsock"),
    ("vhost-vsock", "cid: 3", "embedded", "the embedded device model does not serve vhost-vsock"),
    ("wdt", "", "vbs-u", "`backend` applies to virtio devices"),
])
def test_impossible_backends(dtype, extra, backend, words):
    text = devices_text(f"""
        - type: {dtype}
          backend: {backend}
          {extra}
    """)
    d = only(errors(text), "spec.devices[0].backend")
    assert d.message.startswith(words)
    assert (d.line, d.col) == pos(text, f"backend: {backend}", backend)


def test_rtvm_embedded_backend():
    text = spec_text("""
        vmType: rtvm
        console:
          lpc: [{port: com1, backend: stdio}]
        devices:
          - type: virtio-blk
            backend: embedded
            path: a.img
    """)
    diags = diagnostics(text)
    d = only(diags, "spec.devices[0].backend")
    assert "no vhost-user frontend" in d.message
    assert (d.line, d.col) == pos(text, "backend: embedded", "embedded")


def test_affinity_outside_host_profile():
    text = spec_text("").replace("affinity: [1, 2]", "affinity: [1, 6]")
    host = HostProfile(lapic_ids=[0, 2, 4, 6, 8][:3])
    d = only(errors(text, host=host), "spec.cpu.affinity[0]")
    assert d.message == "LAPIC ID 1 is not a CPU of this host"
    assert d.suggestion == "the host's LAPIC IDs are 0, 2, 4"
    assert (d.line, d.col) == pos(text, "affinity", "1")
    d = only(errors(text, host=host), "spec.cpu.affinity[1]")
    assert (d.line, d.col) == pos(text, "affinity", "6")
    assert errors(text) == []  # no host, no host checks


def test_rtvm_cannot_take_the_boot_cpu():
    text = spec_text("vmType: rtvm").replace("affinity: [1, 2]", "affinity: [0, 1]")
    d = only(errors(text, host=HostProfile(lapic_ids=[0, 1, 2, 3])), "spec.cpu.affinity[0]")
    assert "boot CPU" in d.message


def test_duplicate_affinity_entry_is_located():
    text = spec_text("").replace("affinity: [1, 2]", "affinity: [1, 2, 1]")
    d = only(errors(text), "spec.cpu.affinity[2]")
    assert d.message == "`1` is listed twice (also at index 0)"
    assert (d.line, d.col) == (7, 22)


# --- several files at once ---------------------------------------------------------------------

def _vm(name, cid=None, mac=None, tap=None, affinity="[1]", vmtype="standard"):
    devs = []
    if cid is not None:
        devs.append(f"- type: vhost-vsock\n  cid: {cid}")
    if mac or tap:
        devs.append(f"- type: virtio-net\n  tap: {tap or 'tap_' + name}\n  mac: \"{mac or '02:00:00:00:00:99'}\"")
    text = devices_text("\n".join(devs) or "- type: virtio-rnd").replace("name: t1", f"name: {name}")
    return text.replace("affinity: [1, 2]", f"affinity: {affinity}").replace("cpu:", f"vmType: {vmtype}\n  cpu:")


def test_cross_file_duplicates(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    c = tmp_path / "c.yaml"
    a.write_text(_vm("vm1", cid=3, mac="02:00:00:00:00:01", tap="tapA"))
    b.write_text(_vm("vm1", cid=3, mac="02:00:00:00:00:01", tap="tapA"))
    c.write_text(_vm("vm3", cid=4, mac="02:00:00:00:00:02", tap="tapC"))
    _, diags = validate_files([a, b, c], check_paths=False)
    assert {d.file for d in diags} == {str(b)}
    text = b.read_text()
    d = only(diags, "metadata.name")
    assert d.message == f"VM name `vm1` is also used by VM `vm1` ({a}:4)"
    assert (d.line, d.col) == pos(text, "name: vm1", "vm1")
    d = only(diags, "spec.devices[0].cid")
    assert d.message.startswith("vsock CID 3 is also used by VM `vm1`")
    assert (d.line, d.col) == pos(text, "cid: 3", "3")
    assert only(diags, "spec.devices[1].mac").message.startswith("MAC `02:00:00:00:00:01` is also used")
    assert only(diags, "spec.devices[1].tap").message.startswith("interface `tapA` is also used")


def test_cross_file_rtvm_cpu_sharing(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(_vm("rt", affinity="[2, 3]", vmtype="rtvm"))
    b.write_text(_vm("std", affinity="[1, 3]"))
    _, diags = validate_files([a, b], check_paths=False)
    d = only(diags, "spec.cpu.affinity[1]")
    assert d.file == str(b)
    assert "LAPIC ID 3 is also used by VM `rt`" in d.message and "an RTVM needs its CPUs to itself" in d.message
    # two standard VMs may share CPUs
    a.write_text(_vm("s1", affinity="[1, 3]"))
    assert validate_files([a, b], check_paths=False)[1] == []


def test_semantic_checks_still_run_next_to_schema_errors():
    text = devices_text("""
        - type: virtio-blk
          path: a.img
          slot: 5
          bogus: 1
        - type: virtio-rnd
          slot: 5
    """)
    diags = errors(text)
    assert [d.json_path for d in diags] == ["spec.devices[0].bogus", "spec.devices[1].slot"]


def test_spec_object_contract(tmp_path):
    f = tmp_path / "vm.yaml"
    f.write_text(devices_text("- type: virtio-blk\n  path: disk.img"))
    spec = load_spec(f, check_paths=False)
    assert spec.name == "t1" and spec.path == f and spec.base_dir == tmp_path
    assert spec.spec is spec.data["spec"] and spec.devices == [{"type": "virtio-blk", "path": "disk.img"}]
    assert spec.resolve_path("disk.img") == tmp_path / "disk.img"
    assert spec.resolve_path("/abs/x") == __import__("pathlib").Path("/abs/x")
    assert "vmType" not in spec.spec  # defaults are not injected
    same = load_spec_text(f.read_text(), "other.yaml", check_paths=False)
    assert same.hash == spec.hash and len(spec.hash) == 64
    assert spec.locate(("spec", "devices", 0, "path")) == (str(f), 14, 13)
