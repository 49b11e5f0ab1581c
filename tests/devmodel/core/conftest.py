"""The core tests import their guest-memory helper by its bare name (`from core_guest import ...`):
this folder is a package (tests.devmodel.core), so put it on sys.path for them."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_guest import GuestRam  # noqa: E402  (found through the path set just above)


@pytest.fixture
def ram(request):
    """Guest RAM of the module's RAM_SIZE (1 MiB when it names none), checked for stray writes at the end."""
    r = GuestRam(getattr(request.module, "RAM_SIZE", 1 << 20))
    yield r
    assert r.guards_intact()
    r.close()
