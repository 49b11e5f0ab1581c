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


def run_script(tmp_path: Path, script: str, cpus: dict[int, int]) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `script` with: fake /proc/cpuinfo (LAPIC ID -> CPU number), fake sysfs, stubs for
    acrn-dm (dumps argv NUL-separated), ip and modprobe (log their argv)."""
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
    _stub(bindir, "acrn-dm", 'printf "%s\\0" "$@" > "$STUB_OUT/argv"\n')
    _stub(bindir, "ip", 'echo "ip $*" >> "$STUB_OUT/ip.log"\n[[ "$1 $2" == "link show" ]] && exit 1\nexit 0\n')
    _stub(bindir, "modprobe", 'echo "modprobe $*" >> "$STUB_OUT/ip.log"\n')
    (work / "launch.sh").write_text(script)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "STUB_OUT": str(work), "ACRN_SYSFS": str(sysfs),
           "ACRN_CPUINFO": str(work / "cpuinfo"), "ACRN_RUN_DIR": str(work / "run")}
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

    # the helpers did their jobs on the fake tree
    assert (work / "sys/devices/system/cpu/cpu1/online").read_text().strip() == "0"
    assert (work / "sys/devices/system/cpu/cpu3/online").read_text().strip() == "0"
    assert (work / "sys/devices/system/cpu/cpu0/online").read_text().strip() == "1"
    assert (work / "sys/devices/virtual/misc/acrn_hsm/remove_cpu").read_text() == "3\n"  # last write wins
    log = (work / "ip.log").read_text().splitlines()
    assert "ip tuntap add dev tap_t1 mode tap" in log
    assert "ip link set dev tap_t1 master br-test" in log
    assert (work / "run/mngr").is_dir()


def test_script_stops_when_a_cpu_is_missing(tmp_path, service_vm):
    spec = make_spec(tmp_path, BODY % "disk.img")
    proc, work = run_script(tmp_path, render_script(compile_spec(spec, service_vm)), {0: 0, 2: 1})
    assert proc.returncode == 1
    assert "no CPU with LAPIC ID 6" in proc.stderr
    assert not (work / "argv").exists()


def test_script_quotes_every_value(tmp_path, service_vm):
    (tmp_path / NASTY).write_bytes(b"\0" * 512)
    spec = make_spec(tmp_path, BODY % NASTY.replace('"', '\\"'))
    script = render_script(compile_spec(spec, service_vm))
    assert "$(touch PWNED)" in script  # present, but only inside single quotes
    assert "'-s' " not in script and "acrn-dm \"${dm_params[@]}\"" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
