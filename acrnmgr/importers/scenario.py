"""ACRN v3 scenario.xml -> one spec per post-launched VM.

Each <vm> with load_order POST_LAUNCHED_VM is turned into the acrn-dm argv that ACRN's own
generator (misc/config_tools/launch_config/launch_cfg_gen.py) would put in its
launch_user_vm_idN.sh, and that argv into a spec (acrnmgr.importers.dm_argv). So a scenario
and the launch script generated from it import to the same spec.

What needs the board (board.xml, `--board`): pcpu_id -> LAPIC ID, and the PCI class of
passed-through devices (GPU -> slot 2, PTM on Ethernet, d3hot_reset on a Windows USB
controller). Without it, pcpu_id is taken as the LAPIC ID and 00:02.0 as the GPU, with a
warning for each VM.

Before any of that, the XSD defaults are applied as ACRN's default_populator.py does (an empty
`<console/>` is a stdio virtio-console, an empty `<PTM/>` is y, an IVSHMEM region without PROVIDED_BY
is the hypervisor's, a PCI vUART endpoint without a vbdf gets the first free of 00:10.0-00:17.0, ...):
see XSD_DEFAULTS, HV_DEFAULTS and UNIQUE_DEFAULTS.

The generator's virtio-net MAC seed is `<host NIC MAC>-<VM name>`, the MAC read on the Service VM
when the script runs (`${mac:0:17}` of `cat /sys/class/net/e*/address`). It is kept as the
spec's `macSeed` with the placeholder HOST_MAC, resolved by the launch script and by `up`.
`partition:image` virtio-blk disks (mounted by the script) are reported, not guessed.

`customized_parameters` are split into words as a shell would (what the user means: the
scenario route has no quoting of its own), unlike a launch script, where the generator quoted
them into one word."""

from __future__ import annotations

import copy
import os
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

from acrnmgr.devices.passthru import GPU_SLOT
from acrnmgr.devices.virtio_input import by_name_marker
from acrnmgr.devices.virtio_net import HOST_MAC
from acrnmgr.host import HostProfile
from acrnmgr.importers.common import ImportError_, ImportResult, parse_xml, shown, xml_root
from acrnmgr.importers.dm_argv import spec_from_argv
from acrnmgr.plan.acrn import PASSTHRU_INTR_MONITOR, RTVM_VIRTIO_POLL
from acrnmgr.plan.slots import FIRST_FREE, LAST_FREE
from acrnmgr.render.grammar import GrammarError

OVMF_DEFAULT = "/usr/share/acrn/bios/OVMF.fd"
MAX_SCENARIO_ELEMENTS = 1024  # of each of <vm>, <vuart_connection>, <IVSHMEM_REGION>, <IVSHMEM_VM>
VM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,14}")

# ACRN's XSD defaults for what the launch script generator reads, filled in as default_populator.py does
# (misc/config_tools/scenario_config/default_populator.py over scenario_transformer.py): a missing element
# is created with its default only when the XSD requires it (no minOccurs="0"); an element that is there
# but empty gets its default either way; an element whose parent is absent gets nothing (an absent
# <console> is no console). (parent path, element, default, created when missing), each from:
XSD_DEFAULTS: tuple[tuple[str, str, str, bool], ...] = (
    (".", "vm_type", "STANDARD_VM", True),  # config.xsd VMConfigType/vm_type
    (".", "console_vuart", "None", True),  # config.xsd VMConfigType/console_vuart
    (".", "os_type", "Non-Windows OS", True),  # config.xsd VMConfigType/os_type
    (".", "vuart0", "n", True),  # config.xsd VMConfigType/vuart0
    (".", "vbootloader", "y", True),  # config.xsd VMConfigType/vbootloader
    (".", "own_pcpu", "n", True),  # config.xsd VMConfigType/own_pcpu
    (".", "lapic_passthrough", "n", False),  # config.xsd VMConfigType/lapic_passthrough (minOccurs 0)
    (".", "PTM", "y", False),  # config.xsd VMConfigType/PTM (minOccurs 0)
    ("memory", "size", "1024", False),  # VMtypes.xsd MemoryInfo/size (minOccurs 0; <memory> itself too)
    ("cpu_affinity/pcpu", "real_time_vcpu", "n", True),  # VMtypes.xsd CPUAffinityConfiguration/real_time_vcpu
    ("virtio_devices/console", "use_type", "Virtio console", True),  # VMtypes.xsd VirtioConsoleConfiguration
    ("virtio_devices/console", "backend_type", "stdio", True),  # VMtypes.xsd VirtioConsoleConfiguration
    # VMtypes.xsd VirtioNetworkConfiguration/virtio_framework (minOccurs 0)
    ("virtio_devices/network", "virtio_framework", "User space based (VBSU)", False),
)
# The same for the <hv> parts the generator reads (types.xsd, VMtypes.xsd).
HV_DEFAULTS: tuple[tuple[str, str, str, bool], ...] = (
    ("hv/FEATURES", "SCHEDULER", "SCHED_BVT", True),  # config.xsd FeatureOptionsType/SCHEDULER
    (".//IVSHMEM_REGION", "PROVIDED_BY", "Hypervisor", True),  # types.xsd IVSHMEMRegionType/PROVIDED_BY
    (".//IVSHMEM_REGION", "IVSHMEM_SIZE", "2", True),  # types.xsd IVSHMEMRegionType/IVSHMEM_SIZE
    (".//vuart_connection", "type", "pci", True),  # VMtypes.xsd VuartConnectionType/type
)
# Defaults the XSD gives as a set (acrn:defaults) of which each element takes the lowest not yet used by
# its VM (acrn:unique-among), in document order: (element path, VM-name child, value child, defaults).
UNIQUE_DEFAULTS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    # types.xsd IVSHMEMVM/VBDF: [f'00:{i:02x}.0' for i in range(8, 16)]
    (".//IVSHMEM_VM", "VM_NAME", "VBDF", tuple(f"00:{i:02x}.0" for i in range(8, 16))),
    # VMtypes.xsd VuartEndpointType/vbdf: [f'00:{i:02x}.0' for i in range(16, 24)]
    (".//vuart_connection/endpoint", "vm_name", "vbdf", tuple(f"00:{i:02x}.0" for i in range(16, 24))),
)


def _fill(parents, rules: tuple[tuple[str, str, str, bool], ...]) -> None:
    for parent_path, tag, default, required in rules:
        for parent in (p for root in parents for p in (root.findall(parent_path) if parent_path != "." else [root])):
            child = parent.find(tag)
            if child is None:
                if not required:
                    continue
                child = ET.SubElement(parent, tag)
            if child.text is None or not child.text.strip():
                child.text = default


def populate(vm) -> None:
    """Apply XSD_DEFAULTS to one <vm> in place."""
    _fill([vm], XSD_DEFAULTS)


def populate_hv(root) -> None:
    """Apply HV_DEFAULTS and UNIQUE_DEFAULTS to a scenario's <acrn-config> in place."""
    _fill([root], HV_DEFAULTS)
    for path, owner_tag, tag, defaults in UNIQUE_DEFAULTS:
        elements = root.findall(path)
        used: dict[str | None, set[str | None]] = {}  # per owner: the values taken so far (one pass, not n^2)
        for el in elements:
            used.setdefault(_text(el, owner_tag), set()).add(_text(el, tag))
        for el in elements:
            child = el.find(tag)
            if child is not None and child.text and child.text.strip():
                continue
            taken = used[_text(el, owner_tag)]
            free = min((d for d in defaults if d not in taken), default=None)
            if free is None:
                continue  # the populator leaves it empty; validation would refuse the scenario
            if child is None:
                child = ET.SubElement(el, tag)
            child.text = free
            taken.add(free)


def pcpu_ids(vm) -> list[str]:
    """The VM's pCPUs: v3's <cpu_affinity><pcpu><pcpu_id>, or the older flat <cpu_affinity><pcpu_id>."""
    return _texts(vm, "cpu_affinity/pcpu/pcpu_id") + _texts(vm, "cpu_affinity/pcpu_id")


def _text(elem, path: str, default: str | None = None) -> str | None:
    found = elem.find(path)
    if found is None or found.text is None or not found.text.strip():
        return default
    return found.text.strip()


def _texts(elem, path: str) -> list[str]:
    return [e.text.strip() for e in elem.findall(path) if e.text and e.text.strip()]


class Board:
    """The parts of board.xml the generator reads."""

    def __init__(self, root):
        self.root = root

    @classmethod
    def load(cls, path: str | Path) -> "Board":
        from acrnmgr.inputs import MAX_XML_BYTES, InputError, read_input

        try:
            board = cls(parse_xml(read_input(path, limit=MAX_XML_BYTES), f"{path}: cannot read board XML"))
        except InputError as exc:
            raise ImportError_(f"{path}: cannot read board XML: {exc.reason}") from None
        if board.root.tag != "acrn-config" or not board.cpu_ids():
            raise ImportError_(f"{path}: not a board XML of ACRN's board inspector (no <processors> with "
                               "<thread><cpu_id>; a scenario XML is the FILE argument, not --board)")
        return board

    def cpu_ids(self) -> list[str]:
        return [cpu for cpu in (_text(t, "cpu_id") for t in self.root.iter("thread")) if cpu is not None]

    def cpu_ids_text(self) -> str:
        return ", ".join(self.cpu_ids())

    def lapic_id(self, cpu: str) -> int | None:
        for thread in self.root.iter("thread"):
            if _text(thread, "cpu_id") == cpu:
                apic = _text(thread, "apic_id")
                return int(apic, 16) if apic else None
        return None

    def host_profile(self) -> HostProfile:
        """The Service VM this board makes: ACRN's HSM and acrn-dm v3, kernel vhost, a tap device, and
        the board's CPUs by LAPIC ID (what a generated launch script of this board runs on)."""
        lapic = []
        for thread in self.root.iter("thread"):
            apic = _text(thread, "apic_id")
            if apic:
                lapic.append(int(apic, 16))
        return HostProfile(is_service_vm=True, hsm_device="/dev/acrn_hsm", acrn_dm="/usr/bin/acrn-dm",
                           acrn_dm_version="3.x", vhost_net=True, vhost_vsock=True, net_tun=True,
                           cpu_count=max(1, len(lapic)), lapic_ids=sorted(lapic))

    def amd_cpu(self) -> bool:
        """The board inspector's processor model names AMD."""
        return any("AMD" in (m.get("description") or "") for m in self.root.iter("model"))

    def pci_class(self, bus: int, dev: int, fn: int) -> str | None:
        for b in self.root.iter("bus"):
            if b.get("type") == "pci" and b.get("address") == f"0x{bus:x}":
                for d in b.findall("device"):
                    if d.get("address") == f"0x{(dev << 16) | fn:x}":
                        return _text(d, "class")
        return None


class _Slots:
    """ACRN's VirtualBDFAllocator: 3..29 in order; explicit vBDFs are taken out of the pool."""

    def __init__(self):
        self.free = list(range(FIRST_FREE, LAST_FREE + 1))

    def take(self, slot: int | None = None) -> int:
        if slot is None:
            if not self.free:
                # launch_cfg_gen.py fails here too (pop from an empty list)
                raise ImportError_(f"more devices than the free PCI slots {FIRST_FREE}-{LAST_FREE} of ACRN's "
                                   "generator")
            return self.free.pop(0)
        if slot in self.free:
            self.free.remove(slot)
        return slot


def _vbdf_slot(vbdf: str | None) -> int | None:
    if not vbdf:
        return None
    m = re.match(r"^[0-9a-fA-F]+:([0-9a-fA-F]+)\.[0-7]\Z", vbdf)
    return int(m.group(1), 16) if m else None


def scenario_argv(root, vm, board: Board | None, warnings: list[str]) -> list[str]:
    """The acrn-dm argv ACRN's generator writes for one post-launched <vm>."""
    name = _text(vm, "name") or f"vm{vm.get('id')}"
    rtvm = _text(vm, "vm_type") == "RTVM"
    hv = root.find("hv")
    params: list[str] = []
    devices: list[list[str]] = []  # -s entries, in the generator's order
    slots = _Slots()

    def virtual(kind: str, options: str = "", slot: int | None = None) -> None:
        if "virtio" in kind and rtvm and "--virtio_poll" not in params:
            params.extend(["--virtio_poll", str(RTVM_VIRTIO_POLL)])
        s = slots.take(slot)
        devices.append(["-s", f"{s},{kind}" + (f",{options}" if options else "")])

    if _text(vm, "os_type") == "Windows OS":
        params.append("--windows")

    bad = [c for c in pcpu_ids(vm) if not re.fullmatch(r"[0-9]{1,4}", c)]
    if bad:
        raise ImportError_(f"VM {name}: pcpu_id {shown(bad[0])!r} is not a CPU number (VMtypes.xsd: an integer)")
    cpus = sorted(set(pcpu_ids(vm)), key=int)
    if board is not None:
        lapic = []
        for cpu in cpus:
            lid = board.lapic_id(cpu)
            if lid is None:
                warnings.append(f"pcpu_id {cpu} is not a CPU of the board XML; left out")
            else:
                lapic.append(lid)
    else:
        lapic = [int(c) for c in cpus]
        if cpus:
            warnings.append("no board XML (--board): pcpu_id values are taken as LAPIC IDs; on boards whose "
                            "LAPIC IDs differ from CPU numbers (hyper-threading) check spec.cpu.affinity")
    if not cpus:
        raise ImportError_(f"VM {name}: no <cpu_affinity><pcpu><pcpu_id>: a post-launched VM needs its pCPUs "
                           "(ACRN's generator would write an empty add_cpus)")
    if not lapic:
        # the generator drops each unknown CPU and then writes no --cpu_affinity at all
        raise ImportError_(f"VM {name}: none of its pcpu_id ({', '.join(cpus)}) is a CPU of the board XML, whose "
                           f"CPUs are {board.cpu_ids_text() if board else '-'}: is it this scenario's board?")
    params += ["--cpu_affinity", ",".join(str(x) for x in sorted(lapic))]
    size = _text(vm, "memory/size")
    if size is None:
        raise ImportError_(f"VM {name}: no <memory><size>: ACRN's generator renders `-m NoneM`, which acrn-dm "
                           "refuses; give <memory><size> in MiB")
    params += ["-m", f"{size}M"]
    if hv is not None and _text(hv, ".//SSRAM_ENABLED") == "y" and rtvm:
        # launch_cfg_gen.py compares the <SSRAM_ENABLED> element itself (not its text) with "y", so it never
        # writes --ssram; a bare --ssram would be refused anyway (v3 wants a buffer layout)
        warnings.append("SSRAM_ENABLED: not passed to acrn-dm (ACRN's generator writes no --ssram, and acrn-dm "
                        "v3's --ssram needs a buffer layout the scenario does not give); set settings.ssram "
                        "yourself")
    if _text(vm, "vbootloader") == "y":
        params += ["--ovmf", OVMF_DEFAULT]
    if not rtvm:
        devices.append(["-s", "1:0,lpc"])
    if _text(vm, "vuart0") == "y":
        params += ["-l", "com1,stdio"]
    devices.append(["-s", "0:0,hostbridge"])

    # The hypervisor numbers its own (hv:/) regions in scenario order (ivshmem_cfg.h.xsl: position() among
    # PROVIDED_BY = 'Hypervisor'), and the generator passes that number after an hv:/ region (v3.1+); a dm:/
    # region is acrn-dm's own shared memory and gets none.
    regions = list(root.iter("IVSHMEM_REGION"))
    hv_ids = {id(r): n for n, r in enumerate(r for r in regions if _text(r, "PROVIDED_BY") == "Hypervisor")}
    for provider, prefix in (("Device Model", "dm"), ("Hypervisor", "hv")):
        for region in regions:
            if _text(region, "PROVIDED_BY") != provider:
                continue
            members = [m for m in region.iter("IVSHMEM_VM") if _text(m, "VM_NAME") == name]
            if not members:
                continue
            # launch_cfg_gen.py takes the region's first VBDF (`.//VBDF` of the IVSHMEM_REGION), whichever VM
            # it belongs to
            vbdf = _text(region, ".//VBDF")
            own = _text(members[0], "VBDF")
            if own != vbdf:
                warnings.append(f"ivshmem {_text(region, 'NAME')}: the scenario gives this VM the vBDF {own}, but "
                                f"ACRN's generator puts every VM of the region at the region's first vBDF ({vbdf}); "
                                "imported as the generator writes it")
            options = f"{prefix}:/{_text(region, 'NAME')},{_text(region, 'IVSHMEM_SIZE')}"
            if prefix == "hv":
                options += f",{hv_ids[id(region)]}"
            virtual("ivshmem", options, _vbdf_slot(vbdf))
    if _text(vm, "console_vuart") == "PCI":
        virtual("uart", "vuart_idx:0")
    if hv is not None:
        idx = 0
        for conn in hv.iter("vuart_connection"):
            ends = [e for e in conn.findall("endpoint") if _text(e, "vm_name") == name]
            if not ends:
                continue
            idx += 1
            if _text(conn, "type") == "pci":
                virtual("uart", f"vuart_idx:{idx}", _vbdf_slot(_text(ends[0], "vbdf")))

    usb = [t.split(" ")[0] for t in _texts(vm, "usb_xhci/usb_dev")]
    if usb:
        virtual("xhci", ",".join(usb))

    virtio = vm.find("virtio_devices")
    if virtio is not None:
        for inp in virtio.findall("input"):
            dev, ident = _text(inp, "backend_device_file"), _text(inp, "id")
            named = re.search(r"(Device name: )(.*),( Device physical path: )(.*)", dev or "", re.S)
            if named:
                # the template finds /dev/input/eventX by name and physical path at launch: kept symbolic
                virtual("virtio-input", by_name_marker(named.group(2).strip(), named.group(4).strip())
                        + (f",{ident}" if ident else ""))
            elif dev and not dev.startswith("/"):
                warnings.append(f"virtio-input {shown(dev)!r}: neither a path nor `Device name: ..., Device physical "
                                "path: ...`; not imported")
                slots.take()  # the generator still allocates its slot
            elif dev:
                # launch_script_template.sh's add_virtual_device strips `id:` and passes the id as the serial
                virtual("virtio-input", f"{dev},{ident}" if ident else dev)
        for con in virtio.findall("console"):
            mark = "@" if _text(con, "use_type") == "Virtio console" else ""
            backend = _text(con, "backend_type")
            if backend == "file":
                virtual("virtio-console", f"{mark}file:file_port={_text(con, 'output_file_path')}")
            elif backend == "tty":
                virtual("virtio-console", f"{mark}tty:tty_port={_text(con, 'tty_device_path')}")
            elif backend in ("sock server", "sock client"):
                path = _text(con, "sock_file_path") or ""
                port = os.path.basename(path).split(".")[0]
                virtual("virtio-console", f"socket:{port}={path}:{backend.split()[1]}")
            elif backend in ("pty", "stdio"):
                virtual("virtio-console", f"{mark}{backend}:{backend}_port")
            elif backend:
                warnings.append(f"virtio console backend_type {shown(backend)!r} is unknown; skipped")
        for net in virtio.findall("network"):
            iface = _text(net, "interface_name")
            if not iface:
                warnings.append("virtio network without interface_name; skipped")
                continue
            parts = iface.split(",", 1)
            opts = [f"tap={parts[0]}"] + parts[1:]
            if _text(net, "virtio_framework") == "Kernel based (Virtual Host)":
                opts.append("vhost")
                # virtio_net.c reads mac_seed= only right after tap=<name>: behind vhost, acrn-dm ignores it
                warnings.append(f"virtio-net {parts[0]}: ACRN's generator writes tap={parts[0]},vhost,mac_seed=..., "
                                "and acrn-dm reads mac_seed= only right after the tap name, so the seed is ignored: "
                                "the guest's MAC comes from the slot and function alone, the same in every VM with "
                                "a NIC on that slot. Imported as acrn-dm runs it (kernel vhost, no macSeed); give "
                                "it `mac:` or `macSeed:` to tell VMs apart")
            # mac_seed takes the rest of acrn-dm's option string, so the generator puts it last.
            opts.append(f"mac_seed={HOST_MAC}-{name}")
            virtual("virtio-net", ",".join(opts))
        for block in _texts(virtio, "block"):
            if ":" in block:
                partition, image = block.split(":", 1)
                warnings.append(f"virtio-blk {block}: the launch script mounts {partition} at run time and uses "
                                f"{image} inside it; not imported (give the image's path on the Service VM)")
                slots.take()  # the generator still allocates its slot
                continue
            if not os.path.isabs(block):
                warnings.append(f"virtio-blk {block}: ACRN's launch script gives acrn-dm this relative path, which "
                                "it opens from the directory the script runs in; the spec keeps it relative, and "
                                "acrnmgr resolves it against the spec file's folder: keep the spec next to the "
                                "image, or import with --base-dir DIR (where the script runs)")
            virtual("virtio-blk", block)
        for gpu in virtio.findall("gpu"):
            if gpu.find("display_type") is None:
                continue  # the generator takes only gpu[./display_type]
            kind = _text(gpu, "display_type") or ""
            opts = []
            for disp in gpu.findall("displays/display"):
                if kind == "Window":
                    opts.append(f"geometry={_text(disp, 'window_resolutions')}+{_text(disp, 'horizontal_offset')}"
                                f"+{_text(disp, 'vertical_offset')}")
                elif kind == "Full screen":
                    opts.append(f"geometry=fullscreen:{_text(disp, 'monitor_id')}")
            if not opts:
                warnings.append(f"virtio-gpu ({kind}) without <displays>: ACRN's generator writes a bare virtio-gpu, "
                                "which acrn-dm cannot start (strdup(NULL)); not imported, add a display")
                slots.take()  # the generator still allocates its slot
                continue
            virtual("virtio-gpu", ",".join(opts))
        for cid in _texts(virtio, "vsock"):
            virtual("vhost-vsock", f"cid={cid}")

    bdf_re = re.compile(r"([0-9a-f]{2}):([0-1][0-9a-f]).([0-7])")  # the generator's own (its `.` is any char)
    intr_monitor = False
    for text in _texts(vm, "pci_devs/pci_dev"):
        m = bdf_re.match(text)
        if not m:
            warnings.append(f"pci_dev {shown(text)!r}: no BDF at the start; skipped")
            continue
        bus, devno, fn = (int(g, 16) for g in m.groups())
        opts = []
        if board is not None:
            cls = board.pci_class(bus, devno, fn) or ""
            gpu = cls == "0x030000"
            if cls.startswith("0x0200") and _text(vm, "PTM") == "y":
                opts.append("enable_ptm")
            if cls.startswith("0x0c0330") and _text(vm, "os_type") == "Windows OS":
                opts.append("d3hot_reset")
        else:
            gpu = (bus, devno, fn) == (0, 2, 0)
            warnings.append(f"pci_dev {m.group(0)}: no board XML, so its PCI class is unknown"
                            + (" (00:02.0 taken as the integrated GPU -> slot 2)" if gpu else "")
                            + "; enable_ptm/d3hot_reset are not derived")
        slot = GPU_SLOT if gpu else slots.take()
        devices.append(["-s", f"{slot},passthru,{bus:x}/{devno:x}/{fn:x}" + (f",{','.join(opts)}" if opts else "")])
        if slot != GPU_SLOT and not intr_monitor:
            intr_monitor = True
            params += ["--intr_monitor", PASSTHRU_INTR_MONITOR]

    if rtvm:
        params.append("--rtvm")
        if _text(vm, "lapic_passthrough") == "y":
            params.append("--lapic_pt")
    params += ["--logger_setting", "console,level=4;kmsg,level=3;disk,level=5"]
    custom = _text(vm, "customized_parameters")
    extra: list[str] = []
    if custom:
        try:
            extra = shlex.split(custom)
        except ValueError as exc:
            warnings.append(f"customized_parameters {shown(custom)!r}: {exc}; ignored")
    argv = ["acrn-dm", *params]
    for entry in devices:
        argv += entry
    return argv + extra + [name]


def import_scenario(text: str, source: str, board: str | Path | None = None) -> ImportResult:
    root = xml_root(text, source, "acrn-config")
    for tag in ("vm", "vuart_connection", "IVSHMEM_REGION", "IVSHMEM_VM"):
        count = sum(1 for _ in root.iter(tag))
        if count > MAX_SCENARIO_ELEMENTS:
            # ACRN's hypervisor runs at most MAX_VM_NUM VMs (16 in ACRN's own scenarios)
            raise ImportError_(f"{source}: {count} <{tag}> elements; a scenario ACRN can run has far fewer, and "
                               f"acrnmgr reads at most {MAX_SCENARIO_ELEMENTS}")
    populate_hv(root)
    board_xml = Board.load(board) if board else None
    result = ImportResult(source, "scenario", [])
    vms = root.findall("vm")
    post = [vm for vm in vms if _text(vm, "load_order") == "POST_LAUNCHED_VM"]
    if not post:
        old = [vm for vm in vms if (_text(vm, "vm_type") or "").startswith("POST_")]
        hint = (" (this looks like a v2.x scenario: run ACRN's scenario_config/upgrader.py first)" if old else "")
        if vms and not old:
            orders = sorted({shown(_text(vm, "load_order") or "no load_order", 40) for vm in vms})
            hint = (f" (its VMs are {shown(', '.join(orders))}: the hypervisor starts pre-launched VMs itself, "
                    "and only "
                    "post-launched VMs run under acrn-dm)")
        if root.find("uos") is not None or root.find("user_vm") is not None:
            hint = (" (this is a v2.x launch XML: v3 describes post-launched VMs in the scenario XML; run ACRN's "
                    "scenario_config/upgrader.py on the scenario and this launch XML, then import the scenario)")
        raise ImportError_(f"{source}: no <vm> with <load_order>POST_LAUNCHED_VM</load_order>{hint}")
    for vm in vms:
        if vm not in post:
            result.warnings.append(f"vm {shown(vm.get('id'), 20)} ({shown(_text(vm, 'name'), 40)}): "
                                   f"{shown(_text(vm, 'load_order'), 40)} is not "
                                   "managed by acrn-dm; skipped")
    if board_xml is not None and board_xml.amd_cpu():
        # launch_cfg_gen.py writes `hostbridge` whatever the board; acrn-dm also has amd_hostbridge
        result.warnings.append("the board's processor is AMD, but ACRN's launch script generator always emulates "
                               "`hostbridge` (PCI vendor NetApp); imported as ACRN writes it: set "
                               "spec.settings.hostbridge: amd for acrn-dm's amd_hostbridge")
    seen: dict[str, str | None] = {}
    for vm in post:
        name = _text(vm, "name") or f"vm{vm.get('id')}"
        label = f"vm {shown(vm.get('id'), 20)} ({shown(name, 40)})"
        if _text(vm, "name") is None:
            # launch_cfg_gen.py names it `ACRN Post-Launched VM`, unquoted: three words, which acrn-dm refuses
            result.errors.append(f"vm {shown(vm.get('id'), 20)}: not imported: no <name> (config.xsd requires one)")
            continue
        if not VM_NAME.fullmatch(name):
            # the generator writes the name unquoted: a space splits it, a leading `-` is an option to acrn-dm
            result.errors.append(f"{label}: not imported: the name is not 1-15 of [A-Za-z0-9_-] starting with "
                                 "a letter, digit or `_` (ACRN's VM name type; acrn-dm takes it as one word)")
            continue
        if name in seen:
            result.errors.append(f"{label}: not imported: the name {name} is already used by vm {seen[name]} "
                                 f"({name}); VM names must be unique (acrn-dm's VM name, the spec file's name)")
            continue
        seen[name] = vm.get("id")
        warnings: list[str] = []
        vm = copy.deepcopy(vm)
        populate(vm)
        try:
            argv = scenario_argv(root, vm, board_xml, warnings)
            if not any(a in argv for a in ("--ovmf", "-k", "--kernel", "-E", "--elf_file")):
                raise GrammarError("no boot method: vbootloader is not y and customized_parameters give no "
                                   "-k/-E; add a kernel (-k) to customized_parameters or enable vbootloader")
            imported = spec_from_argv(argv, os_type="windows" if _text(vm, "os_type") == "Windows OS" else None)
        except (GrammarError, ImportError_) as exc:
            result.errors.append(f"{label}: not imported: {exc}")
            continue
        scheduler = _text(root, "hv/FEATURES/SCHEDULER")
        if _text(vm, "own_pcpu") == "y" or scheduler == "SCHED_NOOP":  # the template's add_cpus offlines them
            imported.data["spec"]["cpu"]["ownPcpu"] = True
        imported.warnings[:0] = warnings
        result.specs.append(imported)
    if not result.specs:
        raise ImportError_(f"{source}: no post-launched VM could be imported:\n  "
                           + "\n  ".join(result.errors + result.warnings))
    return result
