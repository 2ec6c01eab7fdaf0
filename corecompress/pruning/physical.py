"""Physical removal: a really smaller model built from the same plan as the soft masks.

Generic slicing of every tensor a group lists, then size fix-ups of standard layers (Linear,
Conv, norms), the group's declared attributes (``num_heads``), and input gathering for linears whose
producer keeps all its features (FACES: LayerNorm over all C, then only the kept channels feed a
sliced qkv). Anything else is the model adapter's job in the ``after_physical_prune`` hook.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.plan import PruningPlan


class GatheredLinear(nn.Linear):
    """A Linear that first keeps only the input features in ``input_index`` (a buffer, so it is saved)."""

    def __init__(self, in_total: int, index: torch.Tensor, out_features: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(len(index), out_features, bias=bias, device=device, dtype=dtype)
        self.in_total = in_total
        self.register_buffer("input_index", index.clone().to(device=device, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.input_index), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"gathers {self.in_features} of {self.in_total} inputs, " + super().extra_repr()


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = value  # noqa: SLF001 - replacing a registered buffer in place


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def _fix_sizes(model: nn.Module) -> None:
    """Make standard layers' size attributes agree with their (sliced) tensors."""
    for module in model.modules():
        if isinstance(module, GatheredLinear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.modules.conv._ConvNd):  # noqa: SLF001
            module.out_channels = module.weight.shape[0]
            module.in_channels = module.weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._NormBase):  # noqa: SLF001
            stats = module.weight if module.weight is not None else module.running_mean
            if stats is not None:
                module.num_features = stats.shape[0]
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)


@torch.no_grad()
def apply_physical(model: nn.Module, groups: list[PrunableGroup], plan: PruningPlan) -> nn.Module:
    """Remove the planned units from ``model`` in place and return it."""
    plan.check(groups)
    removed: dict[tuple[str, int], list[torch.Tensor]] = {}
    for g in groups:
        if g.name not in plan.groups:
            continue
        keep = plan.keep_tensor(g.name)
        if len(keep) == g.size:
            continue
        for path in g.gather_inputs:
            _gather_linear(model, path, g, keep)
        dropped = _dropped_units(g.size, keep)
        for sl in g.slices:
            removed.setdefault((sl.tensor, sl.dim), []).append(sl.indices(dropped))
        for path, attr, *per_unit in g.attributes:
            setattr(model.get_submodule(path), attr, len(keep) * (per_unit[0] if per_unit else 1))
    for (name, dim), parts in removed.items():  # once per tensor and dim: the indices of every group are original
        _remove_indices(model, name, dim, torch.cat(parts))
    _fix_sizes(model)
    return model


def _dropped_units(size: int, keep: torch.Tensor) -> torch.Tensor:
    kept = torch.zeros(size, dtype=torch.bool)
    kept[keep] = True
    return torch.nonzero(~kept).flatten()


def _remove_indices(model: nn.Module, name: str, dim: int, dropped: torch.Tensor) -> None:
    """Delete the ``dropped`` indices of tensor ``name`` along ``dim`` (several groups may share a tensor
    and a dim at different offsets, e.g. the inputs of a conv after a concatenation)."""
    path, _, attr = name.rpartition(".")
    t = getattr(model.get_submodule(path) if path else model, attr)
    kept = torch.ones(t.shape[dim], dtype=torch.bool)
    kept[dropped] = False
    index = torch.nonzero(kept).flatten().to(t.device)
    _set_tensor(model, name, t.index_select(dim, index).contiguous())


def _gather_linear(model: nn.Module, path: str, group: PrunableGroup, keep: torch.Tensor) -> None:
    """Make the linear at ``path`` read only the kept inputs (its weight columns are sliced by the group)."""
    old = model.get_submodule(path)
    if isinstance(old, GatheredLinear):
        index = old.input_index[keep.to(old.input_index.device)]
        old.input_index = index
        return
    if not isinstance(old, nn.Linear):
        raise TypeError(f"group {group.name}: gather_inputs {path} is {type(old).__name__}, not nn.Linear")
    new = GatheredLinear(old.in_features, keep, old.out_features, bias=old.bias is not None,
                         device=old.weight.device, dtype=old.weight.dtype)
    new.weight = old.weight
    if old.bias is not None:
        new.bias = old.bias
    new.in_features = old.in_features  # the group's slice of the weight shrinks it next; _fix_sizes syncs
    new.train(old.training)
    _replace_module(model, path, new)
