"""`acrnmgr devmodel serve --device i2c` and `acrnmgr i2c list|get|set` against it (a real device model process;
its control socket answers without a front-end)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ACRNMGR = str(Path(sys.executable).with_name("acrnmgr"))


def run(*args, env=None):
    return subprocess.run([ACRNMGR, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture
def served(tmp_path):
    """A VM `i2cvm` whose adapter `bus0` has an EEPROM at 0x50 and an LM75 at 0x48."""
    state = tmp_path / "state"
    folder = state / "i2cvm"
    folder.mkdir(parents=True, mode=0o700)
    eeprom = tmp_path / "e.bin"
    eeprom.write_bytes(bytes(256))
    control = folder / "bus0.i2c.sock"
    proc = subprocess.Popen([ACRNMGR, "devmodel", "serve", "--device", "i2c", "--socket", str(folder / "bus0.vhost"),
                             "--eeprom", f"0x50={eeprom}", "--lm75", "0x48=20.5", "--control-socket", str(control)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not control.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    yield {"ACRNMGR_STATE_DIR": str(state)}, folder
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not control.exists()


def test_set_get_list(served):
    env, _ = served
    done = run("i2c", "set", "i2cvm", "lm75@0x48", "temperature", "-3.2", env=env)
    assert done.returncode == 0 and done.stdout == "-3.0\n", done
    got = run("i2c", "get", "i2cvm", "0x48", "temperature", env=env)
    assert got.stdout == "-3.0\n"
    as_json = json.loads(run("i2c", "get", "i2cvm", "lm75@0x48", "--output", "json", env=env).stdout)
    assert as_json == {"target": "lm75@0x48", "properties": {"temperature": -3.0, "tos": 80.0, "thyst": 75.0,
                                                             "config": 0}}
    listed = run("i2c", "list", "i2cvm", env=env)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["lm75@0x48", "eeprom-24c02@0x50"]


@pytest.mark.parametrize("args, code, words", [
    (("set", "i2cvm", "lm75@0x48", "temperature", "200"), 1, "outside the LM75's range -55..125"),
    (("set", "i2cvm", "lm75@0x48", "temperature", "warm"), 1, "'warm' is not a number"),
    (("set", "i2cvm", "0x50", "size", "1"), 1, "no settable property 'size'"),
    (("get", "i2cvm", "lm75@0x50"), 1, "no lm75 at 0x50 on this adapter (devices: lm75@0x48, eeprom-24c02@0x50)"),
    (("get", "i2cvm", "lm75"), 1, "use TYPE@ADDRESS"),
    (("get", "i2cvm", "0x48", "--adapter", "bus1"), 1, "no running virtio-i2c adapter named 'bus1' (it has: bus0)"),
    (("get", "other", "0x48"), 1, "VM other has no running embedded virtio-i2c adapter"),
    (("get", "../etc", "0x48"), 2, "invalid VM name"),
])
def test_errors_are_clear(served, args, code, words):
    env, _ = served
    done = run("i2c", *args, env=env)
    assert done.returncode == code and words in done.stderr, done
    assert "Traceback" not in done.stderr


def test_several_adapters_need_adapter(served):
    env, folder = served
    (folder / "bus1.i2c.sock").symlink_to(folder / "bus0.i2c.sock")
    done = run("i2c", "get", "i2cvm", "0x48", "temperature", env=env)
    assert done.returncode == 2 and "several virtio-i2c adapters (bus0, bus1): choose one with --adapter" in done.stderr
    assert run("i2c", "get", "i2cvm", "0x48", "temperature", "--adapter", "bus1", env=env).stdout == "20.5\n"


@pytest.mark.parametrize("args, code, words", [
    (("--eeprom", "0x50=x.bin", "--lm75", "0x50"), 2, "address 0x50 is already given by --eeprom 0x50=x.bin"),
    (("--lm75", "0x90"), 2, "not a 7-bit I2C address"),
    (("--lm75", "0x48=hot"), 2, "'hot' is not a temperature"),
    (("--eeprom", "0x50"), 2, "use ADDR=FILE"),
    (("--host-client", "0x1c"), 2, "use BUS:ADDR"),
    (("--eeprom", "0x50=/nonexistent/e.bin"), 1, "EEPROM file /nonexistent/e.bin: no such file"),
    (("--host-client", "97:0x1c"), 1, "/dev/i2c-97: No such file or directory (is the i2c-dev module loaded?)"),
    (("--lm75", "0x48=130"), 1, "outside the LM75's range"),
])
def test_serve_i2c_refuses_bad_options(tmp_path, args, code, words):
    done = run("devmodel", "serve", "--device", "i2c", "--socket", str(tmp_path / "s" / "vhost"), *args)
    assert done.returncode == code and words in done.stderr, done
    assert "Traceback" not in done.stderr


def test_i2c_options_belong_to_i2c(tmp_path):
    done = run("devmodel", "serve", "--device", "rng", "--socket", str(tmp_path / "s"), "--lm75", "0x48")
    assert done.returncode == 2 and "apply to --device i2c only" in done.stderr
