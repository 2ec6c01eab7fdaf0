"""A scratch site-packages for third-party test plugins, and a fresh once-per-process warning memory."""
from __future__ import annotations

import sys

import pytest


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to install fake distributions into (``tests_shared.fake_distribution``)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    for var in ("CORECOMPRESS_BLOCK_PLUGINS", "CORECOMPRESS_DISABLE_PLUGIN_AUTOLOAD", "CORECOMPRESS_STRICT_PLUGINS",
                "CORECOMPRESS_PLUGINS", "CORECOMPRESS_DEBUG_TRACEBACK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("corecompress.plugin.loading._WARNED", set())
    yield root
    for name in [m for m in sys.modules if m.startswith("thirdparty_")]:
        del sys.modules[name]
