"""The training loop used for training, retraining and distillation. Reads top to bottom.

One step: batch → (flip) → student forward → teacher targets (if the objective wants them) →
objective → backward → clip → learning rate from the schedule → optimizer step →
``after_optimizer_step`` hooks (masked pruning re-zeroes here) → log / evaluate / checkpoint.
The data order is a pure function of (seed, epoch) and the flips of (seed, step), and every phase
reseeds the global generators from (seed, phase) before it starts, so a run is reproducible and can
be resumed exactly at any checkpoint: the checkpoint restores model, objective (heads, AdaDistill
centres), optimizer, soft masks and the generators' state, and the sampler skips the batches already
seen. Ctrl-C finishes the current step, writes a checkpoint and raises :class:`TrainingInterrupted`.

Under ``torchrun`` (:mod:`corecompress.engine.distributed`, docs/distributed.md) the same loop runs on every
rank: the global batch is the recipe's ``batch_size``, in the single-process order, and rank r takes
its contiguous slice of it (and of the flip mask); model and objective (margin head, projector) are
trained as one DistributedDataParallel module, so their gradients are averaged; the loss and the
logged parts are averaged over ranks weighted by their sample counts (= the single-process batch
mean); whether to skip a step or to stop on Ctrl-C is agreed by all ranks; only rank 0 writes
checkpoints, with every rank's generator state. ``$CORECOMPRESS_DDP_DUMP_DIR`` (diagnostics) makes
every rank write its trained model, objective and masks to ``DIR/<phase>.rank<r>.safetensors``.
An objective's parameters tagged as split by rows across ranks (a Partial FC head,
:mod:`corecompress.engine.row_shards`) are kept out of DDP's averaging, enter gradient clipping with the
global norm, and are gathered into full matrices for checkpoints (sliced again on resume).

Precision (:mod:`corecompress.engine.precision`): the student's forward, the teacher's and the
objective run under the run's autocast (none for fp32; the losses keep their margin math in float32);
backward runs outside it. With fp16 a gradient scaler scales the loss, unscales before clipping and
skips a step whose gradients overflowed (lowering the scale) — such a step is not a non-finite loss;
the loss itself being NaN/inf still follows ``nonfinite``. The scaler's state is checkpointed.
``compile``/``channels_last`` (:mod:`corecompress.engine.execution`) hold for the phase.

Host reads. On a CPU — and under torchrun, whose loss all-reduce synchronises anyway, and with
``nonfinite: skip``, which must know before the update whether to make it, and with an ``on_step``
callback (gradual pruning), which must not prune from a bad update — the loop reads each step's loss
at once, as it always did, so CPU runs are bitwise unchanged. A single CUDA process with
``nonfinite: stop`` reads it one step late (:class:`~corecompress.engine.deferred.DeferredLoss`):
the update of step k is queued without looking at its loss, and step k's loss is read during
step k + 1 (after its forward is queued), or first whenever the loop logs, evaluates, checkpoints
or ends. A NaN/inf loss of step k still stops the run with step k's number; its update may have
reached the weights in memory, but every read point comes before any checkpoint, so no checkpoint
ever holds it (and :func:`_checkpoint` also refuses non-finite weights).
"""
from __future__ import annotations

import math
import os
import random
import signal
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from corecompress.weights import write_tensors

from corecompress.engine import distributed, precision, row_shards
from corecompress.engine.artifacts import publish_objective
from corecompress.engine.preflight import check_loss_parts
from corecompress.engine.deferred import DeferredLoss
from corecompress.engine.execution import channels_last_batch, training_execution
from corecompress.engine.checkpoint import (
    SCALER_PART, Checkpoint, CheckpointError, CheckpointWarning, checkpoint_name, latest_checkpoint, rank_rng_part,
    rng_state, save_checkpoint, set_rng_state,
)
from corecompress.errors import UserError
from corecompress.engine.evaluate import evaluate_model
from corecompress.engine.data_loaders import batches_of, train_loader, wanted_workers
from corecompress.config.recipe import TrainSection




class NonFiniteLossError(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint stays."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during training: the current step finished and a checkpoint of it was written."""


def phase_seed(seed: int, phase: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(phase.encode())) % 2**63


def seed_phase(seed: int, phase: str) -> None:
    """Reseed Python, NumPy and torch from (seed, phase), so a phase's randomness (dropout, drop-path)
    does not depend on what earlier stages drew — which makes restarting a phase exact."""
    value = phase_seed(seed, phase)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class EpochBatchSampler:
    """Yields index batches forever: epoch ``e`` is a permutation seeded by (seed, e)."""

    def __init__(self, size: int, batch_size: int, seed: int, start_batch: int = 0) -> None:
        if size < 1:
            raise UserError("the training set is empty")
        self.size, self.batch_size, self.seed = size, min(batch_size, size), seed
        self.per_epoch = self.size // self.batch_size
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list[int]]:
        batch = self.start_batch
        while True:
            epoch, offset = divmod(batch, self.per_epoch)
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.size, generator=gen)
            for b in range(offset, self.per_epoch):
                yield perm[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            batch = (epoch + 1) * self.per_epoch


def make_optimizer(section: TrainSection, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; weight decay on matrices only (not on norms, biases, tables of 1-D)."""
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in params if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": section.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if section.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=section.lr, momentum=section.momentum)
    if section.optimizer == "adam":
        return torch.optim.Adam(groups, lr=section.lr)
    return torch.optim.AdamW(groups, lr=section.lr)


def flip_half(images: torch.Tensor, seed: int, step: int, offset: int = 0,
              total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontally flip a random half of the batch (deterministic in (seed, step)); returns the flip mask.

    ``images`` may be rows ``offset …`` of a global batch of ``total`` (one rank's shard): the mask is
    drawn for the whole global batch and sliced, so every sample is flipped as in a single process.
    """
    gen = torch.Generator().manual_seed(seed * 7_919 + step)
    rows = images.shape[0]
    flip = torch.rand(total if total is not None else rows, generator=gen)[offset:offset + rows] < 0.5
    if not flip.any():  # a CPU tensor: reading it does not wait for the device
        return images, flip.to(images.device)
    mask = flip.to(images.device, non_blocking=True)
    # torch.where, not images[flip] = ...: boolean indexing on a GPU waits for the device (nonzero)
    return torch.where(mask.view(rows, *([1] * (images.ndim - 1))), images.flip(-1), images), mask


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float
    skipped_steps: int
    history: list[dict[str, float]]


@dataclass
class _Progress:
    """What a checkpoint carries besides tensors, so a resumed phase reports the whole phase."""

    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    last_loss: float = math.nan
    skipped: int = 0
    seconds: float = 0.0


class _StopOnInterrupt:
    """While active (main thread only), the first SIGINT only sets ``requested``; the loop then
    checkpoints and stops. A second SIGINT raises KeyboardInterrupt at once. An ignored SIGINT stays ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:
                self._previous = previous if previous is not None else signal.SIG_DFL
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class StudentWithObjective(torch.nn.Module):
    """Student and objective as one module — what DistributedDataParallel wraps, so the objective's
    own parameters (margin head, projector) are averaged across ranks like the model's. The teacher
    is called in between, outside the module's parameters (it is frozen)."""

    def __init__(self, model: torch.nn.Module, objective: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, images: torch.Tensor, batch: dict[str, Any],
                teacher: Callable[[torch.Tensor, dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        outputs = self.model(images)
        teacher_outputs = teacher(images, batch) if teacher is not None else None
        return self.objective(outputs, batch, teacher_outputs)


#: Whether the training loader reads uint8 images from a decoding dataset that offers them and normalises
#: them on the device (:func:`_train_view`); the batches are bitwise the same either way (tests switch it).
DEVICE_NORMALIZE = True


def _train_view(dataset: Any) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor] | None]:
    """What the training loader reads, and the normalisation its images need on the device (None: none).

    A dataset that decodes images (``decode_workers``, :mod:`corecompress.engine.data_loaders`) may offer
    ``uint8_view() -> (view, normalize) | None``: ``view`` yields the same samples with uint8 images, a
    quarter of the bytes, and ``normalize(uint8 batch on the device)`` is bit for bit the float batch the
    dataset itself gives. Only the training loop reads the view; ``ctx.data.train()`` stays as it is."""
    offer = getattr(dataset, "uint8_view", None)
    if not DEVICE_NORMALIZE or not callable(offer) or wanted_workers(dataset) == 0:
        return dataset, None
    view = offer()
    return (dataset, None) if view is None else view


def _to_device(batch: dict[str, Any], device: torch.device,
               normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """``batch`` on ``device`` (non-blocking copies); then ``normalize`` of its images there, if given."""
    moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if normalize is not None:
        moved["image"] = normalize(moved["image"])
    return moved


@dataclass
class _Loop:
    """What the step loop works with: built once by :func:`_build_loop`, then read (and the progress
    and clock updated) by each phase of a step."""

    ctx: Any
    section: TrainSection
    phase: str
    seed: int
    model: torch.nn.Module
    objective: torch.nn.Module
    step_module: torch.nn.Module  # model and objective as one module (DDP-wrapped under torchrun)
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, int], float]
    params: list[torch.nn.Parameter]
    base_lrs: list[float]  # the optimizer's learning rates before any schedule (or resume) touched them
    batches: Iterator[dict[str, Any]]
    normalize: Callable[[torch.Tensor], torch.Tensor] | None  # of the images on the device (_train_view)
    teacher_call: Callable[[torch.Tensor, dict[str, Any]], Any] | None
    progress: _Progress
    on_step: Callable[[int, torch.nn.Module], None] | None
    world: int
    rank: int
    lo: int  # this rank's rows [lo, hi) of the global batch
    hi: int
    global_batch: int
    share: float  # this rank's weight in the gradient average (1 for equal slices)
    scaler: torch.amp.GradScaler | None = None  # fp16's gradient scaler
    deferred: DeferredLoss | None = None  # set when the loss is read one step late (module docstring)
    started: float = 0.0
    first_step: int = 0  # the step this process started (or resumed) the phase at
    saved_at: int = -1  # the step of the last checkpoint this run wrote or resumed from


def train(ctx: Any, section: TrainSection, model: torch.nn.Module, phase: str,
          on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainResult:
    """Train ``model`` for ``section.steps`` steps (continuing from a checkpoint on resume).

    ``on_step(completed_steps, model)`` runs after each optimizer step and its hooks, before logging
    and checkpointing (gradual pruning prunes its rounds there)."""
    seed = ctx.recipe.seed
    seed_phase(seed, phase)
    component = ctx.registry.get("loss", section.objective.name)
    objective = ctx.create("loss", section.objective).to(ctx.device)
    if callable(getattr(objective, "setup", None)):  # optional (the Loss protocol)
        objective.setup(ctx)
    publish_objective(ctx, component, objective, phase, final=False)  # live, for evaluations during training
    needs_teacher = "teacher" in component.needs_for(section.objective.options)
    if needs_teacher and ctx.teacher is None:
        raise UserError(f"{phase}.objective: '{section.objective.name}' needs a teacher; add a 'teacher:' section")
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = make_optimizer(section, params)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    progress = _Progress()
    scaler = precision.grad_scaler(ctx.precision, ctx.device)
    resumed = _resume(ctx, phase, model, objective, optimizer, progress, scaler) if ctx.resuming else None
    if resumed is not None and progress.step >= section.steps:  # this phase had finished: weights loaded
        ctx.log.info("%s: complete in checkpoint %s; not trained again", phase, resumed.path.name)
        _restore_rng(resumed, seed, phase)
        return _finish(ctx, phase, model, objective, section, progress)
    recipe = ctx.recipe
    with training_execution({"student": model, "teacher": ctx.teacher if needs_teacher else None},
                            compile=recipe.compile, channels_last=recipe.channels_last, log=ctx.log):
        loop = _build_loop(ctx, section, phase, model, objective, needs_teacher, optimizer, params, base_lrs,
                           progress, on_step)
        loop.scaler = scaler
        if _defers_reads(loop):
            loop.deferred = DeferredLoss(ctx.device)
        _begin(loop, resumed)
        stopping = _run_steps(loop)
        _read_deferred(loop)
    return _end(loop, stopping)


def _build_loop(ctx: Any, section: TrainSection, phase: str, model: torch.nn.Module, objective: torch.nn.Module,
                needs_teacher: bool, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                base_lrs: list[float], progress: _Progress,
                on_step: Callable[[int, torch.nn.Module], None] | None) -> _Loop:
    """Data, teacher target, schedule, loader and DDP wrap, in this order (the collectives and draws
    of the ranks must line up), for the steps from ``progress.step`` on."""
    seed = ctx.recipe.seed
    world, rank = distributed.world(), distributed.rank()
    dataset = ctx.data.train()
    global_batch = min(section.batch_size, len(dataset))
    if global_batch < world:
        raise UserError(f"{phase}.batch_size: {global_batch} is smaller than the number of processes ({world}); "
                        "the batch size is global and split across them")
    target = None
    if needs_teacher and section.target is not None:
        target = ctx.create("target", section.target)

        def prepare() -> None:  # the teacher computes the targets in the run's precision
            with precision.run_autocast(ctx):
                target.prepare(ctx.teacher, ctx.data.train(), ctx)

        distributed.main_first(prepare)  # rank 0 fills caches
    schedule = ctx.create("schedule", section.lr_schedule)
    read, normalize = _train_view(dataset)
    batches, lo, hi = _batches(read, section, seed, progress.step, global_batch, rank, world, ctx.device)
    # DDP averages the ranks' gradients; with unequal slices each rank's mean loss is weighted by its
    # share, so the average is the gradient of the global batch mean (exactly 1 for equal slices)
    share = (hi - lo) * world / global_batch
    step_module: torch.nn.Module = StudentWithObjective(model, objective)
    if world > 1:
        step_module = distributed.wrap_ddp(step_module, ignore=row_shards.ddp_ignore_names(step_module))
    teacher_call = _teacher_outputs(target, ctx.teacher) if needs_teacher else None
    return _Loop(ctx, section, phase, seed, model, objective, step_module, optimizer, schedule, params, base_lrs,
                 batches, normalize, teacher_call, progress, on_step, world, rank, lo, hi, global_batch, share)


def _batches(dataset: Any, section: TrainSection, seed: int, start_step: int, global_batch: int, rank: int,
             world: int, device: torch.device | None = None) -> tuple[Iterator[dict[str, Any]], int, int]:
    """The batches from ``start_step`` on (this rank's slice of each), and the slice's rows [lo, hi).

    Workers (``num_workers``, ``auto`` by default), pinned memory on CUDA, prefetch and whole-batch reads
    as :mod:`corecompress.engine.data_loaders` decides; the batches are the same with any worker count."""
    sampler: Any = EpochBatchSampler(len(dataset), section.batch_size, seed, start_batch=start_step)
    lo, hi = distributed.shard_bounds(global_batch, rank, world)
    if world > 1:
        sampler = distributed.ShardedBatchSampler(sampler, rank, world)
    loader = train_loader(dataset, sampler, section.num_workers, device, torch.Generator().manual_seed(seed))
    return batches_of(loader), lo, hi


def _begin(loop: _Loop, resumed: Checkpoint | None) -> None:
    """The generators for the first step (as checkpointed on resume, else one stream per rank), then the clock."""
    if resumed is not None:  # last, so nothing above can draw from the restored generators
        _restore_rng(resumed, loop.seed, loop.phase)
        loop.ctx.log.info("%s: resumed at step %d of %d from checkpoint %s", loop.phase, loop.progress.step,
                          loop.section.steps, resumed.path.name)
    elif loop.rank > 0:  # every rank its own stream for dropout & co. (rank 0's is the single-process one)
        seed_phase(loop.seed, f"{loop.phase}/rank{loop.rank}")
    loop.model.train()
    loop.started = time.perf_counter()
    loop.first_step = loop.progress.step
    loop.saved_at = loop.progress.step if resumed is not None else -1


def _run_steps(loop: _Loop) -> bool:
    """The steps from ``loop.progress.step`` on; True when Ctrl-C stopped them (agreed by all ranks)."""
    from tqdm.auto import tqdm

    section, progress = loop.section, loop.progress
    bar = tqdm(range(progress.step, section.steps), desc=loop.phase, leave=False,
               disable=None if loop.rank == 0 else True, dynamic_ncols=True, initial=progress.step,
               total=section.steps)
    stopping = False
    with _StopOnInterrupt() as stop:
        for step in bar:
            batch = _next_batch(loop, stop)
            if batch is None:  # Ctrl-C stopped the DataLoader's workers
                stopping = True
                break
            parts = _forward(loop, batch, step)
            if step == loop.first_step:  # the objective's contract, before its first optimizer step
                check_loss_parts(parts, loop.ctx.registry.get("loss", loop.section.objective.name), loop.phase,
                                 finite=False)
            step_loss, stopping = _reduce_loss(loop, parts["loss"], stop)
            if loop.deferred is not None:
                _read_deferred(loop)  # the previous step's loss, while the GPU computes this step's
                finite = True
            else:
                finite = _check_finite(loop, step_loss, step)
            loop.optimizer.zero_grad(set_to_none=True)
            if finite:
                _optimise(loop, parts["loss"], step)
                if loop.deferred is not None:
                    loop.deferred.put(step, step_loss)
                else:
                    progress.last_loss = float(step_loss)
            else:
                _skip_step(loop, step_loss, step)
            progress.step = step + 1
            if finite:
                _log_step(loop, parts, bar)
            _maybe_evaluate(loop)
            _maybe_checkpoint(loop)
            if stopping or (loop.world == 1 and stop.requested):
                break
    bar.close()
    return stop.requested if loop.world == 1 else stopping


def _next_batch(loop: _Loop, stop: _StopOnInterrupt) -> dict[str, Any] | None:
    """The next batch, on the device; None when it failed because Ctrl-C was pressed."""
    try:
        return _to_device(next(loop.batches), loop.ctx.device, loop.normalize)
    except Exception:  # noqa: BLE001 - Ctrl-C also stops DataLoader workers; the interrupt wins
        if stop.requested:
            return None
        raise


def _defers_reads(loop: _Loop) -> bool:
    """Whether this loop reads each step's loss one step late (the module docstring says when)."""
    return (loop.ctx.device.type == "cuda" and loop.world == 1 and loop.section.nonfinite == "stop"
            and loop.on_step is None)


def _read_deferred(loop: _Loop) -> None:
    """Read the pending step's loss, if any: a NaN/inf one stops the run naming that step."""
    pending = loop.deferred.take() if loop.deferred is not None else None
    if pending is None:
        return
    if not math.isfinite(pending.value):
        raise _nonfinite_error(loop, pending.value, pending.step)
    loop.progress.last_loss = pending.value


def _forward(loop: _Loop, batch: dict[str, Any], step: int) -> dict[str, Any]:
    """(Flip half the batch, then) student, teacher and objective under the run's autocast: the
    objective's parts, "loss" among them."""
    images = batch["image"]
    if loop.section.augment == "flip":
        images, batch["flipped"] = flip_half(images, loop.seed, step, loop.lo, loop.global_batch)
    if loop.ctx.recipe.channels_last:
        images = channels_last_batch(images)
    with precision.run_autocast(loop.ctx):
        return loop.step_module(images, batch, loop.teacher_call)


def _reduce_loss(loop: _Loop, loss: torch.Tensor, stop: _StopOnInterrupt) -> tuple[torch.Tensor, bool]:
    """The global batch-mean loss and whether any rank was interrupted, in one collective (a single
    process: its own loss, and False; the loop reads its Ctrl-C itself)."""
    if loop.world == 1:
        return loss.detach(), False
    loss_sum, interrupted = distributed.all_reduce_sum([float(loss.detach()) * (loop.hi - loop.lo),
                                                        float(stop.requested)])
    return torch.tensor(loss_sum / loop.global_batch), interrupted > 0


def _check_finite(loop: _Loop, step_loss: torch.Tensor, step: int) -> bool:
    """Whether the loss is finite; a non-finite one stops the run unless ``nonfinite: skip``."""
    finite = bool(torch.isfinite(step_loss))
    if not finite and loop.section.nonfinite == "stop":
        raise _nonfinite_error(loop, step_loss.item(), step)
    return finite


def _nonfinite_error(loop: _Loop, value: float, step: int) -> NonFiniteLossError:
    phase, steps = loop.phase, loop.section.steps
    return NonFiniteLossError(
        f"{phase}: loss is {value} at step {step + 1} of {steps}; stopped (the last "
        f"checkpoint is kept; lower the learning rate, or set {phase}.nonfinite: skip to skip such steps)")


def _optimise(loop: _Loop, loss: torch.Tensor, step: int) -> None:
    """Backward, clip, learning rate from the schedule, optimizer step, then the hooks and ``on_step``
    (with fp16's scaler: scaled backward, unscaled before clipping, a step skipped on overflow)."""
    section, optimizer, scaler = loop.section, loop.optimizer, loop.scaler
    loss = loss * loop.share if loop.share != 1.0 else loss
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if section.clip_grad_norm:
        if scaler is not None:
            scaler.unscale_(optimizer)
        row_shards.clip_grad_norm_(loop.params, section.clip_grad_norm)  # torch's unless sharded
    factor = loop.schedule(step, section.steps)
    for group, base in zip(optimizer.param_groups, loop.base_lrs):
        group["lr"] = base * factor
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    loop.ctx.hook.after_optimizer_step(run=loop.ctx, step=step, model=loop.model)
    if loop.on_step is not None:
        loop.on_step(step + 1, loop.model)


def _skip_step(loop: _Loop, step_loss: torch.Tensor, step: int) -> None:
    """``nonfinite: skip``: count the step and say so; the weights stay as they were."""
    loop.progress.skipped += 1
    loop.ctx.log.warning("%s step %d: loss is %s; step skipped (%d so far)", loop.phase, step + 1, step_loss.item(),
                         loop.progress.skipped)


def _log_step(loop: _Loop, parts: dict[str, Any], bar: Any) -> None:
    """Every ``log_every`` steps and at the last: the learning rate and the objective's scalar parts
    (averaged over ranks) into the history, the log and the progress bar."""
    progress, section = loop.progress, loop.section
    if progress.step % section.log_every != 0 and progress.step != section.steps:
        return
    _read_deferred(loop)
    record = {"step": progress.step, "lr": loop.optimizer.param_groups[0]["lr"]}
    scalars = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in parts.items() if _is_scalar(v)}
    record.update(distributed.all_reduce_mean(scalars, loop.hi - loop.lo) if loop.world > 1 else scalars)
    progress.history.append(record)
    bar.set_postfix(loss=f"{progress.last_loss:.4f}")
    loop.ctx.log.info("%s step %d/%d %s%s", loop.phase, progress.step, section.steps,
                      " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"), _pace(loop))


def _pace(loop: _Loop) -> str:
    """`` 3.1 steps/s, ETA 0:02:10`` from the steps this process ran (not written to the history)."""
    done, seconds = loop.progress.step - loop.first_step, time.perf_counter() - loop.started
    if done <= 0 or seconds <= 0:
        return ""
    rate = done / seconds
    left = round((loop.section.steps - loop.progress.step) / rate)
    return f" {rate:.3g} steps/s, ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"


def _maybe_evaluate(loop: _Loop) -> None:
    """Every ``eval_every`` steps before the last: evaluate on rank 0 and log the metrics."""
    ctx, step, section = loop.ctx, loop.progress.step, loop.section
    if section.eval_every and step % section.eval_every == 0 and step < section.steps:
        _read_deferred(loop)
        distributed.on_main(lambda: ctx.log.info("%s step %d eval %s", loop.phase, step,
                                                 evaluate_model(ctx, loop.model)), share=False)


def _maybe_checkpoint(loop: _Loop) -> None:
    """Every ``checkpoint_every`` steps before the last: a checkpoint (the last step's is written by :func:`_end`)."""
    step, section = loop.progress.step, loop.section
    if section.checkpoint_every and step % section.checkpoint_every == 0 and step < section.steps:
        _read_deferred(loop)
        _checkpoint(loop.ctx, loop.phase, loop.model, loop.objective, loop.optimizer, loop.progress, loop.started,
                    section.steps, loop.scaler)
        loop.saved_at = step


def _end(loop: _Loop, stopping: bool) -> TrainResult:
    """The final checkpoint (or that of the step Ctrl-C stopped at, then :class:`TrainingInterrupted`)."""
    ctx, phase, progress, steps = loop.ctx, loop.phase, loop.progress, loop.section.steps
    progress.seconds += time.perf_counter() - loop.started
    if loop.world > 1:
        distributed.broadcast_buffers(loop.model)  # e.g. BatchNorm statistics: rank 0's, as checkpointed
    if loop.saved_at != progress.step:  # the final checkpoint, or the step Ctrl-C stopped at
        _checkpoint(ctx, phase, loop.model, loop.objective, loop.optimizer, progress, None, steps, loop.scaler)
    if stopping:
        name = checkpoint_name(phase, progress.step)
        ctx.log.info("%s: interrupted at step %d of %d; checkpoint %s written", phase, progress.step, steps, name)
        raise TrainingInterrupted(f"{phase}: interrupted at step {progress.step} of {steps}; "
                                  f"checkpoint {name} written")
    return _finish(loop.ctx, phase, loop.model, loop.objective, loop.section, progress)


def _teacher_outputs(target: Any, teacher: torch.nn.Module | None) -> Callable[[torch.Tensor, dict[str, Any]], Any]:
    """What the loop calls for the teacher's outputs: the target's (given the batch), else the teacher's."""

    def call(images: torch.Tensor, batch: dict[str, Any]) -> Any:
        if target is not None:
            return target(batch)
        with torch.no_grad():
            return teacher(images)

    return call


def _finish(ctx: Any, phase: str, model: torch.nn.Module, objective: torch.nn.Module, section: TrainSection,
            progress: _Progress) -> TrainResult:
    model.eval()
    on_train_end = getattr(objective, "on_train_end", None)
    if callable(on_train_end):  # every rank (e.g. a sharded head gathers its full matrix here)
        on_train_end(ctx)
    publish_objective(ctx, ctx.registry.get("loss", section.objective.name), objective, phase, final=True)
    if distributed.world() > 1:  # later stages draw from rank 0's generators, as a single process would
        set_rng_state(distributed.broadcast_object(rng_state()))
    dump_dir = os.environ.get(distributed.ENV_DUMP_DIR)
    if dump_dir:
        _dump_state(Path(dump_dir), phase, model, objective, getattr(getattr(ctx, "masks", None), "masks", None))
    return TrainResult(section.steps, progress.seconds, progress.last_loss, progress.skipped, progress.history)


def _dump_state(folder: Path, phase: str, model: torch.nn.Module, objective: torch.nn.Module,
                masks: dict[str, torch.Tensor] | None) -> Path:
    """Diagnostics (``$CORECOMPRESS_DDP_DUMP_DIR``): this rank's trained state, to compare ranks."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    tensors.update({f"objective.{k}": v for k, v in objective.state_dict().items() if isinstance(v, torch.Tensor)})
    tensors.update({f"masks.{k}": v for k, v in (masks or {}).items()})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{phase}.rank{distributed.rank()}.safetensors"
    write_tensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, path)
    return path


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


def _checkpoint(ctx: Any, phase: str, model: torch.nn.Module, objective: torch.nn.Module,
                optimizer: torch.optim.Optimizer, progress: _Progress, started: float | None, steps: int,
                scaler: torch.amp.GradScaler | None = None) -> None:
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise NonFiniteLossError(f"{phase}: the weights became NaN/inf by step {progress.step}; stopped without "
                                 "checkpointing them (the last checkpoint is kept; lower the learning rate)")
    seconds = progress.seconds + (time.perf_counter() - started if started is not None else 0.0)
    masks = getattr(getattr(ctx, "masks", None), "masks", None)
    info = {"phase": phase, "step": progress.step, "steps": steps, "seed": ctx.recipe.seed,
            "history": progress.history, "last_loss": progress.last_loss, "skipped": progress.skipped,
            "seconds": seconds}
    states = distributed.gather_objects(rng_state())  # every rank's generators (rank 0: "rng")
    # rows split across ranks (a sharded head) and their moments, gathered into full matrices on rank 0
    objective_part, optimizer_part = row_shards.checkpoint_views(objective, optimizer)
    scaler_state = scaler.state_dict() if scaler is not None else None

    def write() -> None:
        assert states is not None
        if len(states) > 1:
            info["world_size"] = len(states)
        save_checkpoint(ctx.out_dir / "checkpoints", checkpoint_name(phase, progress.step), model=model,
                        objective=objective_part, optimizer=optimizer_part, info=info, masks=masks, rng=states[0],
                        rank_rngs=states[1:], scaler=scaler_state)

    distributed.on_main(write, share=False)


def _restore_rng(ckpt: Checkpoint, seed: int, phase: str) -> None:
    """This rank's generators as checkpointed (rank r > 0: ``rng-rank<r>``; when the checkpoint was
    written by fewer processes, a stream seeded from (seed, phase, rank, step))."""
    rank = distributed.rank()
    if rank == 0:
        set_rng_state(ckpt.tree("rng"))
    elif ckpt.has(rank_rng_part(rank)):
        set_rng_state(ckpt.tree(rank_rng_part(rank)))
    else:
        seed_phase(seed, f"{phase}/rank{rank}/step{ckpt.step}")


def _resume(ctx: Any, phase: str, model: torch.nn.Module, objective: torch.nn.Module,
            optimizer: torch.optim.Optimizer, progress: _Progress,
            scaler: torch.amp.GradScaler | None = None) -> Checkpoint | None:
    """Load the newest usable checkpoint of ``phase`` (a damaged one is reported and the previous one
    used); None when there is none, and the phase starts from its beginning. Under torchrun rank 0
    chooses the checkpoint and every other rank loads the same one. fp16's ``scaler`` continues from
    the checkpoint's state (a fresh scaler when the checkpoint was written without one)."""

    def warn(message: str) -> None:
        ctx.log.warning("warning: %s", message)
        warnings.warn(message, CheckpointWarning, stacklevel=4)

    def restore(ckpt: Checkpoint) -> None:
        model_state = ckpt.fitting_tensors("model", model)
        objective_state = row_shards.local_rows(ckpt.fitting_tensors("objective", row_shards.full_view(objective)),
                                                objective) if ckpt.has("objective") else {}  # this rank's rows
        if not ckpt.has("objective") and any(True for _ in objective.state_dict()):
            raise CheckpointError(f"checkpoint {ckpt.path}: objective.safetensors is missing")
        optimizer_state = row_shards.local_optimizer_rows(ckpt.tree("optimizer"), optimizer, objective)
        ckpt.tree("rng")  # readable now, applied when the loop starts
        scaler_state = ckpt.tree(SCALER_PART) if scaler is not None and ckpt.has(SCALER_PART) else None
        masks = getattr(ctx, "masks", None)
        mask_state = ckpt.tensors("masks") if masks is not None and ckpt.has("masks") else None
        if mask_state is not None and mask_state.keys() != masks.masks.keys():
            raise CheckpointError(f"checkpoint {ckpt.path}: its masks do not match the pruning plan")
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {ckpt.path}: optimizer state does not fit ({exc})") from None
        model.load_state_dict(model_state, strict=True)
        if objective_state:
            objective.load_state_dict(objective_state, strict=True)
        if mask_state is not None:
            masks.masks = mask_state
        if scaler_state is not None:
            scaler.load_state_dict(scaler_state)
        info = ckpt.info
        progress.step, progress.history = int(info["step"]), list(info.get("history", []))
        progress.last_loss = float(info.get("last_loss", math.nan))
        progress.skipped, progress.seconds = int(info.get("skipped", 0)), float(info.get("seconds", 0.0))

    def choose() -> tuple[str, dict[str, Any]] | None:
        ckpt = latest_checkpoint(ctx.out_dir / "checkpoints", phase, warn, restore)
        return None if ckpt is None else (str(ckpt.path), ckpt.info)

    chosen = distributed.on_main(choose)
    if chosen is None:
        return None
    ckpt = Checkpoint(Path(chosen[0]), chosen[1])
    if not distributed.is_main():  # rank 0 verified it; the others load the very same files
        restore(ckpt)
    return ckpt
