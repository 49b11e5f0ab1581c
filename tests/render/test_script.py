"""The launch script, run for real by bash against a fake sysfs and stub commands on PATH."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from acrnmgr.render.acrndm import compile_spec
from acrnmgr.render.script import render_script

from tests.specs import make_spec

NASTY = "my disk $(touch PWNED) `touch PWNED2` 'q' \"d\" ;x&y|z *.img"


def _stub(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_script(tmp_path: Path, script: str, cpus: dict[int, int], links: tuple[str, ...] = (),
               nics: dict[str, str] | None = None, pci: tuple[str, ...] = ()
               ) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `script` with: fake /proc/cpuinfo (LAPIC ID -> CPU number), fake sysfs (NICs name -> MAC,
    PCI functions bound to a driver), stubs for acrn-dm (dumps argv NUL-separated), ip (`link show`
    finds only `links`) and modprobe (both log their argv)."""
    work = tmp_path / "run"
    bindir = work / "bin"
    sysfs = work / "sys"
    bindir.mkdir(parents=True)
    lines = []
    for lapic, cpu in cpus.items():
        lines += [f"processor\t: {cpu}", "vendor_id\t: GenuineIntel", f"apicid\t\t: {lapic}", ""]
        cpu_dir = sysfs / "devices/system/cpu" / f"cpu{cpu}"
        cpu_dir.mkdir(parents=True)
        (cpu_dir / "online").write_text("1\n")
    (work / "cpuinfo").write_text("\n".join(lines))
    hsm = sysfs / "devices/virtual/misc/acrn_hsm"
    hsm.mkdir(parents=True)
    (hsm / "remove_cpu").write_text("")
    for nic, mac in (nics or {}).items():
        (sysfs / "class/net" / nic).mkdir(parents=True)
        (sysfs / "class/net" / nic / "address").write_text(mac + "\n")
    stub = sysfs / "bus/pci/drivers/pci-stub"
    stub.mkdir(parents=True)
    for bdf in pci:
        dev = sysfs / "bus/pci/devices" / f"0000:{bdf}"
        (dev / "driver").mkdir(parents=True)
        (dev / "vendor").write_text("0x8086\n")
        (dev / "device").write_text("0x15bc\n")
    _stub(bindir, "acrn-dm", 'printf "%s\\0" "$@" > "$STUB_OUT/argv"\n')
    _stub(bindir, "ip", 'echo "ip $*" >> "$STUB_OUT/ip.log"\n'
                        'if [[ "$1 $2" == "link show" ]]; then [[ " $STUB_LINKS " == *" ${4:-$3} "* ]]; exit; fi\n'
                        'exit 0\n')
    _stub(bindir, "modprobe", 'echo "modprobe $*" >> "$STUB_OUT/ip.log"\n')
    (work / "launch.sh").write_text(script)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "STUB_OUT": str(work), "ACRN_SYSFS": str(sysfs),
           "ACRN_CPUINFO": str(work / "cpuinfo"), "ACRN_RUN_DIR": str(work / "run"), "STUB_LINKS": " ".join(links)}
    proc = subprocess.run(["bash", str(work / "launch.sh")], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)
    return proc, work


BODY = """\
  cpu: {affinity: [2, 6]}
  memory: 512M
  boot: {kernel: {path: bzImage, cmdline: "console=ttyS0 root=/dev/vda $(touch PWNED3) `id`"}}
  network: {bridge: br-test}
  devices:
    - {type: virtio-blk, path: "%s", boot: true}
    - {type: virtio-net, tap: tap_t1}
  extraArgs: ["--debugexit"]
"""


def test_script_passes_the_exact_argv_and_nothing_runs(tmp_path, service_vm):
    (tmp_path / NASTY).write_bytes(b"\0" * 512)
    spec = make_spec(tmp_path, BODY % NASTY.replace('"', '\\"'))
    compiled = compile_spec(spec, service_vm)
    assert compiled.ok, compiled.errors
    assert any(NASTY in arg for arg in compiled.argv)

    proc, work = run_script(tmp_path, render_script(compiled), {0: 0, 2: 1, 6: 3})
    assert proc.returncode == 0, proc.stderr
    argv = (work / "argv").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv] == compiled.argv[1:]
    for marker in ("PWNED", "PWNED2", "PWNED3"):
        assert not (work / marker).exists() and not (tmp_path / marker).exists()

    # a standard VM shares its CPUs with the Service VM: none is offlined (ACRN's template)
    for cpu in (1, 3):
        assert (work / f"sys/devices/system/cpu/cpu{cpu}/online").read_text().strip() == "1"
    assert (work / "sys/devices/virtual/misc/acrn_hsm/remove_cpu").read_text() == ""
    log = (work / "ip.log").read_text().splitlines()
    assert "modprobe pci_stub" in log
    # a new tap; the bridge does not exist, so the tap is left alone, as ACRN's create_tap does
    assert "ip tuntap add dev tap_t1 mode tap" in log
    assert not any("master" in line for line in log)
    assert (work / "run/mngr").is_dir()


def test_script_offlines_an_rtvms_cpus_but_never_cpu_0(tmp_path, service_vm):
    body = BODY.replace("cpu: {affinity: [2, 6]}", "vmType: rtvm\n  cpu: {affinity: [0, 2, 6, 8]}")
    spec = make_spec(tmp_path, body % "disk.img")
    compiled = compile_spec(spec, service_vm)
    assert compiled.ok, compiled.errors
    # LAPIC 8 is no CPU of this box: skipped, as the template does, and acrn-dm still runs (and judges)
    proc, work = run_script(tmp_path, render_script(compiled), {0: 0, 2: 1, 6: 3})
    assert proc.returncode == 0, proc.stderr
    assert "processor 0 can't be offline" in proc.stderr
    assert (work / "sys/devices/system/cpu/cpu0/online").read_text().strip() == "1"
    for cpu in (1, 3):
        assert (work / f"sys/devices/system/cpu/cpu{cpu}/online").read_text().strip() == "0"
    assert (work / "sys/devices/virtual/misc/acrn_hsm/remove_cpu").read_text() == "3\n"  # last write wins
    assert (work / "argv").exists()


def test_script_reuses_an_existing_tap_and_attaches_a_new_one_to_an_existing_bridge(tmp_path, service_vm):
    body = BODY.replace("- {type: virtio-net, tap: tap_t1}", "- {type: virtio-net, tap: tap_t1}\n"
                        "    - {type: virtio-net, tap: tap_old}")
    compiled = compile_spec(make_spec(tmp_path, body % "disk.img"), service_vm)
    proc, work = run_script(tmp_path, render_script(compiled), {0: 0, 2: 1, 6: 3}, links=("br-test", "tap_old"))
    assert proc.returncode == 0, proc.stderr
    log = (work / "ip.log").read_text().splitlines()
    assert "ip tuntap add dev tap_t1 mode tap" in log and "ip link set tap_t1 master br-test" in log
    assert "ip link set dev tap_t1 up" in log
    assert not any("tap_old" in line and "show" not in line for line in log)


def test_script_mac_seed_takes_the_host_nic_address_at_launch(tmp_path, service_vm):
    body = BODY.replace("{type: virtio-net, tap: tap_t1}", "{type: virtio-net, tap: tap_t1, macSeed: '{hostMac}-vm1'}")
    compiled = compile_spec(make_spec(tmp_path, body % "disk.img"), service_vm)
    assert compiled.ok, compiled.errors
    script = render_script(compiled)
    nics = {"enp0s1": "00:1b:21:0a:0b:0c", "eth9": "00:1b:21:99:99:99", "lo": "00:00:00:00:00:00"}
    proc, work = run_script(tmp_path, script, {0: 0, 2: 1, 6: 3}, nics=nics)
    assert proc.returncode == 0, proc.stderr
    argv = [a.decode() for a in (work / "argv").read_bytes().split(b"\0")[:-1]]
    assert [a.replace("00:1b:21:0a:0b:0c", "{hostMac}") for a in argv] == compiled.argv[1:]
    assert any(a.endswith("mac_seed=00:1b:21:0a:0b:0c-vm1") for a in argv)


def test_script_unbinds_passthrough_devices_to_pci_stub(tmp_path, service_vm):
    body = BODY.replace("- {type: virtio-net, tap: tap_t1}", "- {type: passthru, bdf: '00:1f.6'}")
    compiled = compile_spec(make_spec(tmp_path, body % "disk.img"), service_vm)
    assert compiled.ok, compiled.errors
    proc, work = run_script(tmp_path, render_script(compiled), {0: 0, 2: 1, 6: 3}, pci=("00:1f.6",))
    assert proc.returncode == 0, proc.stderr
    stub = work / "sys/bus/pci/drivers/pci-stub"
    assert (stub / "new_id").read_text() == "8086 15bc\n"
    assert (stub / "bind").read_text() == "0000:00:1f.6\n"
    assert (work / "sys/bus/pci/devices/0000:00:1f.6/driver/unbind").read_text() == "0000:00:1f.6\n"


def test_script_quotes_every_value(tmp_path, service_vm):
    (tmp_path / NASTY).write_bytes(b"\0" * 512)
    spec = make_spec(tmp_path, BODY % NASTY.replace('"', '\\"'))
    script = render_script(compile_spec(spec, service_vm))
    assert "$(touch PWNED)" in script  # present, but only inside single quotes
    assert "'-s' " not in script and "acrn-dm \"${dm_params[@]}\"" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
