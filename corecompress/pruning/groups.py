"""Prunable groups: the units (channels, heads, neurons, filters) that are kept or removed together.

A model adapter describes its architecture as data: each group lists the parameter slices its
units index into. Unit ``u`` of a :class:`Slice` covers the indices
``offset + u * width + j`` for every ``offset`` in ``offsets`` and ``j < width`` along ``dim`` —
enough for input channels (width 1), MLP neurons (rows of fc1, columns of fc2) and attention heads
(``width = head_dim`` at the q, k and v offsets of a fused qkv). Soft masking zeroes exactly these
indices; physical removal deletes them, so the two agree by construction (the idea of
Torch-Pruning's dependency groups, written as plain data instead of a traced graph).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Slice:
    """The part of one parameter or buffer that a group's units index into."""

    tensor: str                      # qualified name, e.g. "blocks.0.attn.qkv.weight"
    dim: int
    offsets: tuple[int, ...] = (0,)
    width: int = 1

    def indices(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along ``dim`` covered by ``units`` (sorted unit order kept)."""
        units = units.to(torch.long)
        within = torch.arange(self.width, dtype=torch.long)
        per_unit = units[:, None] * self.width + within[None, :]                    # (U, width)
        return torch.cat([off + per_unit.reshape(-1) for off in self.offsets])


@dataclass(frozen=True)
class PrunableGroup:
    """Units that live or die together.

    - ``kind``: "channels" (inputs of a linear behind a norm, FACES), "heads", "neurons", "filters".
    - ``slices``: every tensor the units index into (weights, biases, norm statistics, tables).
    - ``gather_inputs``: Linear modules whose *input* features are these units while the producer is
      not pruned (FACES: LayerNorm over all C feeds a sliced qkv) — physical removal makes them
      gather the kept features first.
    - ``scatter_outputs``: Linear modules whose *output rows* are these units' while their consumer still
      reads the full width (an attention core that keeps every head) — physical removal makes them
      write the kept rows back into zeros.
    - ``attributes``: (module path, attribute[, per-unit size[, position]]) set to kept units × size after
      physical removal (``num_heads``; timm's ``attn_dim`` = heads × head_dim); with a position, that
      entry of a tuple attribute (timm's ``bias_shape`` = (tokens, tokens, heads)).
    - ``scale``: the per-unit normalisation scale (LayerNorm/BatchNorm γ) for norm-scale importances.
    - ``block``: the block the group belongs to (local ranking, per-block floors).
    """

    name: str
    kind: str
    size: int
    slices: tuple[Slice, ...]
    block: str = ""
    scale: str | None = None
    gather_inputs: tuple[str, ...] = ()
    scatter_outputs: tuple[str, ...] = ()
    attributes: tuple[tuple, ...] = ()
    min_keep: int = 1
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def weight_slices(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """Per slice, the (U, rest) view of the tensor arranged unit-major (for magnitude criteria)."""
        tensors = dict(model.named_parameters())
        out = []
        for sl in self.slices:
            if sl.tensor not in tensors:
                continue  # buffers (running stats) are not weights
            t = tensors[sl.tensor].detach()
            moved = t.movedim(sl.dim, 0)                                   # (D, ...)
            parts = [moved[o:o + self.size * sl.width] for o in sl.offsets]  # each (U*width, ...)
            stacked = torch.stack(parts, 0).reshape(len(sl.offsets), self.size, sl.width, -1)
            out.append(stacked.permute(1, 0, 2, 3).reshape(self.size, -1))
        return out


def get_tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    module_path, _, attr = name.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    return getattr(module, attr)


def check_groups(model: torch.nn.Module, groups: list[PrunableGroup]) -> None:
    """Raise ValueError when a group refers to a tensor that does not exist or is too small."""
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    for g in groups:
        for sl in g.slices:
            if sl.tensor not in names:
                raise ValueError(f"group {g.name}: tensor {sl.tensor} is not in the model")
            t = get_tensor(model, sl.tensor)
            last = max(sl.offsets) + g.size * sl.width
            if last > t.shape[sl.dim]:
                raise ValueError(f"group {g.name}: {sl.tensor} dim {sl.dim} has {t.shape[sl.dim]} entries, needs {last}")
