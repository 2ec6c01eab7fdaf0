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
        elif isinstance(module, nn.modules.batchnorm._NormBase) and module.weight is not None:  # noqa: SLF001
            module.num_features = module.weight.shape[0]
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
    for g in groups:
        if g.name not in plan.groups:
            continue
        keep = plan.keep_tensor(g.name)
        if len(keep) == g.size:
            continue
        for path in g.gather_inputs:
            _gather_linear(model, path, g, keep)
        for sl in g.slices:
            path, _, attr = sl.tensor.rpartition(".")
            t = getattr(model.get_submodule(path) if path else model, attr)
            index = sl.indices(keep).to(t.device)
            _set_tensor(model, sl.tensor, t.index_select(sl.dim, index).contiguous())
        for path, attr, *per_unit in g.attributes:
            setattr(model.get_submodule(path), attr, len(keep) * (per_unit[0] if per_unit else 1))
    _fix_sizes(model)
    for g in groups if fuse_norms else ():
        if g.name in plan.groups and g.meta.get(GATHERED_NORM) and len(g.gather_inputs) == 1:
            _fuse_norm(model, g.meta[GATHERED_NORM], g.gather_inputs[0])
    return model


def _fuse_norm(model: nn.Module, norm_path: str, linear_path: str) -> None:
    """LayerNorm → GatheredLinear as one :class:`NormGatheredLinear` (where the linear gathers at all)."""
    norm, linear = model.get_submodule(norm_path), model.get_submodule(linear_path)
    if not (isinstance(norm, nn.LayerNorm) and isinstance(linear, GatheredLinear) and norm.weight is not None):
        return
    fused = NormGatheredLinear(norm, linear, linear.input_index)
    fused.train(linear.training)
    _replace_module(model, linear_path, fused)
    _replace_module(model, norm_path, nn.Identity())


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
