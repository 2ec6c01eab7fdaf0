"""Transformer blocks recognised by what they do, not by attribute names.

One recorded forward pass (:mod:`corecompress.pruning.trace`) and the modules' types and shapes are
read; names are never trusted. Attentions are found by :mod:`corecompress.pruning.transformer_heads`
(a head count and projections of matching shapes). An attention's *block* is its parent; the block's MLP is the first linear reading the
block width after the attention (two of them for SwiGLU's fc1_g/fc1_x; one of twice the hidden width
for GLU's chunked fc1) and the next linear after it. Per kind (Lajić et al., FACES, ICT Express 2026,
for channels; Michel et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019, for heads):

- ``channels``: the input columns of the projections fed by the norm right before them; that norm's
  γ is the group's ``scale`` (FACES). The norm keeps normalising all channels; removal gathers.
- ``heads``: a whole head (projection rows and columns and every per-head tensor), or where the
  attention's forward fixes its width, the head taken out of the projections only.
- ``neurons``: fc1 rows (+ bias; both halves of a GLU), per-channel tensors between fc1 and fc2
  (BatchNorm, depthwise convs as in PVT v2), fc2 columns.

Every block is probed on its recorded input (masked ≡ physical, :mod:`corecompress.pruning.verify`,
on randomised weights so zero-initialised tensors show); a kind that fails there is not offered for
that block and becomes a :class:`Refusal` with the reason (heads first fall back to the projections). Layer scale (``ls1.gamma``) acts on the
residual stream, which no kind here changes, so it needs no fix-up.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.trace import Trace, example_input, record_forward
from corecompress.pruning.transformer_heads import (
    AttentionLayout, attention_layout, heads_group, join_path, norm_width, projection_heads_group)
from corecompress.pruning.transformer_fixups import fold_split_qkv_biases, folds_split_biases
from corecompress.pruning.verify import ProbeResult, probe, randomise_weights, thinning_plan

KINDS = ("channels", "heads", "neurons")


@dataclass(frozen=True)
class Refusal:
    """A kind not offered for a block, and why."""

    block: str
    kind: str
    reason: str


@dataclass
class Finding:
    """The groups found, the blocks they belong to, the refusals, and (``partial``) the blocks whose
    heads come out of the projections only, with the reason the whole head could not."""

    groups: list[PrunableGroup] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    partial: list[Refusal] = field(default_factory=list)

    def refused(self, kind: str) -> list[Refusal]:
        return [r for r in self.refusals if r.kind == kind]


def _per_channel_norm(module: nn.Module) -> bool:
    """BatchNorm-like: statistics per channel, so removing a channel leaves the others unchanged."""
    return isinstance(module, nn.modules.batchnorm._NormBase)  # noqa: SLF001


def _feeds(norm_output: torch.Tensor, consumer_input: torch.Tensor) -> bool:
    """True when the consumer reads the norm's output: as is, reshaped or permuted (Swin's windows), or
    a part of it (CaiT's class token ``x[:, 0]``) — every value it reads is one the norm produced."""
    if consumer_input.numel() > norm_output.numel():
        return False
    if norm_output.shape == consumer_input.shape and torch.equal(norm_output, consumer_input):
        return True
    return bool(torch.isin(consumer_input.flatten(), norm_output.flatten()).all())


def _consumer_input(model: nn.Module, trace: Trace, consumer: str) -> tuple[int, object] | None:
    """(position, input) of a linear's call; for a qkv folded at removal (BEiT/EVA/SwinV2), its attention's."""
    if trace.position(consumer) < 0:
        attention, _, name = consumer.rpartition(".")
        if not folds_split_biases(model.get_submodule(attention), name):
            return None
        consumer = attention
    args = trace.calls[consumer][0]
    return trace.position(consumer), (args[0] if args else None)


def _feeding_norm(model: nn.Module, trace: Trace, consumer: str, block: str, width: int) -> str | None:
    """The norm in ``block`` whose output ``consumer`` reads (the nearest before it), or None."""
    found = _consumer_input(model, trace, consumer)
    if found is None:
        return None
    position, seen_in = found
    for name in reversed(trace.order[:position]):
        if not name.startswith(f"{block}."):
            continue
        module = model.get_submodule(name)
        if norm_width(module) != width or name not in trace.outputs:
            continue
        if isinstance(seen_in, torch.Tensor) and _feeds(trace.outputs[name], seen_in):
            return name
    return None


def _mlp_layout(model: nn.Module, block: str, attn: AttentionLayout, trace: Trace, width: int
                ) -> tuple[list[str], str, int, list[str]] | None:
    """(fc1 paths, fc2 path, hidden width, hidden-path leaves) of the MLP after ``attn`` in ``block``."""
    after = max(trace.position(n) for n in trace.order if n == attn.path or n.startswith(f"{attn.path}."))
    leaves = [n for n in trace.order[after + 1:] if n.startswith(f"{block}.")
              and not list(model.get_submodule(n).children())]
    linear_at = [i for i, n in enumerate(leaves) if isinstance(model.get_submodule(n), nn.Linear)]
    firsts = [i for i in linear_at if model.get_submodule(leaves[i]).in_features == width]
    if not firsts:
        return None
    start = firsts[0]
    fc1 = [leaves[start]]
    rest = [i for i in linear_at if i > start]
    if rest and model.get_submodule(leaves[rest[0]]).in_features == width:
        fc1.append(leaves[rest[0]])
        rest = rest[1:]
    if not rest:
        return None
    fc2 = leaves[rest[0]]
    outs = {model.get_submodule(p).out_features for p in fc1}
    hidden = model.get_submodule(fc2).in_features
    if len(outs) != 1 or hidden not in (next(iter(outs)), next(iter(outs)) // 2):
        return None
    between = leaves[leaves.index(fc1[-1]) + 1:rest[0]]
    return fc1, fc2, hidden, between


def _neurons_group(model: nn.Module, block: str, fc1: list[str], fc2: str, hidden: int,
                   between: list[str]) -> PrunableGroup | str:
    """fc1 rows (+ bias; both GLU halves), per-channel tensors on the way, fc2 columns — or why not."""
    slices, attributes = [], []
    for path in fc1:
        linear = model.get_submodule(path)
        offsets = (0, hidden) if linear.out_features == 2 * hidden else (0,)
        slices.append(Slice(f"{path}.weight", 0, offsets))
        if linear.bias is not None:
            slices.append(Slice(f"{path}.bias", 0, offsets))
    for path in between:
        module = model.get_submodule(path)
        tensors = [n for n, _ in module.named_parameters(recurse=False)]
        if not tensors:
            continue
        if _per_channel_norm(module) and module.num_features == hidden:
            tensors += [n for n, b in module.named_buffers(recurse=False) if b.dim() == 1]
        elif isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels == hidden \
                and module.out_channels == hidden:  # noqa: SLF001 - depthwise conv (PVT v2's MLP)
            attributes.append((path, "groups"))
        elif norm_width(module) == hidden:
            return f"{path} normalises all hidden units together; removing a neuron changes its statistics"
        else:
            return f"{path} ({type(module).__name__}) between {fc1[-1]} and {fc2} is not per-neuron"
        slices += [Slice(join_path(path, n), 0) for n in tensors]
    slices.append(Slice(f"{fc2}.weight", 1))
    return PrunableGroup(name=join_path(block, "mlp_hidden"), kind="neurons", size=hidden, block=block,
                         slices=tuple(slices), attributes=tuple(attributes))


def _channels_group(model: nn.Module, block: str, name: str, consumers: list[str], trace: Trace,
                    width: int) -> PrunableGroup | str:
    """Input columns of the consumers fed by the same norm (FACES' scale), gathered on removal."""
    called = [c for c in consumers if _consumer_input(model, trace, c) is not None]
    if not called:
        return f"{consumers[0]}'s weight is used outside its forward, so its inputs cannot be gathered"
    norm = _feeding_norm(model, trace, called[0], block, width)
    fed = [c for c in called if _feeding_norm(model, trace, c, block, width) == norm]
    return PrunableGroup(name=join_path(block, name), kind="channels", size=width, block=block,
                         scale=f"{norm}.weight" if norm else None,
                         slices=tuple(Slice(f"{c}.weight", 1) for c in fed), gather_inputs=tuple(fed))


def _block_groups(model: nn.Module, block: str, attn: AttentionLayout, trace: Trace,
                  targets: tuple[str, ...]) -> tuple[list[PrunableGroup], list[Refusal]]:
    groups: list[PrunableGroup | str] = []
    kinds: list[str] = []
    width = model.get_submodule(attn.inputs[0][0]).in_features
    mlp = _mlp_layout(model, block, attn, trace, width)
    if "channels" in targets:
        groups.append(_channels_group(model, block, "attn_in", [p for p, _ in attn.inputs], trace, width))
        kinds.append("channels")
        if mlp is not None:
            groups.append(_channels_group(model, block, "mlp_in", mlp[0], trace, width))
            kinds.append("channels")
    if "neurons" in targets:
        groups.append(_neurons_group(model, block, *mlp) if mlp else "no MLP (fc1 → fc2) found after the attention")
        kinds.append("neurons")
    found = [g for g in groups if isinstance(g, PrunableGroup)]
    refusals = list({k: Refusal(block, k, g) for k, g in zip(kinds, groups) if isinstance(g, str)}.values())
    if "heads" in targets and attn.heads > 1:  # candidates, tried in this order by the block probe
        whole = heads_group(model, block, attn, trace)
        if isinstance(whole, str):
            refusals.append(Refusal(block, "heads", whole))  # withdrawn if the projections-only group passes
        else:
            found.append(whole)
            if any(len(offsets) > 1 for _, offsets in attn.inputs):
                found.append(heads_group(model, block, attn, trace, head_major=True))
        found.append(projection_heads_group(model, block, attn))
    return found, refusals


def _relative(group: PrunableGroup, prefix: str) -> PrunableGroup:
    """The group with every path made relative to the module at ``prefix`` (for a block-level probe)."""
    cut = len(prefix) + 1

    def rel(path: str) -> str:
        return "" if path == prefix else path[cut:]
    return dataclasses.replace(
        group, name=rel(group.name), scale=None,
        slices=tuple(dataclasses.replace(s, tensor=rel(s.tensor)) for s in group.slices),
        gather_inputs=tuple(rel(p) for p in group.gather_inputs),
        scatter_outputs=tuple(rel(p) for p in group.scatter_outputs),
        attributes=tuple((rel(a[0]), *a[1:]) for a in group.attributes))


def _probe_block(model: nn.Module, block: str, attn: AttentionLayout, groups: list[PrunableGroup],
                 trace: Trace, refusals: list[Refusal]) -> tuple[list[PrunableGroup], list[Refusal], list[Refusal]]:
    """The groups that keep masked ≡ physical on the block's recorded input (per kind; for heads the
    first candidate that passes: both layouts of a fused qkv, then the projections-only group), the
    refusals left (``refusals`` are the ones found before probing), and why heads came out of the
    projections only where they did."""
    module = model.get_submodule(block)
    args, kwargs = trace.calls[block]
    attn_class = type(model.get_submodule(attn.path))
    kept, partial = [], []
    for kind in dict.fromkeys(g.kind for g in groups):
        candidates = [g for g in groups if g.kind == kind]
        options = [candidates] if kind != "heads" else [[g] for g in candidates]
        failure = None
        for members in options:
            rel = [_relative(g, block) for g in members]
            result = probe(module, rel, thinning_plan(rel), args, kwargs, prepare=randomise_weights,
                           after_physical=fold_split_qkv_biases)
            if result.ok:
                kept += members
                if members[0].meta.get("projections_only"):
                    earlier = [r for r in refusals if r.kind == kind]
                    refusals = [r for r in refusals if r.kind != kind]
                    why = earlier[0].reason if earlier else _reason(kind, attn, attn_class, failure)
                    partial.append(Refusal(block, kind, why))
                break
            failure = failure or result
        else:
            refusals = [r for r in refusals if r.kind != kind] + [
                Refusal(block, kind, _reason(kind, attn, attn_class, failure))]
    kept.sort(key=lambda g: KINDS.index(g.kind))  # attn_in, mlp_in, heads, mlp_hidden: the order of before
    return kept, refusals, partial


def _reason(kind: str, attn: AttentionLayout, attn_class: type, result: ProbeResult) -> str:
    """Why a kind fails its block probe, in words a user can act on."""
    if kind == "heads" and result.failure.startswith("the pruned model fails: RuntimeError: shape"):
        return (f"{attn.path} ({attn_class.__name__}) reshapes with the input width rather than "
                f"num_heads × head_dim ({result.failure})")
    return f"removing {kind} here: {result.describe()}"


def find_transformer_groups(model: nn.Module, input_size: tuple[int, ...],
                            targets: tuple[str, ...] | set[str] = KINDS, skip: set[str] | None = None) -> Finding:
    """Groups of every transformer block of ``model`` (input ``(C, H, W)``), each checked by a block probe.

    ``skip``: module paths whose blocks are left out (already described by someone else).
    """
    targets = tuple(k for k in KINDS if k in targets)
    finding = Finding()
    if not targets:
        return finding
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        trace = record_forward(model, example_input(tuple(input_size), device=device),
                               keep_output=lambda m: norm_width(m) is not None)
    except Exception as exc:  # noqa: BLE001 - said as a refusal, never raised
        text = (str(exc).strip().splitlines() or [""])[0][:160]
        reason = f"the model's forward fails on a batch of 2 of {tuple(input_size)} ({type(exc).__name__}: {text})"
        finding.refusals = [Refusal("model", k, reason) for k in targets]
        return finding
    taken: set[str] = set(skip or ())
    for path, module in model.named_modules():
        if not path or trace.position(path) < 0:
            continue
        attn = attention_layout(path, module, trace)
        if attn is None:
            continue
        block = path.rpartition(".")[0]
        if not block or block in taken or trace.position(block) < 0:
            continue
        taken.add(block)
        try:
            groups, refusals = _block_groups(model, block, attn, trace, targets)
            kept, refusals, partial = _probe_block(model, block, attn, groups, trace, refusals)
        except Exception as exc:  # noqa: BLE001 - a layout this finder misreads is refused, never a crash
            text = (str(exc).strip().splitlines() or [""])[0][:160]
            kept, partial = [], []
            refusals = [Refusal(block, k, f"not understood ({type(exc).__name__}: {text})") for k in targets]
        finding.groups += kept
        finding.refusals += refusals
        finding.partial += partial
        finding.blocks.append(block)
    return finding
