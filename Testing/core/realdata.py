"""Where the real volumes of ../shared/data live; tests skip with a clear message without them.

Not a test module; core tests import it (pytest puts this folder on sys.path). A plain module name,
not ``conftest``, because Testing/slicer has a conftest of its own and the names would clash.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("GVSL_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a clear message."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the ../shared/data folder is absent)")
    return path
