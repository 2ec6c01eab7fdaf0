"""A per-device latency cost table: the measured time of every block as a function of its kept units.

For each block (a group's ``block``) the table holds the dense block's time and, per group of the
block (one kind: heads, MLP neurons, the FACES channels of qkv or of fc1), the block's time with that
group physically pruned to a few widths (all, ½, the floor), all timed interleaved in one
process on the block's real input (captured from a forward pass of the dense model at the budget's
batch size) with the project's timing (:func:`corecompress.tools.measure.compare_throughput`); each
entry is the fastest of the timed runs, because other processes on a shared machine only ever add time.
Blocks of identical structure and input share one measurement (Swin's blocks within a stage).

The predicted latency of a plan (:class:`LatencyCost`) is

    T(plan) = T_rest + Σ_blocks [ T_block + k_block · Σ_groups (T_group(kept) − T_block) ]

with T_group interpolated linearly between the sampled widths (made non-decreasing in width from the
dense time down, so noise cannot make a narrower block look slower than a wider one), T_rest the dense
model's time minus its blocks'. The groups of one block do not save independently: heads and qkv input
channels shrink the same matmul from two sides, so the sum of their separate savings overstates what
pruning both saves. Each block is therefore also timed with all its groups at ½ together, and
k_block = (measured joint saving) / (sum of the separate savings at those widths), in [0, 1] (1 — the plain
additive model — where a block has one group or the table has no joint entry).

Blocks timed alone do not add up to the whole model, and the rest (patch embedding, merging, head,
memory traffic between blocks) is not constant either: on SwinFace-nano the rest read as a difference was
twice what it is, which made the planner prune far more than asked. So the whole model is also timed
with every group at ½ (the joint widths), interleaved with the dense whole model, and the prediction is
the line through those two measured points in the sum of the blocks' predicted times:

    T(plan) = T_dense + s · (B(plan) − B_dense),   s = (T_dense − T_½) / (B_dense − B_½)

(s clamped to [0.5, 2]; s is the model's, whichever of the timed groups a plan prunes; without that
measurement s = 1 and the rest is T_dense − B_dense). The prediction is shown beside the measured speed-up in the report.
The table is measured once and cached as JSON with the run, keyed by model, device, batch size,
threads and torch version (:func:`load_or_measure`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.physical import GATHERED_NORM, apply_physical
from corecompress.pruning.plan import GroupPlan, PruningPlan

TABLE_FORMAT = "corecompress-cost-table"
TABLE_VERSION = 1
#: The widths sampled, as fractions of a group's size (the floor, min_keep, is sampled too): three points
#: per group keep SwinFace-T's table to minutes on a CPU at batch 32.
SAMPLED_FRACTIONS = (1.0, 0.5)


@dataclass
class CostTable:
    """``blocks``: block path → structure signature; ``tables``: signature → ``{"dense": s, "groups":
    {relative group name: {"widths": [...], "seconds": [...]}}}``; ``model_seconds``: the dense model."""

    key: dict[str, Any]
    model_seconds: float
    blocks: dict[str, str]
    tables: dict[str, dict[str, Any]]
    half_model_seconds: float | None = None  # the whole model with every group at its ½ width

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        if data.get("format") != TABLE_FORMAT or data.get("version") != TABLE_VERSION:
            raise ValueError("not a corecompress cost table")
        half = data.get("half_model_seconds")
        return cls(key=data["key"], model_seconds=float(data["model_seconds"]), blocks=dict(data["blocks"]),
                   tables=dict(data["tables"]), half_model_seconds=None if half is None else float(half))


class LatencyCost:
    """Predicted seconds per batch of a plan, from a :class:`CostTable` (module docstring)."""

    def __init__(self, table: CostTable, groups: list[PrunableGroup]) -> None:
        self.table, self.groups = table, groups
        self.dense = table.model_seconds
        block_dense = sum(table.tables[table.blocks[b]]["dense"] for b in table.blocks)
        self.rest = max(0.0, self.dense - block_dense)
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for g in groups:
            if g.block in table.blocks:
                entry = table.tables[table.blocks[g.block]]["groups"].get(relative_name(g))
                if entry is not None:
                    widths = np.asarray(entry["widths"], dtype=float)
                    order = np.argsort(widths)
                    seconds = np.minimum.accumulate(np.asarray(entry["seconds"], dtype=float)[order][::-1])[::-1]
                    self.curves[g.name] = (widths[order], seconds)
        self.interaction = {block: self._interaction(block) for block in table.blocks}
        self.slope = self._slope(block_dense)

    def _seconds(self, group: PrunableGroup, kept: int) -> float:
        widths, seconds = self.curves[group.name]
        return float(np.interp(kept, widths, seconds))

    def _interaction(self, block: str) -> float:
        """k_block (module docstring): the joint saving over the sum of the separate ones, at the ½ widths."""
        entry = self.table.tables[self.table.blocks[block]]
        joint = entry.get("joint")
        members = {relative_name(g): g for g in self.groups if g.block == block and g.name in self.curves}
        if not joint or len(members) < 2 or set(joint["widths"]) != set(members):
            return 1.0
        dense = entry["dense"]
        separate = sum(dense - self._seconds(members[name], width) for name, width in joint["widths"].items())
        if separate <= 0:
            return 1.0
        return float(min(1.0, max(0.0, (dense - joint["seconds"]) / separate)))

    def _slope(self, block_dense: float) -> float:
        """s (module docstring): how the whole model's time follows its blocks', from the ½ measurement."""
        half = [self.table.tables[sig].get("half") for sig in self.table.blocks.values()]
        if self.table.half_model_seconds is None or None in half:
            return 1.0
        block_saving = block_dense - sum(half)
        if block_saving <= 0:
            return 1.0
        return float(min(2.0, max(0.5, (self.dense - self.table.half_model_seconds) / block_saving)))

    def __call__(self, plan: PruningPlan) -> float:
        saving = 0.0
        for block in self.table.blocks:
            block_saving = sum(self.table.tables[self.table.blocks[block]]["dense"]
                               - self._seconds(g, len(plan.groups[g.name].keep)) for g in self.groups
                               if g.block == block and g.name in self.curves and g.name in plan.groups)
            saving += self.interaction[block] * block_saving
        return self.dense - self.slope * saving


def relative_name(group: PrunableGroup) -> str:
    """The group's name inside its block (``blocks.3.heads`` → ``heads``)."""
    prefix = f"{group.block}." if group.block else ""
    return group.name[len(prefix):] if group.name.startswith(prefix) else group.name


def _relative_group(group: PrunableGroup) -> PrunableGroup | None:
    """The group with every path relative to its block module; None when it reaches outside the block."""
    prefix = f"{group.block}."

    def inside(path: str) -> str | None:
        return path[len(prefix):] if path.startswith(prefix) else ("" if path == group.block else None)

    slices = tuple(dataclasses.replace(sl, tensor=inside(sl.tensor)) for sl in group.slices)
    gathers = tuple(inside(p) for p in group.gather_inputs)
    attributes = tuple((inside(a[0]), *a[1:]) for a in group.attributes)
    meta = dict(group.meta)
    if GATHERED_NORM in meta:
        meta[GATHERED_NORM] = inside(meta[GATHERED_NORM])
    paths = [s.tensor for s in slices] + list(gathers) + [a[0] for a in attributes] + [meta.get(GATHERED_NORM, "")]
    if not group.block or any(p is None for p in paths) or any(not s.tensor for s in slices):
        return None
    return dataclasses.replace(group, name=relative_name(group), slices=slices, gather_inputs=gathers,
                               attributes=attributes, scale=None, meta=meta)


def sampled_widths(group: PrunableGroup) -> list[int]:
    """Kept counts sampled for a group: :data:`SAMPLED_FRACTIONS` of its size and its floor."""
    floor = max(1, group.min_keep)
    return sorted({max(floor, round(group.size * f)) for f in SAMPLED_FRACTIONS} | {floor})


JOINT = "joint"  # the variant with every group of the block at its ½ width


def _half(group: PrunableGroup) -> int:
    return max(max(1, group.min_keep), round(group.size * 0.5))


def _pruned(module: nn.Module, widths: dict[PrunableGroup, int]) -> nn.Module:
    """A physically pruned copy of ``module`` keeping the first ``width`` units of each (block-relative) group."""
    plan = PruningPlan({g.name: GroupPlan(g.kind, g.size, list(range(w))) for g, w in widths.items()})
    return apply_physical(copy.deepcopy(module), list(widths), plan)


class _Replay(nn.Module):
    """Calls ``block`` on its captured input, whatever it is given (for the interleaved timing)."""

    def __init__(self, block: nn.Module, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.block, self.args, self.kwargs = block, args, kwargs

    def forward(self, _ignored: torch.Tensor) -> Any:
        return self.block(*self.args, **self.kwargs)


def capture_block_inputs(model: nn.Module, blocks: list[str], batch: torch.Tensor) -> dict[str, tuple[tuple, dict]]:
    """Each block's (args, kwargs) in one eval-mode forward of ``model`` on ``batch``."""
    captured: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for path in blocks:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
            captured.setdefault(path, (tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return captured


def _signature(block: nn.Module, inputs: tuple[tuple, dict], groups: list[PrunableGroup]) -> str:
    """Blocks of one type, tensor shapes (a shifted Swin block has its attention mask), input and groups
    share a signature, hence one measurement (their drop-path rates, idle at inference, may differ)."""
    tensors = [(n, tuple(t.shape)) for n, t in [*block.named_parameters(), *block.named_buffers()]]
    shapes = [tuple(a.shape) if torch.is_tensor(a) else repr(a) for a in inputs[0]]
    spec = [(relative_name(g), g.kind, g.size) for g in groups]
    described = (type(block).__qualname__, tensors, shapes, sorted(inputs[1]), spec)
    return hashlib.sha256(repr(described).encode()).hexdigest()[:16]


def measure_cost_table(model: nn.Module, groups: list[PrunableGroup], input_size: tuple[int, ...], batch_size: int,
                       key: dict[str, Any], *, repeats: int = 10, warmup: int = 1, threads: int | None = None,
                       log: Callable[[str], None] | None = None) -> CostTable:
    """Measure the table (module docstring) on the model's device; the model is not changed."""
    from corecompress.tools.measure import compare_throughput, measure_throughput

    by_block: dict[str, list[tuple[PrunableGroup, PrunableGroup]]] = {}
    for g in groups:
        local = _relative_group(g)
        if local is not None:
            by_block.setdefault(g.block, []).append((g, local))
    first = next(model.parameters())
    batch = torch.randn(batch_size, *input_size, device=first.device, dtype=first.dtype)
    inputs = capture_block_inputs(model, list(by_block), batch)
    blocks: dict[str, str] = {}
    tables: dict[str, dict[str, Any]] = {}
    for path, members in by_block.items():
        if path not in inputs:
            continue  # a block the forward pass never reached
        module = model.get_submodule(path)
        signature = _signature(module, inputs[path], [g for g, _ in members])
        blocks[path] = signature
        if signature in tables:
            continue
        variants = {"dense": _Replay(copy.deepcopy(module), *inputs[path])}
        for g, local in members:
            for width in sampled_widths(g):
                if width < g.size:
                    variants[f"{local.name}@{width}"] = _Replay(_pruned(module, {local: width}), *inputs[path])
        halves = {local: _half(g) for g, local in members if _half(g) < g.size}
        if len(halves) >= 2:
            variants[JOINT] = _Replay(_pruned(module, halves), *inputs[path])
        timed = compare_throughput(variants, (1,), 1, reference="dense", threads=threads, warmup=warmup,
                                   repeats=repeats)
        dense = timed["dense"]["min_s"]
        entry: dict[str, Any] = {"dense": dense, "groups": {}}
        for g, local in members:
            widths = [w for w in sampled_widths(g) if w < g.size]
            entry["groups"][local.name] = {"widths": widths + [g.size],
                                           "seconds": [timed[f"{local.name}@{w}"]["min_s"] for w in widths] + [dense]}
        if JOINT in timed:
            entry["joint"] = {"widths": {local.name: w for local, w in halves.items()}, "seconds": timed[JOINT]["min_s"]}
        entry["half"] = (timed[JOINT]["min_s"] if JOINT in timed else
                         timed[f"{next(iter(halves)).name}@{next(iter(halves.values()))}"]["min_s"] if halves else dense)
        tables[signature] = entry
        if log is not None:
            log(f"cost table: block {path} ({len(variants)} variants) timed, dense {1e3 * dense:.2f} ms")
    in_blocks = [g for g in groups if g.block in blocks and _relative_group(g) is not None]
    half = _half_model(model, in_blocks)
    if half is None:
        whole = measure_throughput(model, input_size, batch_size, threads=threads, warmup=warmup, repeats=repeats)
        return CostTable(key=key, model_seconds=whole["min_s"], blocks=blocks, tables=tables)
    both = compare_throughput({"dense": model, "half": half}, input_size, batch_size, reference="dense",
                              threads=threads, warmup=warmup, repeats=repeats)
    return CostTable(key=key, model_seconds=both["dense"]["min_s"], blocks=blocks, tables=tables,
                     half_model_seconds=both["half"]["min_s"])


def _half_model(model: nn.Module, groups: list[PrunableGroup]) -> nn.Module | None:
    """The whole model with every timed group at its ½ width (None when that cannot be built)."""
    plan = PruningPlan({g.name: GroupPlan(g.kind, g.size, list(range(_half(g)))) for g in groups})
    try:
        return apply_physical(copy.deepcopy(model), groups, plan).eval()
    except Exception:  # noqa: BLE001 - without the calibration point the table is still usable (s = 1)
        return None


def load_or_measure(path: Path, key: dict[str, Any], measure: Callable[[], CostTable],
                    log: Callable[[str], None] | None = None, write: bool = True) -> CostTable:
    """The table cached at ``path`` when its key equals ``key``; otherwise measured (and written there,
    unless ``write`` is False: under torchrun only rank 0 writes the run directory)."""
    if path.is_file():
        try:
            table = CostTable.from_dict(json.loads(path.read_text()))
            if table.key == key:
                if log is not None:
                    log(f"cost table: reusing {path}")
                return table
            if log is not None:
                log(f"cost table: {path} was measured for another model, device, batch or thread count; measuring")
        except (OSError, ValueError, KeyError, TypeError):
            if log is not None:
                log(f"cost table: {path} is unreadable; measuring again")
    table = measure()
    if write:
        path.write_text(json.dumps(table.to_dict(), indent=1))
    return table
