"""Prunable groups of a pre-norm transformer block (ViT, Swin, the test kit's tiny ViT).

One helper serves every adapter whose blocks have ``norm1 → attn(qkv, proj) → norm2 → mlp(fc1, fc2)``
with a fused qkv laid out [q | k | v], each head-major — the layout of timm's ViT and Swin.
"""
from __future__ import annotations

from corecompress.pruning.groups import PrunableGroup, Slice
from corecompress.pruning.physical import GATHERED_NORM

TARGETS = ("channels", "heads", "neurons")


def block_groups(block: str, *, dim: int, num_heads: int, head_dim: int, hidden: int,
                 targets: tuple[str, ...] | set[str] = TARGETS, qkv_bias: bool = True,
                 rel_pos_table: str | None = None, norm1: str = "norm1", norm2: str = "norm2",
                 attn: str = "attn", qkv: str = "qkv", proj: str = "proj", mlp: str = "mlp",
                 fc1: str = "fc1", fc2: str = "fc2") -> list[PrunableGroup]:
    """Groups of one block at module path ``block``.

    - ``channels`` (FACES): the C input columns of qkv (scored by norm1.γ) and of fc1 (norm2.γ); the
      norms still normalise over all C; physical removal gathers the kept channels (or, opt-in, in one
      module with the norm, :mod:`corecompress.pruning.fused_norm`: the norm feeds only that linear).
    - ``heads``: q, k, v rows (+ biases) of a head, its proj input columns and its relative-position
      bias column; ``num_heads`` follows.
    - ``neurons``: fc1 rows + bias and fc2 input columns.
    """
    p = f"{block}." if block else ""
    a, m = f"{p}{attn}", f"{p}{mlp}"
    attn_dim = num_heads * head_dim
    groups = []
    if "channels" in targets:
        groups.append(PrunableGroup(
            name=f"{p}attn_in", kind="channels", size=dim, block=block, scale=f"{p}{norm1}.weight",
            slices=(Slice(f"{a}.{qkv}.weight", 1),), gather_inputs=(f"{a}.{qkv}",),
            meta={GATHERED_NORM: f"{p}{norm1}"}))
        groups.append(PrunableGroup(
            name=f"{p}mlp_in", kind="channels", size=dim, block=block, scale=f"{p}{norm2}.weight",
            slices=(Slice(f"{m}.{fc1}.weight", 1),), gather_inputs=(f"{m}.{fc1}",),
            meta={GATHERED_NORM: f"{p}{norm2}"}))
    if "heads" in targets:
        offsets = (0, attn_dim, 2 * attn_dim)
        slices = [Slice(f"{a}.{qkv}.weight", 0, offsets, head_dim)]
        if qkv_bias:
            slices.append(Slice(f"{a}.{qkv}.bias", 0, offsets, head_dim))
        slices.append(Slice(f"{a}.{proj}.weight", 1, (0,), head_dim))
        if rel_pos_table:
            slices.append(Slice(f"{a}.{rel_pos_table}", 1))
        groups.append(PrunableGroup(name=f"{p}heads", kind="heads", size=num_heads, block=block,
                                    slices=tuple(slices), attributes=((a, "num_heads"),),
                                    meta={"head_dim": head_dim}))
    if "neurons" in targets:
        groups.append(PrunableGroup(
            name=f"{p}mlp_hidden", kind="neurons", size=hidden, block=block,
            slices=(Slice(f"{m}.{fc1}.weight", 0), Slice(f"{m}.{fc1}.bias", 0), Slice(f"{m}.{fc2}.weight", 1))))
    return groups
