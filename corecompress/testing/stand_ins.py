"""Stand-in models for the test kit, built through the registry (no plugin is imported here).

The core may not import plugins, so the kit asks the registry for a model component — by default the
built-in plugin's ``tiny_vit`` / ``tiny_cnn`` (seconds on CPU, prunable like real models) — and
builds it exactly as a recipe's ``model:`` section would.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from corecompress.plugin.registry import Registry

__all__ = ["stand_in_model", "stand_in_registry"]


@functools.lru_cache(maxsize=1)
def stand_in_registry() -> Registry:
    """The registry of the built-in plugin alone (loaded once), which provides the tiny models."""
    from corecompress.plugin.loading import load_plugins

    return load_plugins(autoload=False, require=("builtin",)).registry


def stand_in_model(name: str = "tiny_vit", registry: Registry | None = None,
                   **options: Any) -> tuple[torch.nn.Module, Any]:
    """(model, spec) of the model component ``name`` with ``options`` (as in a recipe's ``model:`` section).

    ``spec`` is the component's adapter: ``spec.input_size``, ``spec.prunable_groups(model, targets)``.
    ``registry`` defaults to :func:`stand_in_registry`; pass the full registry for other plugins' models.
    """
    component = (registry or stand_in_registry()).get("model", name, "model")
    spec = component.create(component.parse(dict(options), f"model.{name}"))
    return spec.build(), spec
