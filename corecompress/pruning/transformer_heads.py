"""Attention heads recognised by shape: the q/k/v and output projections, and every per-head tensor.

An attention is a module with a head count (``num_heads``, ``heads``, ``n_heads``) whose child linears
are input projections of ``k·inner`` rows (a fused [q|k|v] of 3·inner, q/k/v of inner each, or q + kv
of 2·inner as in PVT) and one output projection reading ``inner`` = heads × head_dim features (Michel
et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019, prune such heads). Two groups per
attention: the whole head (:func:`heads_group`) and, for forwards that fix their width, the head taken
out of the projections only (:func:`projection_heads_group`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.trace import Trace

HEAD_COUNT_ATTRS = ("num_heads", "heads", "n_heads")
INNER_WIDTH_ATTRS = ("attn_dim", "all_head_dim", "inner_dim")


@dataclass
class AttentionLayout:
    """Where an attention's projections are: ``inputs`` carry the offsets of q/k/v in their rows."""

    path: str
    heads: int
    head_dim: int
    inputs: list[tuple[str, tuple[int, ...]]]   # (linear path, offsets of q/k/v in its rows)
    proj: str

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim


def join_path(*parts: str) -> str:
    """Dotted module path of the non-empty parts."""
    return ".".join(p for p in parts if p)


def norm_width(module: nn.Module) -> int | None:
    """The feature count of a normalisation layer (any class whose name says Norm, with a 1-D weight)."""
    if "norm" not in type(module).__name__.lower():
        return None
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


def head_count(module: nn.Module) -> int | None:
    """The module's head-count attribute, if it has one."""
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def attention_layout(path: str, module: nn.Module, trace: Trace) -> AttentionLayout | None:
    """The q/k/v and output projections of ``module`` by their shapes, or None if it is no attention."""
    heads = head_count(module)
    if heads is None:
        return None
    linears = [(n, c) for n, c in module.named_children() if isinstance(c, nn.Linear)]
    by_last_run = sorted(linears, key=lambda nc: trace.position(join_path(path, nc[0])), reverse=True)
    for proj_name, proj in by_last_run:
        inner = proj.in_features
        if inner % heads or inner == heads:
            continue
        inputs = [(n, c.out_features // inner) for n, c in linears
                  if n != proj_name and c.out_features in (inner, 2 * inner, 3 * inner) and c.in_features != heads]
        if sum(k for _, k in inputs) >= 3:
            return AttentionLayout(path, heads, inner // heads,
                                   [(join_path(path, n), tuple(i * inner for i in range(k))) for n, k in inputs],
                                   join_path(path, proj_name))
    return None


def heads_group(model: nn.Module, block: str, attn: AttentionLayout, trace: Trace,
                 head_major: bool = False) -> PrunableGroup | str:
    """The heads group of ``attn``, or the reason there is none. ``head_major``: a fused projection's
    rows are [q_h | k_h | v_h] per head (timm's MaxViT ``head_first``) instead of [q | k | v]."""
    d, inner, heads = attn.head_dim, attn.inner, attn.heads
    slices, attributes = [], []
    for path, offsets in attn.inputs:
        linear = model.get_submodule(path)
        offsets, width = ((0,), d * len(offsets)) if head_major else (offsets, d)
        slices.append(Slice(f"{path}.weight", 0, offsets, width))
        if linear.bias is not None:
            slices.append(Slice(f"{path}.bias", 0, offsets, width))
    slices.append(Slice(f"{attn.proj}.weight", 1, (0,), d))
    projections = {p for p, _ in attn.inputs} | {attn.proj}
    last_input = max(trace.position(p) for p, _ in attn.inputs)
    last_input = last_input if last_input >= 0 else trace.position(attn.path)
    for name, module in model.get_submodule(attn.path).named_modules():
        path = join_path(attn.path, name)
        if path in projections or isinstance(module, nn.modules.conv._ConvNd):  # noqa: SLF001 - input-side convs
            continue
        for attr in HEAD_COUNT_ATTRS:
            if getattr(module, attr, None) == heads:
                attributes.append((path, attr))
        shape = getattr(module, "bias_shape", None)
        if isinstance(shape, tuple) and shape and shape[-1] == heads:
            attributes.append((path, "bias_shape", 1, len(shape) - 1))
        if isinstance(module, nn.Linear):
            slices += _linear_head_slices(path, module, heads)
            continue
        width = norm_width(module)
        if width is not None:
            if width == inner and trace.position(path) > last_input:
                return f"{path} normalises all heads' outputs together; removing a head changes its statistics"
            continue  # q/k norms over head_dim are shared by every head; input-side norms are not per head
        slices += _owned_head_slices(path, module, heads, inner, d)
    for attr in INNER_WIDTH_ATTRS:
        if getattr(model.get_submodule(attn.path), attr, None) == inner:
            attributes.append((attn.path, attr, d))
    return PrunableGroup(name=join_path(block, "heads"), kind="heads", size=heads, block=block, slices=tuple(slices),
                         attributes=tuple(dict.fromkeys(attributes)), meta={"head_dim": d})


def projection_heads_group(model: nn.Module, block: str, attn: AttentionLayout) -> PrunableGroup:
    """Heads taken out of the projections only: q/k/v rows (+ biases, split q/v biases) and output-projection
    columns, the attention core still running every head on zeros. Exact for any forward — the
    projections write the kept rows back into their full width and the output projection gathers."""
    d, inner = attn.head_dim, attn.inner
    slices = []
    for path, offsets in attn.inputs:
        slices.append(Slice(f"{path}.weight", 0, offsets, d))
        if model.get_submodule(path).bias is not None:
            slices.append(Slice(f"{path}.bias", 0, offsets, d))
    module = model.get_submodule(attn.path)
    for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if tensor.is_floating_point() and tensor.dim() == 1 and tensor.numel() == inner:  # q_bias, k_bias, v_bias
            slices.append(Slice(join_path(attn.path, name), 0, (0,), d))
    slices.append(Slice(f"{attn.proj}.weight", 1, (0,), d))
    return PrunableGroup(name=join_path(block, "heads"), kind="heads", size=attn.heads, block=block, slices=tuple(slices),
                         scatter_outputs=tuple(p for p, _ in attn.inputs), gather_inputs=(attn.proj,),
                         meta={"head_dim": d, "projections_only": True})


def _linear_head_slices(path: str, linear: nn.Linear, heads: int) -> list[Slice]:
    """A linear producing one value per head (SwinV2's cpb MLP, timm's RelPosMlp), or mixing heads (talking heads)."""
    slices = []
    if linear.out_features == heads:
        slices.append(Slice(f"{path}.weight", 0))
        if linear.bias is not None:
            slices.append(Slice(f"{path}.bias", 0))
        if linear.in_features == heads:
            slices.append(Slice(f"{path}.weight", 1))
    return slices


def _owned_head_slices(path: str, module: nn.Module, heads: int, inner: int, head_dim: int) -> list[Slice]:
    """Per-head tensors a module owns: a dim of ``inner`` (q_bias, v_bias) or of ``heads`` (tables, scales)."""
    slices = []
    owned = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    for name, tensor in owned:
        if not tensor.is_floating_point():
            continue
        for dim, n in enumerate(tensor.shape):
            if n == inner:
                slices.append(Slice(join_path(path, name), dim, (0,), head_dim))
                break
            if n == heads:
                slices.append(Slice(join_path(path, name), dim))
                break
    return slices
