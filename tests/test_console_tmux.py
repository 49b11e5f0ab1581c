"""A person at a terminal: in a real terminal (tmux), `acrnmgr up --wait-ready` of the qemu example shows its
progress and says the guest is up, `acrnmgr console` gives a shell in the guest (which runs a command on the
embedded data disk) until Ctrl-] detaches, and `acrnmgr down` stops it. The assertions are on the screen."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux (scripts/setup.sh installs it)"),
]


class Terminal:
    def __init__(self, tmp_path: Path):
        self.server = f"acrnmgr-test-{os.getpid()}"
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ACRNMGR_STATE_DIR": str(tmp_path / "state"),
               "TERM": "xterm-256color"}
        self._tmux("new-session", "-d", "-s", "t", "-x", "150", "-y", "50", "-c", str(ROOT),
                   "bash --norc --noprofile", env=env)
        try:
            self.wait_for(r"bash-[\d.]+[#$]\s*$", 30)
        except BaseException:
            self.close()  # the fixture's teardown does not run when its setup fails
            raise

    def _tmux(self, *args: str, env: dict | None = None) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True, check=True,
                              env=env, timeout=30).stdout

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def key(self, key: str) -> None:
        self._tmux("send-keys", "-t", "t", key)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t", "-S", "-200")  # -J: wrapped lines joined

    def wait_for(self, pattern: str, timeout: float = 150) -> str:
        """The screen once a line of it matches `pattern` (a regular expression)."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if regex.search(screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path):
    term = Terminal(tmp_path)
    yield term
    subprocess.run([str(BIN / "acrnmgr"), "down", "--all", "--force", "--timeout", "1"], capture_output=True,
                   env={**os.environ, "ACRNMGR_STATE_DIR": str(tmp_path / "state")})
    term.close()


def test_up_wait_ready_console_and_down_as_a_person_sees_them(terminal, example_image):
    terminal.type("acrnmgr up examples/linux-qemu.yaml --engine qemu --wait-ready; echo up-exit=$?")
    screen = terminal.wait_for(r"^up-exit=\d")
    assert "\nup-exit=0" in screen, screen
    assert "checking that linux-qemu stays up" in screen
    assert "waiting for linux-qemu's console to print /acrnmgr-guest: ready/" in screen
    assert "linux-qemu is up (pid" in screen

    terminal.type("acrnmgr console linux-qemu")
    terminal.wait_for(r"detach with Ctrl-\]")
    terminal.key("Enter")
    terminal.wait_for(r"root@linux-qemu:~#\s*$")
    terminal.type("echo written-by-$((6*7)) > /data/tmux && sync && cat /data/tmux")
    screen = terminal.wait_for(r"^written-by-42")
    assert "echo written-by-$((6*7))" in screen  # the guest's shell echoes what was typed
    terminal.key("C-]")
    terminal.type("echo detached-exit=$?")
    assert "\ndetached-exit=0" in terminal.wait_for(r"^detached-exit=\d")

    terminal.type("acrnmgr status linux-qemu; echo status-exit=$?")
    screen = terminal.wait_for(r"^status-exit=\d")
    assert "linux-qemu: running (engine qemu" in screen and "\nstatus-exit=0" in screen
    terminal.type("acrnmgr down linux-qemu; echo down-exit=$?")
    screen = terminal.wait_for(r"^down-exit=\d")
    assert "linux-qemu: sent system_powerdown (ACPI power button)" in screen
    assert "linux-qemu stopped (graceful)" in screen and "\ndown-exit=0" in screen
    terminal.type("acrnmgr status linux-qemu; echo status-exit=$?")
    assert "linux-qemu: stopped" in terminal.wait_for(r"^status-exit=3", 30)
    assert "Traceback" not in terminal.screen()
