"""Suite-wide test setup. Keep this minimal: fixtures live in each folder's conftest.py.

Endpoints of the local servers are in `tests/services.py`; start the servers with
`bash scripts/services.sh up`. Tests that need them are marked `services`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Make `tests.*` importable however pytest is launched (`pytest` or `python -m pytest`).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
