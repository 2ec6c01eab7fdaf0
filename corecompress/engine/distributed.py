"""Data-parallel training on PyTorch's own engine (``torchrun`` + DistributedDataParallel).

``torchrun --nproc_per_node=N -m corecompress run RECIPE`` starts N processes that each run the whole
recipe; :func:`init_from_env` (called once when ``run`` starts) joins them into one process group
from torchrun's variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``:
NCCL with one GPU per process (``cuda:LOCAL_RANK``) when CUDA is available, else gloo on the CPU
(``CORECOMPRESS_DIST_BACKEND=gloo`` forces the CPU; so does the recipe's ``device: cpu``, and
``device: cuda`` requires NCCL — :mod:`corecompress.engine.devices`). Without ``WORLD_SIZE > 1`` nothing here does
anything and every helper is the identity, so single-process code needs no branches.

The rules the runner and the training loop follow (docs/distributed.md has the whole design):

- every rank builds the same model, data and plan from the same seed; rank 0's plan is broadcast;
- only rank 0 writes files; work only rank 0 does goes through :func:`on_main`, which broadcasts
  its result — or its exception, re-raised on every rank — so an error on rank 0 cannot leave the
  other ranks waiting in a collective;
- each rank trains on its slice of every global batch (:class:`ShardedBatchSampler`).

Objects are exchanged with ``torch.distributed``'s object collectives (pickle between the processes
of one job); nothing received this way is ever read from a file.
"""
from __future__ import annotations

import atexit
import datetime
import importlib
import inspect
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from corecompress.engine.devices import DeviceError, check_device_setting, resolve_device
from corecompress.errors import UserError

T = TypeVar("T")

ENV_BACKEND = "CORECOMPRESS_DIST_BACKEND"        # "gloo" or "nccl": overrides the automatic choice
ENV_TIMEOUT = "CORECOMPRESS_DIST_TIMEOUT_S"      # collective timeout, seconds (default 1800)
ENV_DUMP_DIR = "CORECOMPRESS_DDP_DUMP_DIR"       # diagnostics: every rank writes its trained state here
_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_initialised_here = False
_rank_device: torch.device | None = None  # this rank's device, chosen by init_from_env


class DistributedSetupError(UserError):
    """The torchrun environment is incomplete or inconsistent (one line naming the variable)."""


class MainRankError(UserError):
    """Stand-in for a rank-0 user error whose own class cannot be rebuilt on another rank."""


class MainRankOSError(OSError):
    """Stand-in for a rank-0 operating-system error (disk full, ...) on the other ranks."""


class MainRankFailure(RuntimeError):
    """Stand-in for any other rank-0 failure on the other ranks."""


def requested() -> bool:
    """True when launched by torchrun (or alike) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise DistributedSetupError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise DistributedSetupError(f"{name} is not set; start distributed runs with torchrun "
                                    "(torchrun --nproc_per_node=N -m corecompress run RECIPE)")
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"{name}={value!r} is not an integer") from None


def choose_backend(setting: str = "auto") -> str:
    """``nccl`` when CUDA is usable, else ``gloo``; ``$CORECOMPRESS_DIST_BACKEND`` overrides.

    ``setting`` is the run's device setting: ``cpu`` means gloo, ``cuda`` needs NCCL; a conflict
    with the override is one line."""
    chosen = os.environ.get(ENV_BACKEND, "").strip().lower()
    if chosen:
        if chosen not in ("gloo", "nccl"):
            raise DistributedSetupError(f"{ENV_BACKEND}={chosen!r}: expected gloo or nccl")
        if chosen == "nccl" and not torch.cuda.is_available():
            raise DistributedSetupError(f"{ENV_BACKEND}=nccl but CUDA is not available")
        if chosen == "gloo" and setting.startswith("cuda"):
            raise DistributedSetupError(f"{ENV_BACKEND}=gloo runs on the CPU, but device: {setting}; "
                                        "drop one of them")
        if chosen == "nccl" and setting == "cpu":
            raise DistributedSetupError(f"{ENV_BACKEND}=nccl needs CUDA, but device: cpu; drop one of them")
        return chosen
    if setting == "cpu":
        return "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device: {setting}: CUDA is not available on this machine (use device: auto or cpu)")
        raise DistributedSetupError(f"device: {setting} under torchrun needs NCCL, which this PyTorch lacks")
    return "gloo"


def init_from_env(setting: str = "auto") -> bool:
    """Join the process group described by torchrun's variables (once; later calls do nothing).

    ``setting``: the run's device setting (``auto | cpu | cuda``), which chooses the backend.
    Returns True when this process is one of several. Raises :class:`DistributedSetupError` (or a
    :class:`~corecompress.engine.devices.DeviceError`) for a missing or malformed variable or
    setting, before any connection is attempted.
    """
    global _initialised_here, _rank_device
    if not requested():
        return False
    if dist.is_initialized():
        return True
    if not dist.is_available():
        raise DistributedSetupError("WORLD_SIZE > 1 but this PyTorch has no torch.distributed")
    rank, world_size, local = (_env_int(name) for name in _REQUIRED_ENV[:3])
    for name in _REQUIRED_ENV[3:]:
        if not os.environ.get(name):
            raise DistributedSetupError(f"{name} is not set; start distributed runs with torchrun")
    if not 0 <= rank < world_size:
        raise DistributedSetupError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world_size - 1})")
    try:
        check_device_setting(setting)
    except ValueError as exc:
        raise DeviceError(f"device: {exc}") from None
    backend = choose_backend(setting)
    where = torch.device("cpu")
    if backend == "nccl":
        where = resolve_device("cuda" if setting == "auto" else setting, local_rank=local)
        torch.cuda.set_device(where)
    timeout = datetime.timedelta(seconds=float(os.environ.get(ENV_TIMEOUT, "1800")))
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout)
    _initialised_here, _rank_device = True, where
    atexit.register(shutdown)  # at exit, so several runs in one process (tests) share the group
    return True


def shutdown() -> None:
    """Leave the process group if :func:`init_from_env` created it (registered to run at exit)."""
    global _initialised_here, _rank_device
    if _initialised_here and dist.is_initialized():
        dist.destroy_process_group()
    _initialised_here, _rank_device = False, None


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if is_active() else 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_active() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that writes files and logs."""
    return rank() == 0


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under NCCL, else the CPU."""
    if not is_active():
        return torch.device("cpu")
    if _rank_device is not None:
        return _rank_device
    return torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")


def run_device(setting: str) -> torch.device:
    """The device a run with the device ``setting`` computes on: in a single process
    :func:`~corecompress.engine.devices.resolve_device`; under torchrun this rank's device, which
    the setting must agree with (a one-line error otherwise)."""
    if not is_active():
        return resolve_device(setting)
    if setting.startswith("cuda:"):
        resolve_device(setting, local_rank=local_rank())  # refused: one GPU cannot serve every rank
    here = device()
    if setting == "auto" or (setting == "cpu") == (here.type == "cpu"):
        return here
    raise DistributedSetupError(f"device: {setting}, but this process group computes on {here.type} "
                                f"(backend {dist.get_backend()}); start torchrun with the same device setting")


def barrier() -> None:
    if is_active():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (identity in a single process)."""
    if not is_active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); ``[obj]`` in a single process."""
    if not is_active():
        return [obj]
    out: list[Any] | None = [None] * world() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def _collective_device() -> torch.device:
    return device() if is_active() else torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks (float64; identity in a single process)."""
    if not is_active():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_mean(metrics: dict[str, float], weight: float = 1.0) -> dict[str, float]:
    """The weighted mean over ranks of each metric: Σ w_r·m_r / Σ w_r (w = this rank's ``weight``,
    e.g. its number of samples). Every rank must pass the same keys (in any order)."""
    if not is_active():
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    sums = all_reduce_sum([weight * float(metrics[k]) for k in keys] + [weight])
    mean = {k: sums[i] / sums[-1] for i, k in enumerate(keys)}
    return {k: mean[k] for k in metrics}


# --- rank-0 work with agreement --------------------------------------------------------------------

@dataclass
class _Outcome:
    ok: bool
    value: Any = None
    error: tuple[str, str, str, str, int] | None = None  # see describe_error


def describe_error(exc: BaseException) -> tuple[str, str, str, str, int]:
    """What another rank needs to raise the same error: (module, class, message, category, errno)."""
    if isinstance(exc, KeyboardInterrupt):
        category = "interrupt"
    elif isinstance(exc, UserError):
        category = "user"
    elif isinstance(exc, OSError):
        category = "os"
    else:
        category = "other"
    errno = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else 5
    return type(exc).__module__, type(exc).__qualname__, str(exc), category, errno


def rebuild_error(described: tuple[str, str, str, str, int]) -> BaseException:
    """The error of :func:`describe_error`: its own class when that takes the message as its only
    argument, else a stand-in of the same category (so the CLI's exit code is the same)."""
    module, qualname, text, category, errno = described
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            exc = cls(text)
            if str(exc) == text:
                return exc
    except Exception:  # noqa: BLE001 - a constructor with other arguments: use a stand-in
        pass
    first = text.splitlines()[0] if text else qualname
    if category == "interrupt":
        return KeyboardInterrupt(first)
    if category == "user":
        return MainRankError(first)
    if category == "os":
        return MainRankOSError(errno, first)
    return MainRankFailure(f"{qualname}: {first}")


def on_main(fn: Callable[[], T], share: bool = True) -> T | None:
    """Run ``fn`` on rank 0 only; the other ranks wait and receive its result (``share=False``:
    None) — or its exception, raised on every rank (marked ``from_main_rank``), so no rank is
    left waiting in a later collective. In a single process: just ``fn()``."""
    if not is_active():
        return fn()
    if is_main():
        try:
            value = fn()
        except BaseException as exc:
            broadcast_object(_Outcome(False, error=describe_error(exc)))
            raise
        try:
            broadcast_object(_Outcome(True, value if share else None))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # raised before any sending
            broadcast_object(_Outcome(False, error=describe_error(MainRankFailure(f"cannot send rank 0's result: "
                                                                                  f"{exc}"))))
            raise
        return value
    outcome = broadcast_object(None)
    if not isinstance(outcome, _Outcome):
        raise MainRankFailure("rank 0 sent no outcome")
    if not outcome.ok:
        error = rebuild_error(outcome.error) if outcome.error else MainRankFailure("rank 0 failed")
        try:
            error.from_main_rank = True  # type: ignore[attr-defined]
        except AttributeError:
            pass
        raise error
    return outcome.value


def main_first(fn: Callable[[], T]) -> T:
    """Rank 0 runs ``fn`` first (e.g. filling a cache file), then the other ranks run it (e.g.
    reading that file). A failure on rank 0 is raised on every rank (see :func:`on_main`)."""
    if not is_active():
        return fn()
    result = on_main(fn, share=False)
    return result if is_main() else fn()  # type: ignore[return-value]


# --- data and modules -----------------------------------------------------------------------------

def shard_bounds(batch: int, rank_: int, world_: int) -> tuple[int, int]:
    """[lo, hi) of rank ``rank_``'s contiguous slice of a batch of ``batch`` items (sizes differ by
    at most one; ranks in order, so the slices concatenated in rank order are the whole batch)."""
    return (rank_ * batch) // world_, ((rank_ + 1) * batch) // world_


class ShardedBatchSampler:
    """This rank's slice of every batch of ``sampler`` (same global order on every rank)."""

    def __init__(self, sampler: Any, rank_: int, world_: int) -> None:
        self.sampler, self.rank, self.world = sampler, rank_, world_

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            lo, hi = shard_bounds(len(batch), self.rank, self.world)
            yield batch[lo:hi]


def wrap_ddp(module: torch.nn.Module, ignore: Sequence[str] = ()) -> torch.nn.Module:
    """``module`` in DistributedDataParallel for this rank's device.

    ``ignore``: names of parameters DDP neither broadcasts at start nor averages (rows of a head
    split across ranks, :mod:`corecompress.engine.row_shards`).

    ``static_graph``: the set of parameters used is the same every step, so parameters the forward
    never uses (a model's unused head) are allowed, and a step whose backward is skipped (non-finite
    loss, skipped on every rank alike) is too. Buffers are not broadcast at every forward (they are
    synchronised when DDP is built and at the end of a phase): that would resend AdaDistill's K×d
    centres each step, and those stay identical by construction.
    """
    from torch.nn.parallel import DistributedDataParallel

    where = device()
    kwargs: dict[str, Any] = {"static_graph": True}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:  # older PyTorch
        kwargs["broadcast_buffers"] = False
    if where.type == "cuda":
        kwargs["device_ids"] = [where.index]
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    return DistributedDataParallel(module, **kwargs)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank."""
    if not is_active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
