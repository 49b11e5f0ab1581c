"""Build a guest from Debian packages: the distribution kernel and an initramfs of busybox-static, the virtio
modules, optionally fio (with its shared libraries), and our /init.

The test suite's guest (tests/guest) and `acrnmgr image build` (acrnmgr.images.user) are both built here. The
result is cached under ${XDG_CACHE_HOME:-~/.cache}/acrnmgr/guest/<key> (or another cache folder), where the key
names the kernel package version and hashes the build inputs (this file, init.sh, functions.sh, cpio.py, the
extra modules and the host's busybox and fio).
A build happens in a temporary directory renamed into place, under a file lock, so concurrent test processes
neither race nor see a half-built guest.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .cpio import CpioWriter, script_archive

HERE = Path(__file__).resolve().parent
_BUILD_INPUTS = ("build.py", "cpio.py", "init.sh", "functions.sh")

DEFAULT_CMDLINE = "console=ttyS0 panic=-1 quiet"

# Modules the tests need; their dependencies are added from each module's .modinfo "depends=". Names that are
# built into the kernel (modules.builtin) are skipped.
WANTED_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "button",  # ACPI power button: system_powerdown
    "evdev",  # /dev/input/event* for the power button watcher in /init
)


class GuestBuildError(RuntimeError):
    """The guest could not be built; the message says why."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel, base initramfs (without a test script) and what went into it.

    `initrd` holds everything (fio included); `initrd_base` is the same without fio and `fio_layer` is fio as
    a separate archive: initrd == initrd_base + fio_layer.

    `kernel` is the uncompressed vmlinux (ELF with a PVH entry note), which QEMU's -kernel boots directly: no
    real-mode setup and no in-guest xz decompression, seconds faster under TCG. `bzimage` is Debian's original,
    for anything that wants a bzImage."""

    directory: Path
    kernel: Path
    initrd: Path
    initrd_base: Path
    fio_layer: Path
    bzimage: Path
    kernel_version: str
    modules: tuple[str, ...]
    cmdline: str = DEFAULT_CMDLINE

    def initrd_with_script(self, script: str, directory: Path | None = None, fio: bool | None = None,
                           gpio_i2c: bool = False) -> Path:
        return initrd_with_script(script, directory, image=self, fio=fio, gpio_i2c=gpio_i2c)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "acrnmgr" / "guest"


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise GuestBuildError(f"{argv[0]} not found (run scripts/setup.sh)") from e
    except subprocess.CalledProcessError as e:
        raise GuestBuildError(f"{' '.join(argv)} failed ({e.returncode}): {e.stderr.strip()[-2000:]}") from e


def _progress(msg: str) -> None:
    print(f"guest: {msg}", file=sys.stderr, flush=True)


Progress = Callable[[str], None]


def resolve_kernel_package(progress: Progress = _progress) -> tuple[str, str]:
    """(package, version) of the kernel image linux-image-amd64 currently depends on, e.g.
    ("linux-image-6.1.0-56-amd64", "6.1.192-2"). Runs apt-get update once if apt's lists are empty."""
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
            m = re.search(r"Depends:\s*(linux-image-\S+-amd64)\b", out)
            if m:
                pkg = m.group(1)
                show = _run(["apt-cache", "show", "--no-all-versions", pkg]).stdout
                v = re.search(r"^Version:\s*(\S+)", show, re.M)
                if v:
                    return pkg, v.group(1)
        except GuestBuildError:
            if attempt:
                raise
        if attempt == 0:
            progress("apt lists have no kernel package; running apt-get update")
            _run(["apt-get", "update", "-q"])
    raise GuestBuildError("apt knows no linux-image-*-amd64 package that linux-image-amd64 depends on")


def _host_tool(name: str) -> Path:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        raise GuestBuildError(f"{name} is not installed on the host (run scripts/setup.sh)")
    return Path(path).resolve()


def _inputs_hash(busybox: Path, fio: Path | None, extra_modules: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for name in _BUILD_INPUTS:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    if extra_modules:  # the test guest's key stays what it was
        h.update(b"modules\0" + ",".join(extra_modules).encode())
    for tool in (busybox, fio) if fio else (busybox,):
        st = tool.stat()
        h.update(f"{tool}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- kernel modules


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        raise GuestBuildError(f"{path.name}: zstd-compressed modules are not supported by this builder")
    return data


def modinfo(elf: bytes) -> dict[str, str]:
    """The key=value strings of an ELF64 module's .modinfo section (what modinfo(8) prints)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise GuestBuildError("not an ELF64 kernel module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = elf.index(b"\0", stroff + name)
        if elf[stroff + name : end] == b".modinfo":
            info: dict[str, str] = {}
            for item in elf[offset : offset + size].split(b"\0"):
                key, sep, value = item.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    return {}


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def resolve_modules(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path, bytes]]:
    """[(name, path, uncompressed ELF)] for `wanted` and their dependencies, dependencies first."""
    builtin = {_module_name(line) for line in (moddir / "modules.builtin").read_text().split()}
    index = {_module_name(str(p)): p for p in (moddir / "kernel").rglob("*.ko*")}
    ordered: list[tuple[str, Path, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in done or name in builtin:
            return
        if name in chain:
            raise GuestBuildError(f"module dependency loop: {' -> '.join(chain + (name,))}")
        path = index.get(name)
        if path is None:
            raise GuestBuildError(f"module {name} is neither built in nor shipped in {moddir}")
        elf = _read_module(path)
        for dep in filter(None, modinfo(elf).get("depends", "").split(",")):
            visit(dep, chain + (name,))
        done.add(name)
        ordered.append((name, path, elf))

    for name in wanted:
        visit(name, ())
    return ordered


# ---------------------------------------------------------------------------------------------- user space


def _is_static(binary: Path) -> bool:
    out = subprocess.run(["readelf", "-l", str(binary)], capture_output=True, text=True)
    if out.returncode == 0:
        return "INTERP" not in out.stdout
    # No binutils: look for the PT_INTERP program header ourselves.
    elf = binary.read_bytes()
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def shared_libraries(binary: Path) -> list[str]:
    """Absolute paths of the shared objects (loader included) `binary` loads, as ldd reports them."""
    out = _run(["ldd", str(binary)]).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
    if not libs:
        raise GuestBuildError(f"ldd found no libraries for {binary}:\n{out}")
    return libs


def _write_tree(writer: CpioWriter, dirs: set[str], path: str) -> None:
    """Emit the parent directories of `path` that are not in the archive yet."""
    parts = path.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in dirs:
            dirs.add(d)
            writer.directory(d)


def _build_initramfs(directory: Path, moddir: Path, busybox: Path, fio: Path | None,
                     wanted: tuple[str, ...] = WANTED_MODULES) -> list[str]:
    """Write initrd-base.cpio (busybox, modules, /init), fio.cpio (fio and its libraries: ~85 MB, which costs
    about a second of unpacking per boot under TCG, so guests that do not run fio leave it out; empty without
    fio) and initrd.cpio, the two concatenated. Returns the module load order."""
    modules = resolve_modules(moddir, wanted)
    applets = _run([str(busybox), "--list"]).stdout.split()
    with open(directory / "initrd-base.cpio", "wb") as f:
        w = CpioWriter(f)
        dirs: set[str] = set()

        def add_file(path: str, data: bytes, perm: int = 0o644) -> None:
            _write_tree(w, dirs, path)
            w.file(path, data, perm)

        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "mnt",
                  "etc", "etc/acrnmgr", "lib", "lib/modules", "lib/acrnmgr"):
            dirs.add(d)
            w.directory(d, 0o1777 if d == "tmp" else 0o755)
        # The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)

        add_file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in applets:
            if applet != "busybox":
                w.symlink(f"bin/{applet}", "busybox")

        for name, _path, elf in modules:
            add_file(f"lib/modules/{name}.ko", elf)
        add_file("etc/acrnmgr/modules.load", "".join(f"{name}.ko\n" for name, _, _ in modules).encode())

        add_file("init", (HERE / "init.sh").read_bytes(), 0o755)
        add_file("lib/acrnmgr/functions.sh", (HERE / "functions.sh").read_bytes())
        w.close()

    with open(directory / "fio.cpio", "wb") as f:
        w = CpioWriter(f)
        dirs = set()  # parents are repeated: an archive must stand on its own, and the kernel tolerates that
        for path, data in [] if fio is None else [("usr/bin/fio", fio.read_bytes())] + [
            (lib, Path(lib).resolve().read_bytes()) for lib in dict.fromkeys(shared_libraries(fio))
        ]:
            _write_tree(w, dirs, path)
            w.file(path, data, 0o755)
        if fio is not None:
            w.close()

    with open(directory / "initrd.cpio", "wb") as out:
        for part in ("initrd-base.cpio", "fio.cpio"):
            with open(directory / part, "rb") as part_file:
                shutil.copyfileobj(part_file, out, 1 << 20)
    return [name for name, _, _ in modules]


# ---------------------------------------------------------------------------------------------- build + cache


def _download_deb(pkg: str, version: str, root: Path | None = None, progress: Progress = _progress) -> Path:
    debs = (root or cache_root()) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for existing in [*debs.glob(f"{pkg}_*.deb"), *(cache_root() / "debs").glob(f"{pkg}_*.deb")]:
        if _deb_version(existing) == version:  # the test guest's cache may have it already
            return existing
    progress(f"downloading {pkg} {version} (apt-get download)")
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        # apt's _apt sandbox user cannot write into a root-owned 0700 temp dir; let it.
        os.chmod(tmp, 0o755)
        _run(["apt-get", "download", "-q", f"{pkg}={version}"], cwd=tmp)
        (deb,) = Path(tmp).glob("*.deb")
        dest = debs / deb.name
        os.replace(deb, dest)
    return dest


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside an xz- or gzip-compressed bzImage (boot protocol >= 2.08 payload fields)."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise GuestBuildError("kernel image is not a bzImage")
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    if payload.startswith(b"\xfd7zXZ\0"):
        elf = lzma.LZMADecompressor().decompress(payload)  # the trailing size word is ignored as unused data
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    else:
        raise GuestBuildError(f"unsupported bzImage payload compression (magic {payload[:6]!r})")
    if elf[:4] != b"\x7fELF":
        raise GuestBuildError("bzImage payload is not an ELF vmlinux")
    return elf


def _build(dest: Path, pkg: str, version: str, busybox: Path, fio: Path | None,
           wanted: tuple[str, ...] = WANTED_MODULES, progress: Progress = _progress) -> None:
    deb = _download_deb(pkg, version, dest.parent, progress)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        work = Path(tmp)
        progress(f"extracting {deb.name} (dpkg-deb -x)")
        _run(["dpkg-deb", "-x", str(deb), str(work / "pkg")])
        (vmlinuz,) = (work / "pkg" / "boot").glob("vmlinuz-*")
        kernel_version = vmlinuz.name.removeprefix("vmlinuz-")
        moddir = work / "pkg" / "lib" / "modules" / kernel_version
        out = work / "out"
        out.mkdir()
        shutil.copy2(vmlinuz, out / "vmlinuz")
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        shutil.copy2(work / "pkg" / "boot" / f"config-{kernel_version}", out / "config")
        progress(f"writing initramfs: busybox from {busybox}, {len(wanted)} kernel modules and their "
                 f"dependencies{', fio' if fio else ''}")
        modules = _build_initramfs(out, moddir, busybox, fio, wanted)
        manifest = {"package": pkg, "version": version, "kernel_version": kernel_version, "modules": modules}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(out, dest)


def _prune(root: Path, keep: Path) -> None:
    """Drop cached guests of other keys unused for an hour (each is ~160 MB) and kernel packages they needed.
    Use marks a guest by touching its manifest; the hour spares a concurrent run of another checkout."""
    cutoff = time.time() - 3600
    for other in root.glob("linux-image-*"):
        manifest = other / "manifest.json"
        if other != keep and other.is_dir() and (not manifest.exists() or manifest.stat().st_mtime < cutoff):
            shutil.rmtree(other, ignore_errors=True)
    wanted = {json.loads(m.read_text())["version"] for m in root.glob("linux-image-*/manifest.json")}
    for deb in (root / "debs").glob("*.deb"):
        if deb.stat().st_mtime < cutoff and _deb_version(deb) not in wanted:
            deb.unlink(missing_ok=True)


def build_guest_image(*, root: Path | None = None, fio: bool = True, extra_modules: tuple[str, ...] = (),
                      progress: Progress = _progress) -> GuestImage:
    """Build the guest, or return the cached one. Raises GuestBuildError with the reason on failure.

    The defaults are the test guest's; `acrnmgr image build` passes its own cache folder, no fio and more
    modules (ext4 for its data disk)."""
    busybox = _host_tool("busybox")
    if not _is_static(busybox):
        raise GuestBuildError(f"{busybox} is dynamically linked; install busybox-static (scripts/setup.sh)")
    fio_tool = _host_tool("fio") if fio else None
    pkg, version = resolve_kernel_package(progress)
    key = f"{pkg}_{version}_{_inputs_hash(busybox, fio_tool, extra_modules)}"
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / key
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "manifest.json").exists():
            try:
                _download_deb(pkg, version, root, progress)
            except GuestBuildError as first:
                # Stale apt lists name a version the mirror no longer has (security updates replace them).
                progress(f"{first}; running apt-get update and retrying")
                _run(["apt-get", "update", "-q"])
                if resolve_kernel_package(progress) != (pkg, version):
                    raise GuestBuildError(
                        f"the kernel package changed to {resolve_kernel_package(progress)} while building; run again"
                    ) from first
            _build(dest, pkg, version, busybox, fio_tool, WANTED_MODULES + extra_modules, progress)
        os.utime(dest / "manifest.json")
        _prune(root, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    return GuestImage(
        directory=dest,
        kernel=dest / "vmlinux",
        bzimage=dest / "vmlinuz",
        initrd=dest / "initrd.cpio",
        initrd_base=dest / "initrd-base.cpio",
        fio_layer=dest / "fio.cpio",
        kernel_version=manifest["kernel_version"],
        modules=tuple(manifest["modules"]),
    )


def wants_fio(script: str) -> bool:
    return re.search(r"\bfio\b", script) is not None


def initrd_with_script(script: str, directory: Path | None = None, image: GuestImage | None = None,
                       fio: bool | None = None, gpio_i2c: bool = False) -> Path:
    """An initramfs that is the base guest (plus fio if `fio`, by default if the script mentions fio; plus the
    gpio-i2c layer if `gpio_i2c`: see gpio_i2c.py) with `script` appended as /test.sh, which /init runs.

    Written into `directory` (e.g. a pytest tmp_path) when given, else into the guest cache, named by the
    content's hash. The file is written atomically, so concurrent callers are safe.
    """
    image = image or build_guest_image()
    fio = wants_fio(script) if fio is None else fio
    layers = [image.fio_layer] if fio else []
    if gpio_i2c:
        from .gpio_i2c import gpio_i2c_layer  # it builds on this module

        layers.append(gpio_i2c_layer(image))
    parts = [image.initrd_base] + layers
    # A layer's path names its cache key (kernel, inputs hash), so a rebuilt layer makes a new initrd.
    digest = hashlib.sha256(script.encode() + b"".join(b"\0" + str(p).encode() for p in layers)).hexdigest()[:16]
    directory = Path(directory) if directory is not None else image.directory / "scripts"
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / f"initrd-{digest}.cpio"
    if dest.exists():
        return dest
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".initrd-")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            out.write(script_archive(script))
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return dest
