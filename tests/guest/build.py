"""The test guest's builder lives in the package (acrnmgr.images.build), shared with `acrnmgr image build`."""

from acrnmgr.images.build import (  # noqa: F401
    DEFAULT_CMDLINE,
    WANTED_MODULES,
    GuestBuildError,
    GuestImage,
    build_guest_image,
    cache_root,
    extract_vmlinux,
    initrd_with_script,
    modinfo,
    resolve_kernel_package,
    resolve_modules,
    shared_libraries,
    wants_fio,
)
