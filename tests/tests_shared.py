"""Locating ../shared/data for tests that need real files (skip with a clear message when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CORECOMPRESS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data missing: {path} (set CORECOMPRESS_SHARED_DATA)")
    return path
