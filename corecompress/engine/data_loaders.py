"""How the engine builds its DataLoaders: how many workers (``num_workers: auto``), pinned memory, prefetch,
and whole-batch reads.

``auto`` asks the dataset. A dataset that decodes images when an item is read (RecordIO, identity
folders, verification ``.bin`` files, CelebA) declares how many decode workers it wants with the
optional attribute ``decode_workers`` (an int; absent or 0 = its samples are in memory: synthetic
faces, Olivetti, cached tensors). A wrapper (``torch.utils.data.Subset``, or anything with a
``dataset`` attribute) is looked through. Then

    auto = min(decode_workers, MAX_AUTO_WORKERS, max(1, CPUs of this process // local ranks - 1))

— one CPU per rank stays with the main process, which runs the step. An integer setting is used as
it is. Worker processes never change a sample: the samples are pure functions of their index, and
the training flips are drawn in the loop from (seed, step), so batches are bitwise the same with
any number of workers.

A dataset may also read a whole batch at once: the optional method ``batch(indices) -> dict`` returns
exactly what collating ``[dataset[i] for i in indices]`` would (bit for bit), built in one buffer
(face readers: one float batch instead of one tensor per image plus a stacking copy). The training
loader calls it when present. (The training loop may read a uint8 view of a decoding set instead and
normalise on the device: ``training._train_view``, docs/data_loading.md.)

On CUDA the batches are pinned (``pin_memory``) so the loop's ``non_blocking`` copies overlap the
step; with workers, they stay alive across epochs (``persistent_workers``) and each keeps
``PREFETCH_FACTOR`` batches ready.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from corecompress.errors import UserError

#: The most workers ``auto`` picks for one process, whatever the machine.
MAX_AUTO_WORKERS = 16
#: Batches each worker keeps ready (DataLoader's ``prefetch_factor``).
PREFETCH_FACTOR = 2


def wanted_workers(dataset: Any) -> int:
    """The dataset's ``decode_workers`` (looking through wrappers); 0 when it declares none."""
    for _ in range(8):  # wrappers of wrappers, never an endless chain
        declared = getattr(dataset, "decode_workers", None)
        if isinstance(declared, int) and not isinstance(declared, bool):
            return max(declared, 0)
        inner = getattr(dataset, "dataset", None)
        if inner is None or inner is dataset:
            return 0
        dataset = inner
    return 0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def local_world_size() -> int:
    """Processes on this machine under torchrun (``LOCAL_WORLD_SIZE``), else 1."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def resolve_workers(setting: int | str, dataset: Any, *, cpus: int | None = None,
                    local_world: int | None = None) -> int:
    """The worker count for ``setting`` (an int, or ``"auto"`` as the module docstring says)."""
    if setting != "auto":
        return int(setting)
    wanted = wanted_workers(dataset)
    if wanted == 0:
        return 0
    per_rank = (available_cpus() if cpus is None else cpus) // (local_world_size() if local_world is None else local_world)
    return min(wanted, MAX_AUTO_WORKERS, max(1, per_rank - 1))


def loader_settings(dataset: Any, setting: int | str, device: torch.device | str | None, *,
                    persistent: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``DataLoader``: workers, ``pin_memory`` on CUDA, persistence and prefetch."""
    workers = resolve_workers(setting, dataset)
    settings: dict[str, Any] = {"num_workers": workers,
                                "pin_memory": device is not None and torch.device(device).type == "cuda"}
    if workers > 0:
        settings.update(persistent_workers=persistent, prefetch_factor=PREFETCH_FACTOR)
    return settings


class _WholeBatches:
    """Indexed by a list of indices; returns the dataset's ``batch(indices)`` (DataLoader then adds nothing)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> Any:
        return self.dataset.batch(indices)


def train_loader(dataset: Any, batch_sampler: Any, setting: int | str, device: torch.device | str | None,
                 generator: torch.Generator) -> DataLoader:
    """The training DataLoader over ``batch_sampler``'s index lists (whole-batch reads when the dataset has them)."""
    settings = loader_settings(dataset, setting, device)
    if callable(getattr(dataset, "batch", None)):
        return DataLoader(_WholeBatches(dataset), sampler=batch_sampler, batch_size=None, generator=generator,
                          **settings)
    return DataLoader(dataset, batch_sampler=batch_sampler, generator=generator, **settings)


def _as_raised(error: UserError) -> UserError:
    """A user's error raised in a worker, as the worker raised it: PyTorch re-raises it in this process
    with the worker's traceback as its message, which would print as many lines instead of one."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return error
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    cls = type(error)
    message = last.split(f"{cls.__module__}.{cls.__qualname__}: ", 1)[-1]
    try:
        return cls(message)
    except TypeError:  # a subclass with another constructor: keep the message, lose only the subclass
        return UserError(message)


def batches_of(loader: Iterable[Any]) -> Iterator[Any]:
    """Iterate ``loader``; a :class:`UserError` from a worker surfaces with its own one-line message."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except UserError as error:
            raise _as_raised(error) from None
        yield batch
