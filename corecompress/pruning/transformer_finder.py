"""Transformer blocks recognised by what they do, not by attribute names.

One recorded forward pass (:mod:`corecompress.pruning.trace`) and the modules' types and shapes are
read; names are never trusted. An *attention* is a module with a head count (``num_heads``) whose
child linears are input projections of width ``k·inner`` (a fused [q|k|v] of 3·inner, q/k/v of
inner each, or q + kv of 2·inner as in PVT) and one output projection reading ``inner`` =
heads × head_dim features. Its *block* is its parent; the block's MLP is the first linear reading the
block width after the attention (two of them for SwiGLU's fc1_g/fc1_x; one of twice the hidden width
for GLU's chunked fc1) and the next linear after it. Per kind (Lajić et al., FACES, ICT Express 2026,
for channels; Michel et al., "Are Sixteen Heads Really Better than One?", NeurIPS 2019, for heads):

- ``channels``: the input columns of the projections fed by the norm right before them; that norm's
  γ is the group's ``scale`` (FACES). The norm keeps normalising all channels; removal gathers.
- ``heads``: the projections' rows of each head (+ biases, and separate q/k/v biases such as BEiT's
  ``q_bias``/``v_bias``), the output projection's columns, and every per-head tensor in the attention:
  relative-position tables (entries, heads), SwinV2's continuous-position MLP output and
  ``logit_scale`` (heads, 1, 1), XCiT's temperature, talking-heads mixers (heads × heads). Head counts
  (``num_heads`` and timm's ``bias_shape``) and timm's ``attn_dim`` follow. head_dim never changes,
  so rotary embeddings stay valid.
- ``neurons``: fc1 rows (+ bias; both halves of a GLU), per-channel tensors between fc1 and fc2
  (BatchNorm, depthwise convs as in PVT v2), fc2 columns.

Every block is probed on its recorded input (masked ≡ physical, :mod:`corecompress.pruning.verify`,
on randomised weights so zero-initialised tensors show); a kind that fails there is not offered for
that block and becomes a :class:`Refusal` with the reason. Layer scale (``ls1.gamma``) acts on the
residual stream, which no kind here changes, so it needs no fix-up.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.trace import Trace, example_input, record_forward
from corecompress.pruning.transformer_fixups import fold_split_qkv_biases, folds_split_biases
from corecompress.pruning.verify import ProbeResult, probe, randomise_weights, thinning_plan

KINDS = ("channels", "heads", "neurons")
HEAD_COUNT_ATTRS = ("num_heads", "heads", "n_heads")
INNER_WIDTH_ATTRS = ("attn_dim", "all_head_dim", "inner_dim")


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


@dataclass
class _Attention:
    path: str
    heads: int
    head_dim: int
    inputs: list[tuple[str, tuple[int, ...]]]   # (linear path, offsets of q/k/v in its rows)
    proj: str

    @property
    def inner(self) -> int:
        return self.heads * self.head_dim


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _norm_width(module: nn.Module) -> int | None:
    """The feature count of a normalisation layer (any class whose name says Norm, with a 1-D weight)."""
    if "norm" not in type(module).__name__.lower():
        return None
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if isinstance(weight, torch.Tensor) and weight.dim() == 1 else None


def _per_channel_norm(module: nn.Module) -> bool:
    """BatchNorm-like: statistics per channel, so removing a channel leaves the others unchanged."""
    return isinstance(module, nn.modules.batchnorm._NormBase)  # noqa: SLF001


def _head_count(module: nn.Module) -> int | None:
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


def _attention_layout(path: str, module: nn.Module, trace: Trace) -> _Attention | None:
    """The q/k/v and output projections of ``module`` by their shapes, or None if it is no attention."""
    heads = _head_count(module)
    if heads is None:
        return None
    linears = [(n, c) for n, c in module.named_children() if isinstance(c, nn.Linear)]
    by_last_run = sorted(linears, key=lambda nc: trace.position(_join(path, nc[0])), reverse=True)
    for proj_name, proj in by_last_run:
        inner = proj.in_features
        if inner % heads or inner == heads:
            continue
        inputs = [(n, c.out_features // inner) for n, c in linears
                  if n != proj_name and c.out_features in (inner, 2 * inner, 3 * inner) and c.in_features != heads]
        if sum(k for _, k in inputs) >= 3:
            return _Attention(path, heads, inner // heads,
                              [(_join(path, n), tuple(i * inner for i in range(k))) for n, k in inputs],
                              _join(path, proj_name))
    return None


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
        if _norm_width(module) != width or name not in trace.outputs:
            continue
        if isinstance(seen_in, torch.Tensor) and _feeds(trace.outputs[name], seen_in):
            return name
    return None


def _heads_group(model: nn.Module, block: str, attn: _Attention, trace: Trace,
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
        path = _join(attn.path, name)
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
        width = _norm_width(module)
        if width is not None:
            if width == inner and trace.position(path) > last_input:
                return f"{path} normalises all heads' outputs together; removing a head changes its statistics"
            continue  # q/k norms over head_dim are shared by every head; input-side norms are not per head
        slices += _owned_head_slices(path, module, heads, inner, d)
    for attr in INNER_WIDTH_ATTRS:
        if getattr(model.get_submodule(attn.path), attr, None) == inner:
            attributes.append((attn.path, attr, d))
    return PrunableGroup(name=_join(block, "heads"), kind="heads", size=heads, block=block, slices=tuple(slices),
                         attributes=tuple(dict.fromkeys(attributes)), meta={"head_dim": d})


def _projection_heads_group(model: nn.Module, block: str, attn: _Attention) -> PrunableGroup:
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
            slices.append(Slice(_join(attn.path, name), 0, (0,), d))
    slices.append(Slice(f"{attn.proj}.weight", 1, (0,), d))
    return PrunableGroup(name=_join(block, "heads"), kind="heads", size=attn.heads, block=block, slices=tuple(slices),
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
                slices.append(Slice(_join(path, name), dim, (0,), head_dim))
                break
            if n == heads:
                slices.append(Slice(_join(path, name), dim))
                break
    return slices


def _mlp_layout(model: nn.Module, block: str, attn: _Attention, trace: Trace, width: int
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
        elif _norm_width(module) == hidden:
            return f"{path} normalises all hidden units together; removing a neuron changes its statistics"
        else:
            return f"{path} ({type(module).__name__}) between {fc1[-1]} and {fc2} is not per-neuron"
        slices += [Slice(_join(path, n), 0) for n in tensors]
    slices.append(Slice(f"{fc2}.weight", 1))
    return PrunableGroup(name=_join(block, "mlp_hidden"), kind="neurons", size=hidden, block=block,
                         slices=tuple(slices), attributes=tuple(attributes))


def _channels_group(model: nn.Module, block: str, name: str, consumers: list[str], trace: Trace,
                    width: int) -> PrunableGroup | str:
    """Input columns of the consumers fed by the same norm (FACES' scale), gathered on removal."""
    called = [c for c in consumers if _consumer_input(model, trace, c) is not None]
    if not called:
        return f"{consumers[0]}'s weight is used outside its forward, so its inputs cannot be gathered"
    norm = _feeding_norm(model, trace, called[0], block, width)
    fed = [c for c in called if _feeding_norm(model, trace, c, block, width) == norm]
    return PrunableGroup(name=_join(block, name), kind="channels", size=width, block=block,
                         scale=f"{norm}.weight" if norm else None,
                         slices=tuple(Slice(f"{c}.weight", 1) for c in fed), gather_inputs=tuple(fed))


def _block_groups(model: nn.Module, block: str, attn: _Attention, trace: Trace,
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
        whole = _heads_group(model, block, attn, trace)
        if isinstance(whole, str):
            refusals.append(Refusal(block, "heads", whole))  # withdrawn if the projections-only group passes
        else:
            found.append(whole)
            if any(len(offsets) > 1 for _, offsets in attn.inputs):
                found.append(_heads_group(model, block, attn, trace, head_major=True))
        found.append(_projection_heads_group(model, block, attn))
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


def _probe_block(model: nn.Module, block: str, attn: _Attention, groups: list[PrunableGroup],
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


def _reason(kind: str, attn: _Attention, attn_class: type, result: ProbeResult) -> str:
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
                               keep_output=lambda m: _norm_width(m) is not None)
    except Exception as exc:  # noqa: BLE001 - said as a refusal, never raised
        text = (str(exc).strip().splitlines() or [""])[0][:160]
        reason = f"the model's forward fails on a batch of 2 of {tuple(input_size)} ({type(exc).__name__}: {text})"
        finding.refusals = [Refusal("model", k, reason) for k in targets]
        return finding
    taken: set[str] = set(skip or ())
    for path, module in model.named_modules():
        if not path or trace.position(path) < 0:
            continue
        attn = _attention_layout(path, module, trace)
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
