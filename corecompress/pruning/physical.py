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

from corecompress.pruning.fused_norm import NormGatheredLinear
from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.plan import PruningPlan

#: ``PrunableGroup.meta`` key: the LayerNorm whose output only the group's gathered linear reads (a
#: pre-norm block's norm1 / norm2), so the two may become one :class:`NormGatheredLinear`.
GATHERED_NORM = "gathered_norm"


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


class ScatteringLinear(GatheredLinear):
    """A :class:`GatheredLinear` whose kept output rows are written back at ``output_index`` of
    ``out_total`` zeros, for a consumer that reads the full width (an attention still running every head)."""

    def __init__(self, in_total: int, index: torch.Tensor, out_total: int, output_index: torch.Tensor,
                 bias: bool = True, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(in_total, index, out_total, bias=bias, device=device, dtype=dtype)
        self.out_total = out_total
        self.register_buffer("output_index", output_index.clone().to(device=device, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = super().forward(x)
        return kept.new_zeros((*kept.shape[:-1], self.out_total)).index_copy(-1, self.output_index, kept)

    def extra_repr(self) -> str:
        return f"scatters {self.out_features} of {self.out_total} outputs, " + super().extra_repr()


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
def apply_physical(model: nn.Module, groups: list[PrunableGroup], plan: PruningPlan,
                   fuse_norms: bool = False) -> nn.Module:
    """Remove the planned units from ``model`` in place and return it.

    ``fuse_norms``: a gathered linear and the LayerNorm that only it reads become one
    :class:`~corecompress.pruning.fused_norm.NormGatheredLinear` (opt-in: it was not measured faster in
    a whole model; see that module). Reloading such a model needs the same flag.
    """
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
        for path in g.scatter_outputs:
            _scatter_linear(model, path, g, keep)
        dropped = _dropped_units(g.size, keep)
        for sl in g.slices:
            removed.setdefault((sl.tensor, sl.dim), []).append(sl.indices(dropped))
        for path, attr, *rest in g.attributes:
            _set_attribute(model.get_submodule(path), attr, len(keep), *rest)
    for (name, dim), parts in removed.items():  # once per tensor and dim: the indices of every group are original
        _remove_indices(model, name, dim, torch.cat(parts))
    _fix_sizes(model)
    from corecompress.pruning.transformer_fixups import fold_split_qkv_biases  # imports this module

    fold_split_qkv_biases(model)  # BEiT/EVA/SwinV2 bypass a gathering qkv unless their q/v biases are folded
    for g in groups if fuse_norms else ():
        if g.name in plan.groups and g.meta.get(GATHERED_NORM) and len(g.gather_inputs) == 1:
            _fuse_norm(model, g.meta[GATHERED_NORM], g.gather_inputs[0])
    return model


def _set_attribute(module: nn.Module, attr: str, kept: int, per_unit: int = 1, position: int | None = None) -> None:
    """``attr`` = kept units × ``per_unit``; for a tuple attribute (timm's ``bias_shape``), its entry ``position``."""
    value = kept * per_unit
    if position is not None:
        old = list(getattr(module, attr))
        old[position] = value
        value = tuple(old)
    setattr(module, attr, value)


def _weight_indices(group: PrunableGroup, path: str, dim: int, keep: torch.Tensor) -> torch.Tensor:
    """The indices the group keeps of ``path``'s weight along ``dim`` (the units themselves if unlisted)."""
    for sl in group.slices:
        if sl.tensor == f"{path}.weight" and sl.dim == dim:
            return sl.indices(keep)
    return keep


def _scatter_linear(model: nn.Module, path: str, group: PrunableGroup, keep: torch.Tensor) -> None:
    """Make the linear at ``path`` write its kept output rows back into its full width (rows sliced by the group)."""
    old = model.get_submodule(path)
    if isinstance(old, ScatteringLinear) or not isinstance(old, nn.Linear):
        raise TypeError(f"group {group.name}: scatter_outputs {path} is {type(old).__name__}, not a plain nn.Linear")
    gathered = isinstance(old, GatheredLinear)
    in_index = old.input_index if gathered else torch.arange(old.in_features, device=old.weight.device)
    new = ScatteringLinear(old.in_total if gathered else old.in_features, in_index, old.out_features,
                           _weight_indices(group, path, 0, keep), bias=old.bias is not None,
                           device=old.weight.device, dtype=old.weight.dtype)
    new.weight = old.weight
    if old.bias is not None:
        new.bias = old.bias
    new.in_features = old.in_features
    new.train(old.training)
    _replace_module(model, path, new)


def _fuse_norm(model: nn.Module, norm_path: str, linear_path: str) -> None:
    """LayerNorm → GatheredLinear as one :class:`NormGatheredLinear` (where the linear gathers at all)."""
    norm, linear = model.get_submodule(norm_path), model.get_submodule(linear_path)
    if not (isinstance(norm, nn.LayerNorm) and isinstance(linear, GatheredLinear) and norm.weight is not None):
        return
    fused = NormGatheredLinear(norm, linear, linear.input_index)
    fused.train(linear.training)
    _replace_module(model, linear_path, fused)
    _replace_module(model, norm_path, nn.Identity())


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
    keep = _weight_indices(group, path, 1, keep)
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
