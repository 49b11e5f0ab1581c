"""The spec -> QEMU argv compiler of the qemu engine."""

import json
import textwrap

from acrnmgr.host import HostProfile
from acrnmgr.lifecycle.qemu_argv import compile_qemu, esc
from acrnmgr.spec.validation import load_spec_text

HOST = HostProfile(kvm=True, qemu="/usr/bin/qemu-system-x86_64", vhost_net=True, net_tun=True, cpu_count=4,
                   lapic_ids=[0, 1, 2, 3])


def _spec(devices: str, extra: str = "", boot: str = "kernel: {path: /k, initrd: /i, cmdline: 'console=ttyS0'}"):
    text = textwrap.dedent(f"""\
        apiVersion: acrnmgr/v1
        kind: VM
        metadata: {{name: q1}}
        spec:
          cpu: {{affinity: [0, 1]}}
          memory: 1G
          boot:
            {boot}
          console:
            lpc: [{{port: com1, backend: stdio}}]
          devices:
        """) + textwrap.indent(textwrap.dedent(devices), "    ") + extra
    return load_spec_text(text, "q1.yaml", host=HOST, check_paths=False, base_dir="/vm")


def _opts(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_machine_memory_boot_and_qmp(tmp_path):
    plan = compile_qemu(_spec("- {type: virtio-rnd, backend: vbs-u}\n"), HOST, tmp_path)
    assert plan.errors == []
    a = plan.argv
    assert _opts(a, "-machine") == ["pc,accel=kvm"] and _opts(a, "-smp") == ["2"] and _opts(a, "-m") == ["1024M"]
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in _opts(a, "-object")
    assert _opts(a, "-numa") == ["node,memdev=mem"]
    assert _opts(a, "-kernel") == ["/k"] and _opts(a, "-initrd") == ["/i"] and _opts(a, "-append") == ["console=ttyS0"]
    assert f"socket,id=qmp,path={tmp_path}/qmp.sock,server=on,wait=off" in _opts(a, "-chardev")
    # com1 stdio becomes a socket in the state folder, logged to console.log
    com1 = next(c for c in _opts(a, "-chardev") if c.startswith("socket,id=com1"))
    assert f"logfile={tmp_path}/console.log" in com1
    assert plan.consoles[0] == {"name": "com1", "kind": "socket", "path": f"{tmp_path}/com1.console.sock"}
    tcg = compile_qemu(_spec("- {type: virtio-rnd}\n"), HostProfile(kvm=False, qemu="qemu"), tmp_path)
    assert _opts(tcg.argv, "-machine") == ["pc,accel=tcg"] and _opts(tcg.argv, "-cpu") == ["max"]


def test_devices_follow_slots_backends_and_modes(tmp_path):
    plan = compile_qemu(_spec("""\
        - {type: virtio-blk, name: root, path: root.img, mode: modern, backend: embedded, mq: 2}
        - {type: virtio-blk, name: data, path: "d,1.img", mode: legacy, backend: vbs-u, readOnly: true,
           cache: writeback}
        - {type: virtio-net, name: lan, tap: tap0, mac: "00:16:3e:00:00:01"}
        - {type: virtio-console, name: hvc, ports: [{kind: pty, name: hvc0, console: true}]}
        - {type: virtio-rnd, name: rng, backend: embedded, slot: 9}
        """), HOST, tmp_path)
    assert plan.errors == [], plan.errors
    devs = _opts(plan.argv, "-device")
    assert "vhost-user-blk-pci,chardev=cdev3,num-queues=2,addr=0x3,disable-legacy=on,disable-modern=off" in devs
    legacy_blk = "virtio-blk-pci,drive=dev4,addr=0x4,disable-legacy=off,disable-modern=on,write-cache=on"
    assert any(d.startswith(legacy_blk) for d in devs)
    node = json.loads(_opts(plan.argv, "-blockdev")[0])
    assert node["file"]["filename"] == "/vm/d,1.img" and node["read-only"] is True
    assert "tap,id=dev5,ifname=tap0,script=no,downscript=no,vhost=on" in _opts(plan.argv, "-netdev")
    assert "virtio-net-pci,netdev=dev5,mac=00:16:3e:00:00:01,addr=0x5" in devs
    assert "virtconsole,bus=dev6.0,chardev=dev6p0,name=hvc0" in devs
    assert "vhost-user-rng-pci,chardev=cdev9,addr=0x9" in devs
    # embedded devices are helper processes, started (and waited for) before QEMU
    root, rng = plan.helpers
    assert root.argv[-8:] == ["--device", "blk", "--socket", f"{tmp_path}/root.vhost.sock", "--image", "/vm/root.img",
                              "--queues", "2"][-8:]
    assert root.wait_socket == f"{tmp_path}/root.vhost.sock" and root.device == "root"
    assert rng.argv[-4:] == ["--device", "rng", "--socket", f"{tmp_path}/rng.vhost.sock"]
    assert f"{tmp_path}/root.vhost.sock" in plan.sockets
    assert [(d["name"], d["slot"], d["backend"]) for d in plan.devices] == [
        ("root", 3, "embedded"), ("data", 4, "vbs-u"), ("lan", 5, "vhost"), ("hvc", 6, "vbs-u"), ("rng", 9, "embedded")]


def test_devices_qemu_cannot_provide_are_plan_errors(tmp_path):
    plan = compile_qemu(_spec("""\
        - {type: virtio-console, backend: embedded, ports: [{kind: pty, name: p0}]}
        - {type: ivshmem, region: "hv:/shm0", size: 2M}
        - {type: passthru, bdf: "7f:1f.7"}
        - {type: wdt}
        """), HOST, tmp_path)
    text = "\n".join(plan.errors)
    assert "QEMU has no vhost-user frontend for virtio-console" in text
    assert "hv:/shm0 is a hypervisor (hv:/) region" in text
    assert "0000:7f:1f.7 does not exist" in text
    assert "wdt" in text and len(plan.errors) == 4


def test_ovmf_vars_are_copied_unless_writeback(tmp_path):
    boot = "ovmf: {code: /fw/CODE.fd, vars: /fw/VARS.fd}"
    plan = compile_qemu(_spec("- {type: virtio-rnd}\n", boot=boot), HOST, tmp_path)
    drives = _opts(plan.argv, "-drive")
    assert drives == ["if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
                      f"if=pflash,format=raw,unit=1,file={tmp_path}/VARS.fd.run"]
    assert plan.copies == [("/fw/VARS.fd", f"{tmp_path}/VARS.fd.run")]
    wb = compile_qemu(_spec("- {type: virtio-rnd}\n", boot=boot[:-1] + ", writeback: true}"), HOST, tmp_path)
    assert _opts(wb.argv, "-drive")[1] == "if=pflash,format=raw,unit=1,file=/fw/VARS.fd" and wb.copies == []


def test_comma_escaping():
    assert esc("/a,b/c") == "/a,,b/c"


def test_embedded_net_is_a_vhost_user_netdev_on_intx(tmp_path):
    plan = compile_qemu(_spec('- {type: virtio-net, name: lan, tap: tap0, mac: "00:16:3e:00:00:02", '
                              'backend: embedded}\n'), HOST, tmp_path)
    assert plan.errors == [], plan.errors
    assert _opts(plan.argv, "-netdev") == ["vhost-user,id=dev3,chardev=cdev3"]
    # INTx, not MSI-X: Debian's QEMU 7.2 crashes setting up MSI-X notifiers for vhost-user netdevs
    assert "virtio-net-pci,netdev=dev3,mac=00:16:3e:00:00:02,vectors=0,addr=0x3" in _opts(plan.argv, "-device")
    (helper,) = plan.helpers
    assert helper.argv[-8:] == ["--device", "net", "--socket", f"{tmp_path}/lan.vhost.sock", "--tap", "tap0",
                                "--mac", "00:16:3e:00:00:02"]
