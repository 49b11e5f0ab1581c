"""The core tests import their guest-memory helper by its bare name (`from core_guest import ...`):
this folder is a package (tests.devmodel.core), so put it on sys.path for them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
