"""A stand-in for acrn-dm, used by the lifecycle tests (installed as `acrn-dm` first on PATH).

It validates its argv with acrnmgr's acrn-dm grammar parser, creates
$ACRNMGR_ACRN_MNGR_DIR/<vm>.monitor.<pid>.socket and answers the monitor messages the way
acrn-dm does (shared/reference/acrn-dm.md section 5):
  DM_QUERY           -> state 0 (running)
  DM_STOP force=1    -> err 0, then power off (exit 0)
  DM_STOP force=0    -> err 0 and an ACPI shutdown with --pm_notify_channel power_button, else err -1
  SIGTERM            -> ACPI power button: exit 0 (STANDIN_SIGTERM=ignore: a guest that ignores it)
  SIGINT / SIGHUP    -> forced power off, exit 0
  SIGUSR1            -> a simulated crash: prints an error and exits 1
Virtio-console socket ports are served as an upper-casing echo (a console to attach to).
With --cmd_monitor it also serves {"command":"destroy"} -> {"ack":0} and powers off.
Each start appends its pid to $STANDIN_STARTS when set, and writes $STANDIN_SPEW bytes of log lines when set."""

import json
import os
import re
import selectors
import signal
import socket
import sys

from acrnmgr.render.grammar import GrammarError, parse_argv
from acrnmgr.lifecycle import monitor


def main() -> int:
    try:
        cmd = parse_argv(sys.argv[1:], "3.x")
    except GrammarError as exc:
        print(f"acrn-dm: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("STANDIN_STARTS"):
        with open(os.environ["STANDIN_STARTS"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
    for n in range(int(os.environ.get("STANDIN_SPEW", "0")) // 64):
        print(f"{n:>10} a device model that logs far too much ...................", flush=n % 256 == 0)
    sys.stdout.flush()
    power_button = (cmd.get("pm_notify_channel") or "").split(",")[0] == "power_button"
    mngr = os.environ.get("ACRNMGR_ACRN_MNGR_DIR", monitor.DEFAULT_MNGR_DIR)
    path = os.path.join(mngr, monitor.socket_name(cmd.vm_name, os.getpid()))
    paths = [path]

    def poweroff(code: int = 0, why: str = "poweroff"):
        print(f"stand-in acrn-dm: {why}", flush=True)
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        sys.exit(code)

    sel = selectors.DefaultSelector()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    sel.register(server, selectors.EVENT_READ, "monitor")
    if cmd.get("cmd_monitor"):
        paths.append(cmd.get("cmd_monitor"))
        jserver = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        jserver.bind(cmd.get("cmd_monitor"))
        jserver.listen(4)
        sel.register(jserver, selectors.EVENT_READ, "json")

    for slot in cmd.slots:
        if slot.emul == "virtio-console":
            for cpath in re.findall(r"socket:[^=,]+=([^,:]+)", slot.config):
                paths.append(cpath)
                cserver = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                cserver.bind(cpath)
                cserver.listen(4)
                sel.register(cserver, selectors.EVENT_READ, "console")

    if os.environ.get("STANDIN_SIGTERM") == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: poweroff(0, "ACPI power button: guest shut down"))
    signal.signal(signal.SIGINT, lambda *_: poweroff(0, "forced poweroff (SIGINT)"))
    signal.signal(signal.SIGHUP, lambda *_: poweroff(0, "forced poweroff (SIGHUP)"))
    signal.signal(signal.SIGUSR1, lambda *_: poweroff(1, "fatal: simulated device model crash"))
    print(f"stand-in acrn-dm: {cmd.vm_name} running, {len(cmd.slots)} slots", flush=True)

    while True:
        for key, _ in sel.select():
            if key.data in ("monitor", "json", "console"):
                conn, _ = key.fileobj.accept()
                sel.register(conn, selectors.EVENT_READ, (key.data, monitor.Reassembler(), bytearray()))
                continue
            kind, reasm, buf = key.data
            conn = key.fileobj
            data = conn.recv(4096)
            if not data:
                sel.unregister(conn)
                conn.close()
                continue
            if kind == "console":
                conn.sendall(data.upper())
                continue
            if kind == "json":
                buf += data
                try:
                    req = json.loads(buf)
                except ValueError:
                    continue
                ok = req.get("command") == "destroy" and not cmd.has("rtvm")
                conn.sendall(json.dumps({"ack": 0 if ok else -1}).encode())
                if ok:
                    poweroff(0, "destroyed on the command monitor")
                continue
            for msg in reasm.feed(data):
                if msg.msgid == monitor.MsgId.DM_QUERY:
                    conn.sendall(monitor.reply(msg, 0))
                elif msg.msgid == monitor.MsgId.DM_STOP:
                    if msg.force or power_button:
                        conn.sendall(monitor.reply(msg, 0))
                        poweroff(0, "DM_STOP force" if msg.force else "DM_STOP: guest shut down")
                    conn.sendall(monitor.reply(msg, -1))
                else:
                    conn.sendall(monitor.reply(msg, -1))


if __name__ == "__main__":
    sys.exit(main())
