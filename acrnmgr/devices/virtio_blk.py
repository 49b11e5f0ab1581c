"""virtio-blk: acrn-dm's VBS-U block device (legacy), QEMU's virtio-blk-pci, the embedded device model, or a
vhost-user socket another process serves (backend: vhost-user: SPDK, qemu-storage-daemon, OVS)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from acrnmgr.devices.base import (
    AcrnArgs,
    CheckContext,
    GrammarError,
    LibvirtIn,
    LibvirtOut,
    QemuArgs,
    SlotDevice,
    VirtioDevice,
    acrn_int,
    blockdev,
    qemu_mode,
    vhost_user_missing,
    vhost_user_source,
    xml_alias,
    xml_int,
    xml_pci,
    xml_sub,
)
from acrnmgr.model import JsonPath, common_fields, resolve

DEFAULT_CACHE = "writethru"
_LIBVIRT_CACHE = {"writethru": "writethrough", "writeback": "writeback", "nocache": "none"}


@dataclass(frozen=True)
class VirtioBlk(VirtioDevice):
    KIND: ClassVar[str] = "virtio-blk"
    EMBEDDED: ClassVar[bool] = True
    QEMU_VHOST_USER: ClassVar[bool] = True
    VHOST_USER_SOCKET: ClassVar[bool] = True
    # What the serving process decides, not the VMM, under backend: vhost-user.
    SERVED_ELSEWHERE: ClassVar[tuple[str, ...]] = ("cache", "readOnly", "discard", "sectorSize", "range", "iothread",
                                                   "aio", "noBstBlock")

    path: str = ""
    socket: str | None = None  # backend: vhost-user: another process's vhost-user-blk socket
    reconnect: int | None = None  # seconds between QEMU's attempts to reconnect to `socket`
    boot: bool = False
    cache: str = DEFAULT_CACHE
    read_only: bool = False
    discard: bool | tuple[int, int, int] = False  # True, or (maxSectors, maxSegments, alignment)
    sector_size: tuple[int, int | None] | None = None  # (logical, physical)
    range: tuple[int, int] | None = None  # (startLba, size) in 512-byte sectors
    iothread: bool | tuple[int, tuple[tuple[int, ...], ...]] = False  # True, or (count, cpu groups)
    mq: int | None = None
    aio: str | None = None
    no_bst_block: bool = False

    @classmethod
    def from_spec(cls, index: int, raw: Mapping[str, Any], base_dir: Path) -> VirtioBlk:
        discard = raw.get("discard", False)
        if isinstance(discard, Mapping):
            discard = (discard["maxSectors"], discard["maxSegments"], discard["alignment"])
        iothread = raw.get("iothread", False)
        if isinstance(iothread, Mapping):
            iothread = (iothread["count"], tuple(tuple(group) for group in iothread.get("cpus", [])))
        ss = raw.get("sectorSize")
        rng = raw.get("range")
        path = resolve(base_dir, raw["path"]) if "path" in raw else ""
        return cls(**common_fields(index, raw), path=path, socket=raw.get("socket"),
                   reconnect=raw.get("reconnect"), boot=bool(raw.get("boot")),
                   cache=raw.get("cache", DEFAULT_CACHE), read_only=bool(raw.get("readOnly")), discard=discard,
                   sector_size=(ss["logical"], ss.get("physical")) if ss else None,
                   range=(rng["startLba"], rng["size"]) if rng else None, iothread=iothread, mq=raw.get("mq"),
                   aio=raw.get("aio"), no_bst_block=bool(raw.get("noBstBlock")))

    @classmethod
    def check_spec(cls, ctx: CheckContext, spec: Mapping[str, Any], items: list[tuple[JsonPath, Any]]) -> None:
        super().check_spec(ctx, spec, items)
        for path, dev in items:
            external = dev.get("backend") == "vhost-user"
            if external and "socket" not in dev:
                ctx.error((*path, "backend"), "backend: vhost-user needs `socket`, the vhost-user socket the other "
                          "process serves the disk on", "add `socket: /run/.../vhost-blk.sock` (and no `path`)")
            elif "socket" in dev and not external:
                ctx.error((*path, "socket"), "`socket` is the vhost-user socket of a disk another process serves; "
                          "it needs backend: vhost-user", "add `backend: vhost-user`, or give the image as `path`")
            if "reconnect" in dev and "socket" not in dev:
                ctx.error((*path, "reconnect"), "`reconnect` applies to `socket` (backend: vhost-user)",
                          "remove `reconnect`")
            if external:
                for key in cls.SERVED_ELSEWHERE:
                    if key in dev:
                        ctx.error((*path, key), f"`{key}` is the serving process's to decide under backend: "
                                  "vhost-user (QEMU's vhost-user-blk sees only the virtqueues)",
                                  f"remove `{key}` and set it where the disk is served")

    def missing_on_host(self) -> str | None:
        return vhost_user_missing(self.socket) if self.backend == "vhost-user" else None

    @classmethod
    def spec_from_acrn(cls, dev: SlotDevice, warnings: list[str]) -> dict[str, Any] | None:
        p = dev.params
        if p.get("path") is None:
            return None  # nodisk (a drive inserted later by blkrescan) has no spec form
        d: dict[str, Any] = {"type": cls.KIND, "path": p["path"]}
        if dev.boot:
            d["boot"] = True
        if p.get("cache", DEFAULT_CACHE) != DEFAULT_CACHE:
            d["cache"] = p["cache"]
        if p.get("readOnly"):
            d["readOnly"] = True
        if p.get("noBstBlock"):
            d["noBstBlock"] = True
        for key in ("discard", "sectorSize", "range", "mq", "aio"):
            if key in p:
                d[key] = p[key]
        if "iothread" in p:
            io = p["iothread"]
            d["iothread"] = {"count": io["count"], **({"cpus": io["cpus"]} if io["cpus"] else {})}
        return d

    def acrn_args(self, ctx: AcrnArgs, backend: str | None) -> str:
        if backend == "vhost-user":
            return ""  # acrn-dm cannot attach to it: the plan says so
        out = ["b"] if self.boot else []
        if self.iothread is True:
            out.append("iothread")
        elif isinstance(self.iothread, tuple):
            count, groups = self.iothread
            text = f"iothread={count}"
            if groups:
                text += "@" + "/".join(":".join(str(c) for c in group) for group in groups)
            out.append(text)
        if self.mq:
            out.append(f"mq={self.mq}")
        out.append(ctx.path(self.path, (*self.where, "path")))
        if self.cache != DEFAULT_CACHE:
            out.append(self.cache)
        if self.read_only:
            out.append("ro")
        if self.discard is True:
            out.append("discard")
        elif isinstance(self.discard, tuple):
            out.append("discard={}:{}:{}".format(*self.discard))
        if self.sector_size:
            logical, physical = self.sector_size
            out.append(f"sectorsize={logical}" + (f"/{physical}" if physical else ""))
        if self.range:
            out.append(f"range={self.range[0]}/{self.range[1]}")
        if self.aio:
            out.append(f"aio={self.aio}")
        if self.no_bst_block:
            out.append("no_bst_block")
        return ",".join(out)

    def qemu(self, ctx: QemuArgs, slot: int, backend: str) -> None:
        nid, addr, mode = ctx.node(slot), ctx.addr(slot), qemu_mode(self)
        if backend == "vhost-user":  # the other process's socket: neither started nor removed by us
            reconnect = f",reconnect={self.reconnect}" if self.reconnect else ""
            ctx.vhost_user(slot, str(self.socket), "vhost-user-blk-pci", before=f"num-queues={self.mq or 1},",
                           after=mode + (",bootindex=1" if self.boot else ""), chardev=reconnect)
            return
        if backend == "embedded":
            queues = self.mq or 1
            sock = ctx.helper(self, "blk", ["--image", self.path, "--queues", str(queues)]
                              + (["--read-only"] if self.read_only else []))
            ctx.vhost_user(slot, sock, "vhost-user-blk-pci", before=f"num-queues={queues},",
                           after=mode + (",bootindex=1" if self.boot else ""))
            return
        node: dict[str, Any] = {
            "driver": "raw", "node-name": nid, "read-only": self.read_only,
            "discard": "unmap" if self.discard else "ignore",
            "cache": {"direct": self.cache == "nocache"},
            "file": {"driver": "file", "filename": self.path, "aio": self.aio or "threads"},
        }
        if self.range:
            node["offset"] = self.range[0] * 512
            node["size"] = self.range[1] * 512
        props = [f"virtio-blk-pci,drive={nid},{addr}{mode}",
                 f"write-cache={'off' if self.cache == DEFAULT_CACHE else 'on'}"]
        if self.mq:
            props.append(f"num-queues={self.mq}")
        if self.sector_size:
            logical, physical = self.sector_size
            props.append(f"logical_block_size={logical}")
            props.append(f"physical_block_size={physical or logical}")
        if self.iothread:
            ctx.argv += ["-object", f"iothread,id=io{nid}"]
            props.append(f"iothread=io{nid}")
        if self.boot:
            props.append("bootindex=1")
        ctx.argv += ["-blockdev", blockdev(node), "-device", ",".join(props)]

    LIBVIRT_TAGS: ClassVar[tuple[str, ...]] = ("disk",)

    @classmethod
    def from_libvirt(cls, el: ET.Element, imp: LibvirtIn) -> bool:
        target = el.find("target")
        if target is None or target.get("bus") != "virtio":
            return False
        src = el.find("source")
        dtype = el.get("type") or "file"
        path = (src.get("file") or src.get("dev")) if src is not None else None
        label = f"<disk> {(target.get('dev') or '?')}"
        d: dict[str, Any] = {"type": cls.KIND}
        if el.get("device") not in (None, "disk"):
            imp.warnings.append(f"{label}: device='{el.get('device')}' on virtio has no acrn-dm form; skipped")
            return True
        if dtype == "vhostuser":
            if imp.foreign:
                return cls._vhost_user_from_libvirt(el, imp, label, d)
            d["backend"] = "embedded"  # acrnmgr's own export: the metadata says whose socket it is
        elif dtype in ("file", "block") and path:
            d["path"] = path
            if imp.foreign and not imp.mode_of(el):
                d["backend"] = "vbs-u"  # QEMU's own virtio-blk on the image, as the domain had it
        else:
            imp.warnings.append(unreachable_disk(el, dtype, target.get("dev")))
            return True
        imp.check_disk(el, label, path)
        drv = el.find("driver")
        if drv is not None:
            cache_in = drv.get("cache")
            cache = {"writethrough": "writethru", "writeback": "writeback", "none": "nocache",
                     "directsync": "nocache", "unsafe": "writeback", "default": None}.get(cache_in or "default")
            if cache_in and cache_in not in ("writethrough", "writeback", "none", "default"):
                if cache_in in ("directsync", "unsafe"):
                    imp.warnings.append(f"{label}: cache='{cache_in}' has no acrn-dm form; set to {cache}")
                else:
                    imp.warnings.append(f"{label}: cache='{cache_in}' is not a libvirt cache mode; left at the default")
            if cache and cache != DEFAULT_CACHE:
                d["cache"] = cache
            if drv.get("discard") == "unmap":
                d["discard"] = True
            if drv.get("io") in ("io_uring", "threads"):
                d["aio"] = drv.get("io")
            elif drv.get("io"):
                imp.warnings.append(f"{label}: io='{drv.get('io')}' has no acrn-dm form (threads or io_uring); "
                                    "acrn-dm's default is used")
            queues = xml_int(drv.get("queues"))
            if queues and 1 <= queues <= 64:
                d["mq"] = queues
            if drv.get("iothread") is not None:
                d["iothread"] = True  # (acrnmgr's own export: the metadata has the exact value)
                if imp.foreign:
                    imp.warnings.append(f"{label}: <driver iothread='{drv.get('iothread')}'>: the disk gets an "
                                        "iothread of its own (acrn-dm's iothread); the domain's shared pool and "
                                        "its pinning are not kept")
        sl = src.find("slices/slice") if src is not None else None
        if sl is not None:
            offset, size = xml_int(sl.get("offset")), xml_int(sl.get("size"))
            if sl.get("type") != "storage" or offset is None or size is None or offset % 512 or size % 512 \
                    or offset < 0 or size <= 0:
                imp.errors.append(f"{label} {path}: <slice type='{sl.get('type')}' offset='{sl.get('offset')}' "
                                  f"size='{sl.get('size')}'>: acrn-dm takes a range of whole 512-byte sectors; "
                                  "the guest would see the whole image")
            else:
                d["range"] = {"startLba": offset // 512, "size": size // 512}
        if el.find("readonly") is not None:
            d["readOnly"] = True
        return cls._add_from_libvirt(el, imp, label, d, "acrn-dm marks one boot disk; only order 1 is kept")

    @classmethod
    def _vhost_user_from_libvirt(cls, el: ET.Element, imp: LibvirtIn, label: str, d: dict[str, Any]) -> bool:
        """<disk type='vhostuser'> of another process (SPDK, qemu-storage-daemon): backend: vhost-user on its
        socket. What only the serving process decides is reported, and a read-only disk is refused (QEMU's
        vhost-user-blk cannot make a disk read-only)."""
        if not vhost_user_source(el, imp, label, d, "<disk type='vhostuser'> without <source type='unix' "
                                 "path='/...'>: no socket to attach to; skipped"):
            return True
        if el.find("readonly") is not None:
            imp.errors.append(f"{label} {d['socket']}: <readonly/> on a vhost-user disk: the serving process decides "
                              "whether the guest may write, and QEMU cannot enforce it; make the export read-only "
                              "where it is served and remove <readonly/>")
        drv = el.find("driver")
        if drv is not None:
            queues = xml_int(drv.get("queues"))
            if queues and 1 <= queues <= 64:
                d["mq"] = queues
            for attr in ("cache", "io", "discard"):
                if drv.get(attr):
                    imp.warnings.append(f"{label}: {attr}='{drv.get(attr)}' on a vhost-user disk is the serving "
                                        "process's to decide; not mapped")
        return cls._add_from_libvirt(el, imp, label, d, "one boot disk is kept (order 1)")

    @staticmethod
    def _add_from_libvirt(el: ET.Element, imp: LibvirtIn, label: str, d: dict[str, Any], one_boot: str) -> bool:
        """The disk's <boot order>, mode and slot, then add it; ``one_boot`` says why a second boot disk is not."""
        boot = el.find("boot")
        if boot is not None:
            if (boot.get("order") is None or xml_int(boot.get("order")) == 1) and not imp.boot_disk:
                d["boot"] = True
                imp.boot_disk = True
            else:
                imp.warnings.append(f"{label}: boot order {boot.get('order')}: {one_boot}")
        if imp.mode_of(el):
            d["mode"] = imp.mode_of(el)
        imp.add(imp.slot_of(el), d, el)
        return True

    def libvirt(self, out: LibvirtOut, slot: int | None, backend: str | None) -> dict[str, Any] | None:
        extra, model = self.libvirt_extra()
        if backend == "vhost-user":
            out.needs_shared_memory = True
            disk = xml_sub(out.devices, "disk", type="vhostuser", device="disk")
            xml_sub(disk, "driver", name="qemu", type="raw", queues=self.mq)
            src = xml_sub(disk, "source", type="unix", path=self.socket)
            if self.reconnect:
                xml_sub(src, "reconnect", enabled="yes", timeout=self.reconnect)
                extra["reconnect"] = self.reconnect
            extra["socket"] = self.socket  # whose socket it is: not acrnmgr's device model's
        elif backend == "embedded" and out.flavor == "qemu":
            out.needs_shared_memory = True
            disk = xml_sub(out.devices, "disk", type="vhostuser", device="disk")
            xml_sub(disk, "driver", name="qemu", type="raw")
            src = xml_sub(disk, "source", type="unix", path=out.socket(self))
            xml_sub(src, "reconnect", enabled="yes", timeout=10)
            # the image is the device model's business: libvirt only sees the socket
            extra.update({k: v for k, v in self.raw.items()
                          if k not in ("type", "name", "boot", "readOnly", "mode", "slot")})
            extra["path"] = self.path
        else:
            disk = xml_sub(out.devices, "disk", type="file", device="disk")
            xml_sub(disk, "driver", name="qemu", type="raw", cache=_LIBVIRT_CACHE[self.cache],
                    discard="unmap" if self.discard else None, io=self.aio, queues=self.mq,
                    iothread=out.new_iothread() if self.iothread else None)
            src = xml_sub(disk, "source", file=self.path)
            if self.range:  # the guest sees this slice of the image only, under libvirt too
                slices = xml_sub(src, "slices")
                xml_sub(slices, "slice", type="storage", offset=self.range[0] * 512, size=self.range[1] * 512)
            extra.update({k: self.raw[k] for k in ("iothread", "sectorSize") if k in self.raw})
            if isinstance(self.discard, tuple):
                extra["discard"] = self.raw["discard"]
        xml_sub(disk, "target", dev=f"vd{chr(ord('a') + out.disks)}", bus="virtio")
        out.disks += 1
        if self.read_only:
            xml_sub(disk, "readonly")
        if self.boot:
            out.boot_order += 1
            xml_sub(disk, "boot", order=out.boot_order)
        if model != "virtio":
            disk.set("model", model)
        xml_alias(disk, self.name)
        xml_pci(disk, slot)
        return extra



# -- acrn-dm's config string, parsed back (the launch-script importer and the grammar) -----------------
_SECTOR_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def parse_acrn(emul: str, body: str, family: str) -> dict[str, Any]:
    tokens = body.split(",") if body else []
    params: dict[str, Any] = {"cache": DEFAULT_CACHE, "readOnly": False}
    # acrn-dm reads iothread and mq= before the path, in either order
    while tokens and (tokens[0] == "iothread" or tokens[0].startswith(("iothread=", "mq="))):
        tok = tokens.pop(0)
        if tok.startswith("mq="):
            params["mq"] = acrn_int(tok[3:], "virtio-blk mq", 1, 64)
            continue
        count, cpus = 1, []
        if "=" in tok:
            spec = tok.split("=", 1)[1]
            num, _, affinity = spec.partition("@")
            count = acrn_int(num, "virtio-blk iothread count", 1, 64)
            if affinity:
                cpus = [[acrn_int(c, "virtio-blk iothread cpu", 0) for c in group.split(":")]
                        for group in affinity.split("/")]
        params["iothread"] = {"count": count, "cpus": cpus}
    if not tokens or not tokens[0]:
        raise GrammarError(f"virtio-blk: missing image path in {body!r}")
    path = tokens.pop(0)
    params["path"] = None if path == "nodisk" else path
    for tok in tokens:
        key, eq, val = tok.partition("=")
        if tok in ("writeback", "writethru", "nocache"):
            params["cache"] = tok
        elif tok == "ro":
            params["readOnly"] = True
        elif tok == "no_bst_block":
            params["noBstBlock"] = True
        elif key == "discard":
            if eq:
                parts = val.split(":")
                if len(parts) != 3:
                    raise GrammarError(f"virtio-blk: discard={val}: use discard=max_sect:max_seg:align")
                params["discard"] = {"maxSectors": acrn_int(parts[0], "discard max_sect", 1),
                                     "maxSegments": acrn_int(parts[1], "discard max_seg", 1),
                                     "alignment": acrn_int(parts[2], "discard align", 1)}
            else:
                params["discard"] = True
        elif key == "sectorsize" and eq:
            logical, _, physical = val.partition("/")
            lsz = acrn_int(logical, "sectorsize", 512)
            psz = acrn_int(physical, "sectorsize", 512) if physical else lsz
            if lsz not in _SECTOR_SIZES or psz not in _SECTOR_SIZES or psz < lsz:
                raise GrammarError(f"virtio-blk: invalid sectorsize {val}")
            params["sectorSize"] = {"logical": lsz, "physical": psz}
        elif key == "range" and eq:
            start, sep, size = val.partition("/")
            if not sep:
                raise GrammarError(f"virtio-blk: range={val}: use range=<startlba>/<size>")
            params["range"] = {"startLba": acrn_int(start, "range start", 0), "size": acrn_int(size, "range size", 1)}
        elif key == "aio" and eq:
            if val not in ("threads", "io_uring"):
                raise GrammarError(f"virtio-blk: aio={val}: use threads or io_uring")
            params["aio"] = val
        elif tok.startswith(("iothread", "mq=")):
            raise GrammarError(f"virtio-blk: {tok!r} must come before the path")
        else:
            raise GrammarError(f"virtio-blk: invalid device option {tok!r}")
    return params


def unreachable_disk(el: ET.Element, dtype: str, dev: str | None) -> str:
    """Why a <disk> that is neither a local file, a block device nor a vhost-user socket is not imported, with
    what the engines could do about it: network disks (nbd, iscsi, rbd, gluster, http...) and NVMe
    controllers are opened by QEMU's own block layer, which acrnmgr's spec does not model."""
    src = el.find("source")
    attrs = {k: v for k, v in (src.attrib.items() if src is not None else ()) if k in
             ("protocol", "name", "file", "dev", "pool", "volume", "dir", "type", "managed", "namespace")}
    where = " ".join(f"{k}='{v}'" for k, v in sorted(attrs.items()))
    hosts = [f"{h.get('name') or h.get('socket') or ''}" + (f":{h.get('port')}" if h.get("port") else "")
             for h in (src.findall("host") if src is not None else ())]
    if hosts:
        where += f" host={','.join(hosts)}"
    nvme = src.find("address") if src is not None and dtype == "nvme" else None
    if nvme is not None:
        where += " pci=" + ":".join(str(nvme.get(k)) for k in ("domain", "bus", "slot", "function"))
    element = f"<disk type='{dtype}'> {dev or '?'}" + (f" <source {where.strip()}>" if where.strip() else "")
    why = {
        "network": "a network disk: acrn-dm opens local files and block devices only, and the spec has no network "
                   "disk for the qemu and libvirt engines either; attach it on the host (nbd-client, iscsiadm, rbd "
                   "map) and import the block device as <disk type='block'>",
        "nvme": "a host NVMe namespace QEMU drives from user space (vfio): acrn-dm cannot, and the spec has no "
                "such disk for the qemu and libvirt engines either; pass the NVMe controller through (<hostdev>) or "
                "give its namespace block device (/dev/nvmeXnY) as <disk type='block'>",
        "volume": "a libvirt storage-pool volume: give the volume's path as <disk type='file'> or 'block'",
        "dir": "a host folder shown as a FAT disk (QEMU's vvfat): no acrn-dm form; make an image of it",
    }.get(dtype, "no <source> (an empty drive): nothing to attach" if dtype in ("file", "block")
          else "not a local file or block device; acrn-dm opens those only")
    return f"{element}: {why}; skipped"

