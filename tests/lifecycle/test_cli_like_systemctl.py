"""The lifecycle commands behave like systemctl/kubectl/virsh: --output json on up/down/status/list, status
exit codes as `systemctl is-active` gives them, logs -n/--tail, console --port, and forget. On the acrn
engine's stand-in acrn-dm, so no guest boots."""

import json
import subprocess

from tests.lifecycle.conftest import ACRNMGR


def test_json_output_and_status_exit_codes(acrn_env):
    spec = acrn_env.spec()
    up = acrn_env.up(spec, "--output", "json")
    [result] = json.loads(up.stdout)
    assert result["name"] == "vm1" and result["action"] == "started" and result["pid"] > 0

    st = acrn_env.run("status", "vm1", check=False)
    assert st.returncode == 0 and "vm1: running" in st.stdout
    assert json.loads(acrn_env.run("status", "vm1", "--output", "json").stdout)["state"] == "running"
    [row] = json.loads(acrn_env.run("list", "--output", "json").stdout)
    assert (row["name"], row["state"]) == ("vm1", "running")

    [down] = json.loads(acrn_env.run("down", "vm1", "--output", "json").stdout)
    assert down["name"] == "vm1" and down["action"] == "stopped"
    st = acrn_env.run("status", "vm1", check=False)
    assert st.returncode == 3 and "vm1: stopped" in st.stdout  # systemctl is-active: 3 when not active
    assert acrn_env.run("status", check=False).returncode == 3  # a VM of the listing does not run
    missing = acrn_env.run("status", "nosuchvm", check=False)
    assert missing.returncode == 4 and "no VM named nosuchvm" in missing.stderr


def test_logs_tail_and_forget(acrn_env):
    acrn_env.up(acrn_env.spec(), "--wait-ready")
    def sections(text: str) -> dict[str, list[str]]:
        parts = text.split("==> ")[1:]
        return {p.split(" <==")[0]: p.split(" <==\n", 1)[1].splitlines() for p in parts}

    with open(acrn_env.state / "vm1" / "acrn-dm.log", "a") as log:  # what a chatty acrn-dm would have said
        log.write("".join(f"line {i}\n" for i in range(50)))
    full = sections(acrn_env.run("logs", "vm1").stdout)
    assert full["acrn-dm.log"][-1] == "line 49" and len(full["acrn-dm.log"]) == 51
    tail = sections(acrn_env.run("logs", "vm1", "-n", "1").stdout)
    assert tail.keys() == full.keys()
    assert all(tail[name] == lines[-1:] for name, lines in full.items())
    assert all(lines == [] for lines in sections(acrn_env.run("logs", "vm1", "--tail", "0").stdout).values())

    refused = acrn_env.run("forget", "vm1", check=False)
    assert refused.returncode == 1 and "vm1 is running; stop it first" in refused.stderr
    acrn_env.run("down", "vm1")
    gone = acrn_env.run("forget", "vm1")
    assert "vm1 forgotten" in gone.stderr
    assert json.loads(acrn_env.run("list", "--output", "json").stdout) == []
    again = acrn_env.run("forget", "vm1", check=False)
    assert again.returncode == 1 and "no VM named vm1" in again.stderr and "Traceback" not in again.stderr


def test_console_port_picks_a_port_by_name(acrn_env):
    agent = acrn_env.root / "agent.sock"
    dev = f"    - {{type: virtio-console, name: hvc, ports: [{{kind: socket, name: agent, path: {agent}}}]}}\n"
    acrn_env.up(acrn_env.spec(extra_devices=dev), "--wait-ready")
    con = subprocess.run([ACRNMGR, "console", "vm1", "--port", "agent", "--linger", "0.5"], env=acrn_env.env,
                         input=b"hello\n", capture_output=True, timeout=30)
    assert con.returncode == 0 and con.stdout == b"HELLO\n", con
    assert b"console agent" in con.stderr
    bad = acrn_env.run("console", "vm1", "--port", "com9", check=False)
    assert bad.returncode == 1 and "no console port com9" in bad.stderr and "agent" in bad.stderr
