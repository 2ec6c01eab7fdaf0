"""corecompress: compress face-analysis models (pruning + distillation) through plugins.

The core knows no method: FACES, AdaDistill, the baselines, the face models, data and
evaluators are plugins found through the ``corecompress`` entry-point group.
"""
from __future__ import annotations

__version__ = "0.1.0"

from corecompress.plugin.hookspecs import hookimpl  # the decorator plugins implement hooks with

__all__ = ["__version__", "hookimpl", "load"]


def load(path: str, map_location: str = "cpu", weights: str | None = None):  # noqa: ANN201 - an nn.Module
    """Rebuild an exported (possibly pruned) model: architecture + plan + weights.

    ``path``: a run directory, its ``architecture.json`` or an exported ``model.safetensors`` (which carries
    the architecture in its metadata); ``weights``: other weights for the same architecture. No recipe and
    no pickle are needed; see :mod:`corecompress.tools.export`.
    """
    from corecompress.tools.export import load_exported

    return load_exported(path, map_location=map_location, weights=weights)
