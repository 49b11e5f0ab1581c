"""The acrn-dm argv grammar parser: what acrn-dm accepts, and what it refuses."""

import pytest

from acrnmgr.render.grammar import GrammarError, parse_argv, parse_slot

BASE = ["acrn-dm", "-m", "1024M", "-s", "0:0,hostbridge", "-s", "1:0,lpc", "-l", "com1,stdio"]


def parse(*extra, version="3.x"):
    return parse_argv([*BASE, *extra, "vm1"], version)


def test_minimal_command_line():
    cmd = parse()
    assert cmd.vm_name == "vm1"
    assert [(s.slot, s.emul) for s in cmd.slots] == [(0, "hostbridge"), (1, "lpc")]
    assert cmd.lpc == {"com1": {"backend": "stdio"}}
    assert cmd.get("memsize") == "1024M"


def test_attached_and_inline_forms_and_prefixes():
    cmd = parse_argv(["-m1G", "--cpu_aff=1,2", "--rtvm", "-s3,virtio-rnd", "vm1"])
    assert cmd.get("memsize") == "1G" and cmd.get("cpu_affinity") == "1,2" and cmd.has("rtvm")
    assert cmd.slot(3).emul == "virtio-rnd"


def test_operand_may_come_first_like_gnu_getopt():
    assert parse_argv(["vm1", "-m", "512M"]).vm_name == "vm1"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-U", "x", "vm"], "uuid was removed"),
        (["-W", "vm"], "virtio_msix was removed"),
        (["--frobnicate", "vm"], "unrecognized option '--frobnicate'"),
        (["-m", "64M", "vm"], "at least 128M"),
        (["-m", "1T", "vm"], "invalid memsize"),
        (["-m"], "requires an argument"),
        (["--cpu_affinity", "1-3", "vm"], "no ranges"),
        (["--virtio_poll", "0", "vm"], "virtio poll"),
        (["--intr_monitor", "1,2,3", "vm"], "intr-monitor"),
        (["--pm_notify_channel", "acpi", "vm"], "pm_notify_channel"),
        (["--logger_setting", "console,level=9", "vm"], "logger"),
        (["--ovmf", "w,code=a", "vm"], "ovmf"),
        (["--rtvm=1", "vm"], "doesn't allow an argument"),
        (["vm", "extra"], "exactly one operand"),
        ([], "name of the VM"),
        (["a-very-long-vm-name"], "maximum length"),
        (["-l", "com9,stdio", "vm"], "lpc"),
        (["-l", "com1,stdio", "-s", "3,virtio-console,stdio:s0", "vm"], "stdio used by more than one"),
        (["-s", "3,virtio-rnd", "-s", "3,virtio-rnd", "vm"], "already occupied"),
        (["-s", "32,virtio-rnd", "vm"], "slot 0-31"),
        (["-s", "3,virtio-foo", "vm"], "unknown emulation"),
        (["-s", "3,vhost-vsock,cid=3", "-s", "4,vhost-vsock,cid=3", "vm"], "cid=3 used twice"),
        (["--vtpm2", "sock_path=/s", "--acpidev_pt", "MSFT0101", "vm"], "exclude each other"),
        (["--iasl", "/usr/bin/iasl", "vm"], "v3.2"),
    ],
)
def test_rejections(argv, message):
    version = "2.7" if "--iasl" in argv else "3.x"
    with pytest.raises(GrammarError, match=message):
        parse_argv(argv, version)


def test_obsolete_options_warn_and_are_dropped():
    cmd = parse_argv(["-A", "--mac_seed", "x", "-s", "2,pci-gvt", "vm"])
    assert len(cmd.warnings) == 3 and cmd.options == [] and cmd.slots == []


def test_lapic_pt_without_rtvm_warns():
    assert "ignored" in parse_argv(["--lapic_pt", "vm"]).warnings[0]


def test_slot_forms():
    assert parse_slot("3,virtio-rnd").bdf == "0:3:0"
    assert parse_slot("3:2,virtio-rnd").bdf == "0:3:2"
    assert parse_slot("1:3:2,virtio-rnd").bdf == "1:3:2"
    with pytest.raises(GrammarError):
        parse_slot("3:8,virtio-rnd")


def test_virtio_blk_full():
    dev = parse_slot("5,virtio-blk,b,iothread=2@0:1/2,mq=2,/img/a.img,writeback,ro,discard=8:1:1,"
                     "sectorsize=512/4096,range=0/1048576,aio=io_uring")
    assert dev.boot
    assert dev.params == {
        "iothread": {"count": 2, "cpus": [[0, 1], [2]]}, "mq": 2, "path": "/img/a.img",
        "cache": "writeback", "readOnly": True, "discard": {"maxSectors": 8, "maxSegments": 1, "alignment": 1},
        "sectorSize": {"logical": 512, "physical": 4096}, "range": {"startLba": 0, "size": 1048576},
        "aio": "io_uring",
    }


@pytest.mark.parametrize("config, message", [
    ("/a.img,mq=2", "before the path"),
    ("/a.img,iothread", "before the path"),
    ("/a.img,bogus", "invalid device option"),
    ("", "missing image path"),
    ("/a,sectorsize=100", "sectorsize"),
    ("/a,aio=posix", "aio"),
])
def test_virtio_blk_rejections(config, message):
    with pytest.raises(GrammarError, match=message):
        parse_slot(f"5,virtio-blk,{config}")


def test_virtio_net_v3():
    assert parse_slot("4,virtio-net,tap=tap0,vhost,mac=00:16:3E:00:00:01").params == {
        "tap": "tap0", "vhost": True, "mac": "00:16:3e:00:00:01"}
    # as virtio_net.c: mac_seed= counts only right after the tap name and the seed is the rest of the
    # string, commas included, yet `vhost` and `mac=` are honoured wherever they stand, the seed included;
    # options acrn-dm does not know (a late mac_seed= among them) are skipped, as acrn-dm skips them
    assert parse_slot("4,virtio-net,tap=tap0,mac_seed=a,b,vhost").params == {
        "tap": "tap0", "vhost": True, "macSeed": "a,b,vhost"}
    assert parse_slot("4,virtio-net,tap=tap0,vhost,mac_seed=x").params == {
        "tap": "tap0", "vhost": True, "ignored": ["mac_seed=x"]}
    assert parse_slot("4,virtio-net,tap=t,bogus").params == {"tap": "t", "vhost": False, "ignored": ["bogus"]}
    for bad, msg in [("tap0", "tap=<name>"),
                     ("tap=t,mac=01:00:00:00:00:01", "multicast"), ("tap=t,mac=zz", "invalid mac")]:
        with pytest.raises(GrammarError, match=msg):
            parse_slot(f"4,virtio-net,{bad}")


def test_virtio_net_v2():
    assert parse_slot("4,virtio-net,tap_vm1,vhost", "2").params == {"tap": "tap_vm1", "vhost": True}
    with pytest.raises(GrammarError, match="contain 'tap'"):
        parse_slot("4,virtio-net,eth0", "2")


def test_virtio_console():
    dev = parse_slot("6,virtio-console,@pty:hvc0,socket:agent=/run/a.sock,file:f0=/var/log/x:client"
                     .replace(":client", ""))
    assert dev.params["ports"] == [
        {"kind": "pty", "name": "hvc0", "console": True},
        {"kind": "socket", "name": "agent", "console": False, "path": "/run/a.sock", "socketMode": "server"},
        {"kind": "file", "name": "f0", "console": False, "path": "/var/log/x"},
    ]
    for bad in ("tty:t0", "@pty:a,@pty:b", "pty:a,pty:a", "serial:x", "pty:a:server"):
        with pytest.raises(GrammarError):
            parse_slot(f"6,virtio-console,{bad}")


def test_passthru_ivshmem_vsock_and_friends():
    assert parse_slot("2,passthru,0/2/0,keep_gsi,vmsix_on_msi,2,romfile=/v.rom,irq=5").params == {
        "bdf": "00:02.0", "options": {"keepGsi": True, "vmsixOnMsi": 2, "romfile": "/v.rom", "irq": 5}}
    assert parse_slot("7,passthru,00:1f.3").params["bdf"] == "00:1f.3"
    assert parse_slot("8,ivshmem,dm:/shm0,2,1").params == {"region": "dm:/shm0", "sizeMb": 2, "regionId": 1}
    assert parse_slot("9,vhost-vsock,cid=3").params == {"cid": 3}
    assert parse_slot("10,virtio-gpu,geometry=1920x1080+0+0,geometry=fullscreen:1").params == {
        "displays": [{"geometry": "1920x1080+0+0"}, {"fullscreen": True, "monitor": 1}]}
    assert parse_slot("11,xhci,1-2:2-2,tablet,cap=apl").params == {"ports": ["1-2", "2-2"], "tablet": True,
                                                                   "cap": "apl"}
    assert parse_slot("12,uart,vuart_idx:1").params == {"vuartIdx": 1}
    assert parse_slot("13,ahci,hd:/a.img,cd:/b.iso").params == {"hd": ["/a.img"], "cd": ["/b.iso"]}
    for bad in ("8,ivshmem,dm:/s,3", "8,ivshmem,dm:/s,1024", "8,ivshmem,xx:/s,2", "9,vhost-vsock,cid=2",
                "9,vhost-vsock,cid=4294967295", "7,passthru,00:20.0",
                "12,uart,1", "14,wdt-i6300esb,x", "15,virtio-input,event0"):
        with pytest.raises(GrammarError):
            parse_slot(bad)


def test_virtio_gpu_needs_a_display():
    # acrn-dm calls strdup(NULL) or refuses the geometry without one
    with pytest.raises(GrammarError, match="no display"):
        parse_slot("7,virtio-gpu")


def test_virtio_blk_takes_iothread_and_mq_in_either_order():
    a = parse_slot("5,virtio-blk,iothread=2,mq=2,/img/a.img").params
    b = parse_slot("5,virtio-blk,mq=2,iothread=2,/img/a.img").params
    assert a == b and a["mq"] == 2 and a["iothread"] == {"count": 2, "cpus": []}


def test_passthru_unknown_option_is_ignored_as_acrn_dm_does():
    params = parse_slot("6,passthru,0/1f/6,enable_ptm,frobnicate").params
    assert params["options"] == {"enablePtm": True} and params["ignored"] == ["frobnicate"]


def test_virtio_input_by_name_resolves_like_acrns_template(tmp_path):
    from acrnmgr.devices.virtio_input import by_name_marker, resolve_argv_word

    for n, (name, phys) in ((2, ("AT Translated Set 2 keyboard", "isa0060/serio0/input0")),
                            (10, ("AT Translated Set 2 keyboard", "isa0060/serio0/input0")),
                            (3, ("Power Button", "PNP0C0C/button/input0"))):
        d = tmp_path / "class/input" / f"event{n}" / "device"
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "phys").write_text(phys + "\n")
    word = "4:0,virtio-input," + by_name_marker("AT Translated Set 2 keyboard", "isa0060/serio0/input0") + ",kb"
    assert parse_slot(word).params == {"deviceName": "AT Translated Set 2 keyboard",
                                       "devicePhys": "isa0060/serio0/input0", "serial": "kb"}
    # of several matches, the last in glob order (event10 < event2), as the template's loop leaves it
    assert resolve_argv_word(word, tmp_path) == "4:0,virtio-input,/dev/input/event2,kb"
    assert resolve_argv_word(word.replace("serio0", "serio9"), tmp_path) is None


def test_virtio_blk_no_bst_block_and_virtio_rnd_kernel_round_trip(tmp_path, service_vm):
    from acrnmgr.importers.dm_argv import normalized_argv, spec_from_argv
    from acrnmgr.render.acrndm import compile_spec
    from acrnmgr.spec.validation import load_spec_text

    argv = ["acrn-dm", "--cpu_affinity", "2", "-m", "512M", "-k", "/bzImage", "-s", "0:0,hostbridge",
            "-s", "1:0,lpc", "-s", "3,virtio-blk,/img/a.img,no_bst_block", "-s", "4,virtio-rnd,kernel=on", "vm1"]
    imported = spec_from_argv(argv)
    devices = imported.data["spec"]["devices"]
    assert {"type": "virtio-blk", "path": "/img/a.img", "noBstBlock": True} in devices
    assert {"type": "virtio-rnd", "kernel": True} in devices
    import yaml
    spec = load_spec_text(yaml.safe_dump(imported.data), "vm1.yaml", check_paths=False)
    compiled = compile_spec(spec, service_vm)
    assert compiled.ok, compiled.errors
    assert normalized_argv(compiled.argv) == normalized_argv(argv)
    assert "4:0,virtio-rnd,kernel=on" in compiled.argv


def test_acrn_only_emulations_are_spec_devices(tmp_path, service_vm, plain_box):
    import yaml

    from acrnmgr.importers.dm_argv import normalized_argv, spec_from_argv
    from acrnmgr.render.acrndm import compile_spec
    from acrnmgr.spec.validation import load_spec_text

    argv = ["acrn-dm", "--cpu_affinity", "2", "-m", "512M", "-k", "/bzImage", "-s", "0:0,hostbridge",
            "-s", "1:0,lpc", "-s", "5,virtio-heci,0:15:0,d0", "-s", "6,virtio-rpmb,physical_rpmb",
            "-s", "7,virtio-audio", "vm1"]
    imported = spec_from_argv(argv)
    devices = imported.data["spec"]["devices"]
    assert {"type": "acrn-emulation", "emulation": "virtio-heci", "args": "0:15:0,d0", "slot": 5} in devices
    assert not imported.data["spec"].get("extraArgs")
    spec = load_spec_text(yaml.safe_dump(imported.data), "vm1.yaml", check_paths=False)
    compiled = compile_spec(spec, service_vm)
    assert compiled.ok, compiled.errors
    assert normalized_argv(compiled.argv) == normalized_argv(argv)
    qemu = compile_spec(spec, plain_box, engine="qemu")
    assert any("acrn-emulation" in d.message and "qemu" in d.message for d in qemu.errors)
