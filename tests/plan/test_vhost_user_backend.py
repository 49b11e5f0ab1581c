"""backend: vhost-user: a virtio-blk or virtio-net that another process serves on a vhost-user socket (SPDK,
qemu-storage-daemon, OVS-DPDK). The spec rules, each engine's plan, QEMU's argv, and the libvirt domain both
ways. tests/lifecycle/test_qemu_vhost_user.py boots a guest on real servers."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from acrnmgr.devices import vm_from_spec
from acrnmgr.host import HostProfile
from acrnmgr.importers.common import ImportError_
from acrnmgr.importers.libvirt_domain import spec_from_domain
from acrnmgr.plan import make_plan
from acrnmgr.render.libvirt import ExportError, export_domain
from acrnmgr.spec.validation import load_spec_text
from tests.spec.helpers import devices_text, diagnostics

ROOT = Path(__file__).resolve().parents[2]
HOST = HostProfile.from_file(ROOT / "examples/hosts/acrn-service-vm.yaml")
BLK = "{type: virtio-blk, name: data, backend: vhost-user, socket: /run/spdk/vhost-blk.0, boot: true, mq: 2}"
NET = "{type: virtio-net, name: lan, backend: vhost-user, socket: /run/ovs/vhu0, mac: '52:54:00:00:00:01'}"


def _spec(*devices: str, name: str = "vu"):
    text = devices_text("\n".join(f"- {d}" for d in devices)).replace("name: t1", f"name: {name}")
    return load_spec_text(text.replace("affinity: [1, 2]", "affinity: [2]"), f"{name}.yaml", check_paths=False)


def _errors(*devices: str) -> list[str]:
    return [f"{d.json_path}: {d.message}" for d in diagnostics(devices_text("\n".join(f"- {x}" for x in devices)))
            if d.is_error]


@pytest.mark.parametrize("device, where, expected", [
    ("{type: virtio-blk, backend: vhost-user, path: /srv/a.img}", "backend", "needs `socket`"),
    ("{type: virtio-blk, socket: /run/x.sock}", "socket", "needs backend: vhost-user"),
    ("{type: virtio-blk, backend: vhost-user, socket: /run/x.sock, path: /srv/a.img}", "", "exactly one of `path`"),
    ("{type: virtio-blk, backend: vhost-user, socket: /run/x.sock, readOnly: true}", "readOnly", "serving process"),
    ("{type: virtio-blk, backend: vhost-user, socket: /run/x.sock, cache: writeback}", "cache", "serving process"),
    ("{type: virtio-blk, backend: vhost-user, socket: run/x.sock}", "socket", ""),
    ("{type: virtio-net, backend: vhost-user, tap: tap0}", "backend", "needs `socket`"),
    ("{type: virtio-net, backend: vhost-user, socket: /run/x.sock, tap: tap0}", "", "exactly one of `tap`"),
    ("{type: virtio-net, tap: tap0, socketMode: server}", "socketMode", "applies to `socket`"),
    ("{type: virtio-rnd, backend: vhost-user}", "backend", "virtio-blk and virtio-net"),
    ("{type: virtio-blk, path: /srv/a.img, reconnect: 5}", "reconnect", "applies to `socket`"),
    ("{type: virtio-net, backend: vhost-user, socket: /run/x, socketMode: server, reconnect: 5}", "reconnect",
     "socketMode: client"),
])
def test_spec_rules(device, where, expected):
    errors = _errors(device)
    assert any(e.startswith(f"spec.devices[0]{'.' + where if where else ''}") and expected in e for e in errors), errors


def test_an_rtvm_cannot_use_another_process_socket():
    text = devices_text(f"- {BLK}").replace("  memory: 1G", "  memory: 1G\n  vmType: rtvm")
    assert any("RTVM" in d.message for d in diagnostics(text) if d.is_error)


def test_acrn_engine_refuses_with_the_reason_and_the_way_out():
    plan = make_plan(vm_from_spec(_spec(BLK, NET)), HOST, "acrn")
    assert [e.json_path for e in plan.errors] == ["spec.devices[0]", "spec.devices[1]"]
    first = plan.errors[0]
    assert "acrn-dm has no vhost-user frontend" in first.message and "/run/spdk/vhost-blk.0" in first.message
    assert "qemu or libvirt engine" in (first.suggestion or "")


def test_qemu_engine_attaches_to_the_socket_and_never_owns_it(tmp_path):
    server = NET.replace("mac:", "socketMode: server, mac:")
    plan = make_plan(vm_from_spec(_spec(BLK, server)), HOST, "qemu", state_dir=tmp_path)
    assert not plan.errors
    argv = plan.qemu.argv
    assert [p.backend for p in plan.devices] == ["vhost-user", "vhost-user"]
    assert "memory-backend-memfd,id=mem,size=1024M,share=on" in argv  # the server maps guest RAM
    i = argv.index("socket,id=cdev3,path=/run/spdk/vhost-blk.0")
    assert argv[i + 1:i + 3] == ["-device", "vhost-user-blk-pci,chardev=cdev3,num-queues=2,addr=0x3,bootindex=1"]
    i = argv.index("socket,id=cdev4,path=/run/ovs/vhu0,server=on,wait=off")
    assert argv[i + 1:i + 5] == ["-netdev", "vhost-user,id=dev4,chardev=cdev4", "-device",
                                 "virtio-net-pci,netdev=dev4,mac=52:54:00:00:00:01,vectors=0,addr=0x4"]
    assert not plan.qemu.helpers  # nothing of ours serves it
    assert not [s for s in plan.qemu.sockets if "vhost-blk" in s or "vhu0" in s]  # never removed by us


def test_qemu_reconnects_to_a_restarted_server_when_asked(tmp_path):
    spec = _spec(BLK.replace("mq: 2", "mq: 2, reconnect: 3"), NET.replace("mac:", "reconnect: 7, mac:"))
    argv = make_plan(vm_from_spec(spec), HOST, "qemu", state_dir=tmp_path).qemu.argv
    assert "socket,id=cdev3,path=/run/spdk/vhost-blk.0,reconnect=3" in argv
    assert "socket,id=cdev4,path=/run/ovs/vhu0,reconnect=7" in argv
    xml, _ = export_domain(spec, HOST, "qemu")
    assert [r.attrib for r in ET.fromstring(xml).iter("reconnect")] == [{"enabled": "yes", "timeout": "3"},
                                                                         {"enabled": "yes", "timeout": "7"}]
    assert spec_from_domain(xml).data["spec"]["devices"] == spec.data["spec"]["devices"]


def test_plan_on_this_machine_wants_the_socket_served(tmp_path):
    sock_path = tmp_path / "blk.sock"
    spec = _spec(BLK.replace("/run/spdk/vhost-blk.0", str(sock_path)))
    plan = make_plan(vm_from_spec(spec), HOST, "qemu", state_dir=tmp_path, live_host=True)
    assert any("does not exist: start the process that serves it first" in e.message for e in plan.errors)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    try:
        assert not make_plan(vm_from_spec(spec), HOST, "qemu", state_dir=tmp_path, live_host=True).errors
    finally:
        listener.close()


def test_libvirt_export_and_import_round_trip():
    spec = _spec(BLK, NET.replace("mac:", "socketMode: server, mac:"))
    xml, _ = export_domain(spec, HOST, "qemu")
    root = ET.fromstring(xml)
    disk = root.find("devices/disk")
    assert disk.get("type") == "vhostuser" and disk.find("source").attrib == {"type": "unix",
                                                                             "path": "/run/spdk/vhost-blk.0"}
    iface = root.find("devices/interface")
    assert iface.get("type") == "vhostuser"
    assert iface.find("source").attrib == {"type": "unix", "path": "/run/ovs/vhu0", "mode": "server"}
    assert root.find("memoryBacking/access").get("mode") == "shared"
    assert spec_from_domain(xml).data["spec"]["devices"] == spec.data["spec"]["devices"]
    with pytest.raises(ExportError, match="no vhost-user frontend"):
        export_domain(spec, HOST, "acrn")


FOREIGN = """<domain type='kvm'><name>vnf</name><memory unit='GiB'>1</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type><kernel>/boot/vmlinuz</kernel></os><devices>
<disk type='vhostuser' device='disk'><driver name='qemu' type='raw' queues='4'/>
  <source type='unix' path='/run/spdk/vhost-blk.0'><reconnect enabled='yes' timeout='10'/></source>
  <target dev='vda' bus='virtio'/><boot order='1'/>{ro}</disk>
<interface type='vhostuser'><mac address='52:54:00:5e:00:01'/>
  <source type='unix' path='/run/openvswitch/vhu0' mode='{mode}'/><model type='virtio'/></interface>
</devices></domain>"""


@pytest.mark.parametrize("mode", ["client", "server"])
def test_foreign_vhost_user_devices_import_on_their_sockets(mode):
    got = spec_from_domain(FOREIGN.format(ro="", mode=mode))
    blk, net = got.data["spec"]["devices"]
    assert blk == {"type": "virtio-blk", "backend": "vhost-user", "socket": "/run/spdk/vhost-blk.0", "reconnect": 10,
                   "mq": 4, "boot": True}
    assert net == {"type": "virtio-net", "mac": "52:54:00:5e:00:01", "backend": "vhost-user",
                   "socket": "/run/openvswitch/vhu0", **({"socketMode": "server"} if mode == "server" else {})}
    assert not [w for w in got.warnings if "vhost" in w], got.warnings
    spec = load_spec_text(yaml.safe_dump(got.data), "vnf.yaml", check_paths=False)
    assert spec_from_domain(export_domain(spec, HOST, "qemu")[0]).data == got.data


def test_a_read_only_vhost_user_disk_is_refused():
    with pytest.raises(ImportError_, match="the serving process decides whether the guest may write"):
        spec_from_domain(FOREIGN.format(ro="<readonly/>", mode="client"))
