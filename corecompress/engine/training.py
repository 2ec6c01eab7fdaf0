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
from torch.utils.data import DataLoader

from corecompress.engine import distributed, row_shards
from corecompress.engine.artifacts import publish_objective
from corecompress.engine.checkpoint import (
    Checkpoint, CheckpointError, CheckpointWarning, checkpoint_name, latest_checkpoint, rank_rng_part, rng_state,
    save_checkpoint, set_rng_state,
)
from corecompress.errors import UserError
from corecompress.engine.evaluate import evaluate_model
from corecompress.config.recipe import TrainSection


RESUMING = "resuming"  # ctx.state flag set by the runner on ``run --resume``: phases look for checkpoints


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
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
    return images, flip.to(images.device)


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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def train(ctx: Any, section: TrainSection, model: torch.nn.Module, phase: str,
          on_step: Callable[[int, torch.nn.Module], None] | None = None) -> TrainResult:
    """Train ``model`` for ``section.steps`` steps (continuing from a checkpoint on resume).

    ``on_step(completed_steps, model)`` runs after each optimizer step and its hooks, before logging
    and checkpointing (gradual pruning prunes its rounds there)."""
    from tqdm.auto import tqdm

    seed = ctx.recipe.seed
    seed_phase(seed, phase)
    component = ctx.registry.get("loss", section.objective.name)
    objective = ctx.create("loss", section.objective).to(ctx.device)
    objective.setup(ctx)
    publish_objective(ctx, component, objective, phase, final=False)  # live, for evaluations during training
    needs_teacher = "teacher" in component.needs_for(section.objective.options)
    if needs_teacher and ctx.teacher is None:
        raise UserError(f"{phase}.objective: '{section.objective.name}' needs a teacher; add a 'teacher:' section")
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = make_optimizer(section, params)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    progress = _Progress()
    resumed = _resume(ctx, phase, model, objective, optimizer, progress) if ctx.state.get(RESUMING) else None
    if resumed is not None and progress.step >= section.steps:  # this phase had finished: weights loaded
        ctx.log.info("%s: complete in checkpoint %s; not trained again", phase, resumed.path.name)
        _restore_rng(resumed, seed, phase)
        return _finish(ctx, phase, model, objective, section, progress)
    world, rank = distributed.world(), distributed.rank()
    dataset = ctx.data.train()
    global_batch = min(section.batch_size, len(dataset))
    if global_batch < world:
        raise UserError(f"{phase}.batch_size: {global_batch} is smaller than the number of processes ({world}); "
                        "the batch size is global and split across them")
    target = None
    if needs_teacher and section.target is not None:
        target = ctx.create("target", section.target)
        distributed.main_first(lambda: target.prepare(ctx.teacher, ctx.data.train(), ctx))  # rank 0 fills caches
    schedule = ctx.create("schedule", section.lr_schedule)
    start_step = progress.step
    sampler: Any = EpochBatchSampler(len(dataset), section.batch_size, seed, start_batch=start_step)
    lo, hi = distributed.shard_bounds(global_batch, rank, world)
    if world > 1:
        sampler = distributed.ShardedBatchSampler(sampler, rank, world)
    # DDP averages the ranks' gradients; with unequal slices each rank's mean loss is weighted by its
    # share, so the average is the gradient of the global batch mean (exactly 1 for equal slices)
    share = (hi - lo) * world / global_batch
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=section.num_workers,
                        persistent_workers=section.num_workers > 0, generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)
    step_module: torch.nn.Module = StudentWithObjective(model, objective)
    if world > 1:
        step_module = distributed.wrap_ddp(step_module, ignore=row_shards.ddp_ignore_names(step_module))
    teacher_call = _teacher_outputs(target, ctx.teacher) if needs_teacher else None
    if resumed is not None:  # last, so nothing above can draw from the restored generators
        _restore_rng(resumed, seed, phase)
        ctx.log.info("%s: resumed at step %d of %d from checkpoint %s", phase, start_step, section.steps,
                     resumed.path.name)
    elif rank > 0:  # every rank its own stream for dropout & co. (rank 0's is the single-process one)
        seed_phase(seed, f"{phase}/rank{rank}")
    model.train()
    start = time.perf_counter()
    saved_at = start_step if resumed is not None else -1
    bar = tqdm(range(start_step, section.steps), desc=phase, leave=False, disable=None if rank == 0 else True,
               dynamic_ncols=True, initial=start_step, total=section.steps)
    stopping = False
    with _StopOnInterrupt() as stop:
        for step in bar:
            try:
                batch = _to_device(next(batches), ctx.device)
            except Exception:  # noqa: BLE001 - Ctrl-C also stops DataLoader workers; the interrupt wins
                if stop.requested:
                    stopping = True
                    break
                raise
            images = batch["image"]
            if section.augment == "flip":
                images, batch["flipped"] = flip_half(images, seed, step, lo, global_batch)
            parts = step_module(images, batch, teacher_call)
            loss = parts["loss"]
            if world > 1:  # one collective: the batch-mean loss and whether any rank was interrupted
                loss_sum, interrupted = distributed.all_reduce_sum([float(loss.detach()) * (hi - lo),
                                                                    float(stop.requested)])
                step_loss = torch.tensor(loss_sum / global_batch)
                stopping = interrupted > 0
            else:
                step_loss = loss.detach()
            finite = bool(torch.isfinite(step_loss))
            if not finite and section.nonfinite == "stop":
                raise NonFiniteLossError(
                    f"{phase}: loss is {step_loss.item()} at step {step + 1} of {section.steps}; stopped (the last "
                    f"checkpoint is kept; lower the learning rate, or set {phase}.nonfinite: skip to skip such steps)")
            optimizer.zero_grad(set_to_none=True)
            if finite:
                (loss * share if share != 1.0 else loss).backward()
                if section.clip_grad_norm:
                    row_shards.clip_grad_norm_(params, section.clip_grad_norm)  # torch's unless sharded
                factor = schedule(step, section.steps)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
                optimizer.step()
                ctx.hook.after_optimizer_step(run=ctx, step=step, model=model)
                if on_step is not None:
                    on_step(step + 1, model)
                progress.last_loss = float(step_loss)
            else:
                progress.skipped += 1
                ctx.log.warning("%s step %d: loss is %s; step skipped (%d so far)", phase, step + 1, step_loss.item(),
                                progress.skipped)
            progress.step = step + 1
            if finite and (progress.step % section.log_every == 0 or progress.step == section.steps):
                record = {"step": progress.step, "lr": optimizer.param_groups[0]["lr"]}
                scalars = {k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                           for k, v in parts.items() if _is_scalar(v)}
                record.update(distributed.all_reduce_mean(scalars, hi - lo) if world > 1 else scalars)
                progress.history.append(record)
                bar.set_postfix(loss=f"{progress.last_loss:.4f}")
                ctx.log.info("%s step %d/%d %s", phase, progress.step, section.steps,
                             " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))
            if section.eval_every and progress.step % section.eval_every == 0 and progress.step < section.steps:
                distributed.on_main(lambda: ctx.log.info("%s step %d eval %s", phase, progress.step,
                                                         evaluate_model(ctx, model)), share=False)
            if section.checkpoint_every and progress.step % section.checkpoint_every == 0 \
                    and progress.step < section.steps:
                _checkpoint(ctx, phase, model, objective, optimizer, progress, start, section.steps)
                saved_at = progress.step
            if world == 1:
                stopping = stop.requested
            if stopping:
                break
    if world == 1:
        stopping = stop.requested
    bar.close()
    progress.seconds += time.perf_counter() - start
    if world > 1:
        distributed.broadcast_buffers(model)  # e.g. BatchNorm statistics: rank 0's, as checkpointed
    if saved_at != progress.step:  # the final checkpoint, or the step Ctrl-C stopped at
        _checkpoint(ctx, phase, model, objective, optimizer, progress, None, section.steps)
    if stopping:
        name = checkpoint_name(phase, progress.step)
        ctx.log.info("%s: interrupted at step %d of %d; checkpoint %s written", phase, progress.step,
                     section.steps, name)
        raise TrainingInterrupted(f"{phase}: interrupted at step {progress.step} of {section.steps}; "
                                  f"checkpoint {name} written")
    return _finish(ctx, phase, model, objective, section, progress)


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
    ctx.state[f"{phase}_objective"] = objective
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
                optimizer: torch.optim.Optimizer, progress: _Progress, started: float | None, steps: int) -> None:
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

    def write() -> None:
        assert states is not None
        if len(states) > 1:
            info["world_size"] = len(states)
        save_checkpoint(ctx.out_dir / "checkpoints", checkpoint_name(phase, progress.step), model=model,
                        objective=objective_part, optimizer=optimizer_part, info=info, masks=masks, rng=states[0],
                        rank_rngs=states[1:])

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
            optimizer: torch.optim.Optimizer, progress: _Progress) -> Checkpoint | None:
    """Load the newest usable checkpoint of ``phase`` (a damaged one is reported and the previous one
    used); None when there is none, and the phase starts from its beginning. Under torchrun rank 0
    chooses the checkpoint and every other rank loads the same one."""

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
