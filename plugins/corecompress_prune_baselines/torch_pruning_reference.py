"""Torch-Pruning (Fang et al., CVPR 2023, "DepGraph: Towards Any Structural Pruning"; library
``torch-pruning``, MIT) as an external reference. Optional: ``pip install 'corecompress[torch-pruning]'``.

- :func:`torch_pruning_prune`: prune a model in place with Torch-Pruning's own magnitude pruner
  (``BasePruner`` + ``GroupMagnitudeImportance``) at a given ratio — for benchmarks that compare
  throughput against corecompress at the same budget.
- importance ``tp_magnitude``: Torch-Pruning's ``GroupMagnitudeImportance`` evaluated on the
  dependency group of each of our groups' producer layer, for groups whose units are that layer's
  output channels one-to-one (MLP ``neurons``, CNN ``filters``). Heads and FACES input channels are
  declined: Torch-Pruning's traced groups cannot express them (its qkv groups map channel indices
  one-to-one onto proj columns and the relative-position table, and its channel groups span the
  whole residual stream).

The library is imported lazily, inside the functions; absent, a one-line UserError says how to install it.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from corecompress.errors import UserError
from corecompress.pruning.groups import PrunableGroup

from corecompress_prune_baselines.units import parameter_slices

INSTALL_HINT = "Torch-Pruning is not installed: pip install 'corecompress[torch-pruning]' (or: pip install torch-pruning)"
_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def import_torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return torch_pruning


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Modules with a Linear ``qkv`` and an integer ``num_heads`` (timm ViT/Swin, the test kit)."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)]


def torch_pruning_prune(model: nn.Module, example_input: torch.Tensor, ratio: float, *, heads: bool = True,
                        head_ratio: float | None = None, global_pruning: bool = False, residual: bool = False,
                        p: int = 2, ignored_layers: Sequence[nn.Module] = (), round_to: int | None = None) -> nn.Module:
    """Prune ``model`` in place with Torch-Pruning's magnitude pruner and return it.

    - ``ratio``: Torch-Pruning's ``pruning_ratio`` (fraction of channels removed per layer group).
    - ``residual=False`` (default) lets only attention qkv layers and MLP ``fc1`` layers be group roots,
      i.e. heads and MLP neurons — what corecompress's ``heads``/``neurons`` targets remove. With
      ``residual=True`` the embedding width is pruned too (on timm's Swin this breaks PatchMerging).
      Models without attention modules: every layer but the output layer may be pruned.
    - ``heads``: remove whole heads (``head_ratio``, default ``ratio``); ``num_heads`` is set from the
      pruned qkv tensor. On timm's Swin, Torch-Pruning 1.6.1 removes no head (a warning says so).
    The output layer (the last Linear/Conv) is never pruned, so the output width stays.
    """
    tp = import_torch_pruning()
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    attention = attention_modules(model)
    ignored = list(ignored_layers) + layers[-1:]
    if attention and not residual:
        roots = {id(a.qkv) for a in attention} | {id(getattr(m, "fc1")) for m in model.modules()
                                                  if isinstance(getattr(m, "fc1", None), nn.Linear)}
        ignored += [m for m in layers if id(m) not in roots]
    head_kwargs: dict[str, Any] = {}
    if attention:
        head_kwargs = dict(num_heads={a.qkv: a.num_heads for a in attention}, prune_num_heads=heads,
                           prune_head_dims=False, head_pruning_ratio=ratio if head_ratio is None else head_ratio)
    pruner = tp.pruner.BasePruner(model, example_input, importance=tp.importance.GroupMagnitudeImportance(p=p),
                                  pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=ignored,
                                  round_to=round_to, **head_kwargs)
    head_dims = {a: a.qkv.out_features // (3 * a.num_heads) for a in attention}
    pruner.step()
    untouched = 0
    for a, head_dim in head_dims.items():
        # trust the tensors, not the pruner's bookkeeping: on timm's Swin, Torch-Pruning 1.6.1 halves
        # its num_heads record while leaving qkv/proj unpruned
        kept = a.qkv.out_features // (3 * head_dim)
        untouched += kept == a.num_heads
        a.num_heads = kept
        if hasattr(a, "head_dim"):
            a.head_dim = head_dim
    if heads and untouched:
        warnings.warn(f"Torch-Pruning removed no head in {untouched} of {len(attention)} attention modules")
    return model


@dataclass
class TPMagnitudeOptions:
    p: int = field(default=2, metadata={"help": "norm degree of Torch-Pruning's GroupMagnitudeImportance"})
    group_reduction: str = field(default="mean", metadata={"help": "how Torch-Pruning reduces over coupled layers"})


class TPMagnitudeImportance:
    """Torch-Pruning's group magnitude on the dependency group of each neuron/filter group (reference)."""


    def __init__(self, options: TPMagnitudeOptions) -> None:
        self.options = options

    def score(self, model: nn.Module, groups: list[PrunableGroup], context: Any) -> dict[str, torch.Tensor]:
        tp = import_torch_pruning()
        example = example_input(model, context)
        with warnings.catch_warnings():  # "Unwrapped parameters detected": about pruning them; nothing is pruned here
            warnings.filterwarnings("ignore", message="Unwrapped parameters", category=UserWarning)
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        importance = tp.importance.GroupMagnitudeImportance(p=self.options.p, normalizer=None,
                                                            group_reduction=self.options.group_reduction)
        scores = {}
        with torch.no_grad():
            for g in groups:
                producer = producer_layer(model, g)
                if producer is None:
                    continue
                prune_fn = tp.prune_linear_out_channels if isinstance(producer, nn.Linear) else tp.prune_conv_out_channels
                channels = producer.weight.shape[0]
                tp_group = graph.get_pruning_group(producer, prune_fn, idxs=list(range(channels)))
                scores[g.name] = importance(tp_group).detach().float().cpu()
        return scores


def producer_layer(model: nn.Module, group: PrunableGroup) -> nn.Module | None:
    """The Linear/Conv whose output channels are the group's units one-to-one, or None."""
    for sl, _p in parameter_slices(model, group):
        module_path, _, attr = sl.tensor.rpartition(".")
        module = model.get_submodule(module_path) if module_path else model
        if (attr == "weight" and sl.dim == 0 and isinstance(module, _LAYERS) and sl.offsets == (0,)
                and sl.width == 1 and module.weight.shape[0] == group.size):
            return module
    return None


def example_input(model: nn.Module, context: Any) -> torch.Tensor:
    """One input for tracing: zeros of ``model_spec.input_size``, else the first calibration image."""
    device = next(model.parameters()).device
    size = getattr(getattr(context, "model_spec", None), "input_size", None)
    if size is not None:
        return torch.zeros(1, *size, device=device)
    from corecompress_prune_baselines.objective import calibration

    return calibration(context)[0]["image"][:1].to(device)
