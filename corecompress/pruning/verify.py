"""Masked ≡ physical probe: do a plan's soft masks and its physical removal compute the same function?

Both are derived from the same groups, so they agree whenever the groups describe the model
correctly; a group that forgets a tensor (a bias, a per-head table) or a forward that reads a size
the groups cannot fix shows up as a mismatch or an exception. The probe runs on deep copies in eval
mode, so the model itself is never touched; :func:`find_offenders` narrows a failure down to groups
by kind, then by bisection (the idea of the masked-vs-pruned equality checks in Torch-Pruning's
tests, Fang et al., "DepGraph", CVPR 2023, run here before a plan is used).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from corecompress.errors import PlanVerificationError
from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import GroupPlan, PruningPlan
from corecompress.pruning.trace import example_input

#: Largest relative error (‖masked − physical‖ / ‖masked‖) still counted as equal in fp32.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class ProbeResult:
    """``error``: the relative error, or None when the pruned model raised ``failure`` (one line)."""

    error: float | None
    failure: str = ""

    @property
    def ok(self) -> bool:
        return self.error is not None and self.error <= TOLERANCE

    def describe(self) -> str:
        if self.error is None:
            return self.failure
        return f"the pruned model's output differs from the masked model's (rel. err {self.error:.1e} > {TOLERANCE:.0e})"


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _cloned(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cloned(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_cloned(v) for v in value)
    return value


def relative_error(reference: Any, other: Any) -> float:
    """‖reference − other‖ / ‖reference‖ over every tensor of two outputs of the same structure."""
    a, b = _tensors(reference), _tensors(other)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    num = sum(float((x.double() - y.double()).square().sum()) for x, y in zip(a, b))
    den = sum(float(x.double().square().sum()) for x in a)
    return (num ** 0.5) / max(den ** 0.5, 1e-30)


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """TF32 off while probing (cuDNN convolutions use it by default on GPUs): the 1e-5 bound is an fp32 one."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def probe(model: nn.Module, groups: list[PrunableGroup], plan: PruningPlan, args: tuple, kwargs: dict | None = None,
          after_physical: Callable[[nn.Module], None] | None = None,
          prepare: Callable[[nn.Module], None] | None = None) -> ProbeResult:
    """Run a masked and a physically pruned deep copy of ``model`` on ``args``; compare their outputs.

    ``prepare`` edits the common copy first (e.g. randomises zero-initialised weights, so a forgotten
    bias shows); ``after_physical`` is the adapter's fix-up hook for the pruned copy.
    """
    kwargs = kwargs or {}
    base = copy.deepcopy(model).eval()
    if prepare is not None:
        prepare(base)
    masked = copy.deepcopy(base)
    apply_masks(masked, groups, plan)
    with _full_fp32():
        try:
            expected = masked(*_cloned(args), **_cloned(kwargs))
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            return ProbeResult(None, f"the masked model fails: {_one_line(exc)}")
        try:
            pruned = apply_physical(base, groups, plan)
            if after_physical is not None:
                after_physical(pruned)
            got = pruned(*_cloned(args), **_cloned(kwargs))
        except Exception as exc:  # noqa: BLE001 - any failure of the pruned model is the finding
            return ProbeResult(None, f"the pruned model fails: {_one_line(exc)}")
    return ProbeResult(relative_error(expected, got))


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def randomise_weights(module: nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Add seeded noise to every float parameter, so a tensor left out of a group cannot hide behind zeros
    (zero-initialised biases, tables); the global random state is not touched."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=generator).to(p.device, p.dtype))


def thinning_plan(groups: list[PrunableGroup]) -> PruningPlan:
    """A plan removing every third unit (from unit 1) of each group, at least one kept: a probe plan."""
    plans = {}
    for g in groups:
        keep = [u for u in range(g.size) if u % 3 != 1] or [0]
        plans[g.name] = GroupPlan(g.kind, g.size, keep)
    return PruningPlan(groups=plans)


def restricted(plan: PruningPlan, names: set[str]) -> PruningPlan:
    """The part of ``plan`` for the groups in ``names``."""
    return PruningPlan(groups={n: gp for n, gp in plan.groups.items() if n in names}, meta=dict(plan.meta))


def find_offenders(check: Callable[[PruningPlan], ProbeResult], groups: list[PrunableGroup],
                   plan: PruningPlan) -> list[tuple[PrunableGroup, ProbeResult]]:
    """Groups whose part of ``plan`` alone fails ``check``: per kind, then by bisection (one per failing kind)."""
    planned = [g for g in groups if g.name in plan.groups and plan.groups[g.name].removed]
    found = []
    for kind in dict.fromkeys(g.kind for g in planned):
        members = [g for g in planned if g.kind == kind]
        result = check(restricted(plan, {g.name for g in members}))
        if result.ok:
            continue
        while len(members) > 1:
            for part in (members[:len(members) // 2], members[len(members) // 2:]):
                part_result = check(restricted(plan, {g.name for g in part}))
                if not part_result.ok:
                    members, result = part, part_result
                    break
            else:
                break  # only the groups together fail: name the first of them
        found.append((members[0], result))
    return found


def check_plan(model: nn.Module, groups: list[PrunableGroup], plan: PruningPlan, input_size: tuple[int, ...],
               after_physical: Callable[[nn.Module], None] | None = None) -> None:
    """Probe ``plan`` on ``model`` with a batch of 2 of ``input_size`` (randomised weights, deep copies);
    raise :class:`PlanVerificationError` naming the first offending group, its kind and its block."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = example_input(tuple(input_size), device=device)

    def check(part: PruningPlan) -> ProbeResult:
        return probe(model, groups, part, (example,), after_physical=after_physical, prepare=randomise_weights)

    if check(plan).ok:
        return
    offenders = find_offenders(check, groups, plan)
    if not offenders:
        raise PlanVerificationError(f"prune.verify: the plan's groups together break the pruned model: "
                                    f"{check(plan).describe()}; set prune.verify: false to skip this check")
    group, result = offenders[0]
    raise PlanVerificationError(f"prune.verify: group {group.name} (kind {group.kind}, module {group.block or 'model'}): "
                                f"{result.describe()}; set prune.verify: false to skip this check")
