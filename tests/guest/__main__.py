"""`python -m tests.guest`: build (or find) the cached guest and print its paths as JSON."""

import json

from .build import build_guest_image

image = build_guest_image()
print(json.dumps({
    "kernel": str(image.kernel),
    "bzimage": str(image.bzimage),
    "initrd": str(image.initrd),
    "cmdline": image.cmdline,
    "kernel_version": image.kernel_version,
    "modules": image.modules,
}, indent=2))
