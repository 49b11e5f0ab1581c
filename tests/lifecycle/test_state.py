"""The typed state records: a round trip through JSON, and a corrupt, foreign or other-version
launch.json / run.json is a clear error (the CLI says which file and what is wrong), never a traceback."""

import json

import pytest

from acrnmgr.lifecycle.errors import StateError
from acrnmgr.lifecycle.state import LaunchRecord, ProcessIdentity, ProcessRun, ProcessSpec, RunRecord


def test_records_round_trip():
    launch = LaunchRecord("vm1", "qemu", (ProcessSpec("devmodel-root", ["dm"], wait_socket="/s", device="root"),
                                          ProcessSpec("qemu", ["qemu-system-x86_64", "-m", "256"], role="main")),
                          "ab" * 32, "/specs/vm1.yaml", 1.5, ("/s",), (("ip", "link", "del", "tap0"),),
                          {"qmp": "/q"}, {})
    assert LaunchRecord.from_dict(json.loads(json.dumps(launch.to_dict()))) == launch
    assert launch.main.name == "qemu"
    run = RunRecord("running", 2.0, ProcessIdentity(1, 2, ["sup"])).with_process(
        ProcessRun("qemu", "main", ProcessIdentity(3, 4, ["qemu"]))).with_process(
        ProcessRun("qemu", "main", ProcessIdentity(3, 4, ["qemu"]), exit_code=137, signal=9))
    assert len(run.processes) == 1 and run.process("qemu").signal == 9
    assert RunRecord.from_dict(json.loads(json.dumps(run.to_dict()))) == run


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(version=2), "schema version 2; this acrnmgr reads version 1"),
    (lambda d: d.update(kind="other"), "not an acrnmgr acrnmgr-launch record"),
    (lambda d: d.pop("spec_hash"), "spec_hash is missing"),
    (lambda d: d["processes"][0].update(argv="qemu"), "processes[0].argv must be a list"),
    (lambda d: d["processes"][0].update(role="helper"), "has no main process last"),
    (lambda d: d.update(name="../x"), "invalid VM name"),
])
def test_bad_launch_records_are_refused(change, message):
    data = LaunchRecord("vm1", "qemu", (ProcessSpec("qemu", ["q"], role="main"),), "h").to_dict()
    change(data)
    with pytest.raises(StateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LaunchRecord.from_dict(data)


def test_corrupt_and_foreign_state_files_are_clear_errors(acrn_env):
    acrn_env.up(acrn_env.spec())
    acrn_env.run("down", "vm1")
    folder = acrn_env.state / "vm1"
    for name, text, message in (
        ("run.json", '{"kind": "acrnmgr-run", "version": 1, "state": "ru', "run.json is corrupt (not JSON"),
        ("run.json", json.dumps({"kind": "acrnmgr-run", "version": 1, "state": "flying", "started_at": 1}),
         "run.json.state is 'flying'"),
        ("launch.json", json.dumps({"some": "other tool's file"}),
         "launch.json is not an acrnmgr acrnmgr-launch record"),
    ):
        (folder / name).write_text(text)
        for args in (["status", "vm1"], ["down", "vm1"], ["logs", "vm1"],
                     ["up", "--engine", "acrn", "--host", str(acrn_env.host), str(acrn_env.spec())]):
            proc = acrn_env.run(*args, check=False)
            assert proc.returncode == 1, (args, proc.stderr)
            assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        listed = acrn_env.run("list").stdout
        assert "vm1" in listed and "unreadable" in listed
    assert f"remove {folder}" in acrn_env.run("status", "vm1", check=False).stderr
