"""pytest plugin (entry point ``pytest11``): fixtures for plugin authors. Imports stay light."""
from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def corecompress_registry() -> Any:
    """The registry of every installed plugin (what ``corecompress plugins`` shows)."""
    from corecompress.plugin.loading import load_plugins

    return load_plugins().registry


@pytest.fixture
def contract_checks() -> Any:
    """The contract checks every registered component must pass (see corecompress.testing.contracts)."""
    from corecompress.testing import contracts

    return contracts
