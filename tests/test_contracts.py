"""Every registered component passes the contract checks of its kind."""
from __future__ import annotations

import pytest

from corecompress.plugin.loading import load_plugins
from corecompress.testing import contracts

REGISTRY = load_plugins().registry
COMPONENTS = [c for kind in contracts.CHECKS for c in REGISTRY.components[kind].values()]


@pytest.mark.parametrize("component", COMPONENTS, ids=[f"{c.kind}/{c.name}" for c in COMPONENTS])
def test_component_contract(component):
    contracts.check(component)


def test_contract_check_catches_a_broken_applier():
    """The applier contract fails for an applier that forgets to remove anything consistently."""
    from corecompress.plugin.registry import Component

    class Wrong:
        def apply(self, model, groups, plan, context):
            return model  # ignores the plan: output differs from the masked model

    comp = Component(kind="applier", name="wrong", factory=Wrong, options=None, plugin="test")
    with pytest.raises(AssertionError, match="differs from the masked model"):
        contracts.check(comp)


def test_contract_check_catches_an_impure_schedule():
    from corecompress.plugin.registry import Component

    class Drifting:
        calls = 0

        def __call__(self, step, total):
            Drifting.calls += 1
            return float(Drifting.calls)

    comp = Component(kind="schedule", name="drift", factory=Drifting, options=None, plugin="test")
    with pytest.raises(AssertionError, match="pure function"):
        contracts.check(comp)
