"""`acrnmgr image build`: a bootable guest from Debian's packages (acrnmgr.images.user)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from acrnmgr.cli.common import fail

app = typer.Typer(no_args_is_help=True, help="Build bootable guest images from Debian's packages.")


def _say(message: str) -> None:
    typer.echo(f"image: {message}", err=True)


@app.command()
def build(
    directory: Optional[Path] = typer.Option(
        None, "--dir", metavar="DIR",
        help="Where to write the image (default: ~/.cache/acrnmgr/images/debian, "
             "which examples/linux-qemu.yaml uses)."),
    data_size: str = typer.Option("64M", "--data-size", metavar="SIZE", help="Size of a new data disk (M or G)."),
    new_disk: bool = typer.Option(False, "--new-disk", help="Replace an existing data disk with an empty one."),
    gpio_i2c: bool = typer.Option(
        False, "--gpio-i2c",
        help="Add the virtio-gpio and virtio-i2c guest drivers (built out of tree against the kernel's headers: "
             "Debian's kernels lack them), with i2c-dev, at24 and lm75; the guest loads them at boot. The first "
             "build downloads the kernel source and headers packages (~155 MB) and takes about 20 s."),
) -> None:
    """Build a Linux guest: Debian's kernel, a busybox initramfs with a shell on the console, the network up on
    every virtio-net interface, and a raw data disk (ext2, mounted on /data).

    Needs apt-get, dpkg-deb and busybox-static (scripts/setup.sh installs them). The kernel is cached; a second
    build takes about a second and keeps the data disk."""
    from acrnmgr.images.build import GuestBuildError
    from acrnmgr.images.user import build_user_image

    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = data_size.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        size = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
    except ValueError:
        fail(f"--data-size {data_size!r}: give a size such as 64M or 1G", 2)
    try:
        image = build_user_image(directory, data_size=size, new_disk=new_disk, gpio_i2c=gpio_i2c, progress=_say)
    except GuestBuildError as exc:
        fail(f"image build failed: {exc}")
    except OSError as exc:
        fail(f"image build failed: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    _say("done")
    typer.echo(f"kernel  {image.kernel}\nbzImage {image.bzimage}\ninitrd  {image.initrd}\ndata    {image.data}")
