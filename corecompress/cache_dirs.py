"""Where corecompress keeps what it can rebuild: ``$CORECOMPRESS_CACHE`` when set, else ``~/.cache/corecompress``.

One folder per kind of cache below that root (``teacher`` for teacher embeddings, ``recordio`` for
RecordIO index and label caches). Nothing is ever cached inside a user's data folder unless the user
names such a folder as a cache directory.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CORECOMPRESS_CACHE"


def cache_root() -> Path:
    """The root of every corecompress cache (``$CORECOMPRESS_CACHE`` or ``~/.cache/corecompress``)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "corecompress"


def cache_dir(kind: str) -> Path:
    """The default folder of one kind of cache, e.g. ``cache_dir("teacher")``."""
    return cache_root() / kind
