"""The gpio-i2c initrd layer: the virtio-gpio and virtio-i2c guest drivers, and the in-tree modules a guest needs
to use the devices behind them (i2c-dev, the at24 EEPROM and lm75 temperature sensor drivers, with their
dependencies).

Debian bookworm's kernels leave CONFIG_GPIO_VIRTIO and CONFIG_I2C_VIRTIO unset, so the two drivers are built
here as out-of-tree modules, from Debian's packages only and without installing any:
  - their sources come from linux-source-<major.minor> of the kernel's exact version: `apt-get download`, then
    only the two .c files are streamed out of the tarball inside it (GNU tar stops at the last one, ~4 s) and
    cached under <cache>/sources/, so the 140 MB package is not kept;
  - they are built against linux-headers-<kver> with its -common and linux-kbuild-<x.y> dependencies, each
    `apt-get download`ed into the cache's debs/ and unpacked together with `dpkg-deb -x` into a temporary
    root (the relative symlinks between them resolve there; the one absolute include is rewritten), with
    `make -C <headers> M=<dir> modules` and the compiler the headers name (gcc-12 for bookworm);
  - their vermagic must equal the kernel's own modules', or the build fails: insmod would refuse them.
When the kernel's config enables a driver (=m) its own module is used instead; when it is built in (=y),
nothing is needed.

The layer is an uncompressed newc archive appended after the base initramfs. Its modules live in
/lib/modules/gpio-i2c/, listed in dependency order in /etc/acrnmgr/modules.d/gpio-i2c.load, which /init
(init.sh) loads right after the base's modules. It is cached next to the guest it belongs to, under
<cache>/gpio-i2c_<kernel package>_<version>_<inputs hash>/, so a warm call costs milliseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from .build import (
    HERE,
    GuestBuildError,
    GuestImage,
    Progress,
    _download_deb,
    _host_tool,
    _progress,
    _read_module,
    _run,
    cache_root,
    modinfo,
    resolve_modules,
)
from .cpio import CpioWriter

LAYER = "gpio-i2c"
# (module, the config symbol that builds it in-tree, its source in the kernel tree)
VIRTIO_DRIVERS = (
    ("gpio_virtio", "CONFIG_GPIO_VIRTIO", "drivers/gpio/gpio-virtio.c"),
    ("i2c_virtio", "CONFIG_I2C_VIRTIO", "drivers/i2c/busses/i2c-virtio.c"),
)
# What a test needs to use the buses: /dev/i2c-N, a 24c02 EEPROM and an lm75 sensor as i2c clients. Their
# dependencies (i2c-core, regmap-i2c, nvmem, hwmon when modular) are added from each module's "depends=".
# gpiolib, its character device and sysfs are built into Debian's kernels.
CLIENT_MODULES = ("i2c_dev", "at24", "lm75")
_INPUTS = ("gpio_i2c.py", "build.py", "cpio.py")
_MAX_SOURCE = 1 << 20  # one driver's .c file; theirs are ~20 KB


def kernel_config(image: GuestImage) -> dict[str, str]:
    """The guest kernel's configuration (CONFIG_X -> "y"/"m"/value), from the config file cached with it."""
    config: dict[str, str] = {}
    for line in (image.directory / "config").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value
    return config


def out_of_tree(config: dict[str, str]) -> list[tuple[str, str, str]]:
    """The virtio drivers the kernel does not provide itself, which the layer builds."""
    return [driver for driver in VIRTIO_DRIVERS if config.get(driver[1]) not in ("m", "y")]


def _inputs_hash(image: GuestImage, gcc: Path | None) -> str:
    h = hashlib.sha256()
    h.update(b"guest\0" + image.directory.name.encode())  # the layer leaves out what the base already loads
    for name in _INPUTS:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    if gcc is not None:
        st = gcc.stat()
        h.update(f"{gcc}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def gpio_i2c_layer(image: GuestImage, progress: Progress = _progress) -> Path:
    """The gpio-i2c layer's archive for `image`'s kernel: built once (about 20 s cold, most of it the kernel
    source package's download and the module build), then cached. Raises GuestBuildError on failure."""
    guest = json.loads((image.directory / "manifest.json").read_text())
    pkg, version = guest["package"], guest["version"]
    oot = out_of_tree(kernel_config(image))
    gcc = _host_tool(_compiler(image)) if oot else None
    root = image.directory.parent
    key = f"{LAYER}_{pkg}_{version}_{_inputs_hash(image, gcc)}"
    dest = root / key
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "manifest.json").exists():
            _build_layer(dest, image, pkg, version, progress)
        os.utime(dest / "manifest.json")
        _prune(root, dest)
    return dest / f"{LAYER}.cpio"


def layer_modules(layer: Path) -> list[str]:
    """The modules a built layer loads, in order."""
    return json.loads((layer.parent / "manifest.json").read_text())["modules"]


def _compiler(image: GuestImage) -> str:
    """The compiler the kernel was built with (config's CONFIG_CC_VERSION_TEXT, e.g. "gcc-12 (Debian ...)"), which
    Debian's headers use for modules too."""
    text = kernel_config(image).get("CONFIG_CC_VERSION_TEXT", "").strip('"')
    m = re.match(r"(gcc-\d+)\s", text)
    if not m:
        raise GuestBuildError(f"cannot tell the kernel's compiler from CONFIG_CC_VERSION_TEXT={text!r}")
    return m.group(1)


def _build_layer(dest: Path, image: GuestImage, pkg: str, version: str, progress: Progress) -> None:
    root = dest.parent
    config = kernel_config(image)
    oot = out_of_tree(config)
    in_tree = [name for name, symbol, _ in VIRTIO_DRIVERS if config.get(symbol) == "m"]
    kernel_deb = _download_deb(pkg, version, root, progress)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{dest.name}.") as tmp:
        work = Path(tmp)
        progress(f"extracting the modules of {kernel_deb.name} (dpkg-deb -x)")
        _run(["dpkg-deb", "-x", str(kernel_deb), str(work / "kernel")])
        moddir = work / "kernel" / "lib" / "modules" / image.kernel_version
        built: list[tuple[str, bytes]] = []
        if oot:
            built = _build_out_of_tree(work, image, version, oot, moddir, progress)
        wanted = tuple(dep for _, elf in built for dep in filter(None, modinfo(elf).get("depends", "").split(",")))
        loaded = set(image.modules)
        modules = [(name, elf) for name, _, elf in resolve_modules(moddir, wanted + tuple(in_tree) + CLIENT_MODULES)
                   if name not in loaded] + built
        out = work / "out"
        out.mkdir()
        with open(out / f"{LAYER}.cpio", "wb") as f:
            w = CpioWriter(f)
            for d in ("lib", "lib/modules", f"lib/modules/{LAYER}", "etc", "etc/acrnmgr", "etc/acrnmgr/modules.d"):
                w.directory(d)
            for name, elf in modules:
                w.file(f"lib/modules/{LAYER}/{name}.ko", elf)
            w.file(f"etc/acrnmgr/modules.d/{LAYER}.load",
                   "".join(f"{LAYER}/{name}.ko\n" for name, _ in modules).encode())
            w.close()
        manifest = {"package": pkg, "version": version, "kernel_version": image.kernel_version,
                    "modules": [name for name, _ in modules], "built_out_of_tree": [name for name, _ in built]}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.rename(out, dest)


def _build_out_of_tree(work: Path, image: GuestImage, version: str, oot: list[tuple[str, str, str]], moddir: Path,
                       progress: Progress) -> list[tuple[str, bytes]]:
    """Build `oot` against the kernel's headers; [(module, ELF)] in `oot`'s order."""
    root = image.directory.parent
    sources = _kernel_sources(root, version, [path for _, _, path in oot], progress)
    headers_root = _unpack_headers(work / "headers", root, image.kernel_version, version, progress)
    headers = headers_root / "usr" / "src" / f"linux-headers-{image.kernel_version}"
    src = work / "src"
    src.mkdir()
    for _, _, path in oot:
        shutil.copyfile(sources / path, src / Path(path).name)
    (src / "Kbuild").write_text("obj-m := " + " ".join(Path(p).with_suffix(".o").name for _, _, p in oot) + "\n")
    progress(f"building {', '.join(name for name, _, _ in oot)} out of tree against {headers.name} "
             f"(make -C ... M=... modules)")
    _run(["make", "-C", str(headers), f"M={src}", "modules", f"-j{min(os.cpu_count() or 1, 4)}"],
         env={**os.environ, "LC_ALL": "C"})
    expected = _vermagic(next(moddir.rglob("virtio.ko*")))
    built = []
    for name, _, path in oot:
        ko = src / Path(path).with_suffix(".ko").name
        if not ko.is_file():
            raise GuestBuildError(f"make built no {ko.name} for {name}")
        elf = ko.read_bytes()
        info = modinfo(elf)
        if info.get("vermagic") != expected:
            raise GuestBuildError(f"{ko.name}: vermagic {info.get('vermagic')!r} is not the kernel's {expected!r}; "
                                  f"insmod would refuse it")
        built.append((name, elf))
    return built


def _vermagic(path: Path) -> str:
    return modinfo(_read_module(path)).get("vermagic", "")


def _unpack_headers(dest: Path, root: Path, kernel_version: str, version: str, progress: Progress) -> Path:
    """linux-headers-<kver>, the -common and linux-kbuild packages it depends on, unpacked into one root."""
    headers_pkg = f"linux-headers-{kernel_version}"
    headers_deb = _download_deb(headers_pkg, version, root, progress)
    depends = _run(["dpkg-deb", "-f", str(headers_deb), "Depends"]).stdout
    needed = re.findall(r"(linux-headers-\S+-common|linux-kbuild-[\d.]+)\b", depends)
    if len(needed) != 2:
        raise GuestBuildError(f"{headers_pkg} depends on {depends.strip()!r}: expected a -common and a linux-kbuild "
                              f"package")
    debs = [headers_deb] + [_download_deb(name, version, root, progress) for name in needed]
    progress(f"unpacking {', '.join(d.name for d in debs)} (dpkg-deb -x)")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(dest)])
    # The flavour's Makefile includes the common one by its absolute path under /usr/src.
    makefile = dest / "usr" / "src" / headers_pkg / "Makefile"
    text = makefile.read_text()
    makefile.write_text(re.sub(r"^include /usr/src/", f"include {dest}/usr/src/", text, flags=re.M))
    return dest


def _kernel_sources(root: Path, version: str, paths: list[str], progress: Progress) -> Path:
    """A folder holding `paths` (relative to the kernel tree) from linux-source-<major.minor> at `version`.
    Only these files are kept: the package itself (140 MB) is dropped once they are out."""
    m = re.match(r"(\d+\.\d+)\.", version)
    if not m:
        raise GuestBuildError(f"cannot tell the kernel's major.minor from the package version {version!r}")
    package = f"linux-source-{m.group(1)}"
    folder = root / "sources" / f"{package}_{version}"
    for known in (folder, cache_root() / "sources" / folder.name):  # the test guest's cache may have them
        if all((known / p).is_file() for p in paths):
            return known
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".src.") as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt sandbox user writes the download
        progress(f"downloading {package} {version} (apt-get download, about 140 MB) for {', '.join(paths)}")
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp)
        (deb,) = Path(tmp).glob("*.deb")
        progress(f"extracting {', '.join(paths)} from {deb.name} (streamed; tar stops after the last one)")
        inner = f"{package}/"
        tree = Path(tmp) / "tree"
        tree.mkdir()
        _stream_extract(deb, f"./usr/src/{package}.tar.xz", [inner + p for p in paths], tree)
        deb.unlink()
        missing = [p for p in paths if not (tree / inner / p).is_file()]
        if missing:
            raise GuestBuildError(f"{deb.name} has no {', '.join(missing)}")
        for p in paths:
            if (tree / inner / p).stat().st_size > _MAX_SOURCE:
                raise GuestBuildError(f"{p} in {deb.name} is over {_MAX_SOURCE} bytes")
        try:
            os.rename(tree / inner, folder)
        except OSError:
            # Another build (a layer of another key in this cache) put them there first.
            if not all((folder / p).is_file() for p in paths):
                raise
    return folder


def _stream_extract(deb: Path, tarball: str, members: list[str], dest: Path) -> None:
    """dpkg-deb --fsys-tarfile | tar -xO <tarball> | xz -d | tar -x --occurrence=1 <members>: the last tar exits
    once it has every member, and the stages before it end on SIGPIPE."""
    stages = [["dpkg-deb", "--fsys-tarfile", str(deb)], ["tar", "-xOf", "-", tarball], ["xz", "-dc"]]
    procs: list[subprocess.Popen] = []
    stdin: IO[bytes] | None = None
    try:
        for argv in stages:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            if stdin is not None:
                stdin.close()
            stdin = proc.stdout
            procs.append(proc)
        last = subprocess.run(["tar", "-xf", "-", "-C", str(dest), "--occurrence=1", *members], stdin=stdin,
                              capture_output=True, text=True)
    except FileNotFoundError as e:
        raise GuestBuildError(f"{e.filename} not found (run scripts/setup.sh)") from e
    finally:
        if stdin is not None:
            stdin.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if last.returncode != 0:
        raise GuestBuildError(f"extracting {', '.join(members)} from {deb.name} failed: {last.stderr.strip()[-2000:]}")


def _prune(root: Path, keep: Path) -> None:
    """Drop layers of other keys unused for an hour (like the guests they belong to)."""
    cutoff = time.time() - 3600
    for other in root.glob(f"{LAYER}_*"):
        manifest = other / "manifest.json"
        if other != keep and other.is_dir() and (not manifest.exists() or manifest.stat().st_mtime < cutoff):
            shutil.rmtree(other, ignore_errors=True)
