"""The acrn engine end to end through the real CLI, against the stand-in acrn-dm."""

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from acrnmgr.lifecycle import cmdmonitor, monitor
from acrnmgr.lifecycle.state import VM_NAME, ProcessIdentity, VmState, wait_until

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


def _pid_gone(pid: int) -> bool:
    ident = ProcessIdentity.of(pid)
    return ident is None or not ident.alive()


def test_up_status_down(acrn_env):
    spec = acrn_env.spec()
    acrn_env.up(spec)
    st = acrn_env.status("vm1")
    assert st["state"] == "running" and st["vm_status"] == "running" and st["engine"] == "acrn"
    pid = st["pid"]
    sock = acrn_env.mngr / f"vm1.monitor.{pid}.socket"
    assert sock.exists()
    # The argv acrn-dm got is recorded; a standard VM shares its CPU (LAPIC 2 = cpu1) with the Service
    # VM, as ACRN's launch script template does: only an RTVM's CPUs are offlined.
    argv = (acrn_env.state / "vm1" / "argv").read_text()
    assert "--cpu_affinity 2" in argv and argv.rstrip().endswith("vm1")
    assert (acrn_env.cpu / "cpu1" / "online").read_text().strip() == "1"
    assert acrn_env.remove_cpu.read_text() == ""

    listed = json.loads(acrn_env.run("list", "--output", "json").stdout)
    assert [(v["name"], v["state"]) for v in listed] == [("vm1", "running")]

    down = acrn_env.run("down", "vm1")
    assert "graceful" in down.stderr
    assert _pid_gone(pid) and not sock.exists()
    assert acrn_env.status("vm1")["state"] == "stopped"
    # down of a stopped VM succeeds and does nothing
    assert "not running" in acrn_env.run("down", "vm1").stderr


def test_up_offlines_an_rtvms_cpus(acrn_env):
    spec = acrn_env.spec(settings="  vmType: rtvm\n")
    acrn_env.up(spec)
    assert "--rtvm" in (acrn_env.state / "vm1" / "argv").read_text()
    assert (acrn_env.cpu / "cpu1" / "online").read_text().strip() == "0"
    assert acrn_env.remove_cpu.read_text() == "1"
    acrn_env.run("down", "vm1")


def test_up_is_idempotent_and_refuses_a_changed_spec(acrn_env):
    spec = acrn_env.spec()
    acrn_env.up(spec)
    pid = acrn_env.status("vm1")["pid"]
    again = acrn_env.up(spec)
    assert "already running" in again.stderr and acrn_env.status("vm1")["pid"] == pid
    changed = acrn_env.spec(settings="  settings: {virtioPoll: 1000}\n")
    proc = acrn_env.run("up", "--engine", "acrn", "--host", str(acrn_env.host), str(changed), check=False)
    assert proc.returncode == 1 and "different spec" in proc.stderr and "Traceback" not in proc.stderr


def test_graceful_fails_then_force(acrn_env):
    spec = acrn_env.spec()
    acrn_env.up(spec, env={"STANDIN_SIGTERM": "ignore"})
    pid = acrn_env.status("vm1")["pid"]
    down = acrn_env.run("down", "vm1", "--timeout", "1")
    assert "sent SIGTERM" in down.stderr
    assert "DM_STOP force=1" in down.stderr and "(forced)" in down.stderr
    assert _pid_gone(pid)
    assert "DM_STOP force" in (acrn_env.state / "vm1" / "acrn-dm.log").read_text()
    assert acrn_env.status("vm1")["state"] == "stopped"
    assert list(acrn_env.mngr.iterdir()) == []


def test_power_button_channel_makes_dm_stop_graceful(acrn_env):
    spec = acrn_env.spec(settings="  settings: {pmNotifyChannel: power_button}\n")
    acrn_env.up(spec, env={"STANDIN_SIGTERM": "ignore"})
    down = acrn_env.run("down", "vm1", "--timeout", "5")
    assert "sent DM_STOP (power button)" in down.stderr and "(graceful)" in down.stderr


def test_non_force_stop_without_power_button_is_refused(acrn_env):
    acrn_env.up(acrn_env.spec())
    pid = acrn_env.status("vm1")["pid"]
    sock = acrn_env.mngr / f"vm1.monitor.{pid}.socket"
    answer = monitor.request(sock, monitor.stop_request(monitor.now_stamp(), force=False))
    assert answer.err == -1
    assert acrn_env.status("vm1")["state"] == "running"


def test_force_skips_graceful(acrn_env):
    acrn_env.up(acrn_env.spec())
    down = acrn_env.run("down", "vm1", "--force")
    assert "SIGTERM" not in down.stderr and "DM_STOP force=1" in down.stderr


def test_guest_poweroff_via_cmd_monitor_is_a_clean_stop(acrn_env):
    cmd_sock = acrn_env.root / "vm1.cmd.sock"
    acrn_env.up(acrn_env.spec(settings=f"  settings: {{cmdMonitor: {cmd_sock}}}\n"), "--wait-ready")
    assert cmdmonitor.destroy(str(cmd_sock)) == 0
    assert wait_until(lambda: acrn_env.status("vm1")["state"] != "running", 10)
    st = acrn_env.status("vm1")
    assert (st["state"], st["exit_code"]) == ("stopped", 0)
    assert not cmd_sock.exists()


def test_crash_is_reported_with_exit_code_and_log(acrn_env):
    acrn_env.up(acrn_env.spec(), "--wait-ready")
    pid = acrn_env.status("vm1")["pid"]
    os.kill(pid, signal.SIGUSR1)
    assert wait_until(lambda: acrn_env.status("vm1")["state"] == "crashed", 10)
    st = acrn_env.status("vm1")
    assert st["exit_code"] == 1 and any("simulated device model crash" in line for line in st["log"])
    text = acrn_env.run("status", "vm1", check=False).stdout
    assert "crashed" in text and "exit code 1" in text
    # A crashed VM can be started again.
    acrn_env.up(acrn_env.spec())
    assert acrn_env.status("vm1")["state"] == "running"


def test_kill_9_of_vm_process_leaves_no_socket(acrn_env):
    acrn_env.up(acrn_env.spec(), "--wait-ready")
    pid = acrn_env.status("vm1")["pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: acrn_env.status("vm1")["state"] == "crashed", 10)
    assert acrn_env.status("vm1")["signal"] == 9
    assert list(acrn_env.mngr.iterdir()) == []  # acrn-dm could not remove it; the supervisor did


def test_kill_9_of_supervisor_takes_the_vm_down(acrn_env):
    acrn_env.up(acrn_env.spec(), "--wait-ready")
    sup, pid = VmState("vm1", acrn_env.state).read_run().supervisor.pid, acrn_env.status("vm1")["pid"]
    os.kill(sup, signal.SIGKILL)
    assert wait_until(lambda: _pid_gone(pid), 10)  # PR_SET_PDEATHSIG
    st = acrn_env.status("vm1")
    assert st["state"] == "crashed" and "supervisor died" in st["error"]
    acrn_env.run("down", "vm1")
    assert list(acrn_env.mngr.iterdir()) == []


def test_stale_pidfile_never_kills_an_unrelated_process(acrn_env):
    acrn_env.up(acrn_env.spec())
    acrn_env.run("down", "vm1")
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        # Make the state claim acrn-dm is still running under the bystander's pid: once with the
        # old process's identity (pid reused), once with the right cmdline but another start time.
        state = VmState("vm1", acrn_env.state)
        run = state.read_run()
        entry = run.process("acrn-dm")
        for identity in (
            replace(entry.identity, pid=bystander.pid),
            ProcessIdentity(bystander.pid, 1, ["sleep", "300"]),
        ):
            state.write_run(replace(run, state="running").with_process(
                replace(entry, identity=identity, exit_code=None, signal=None)))
            assert acrn_env.status("vm1")["state"] == "crashed"
            down = acrn_env.run("down", "vm1", "--timeout", "1")
            assert "not running" in down.stderr
            assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_concurrent_up_of_one_vm_starts_it_once(acrn_env):
    spec = acrn_env.spec()
    args = ["up", "--engine", "acrn", "--host", str(acrn_env.host), str(spec)]
    procs = [subprocess.Popen([ACRNMGR, *args], env=acrn_env.env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    # up returns once acrn-dm is spawned; under load the stand-in may not have recorded its start yet
    assert wait_until(acrn_env.starts.exists, 10)
    assert len(acrn_env.starts.read_text().split()) == 1
    assert sum("already running" in err for _, err in results) == 2


def test_missing_hugepages_and_iasl_are_clear_errors(acrn_env):
    spec = acrn_env.spec()
    acrn_env.host.write_text(acrn_env.host.read_text().replace("hugepages_free: 1024", "hugepages_free: 10"))
    proc = acrn_env.run("up", "--engine", "acrn", "--host", str(acrn_env.host), str(spec), check=False)
    assert proc.returncode == 1 and "hugepages" in proc.stderr and "needs 128 free" in proc.stderr
    acrn_env.host.write_text(acrn_env.host.read_text().replace("hugepages_free: 10", "hugepages_free: 1024")
                             .replace("iasl: /usr/bin/true", "iasl: null"))
    env = {"PATH": f"{acrn_env.bin}:/usr/bin:/bin"} if not _which_iasl() else None
    proc = acrn_env.run("up", "--engine", "acrn", "--host", str(acrn_env.host), str(spec), check=False, env=env)
    if not _which_iasl():
        assert proc.returncode == 1 and "iasl not found" in proc.stderr and "Traceback" not in proc.stderr


def _which_iasl():
    import shutil

    return shutil.which("iasl", path="/usr/bin:/bin")


def test_unknown_vm_is_a_clear_error(acrn_env):
    for args in (["status", "nosuch"], ["down", "nosuch"], ["logs", "nosuch"]):
        proc = acrn_env.run(*args, check=False)
        assert proc.returncode == (4 if args[0] == "status" else 1)  # status: 4 as systemctl, no such unit
        assert "no VM named nosuch" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_argv_fails_the_start_with_the_log(acrn_env):
    spec = acrn_env.spec(settings="  extraArgs: [--no-such-option]\n")
    proc = acrn_env.run("up", "--engine", "acrn", "--host", str(acrn_env.host), "--wait-ready", str(spec), check=False)
    assert proc.returncode == 1 and "no-such-option" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for tap and bridge devices")
def test_taps_are_created_on_the_bridge_and_removed(acrn_env):
    bridge, tap = "acrnmgrtbr0", "acrnmgrt0"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        nic = f"    - {{type: virtio-net, name: lan, tap: {tap}, mac: '00:16:3e:00:00:09'}}\n"
        spec = acrn_env.spec(extra_devices=nic, settings=f"  network: {{bridge: {bridge}}}\n")
        up = acrn_env.up(spec)
        assert f"creating tap {tap} on bridge {bridge}" in up.stderr
        assert os.path.realpath(f"/sys/class/net/{tap}/master").endswith(bridge)
        acrn_env.run("down", "vm1")
        assert not os.path.exists(f"/sys/class/net/{tap}")
    finally:
        subprocess.run(["ip", "link", "del", tap], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_missing_bridge_is_a_clear_error(acrn_env):
    nic = "    - {type: virtio-net, tap: acrnmgrt1}\n"
    spec = acrn_env.spec(extra_devices=nic, settings="  network: {bridge: nosuchbr0}\n")
    proc = acrn_env.run("up", "--engine", "acrn", "--host", str(acrn_env.host), str(spec), check=False)
    assert proc.returncode == 1 and "bridge nosuchbr0 does not exist" in proc.stderr


def test_logs_and_console(acrn_env):
    agent = acrn_env.root / "agent.sock"
    dev = f"    - {{type: virtio-console, name: hvc, ports: [{{kind: socket, name: agent, path: {agent}}}]}}\n"
    acrn_env.up(acrn_env.spec(extra_devices=dev), "--wait-ready")
    logs = acrn_env.run("logs", "vm1").stdout
    assert "==> acrn-dm.log <==" in logs and "stand-in acrn-dm: vm1 running" in logs

    con = subprocess.Popen([ACRNMGR, "console", "vm1"], env=acrn_env.env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    con.stdin.write(b"hello\n")
    con.stdin.flush()
    assert con.stdout.read(6) == b"HELLO\n"
    con.stdin.write(b"\x1d")  # Ctrl-] detaches
    con.stdin.flush()
    assert con.wait(timeout=10) == 0
    assert b"detach with Ctrl-]" in con.stderr.read()

    follow = subprocess.Popen([ACRNMGR, "logs", "-f", "vm1"], env=acrn_env.env, stdout=subprocess.PIPE, text=True)
    acrn_env.run("down", "vm1")
    out, _ = follow.communicate(timeout=30)  # -f ends once the VM has stopped
    assert "ACPI power button: guest shut down" in out
    assert not agent.exists()


def test_systemd_unit(acrn_env, tmp_path):
    spec = acrn_env.spec()
    proc = acrn_env.run("systemd", str(spec), "--engine", "acrn", "--dir", str(tmp_path / "units"), "--timeout", "45")
    unit = Path(proc.stdout.strip())
    assert unit == tmp_path / "units" / "acrnmgr-vm1.service"
    text = unit.read_text()
    assert "Type=oneshot\nRemainAfterExit=yes\n" in text
    assert f"ExecStart={ACRNMGR} up --wait-ready --engine acrn {spec}\n" in text
    assert f"ExecStop={ACRNMGR} down --timeout 45 vm1\n" in text
    assert "WantedBy=multi-user.target" in text



def test_a_failed_up_keeps_the_previous_runs_records(acrn_env):
    spec = acrn_env.spec()
    acrn_env.up(spec)
    acrn_env.run("down", "vm1")
    acrn_env.host.write_text(acrn_env.host.read_text().replace("hugepages_free: 1024", "hugepages_free: 10"))
    proc = acrn_env.run("up", "--engine", "acrn", "--host", str(acrn_env.host), str(spec), check=False)
    assert proc.returncode == 1 and "hugepages" in proc.stderr
    st = acrn_env.status("vm1")  # the stopped VM is still known, with its last run's logs
    assert st["state"] == "stopped" and st["exit_code"] == 0
    assert "stand-in acrn-dm: vm1 running" in acrn_env.run("logs", "vm1").stdout


def _lock_waiter(lock: Path) -> bool:
    """Some process waits in flock() for `lock` (a "->" line of /proc/locks names its inode)."""
    inode = f":{os.stat(lock).st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_down_waiting_for_the_lock_of_a_vm_that_vanishes_is_a_clear_error(acrn_env):
    import fcntl

    acrn_env.up(acrn_env.spec())
    acrn_env.run("down", "vm1")
    folder = acrn_env.state / "vm1"
    fd = os.open(folder / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as an `up` would, while it starts the VM again
        down = subprocess.Popen([ACRNMGR, "down", "vm1"], env=acrn_env.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert wait_until(lambda: _lock_waiter(folder / "lock"), 30), "down never waited for the VM's lock"
        (folder / "launch.json").unlink()  # the VM's records are gone when down gets the lock
    finally:
        os.close(fd)
    _, err = down.communicate(timeout=60)
    assert down.returncode == 1 and "no VM named vm1" in err and "Traceback" not in err, err


def test_status_says_how_the_vm_process_ended(acrn_env):
    acrn_env.up(acrn_env.spec(), "--wait-ready")
    os.kill(acrn_env.status("vm1")["pid"], signal.SIGKILL)
    assert wait_until(lambda: acrn_env.status("vm1")["state"] == "crashed", 10)
    assert "killed by SIGKILL (signal 9)" in acrn_env.run("status", "vm1", check=False).stdout

    acrn_env.up(acrn_env.spec(), "--wait-ready")
    pid = acrn_env.status("vm1")["pid"]
    os.kill(VmState("vm1", acrn_env.state).read_run().supervisor.pid, signal.SIGKILL)
    assert wait_until(lambda: _pid_gone(pid), 10)
    text = acrn_env.run("status", "vm1", check=False).stdout
    assert "supervisor died" in text and "None" not in text and "exit status unknown" in text, text


@pytest.mark.parametrize("command", ["status", "logs", "down", "console"])
def test_a_vm_name_that_is_a_path_is_refused(acrn_env, command):
    acrn_env.up(acrn_env.spec())
    acrn_env.run("down", "vm1")
    outside = acrn_env.root / "outside"  # a VM's state folder outside the state root
    subprocess.run(["cp", "-a", str(acrn_env.state / "vm1"), str(outside)], check=True)
    before = sorted(p.name for p in outside.iterdir())
    proc = acrn_env.run(command, "../outside", check=False)
    assert proc.returncode == 1 and "invalid VM name '../outside'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in outside.iterdir()) == before


def test_the_vm_name_pattern_is_the_schemas():
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "vm.schema.json").read_text())
    assert schema["properties"]["metadata"]["properties"]["name"]["pattern"] == f"^{VM_NAME.pattern}$(?!\\n)"


def test_a_supervised_log_is_capped_and_rotated(acrn_env):
    """A process that logs without end (a device model flooded by a hostile front-end) fills no disk: its log
    rotates at a cap into <name>.log.1, so it holds at most twice the cap; the last lines are in <name>.log."""
    cap = 64 * 1024
    acrn_env.up(acrn_env.spec(), env={"ACRNMGR_LOG_MAX_BYTES": str(cap), "STANDIN_SPEW": str(20 * cap)})
    log = VmState("vm1", acrn_env.state).path("acrn-dm.log")
    rotated = log.with_name("acrn-dm.log.1")

    def written() -> bool:
        return rotated.exists() and any("20479 a device model" in line for line in log.read_text().splitlines())

    assert wait_until(written, 20)
    assert log.stat().st_size <= cap and rotated.stat().st_size == cap
    acrn_env.run("down", "vm1")
