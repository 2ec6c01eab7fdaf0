"""Parameters split by rows across ranks (model-parallel class centres, as in Partial FC).

Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021)
keeps only a contiguous slice of a K × E classifier on each rank. The core knows no method, but
four of its places must treat such a parameter differently from a replicated one; a plugin tags the
parameter with :func:`mark` and the core does the rest:

- **DDP** must not average it (each rank's gradient for its own rows is complete locally):
  :func:`ddp_ignore_names` feeds ``DistributedDataParallel``'s ignore list;
- **gradient clipping** must use the global norm, or ranks would clip their (replicated) model
  gradients by different factors: :func:`clip_grad_norm_`;
- **checkpoints** hold the full matrix and its full optimizer state (rows gathered to rank 0, so a
  checkpoint looks like the unsharded head's): :func:`checkpoint_views` (a collective);
- **resume** slices this rank's rows from the full matrix and optimizer state (so a run may even be
  resumed with another number of processes): :func:`full_view`, :func:`local_rows`,
  :func:`local_optimizer_rows`.

Rows are split as K // world per rank, the remainder one each to the first ranks
(:func:`row_bounds`). Without sharded parameters every function here is the identity (or the
plain PyTorch call), so unsharded runs are unchanged bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist

from corecompress.engine import distributed

ATTRIBUTE = "corecompress_row_shard"


@dataclass(frozen=True)
class RowShard:
    """Rows [start, stop) of a matrix of ``total`` rows held by this rank."""

    start: int
    stop: int
    total: int


def row_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``: total // world rows each, one more for the first total % world ranks."""
    if total < world:
        raise ValueError(f"cannot split {total} rows over {world} ranks (fewer rows than ranks)")
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def mark(param: torch.Tensor, start: int, stop: int, total: int) -> torch.Tensor:
    """Tag ``param`` as rows [start, stop) of a ``total``-row matrix split across ranks."""
    if param.shape[0] != stop - start:
        raise ValueError(f"parameter has {param.shape[0]} rows, the shard [{start}, {stop}) has {stop - start}")
    setattr(param, ATTRIBUTE, RowShard(start, stop, total))
    return param


def shard_of(param: Any) -> RowShard | None:
    return getattr(param, ATTRIBUTE, None)


def sharded_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``module``'s tagged parameters by their state-dict name."""
    return {name: p for name, p in module.named_parameters() if shard_of(p) is not None}


def ddp_ignore_names(module: torch.nn.Module) -> list[str]:
    """Names (as DDP wants them: fully qualified) of the parameters DDP must neither broadcast nor average."""
    return sorted(sharded_parameters(module))


def clip_grad_norm_(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` with the norm of the *whole* gradient: the sharded rows'
    squared norms are summed over ranks (replicated gradients are identical on every rank after DDP),
    so every rank clips by the same factor. Plain PyTorch when nothing is sharded."""
    params = [p for p in params if p.grad is not None]
    if not distributed.is_active() or not any(shard_of(p) is not None for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    zero = torch.zeros((), dtype=torch.float64, device=params[0].grad.device)
    replicated = sum((p.grad.detach().double().pow(2).sum() for p in params if shard_of(p) is None), zero)
    sharded = sum((p.grad.detach().double().pow(2).sum() for p in params if shard_of(p) is not None), zero)
    dist.all_reduce(sharded)
    total = (replicated + sharded).sqrt()
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.detach().mul_(factor.to(p.grad.dtype))
    return total.float()


def _padded(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    out = tensor.new_zeros((rows, *tensor.shape[1:]))
    out[: tensor.shape[0]] = tensor
    return out


def all_gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every rank's ``tensor`` (rank r holds ``sizes[r]`` rows) concatenated in rank order, on every
    rank (a collective; rows are padded to the largest count for the all-gather)."""
    padded = _padded(tensor, max(sizes))
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def gather_rows(tensor: torch.Tensor, shard: RowShard, dst: int | None = 0) -> torch.Tensor | None:
    """The full ``shard.total``-row matrix from every rank's rows (a collective): on rank ``dst`` only
    (None elsewhere), or on every rank when ``dst`` is None. In a single process: ``tensor`` itself."""
    if not distributed.is_active():
        return tensor
    world, rank = distributed.world(), distributed.rank()
    bounds = [row_bounds(shard.total, r, world) for r in range(world)]
    if bounds[rank] != (shard.start, shard.stop):
        raise RuntimeError(f"row shard [{shard.start}, {shard.stop}) is not rank {rank}'s of {world}")
    sizes = [stop - start for start, stop in bounds]
    if dst is None:
        return all_gather_rows(tensor.detach(), sizes)
    padded = _padded(tensor.detach(), max(sizes))
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == dst else None
    dist.gather(padded, parts, dst=dst)
    if parts is None:
        return None
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class StateView:
    """Stands in for a module or optimizer where only ``state_dict()`` is read (checkpoint writing
    and shape checks)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


def _optimizer_index(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """id(parameter) → its key in ``optimizer.state_dict()['state']``."""
    order = (p for group in optimizer.param_groups for p in group["params"])
    return {id(p): i for i, p in enumerate(order)}


def checkpoint_views(objective: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
    """What a checkpoint stores for ``objective`` and ``optimizer``: on rank 0, views whose sharded
    rows (and their optimizer moments) are gathered into full matrices; on other ranks None, None.
    A collective: every rank calls it. Identity when nothing is sharded or in a single process."""
    sharded = sharded_parameters(objective)
    if not sharded or not distributed.is_active():
        return objective, optimizer
    state = objective.state_dict()
    optimizer_state = optimizer.state_dict()
    index = _optimizer_index(optimizer)
    main = distributed.is_main()
    for name, param in sharded.items():
        shard = shard_of(param)
        state[name] = gather_rows(param, shard)
        key = index[id(param)]
        if key not in optimizer_state["state"]:
            continue
        slot = dict(optimizer_state["state"][key])  # a copy: state_dict() shares the live state
        for name_, value in sorted(slot.items()):  # the moments have the parameter's shape
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                slot[name_] = gather_rows(value, shard)
        optimizer_state["state"][key] = slot
    if not main:
        return None, None
    return StateView(state), StateView(optimizer_state)


def full_view(objective: torch.nn.Module) -> Any:
    """``objective`` as a checkpoint holds it (sharded rows at full size, as meta tensors): for shape checks."""
    sharded = sharded_parameters(objective)
    if not sharded:
        return objective
    state = dict(objective.state_dict())
    for name, param in sharded.items():
        shard = shard_of(param)
        state[name] = torch.empty((shard.total, *param.shape[1:]), device="meta")
    return StateView(state)


def local_rows(state: dict[str, torch.Tensor], objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``state`` (full matrices, as checkpointed) with this rank's rows of every sharded entry."""
    sharded = sharded_parameters(objective)
    if not sharded:
        return state
    out = dict(state)
    for name, param in sharded.items():
        shard = shard_of(param)
        out[name] = state[name][shard.start:shard.stop]
    return out


def local_optimizer_rows(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                         objective: torch.nn.Module) -> dict[str, Any]:
    """A checkpointed optimizer state with this rank's rows of the sharded parameters' moments."""
    sharded = sharded_parameters(objective)
    if not sharded:
        return state
    index = _optimizer_index(optimizer)
    slots = dict(state.get("state", {}))
    for param in sharded.values():
        shard = shard_of(param)
        key = index[id(param)]
        if key not in slots:
            continue
        slot = dict(slots[key])
        for name, value in slot.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == shard.total \
                    and value.shape[1:] == param.shape[1:]:
                slot[name] = value[shard.start:shard.stop]
        slots[key] = slot
    return {**state, "state": slots}
