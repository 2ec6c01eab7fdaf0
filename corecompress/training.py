"""The training loop used for training, retraining and distillation. Reads top to bottom.

One step: batch → (flip) → student forward → teacher targets (if the objective wants them) →
objective → backward → clip → learning rate from the schedule → optimizer step →
``after_optimizer_step`` hooks (masked pruning re-zeroes here) → log / evaluate / checkpoint.
The data order is a pure function of (seed, epoch) and the flips of (seed, step), and every phase
reseeds the global generators from (seed, phase) before it starts, so a run is reproducible and can
be resumed exactly at any checkpoint: the checkpoint restores model, objective (heads, AdaDistill
centres), optimizer, soft masks and the generators' state, and the sampler skips the batches already
seen. Ctrl-C finishes the current step, writes a checkpoint and raises :class:`TrainingInterrupted`.
"""
from __future__ import annotations

import math
import random
import signal
import threading
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from corecompress.checkpoint import (
    Checkpoint, CheckpointError, CheckpointWarning, checkpoint_name, latest_checkpoint, rng_state, save_checkpoint,
    set_rng_state,
)
from corecompress.errors import UserError
from corecompress.evaluate import evaluate_model
from corecompress.recipe import TrainSection


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


def flip_half(images: torch.Tensor, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontally flip a random half of the batch (deterministic in (seed, step)); returns the flip mask."""
    gen = torch.Generator().manual_seed(seed * 7_919 + step)
    flip = torch.rand(images.shape[0], generator=gen) < 0.5
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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def train(ctx: Any, section: TrainSection, model: torch.nn.Module, phase: str) -> TrainResult:
    """Train ``model`` for ``section.steps`` steps (continuing from a checkpoint on resume)."""
    from tqdm.auto import tqdm

    seed = ctx.recipe.seed
    seed_phase(seed, phase)
    objective = ctx.create("loss", section.objective).to(ctx.device)
    objective.setup(ctx)
    needs_teacher = getattr(objective, "needs_teacher", False)
    if needs_teacher and ctx.teacher is None:
        raise UserError(f"{phase}.objective: '{section.objective.name}' needs a teacher; add a 'teacher:' section")
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = make_optimizer(section, params)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    progress = _Progress()
    resumed = _resume(ctx, phase, model, objective, optimizer, progress) if ctx.state.get(RESUMING) else None
    if resumed is not None and progress.step >= section.steps:  # this phase had finished: weights loaded
        ctx.log.info("%s: complete in checkpoint %s; not trained again", phase, resumed.path.name)
        set_rng_state(resumed.tree("rng"))
        return _finish(ctx, phase, model, objective, section, progress)
    target = None
    if needs_teacher and section.target is not None:
        target = ctx.create("target", section.target)
        target.prepare(ctx.teacher, ctx.data.train(), ctx)
    schedule = ctx.create("schedule", section.lr_schedule)
    dataset = ctx.data.train()
    start_step = progress.step
    sampler = EpochBatchSampler(len(dataset), section.batch_size, seed, start_batch=start_step)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=section.num_workers,
                        persistent_workers=section.num_workers > 0, generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)
    if resumed is not None:  # last, so nothing above can draw from the restored generators
        set_rng_state(resumed.tree("rng"))
        ctx.log.info("%s: resumed at step %d of %d from checkpoint %s", phase, start_step, section.steps,
                     resumed.path.name)
    model.train()
    start = time.perf_counter()
    saved_at = start_step if resumed is not None else -1
    bar = tqdm(range(start_step, section.steps), desc=phase, leave=False, disable=None, dynamic_ncols=True,
               initial=start_step, total=section.steps)
    with _StopOnInterrupt() as stop:
        for step in bar:
            try:
                batch = _to_device(next(batches), ctx.device)
            except Exception:  # noqa: BLE001 - Ctrl-C also stops DataLoader workers; the interrupt wins
                if stop.requested:
                    break
                raise
            images = batch["image"]
            if section.augment == "flip":
                images, batch["flipped"] = flip_half(images, seed, step)
            outputs = model(images)
            teacher_outputs = None
            if needs_teacher:
                if target is not None:
                    teacher_outputs = target(batch)
                else:
                    with torch.no_grad():
                        teacher_outputs = ctx.teacher(images)
            parts = objective(outputs, batch, teacher_outputs)
            loss = parts["loss"]
            finite = bool(torch.isfinite(loss))
            if not finite and section.nonfinite == "stop":
                raise NonFiniteLossError(
                    f"{phase}: loss is {loss.item()} at step {step + 1} of {section.steps}; stopped (the last "
                    f"checkpoint is kept; lower the learning rate, or set {phase}.nonfinite: skip to skip such steps)")
            optimizer.zero_grad(set_to_none=True)
            if finite:
                loss.backward()
                if section.clip_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, section.clip_grad_norm)
                factor = schedule(step, section.steps)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
                optimizer.step()
                ctx.hook.after_optimizer_step(run=ctx, step=step, model=model)
                progress.last_loss = float(loss.detach())
            else:
                progress.skipped += 1
                ctx.log.warning("%s step %d: loss is %s; step skipped (%d so far)", phase, step + 1, loss.item(),
                                progress.skipped)
            progress.step = step + 1
            if finite and (progress.step % section.log_every == 0 or progress.step == section.steps):
                record = {"step": progress.step, "lr": optimizer.param_groups[0]["lr"]}
                record.update({k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                               for k, v in parts.items() if _is_scalar(v)})
                progress.history.append(record)
                bar.set_postfix(loss=f"{progress.last_loss:.4f}")
                ctx.log.info("%s step %d/%d %s", phase, progress.step, section.steps,
                             " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))
            if section.eval_every and progress.step % section.eval_every == 0 and progress.step < section.steps:
                ctx.log.info("%s step %d eval %s", phase, progress.step, evaluate_model(ctx, model))
            if section.checkpoint_every and progress.step % section.checkpoint_every == 0 \
                    and progress.step < section.steps:
                _checkpoint(ctx, phase, model, objective, optimizer, progress, start, section.steps)
                saved_at = progress.step
            if stop.requested:
                break
    bar.close()
    progress.seconds += time.perf_counter() - start
    if saved_at != progress.step:  # the final checkpoint, or the step Ctrl-C stopped at
        _checkpoint(ctx, phase, model, objective, optimizer, progress, None, section.steps)
    if stop.requested:
        name = checkpoint_name(phase, progress.step)
        ctx.log.info("%s: interrupted at step %d of %d; checkpoint %s written", phase, progress.step,
                     section.steps, name)
        raise TrainingInterrupted(f"{phase}: interrupted at step {progress.step} of {section.steps}; "
                                  f"checkpoint {name} written")
    return _finish(ctx, phase, model, objective, section, progress)


def _finish(ctx: Any, phase: str, model: torch.nn.Module, objective: torch.nn.Module, section: TrainSection,
            progress: _Progress) -> TrainResult:
    model.eval()
    ctx.state[f"{phase}_objective"] = objective
    return TrainResult(section.steps, progress.seconds, progress.last_loss, progress.skipped, progress.history)


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
    save_checkpoint(ctx.out_dir / "checkpoints", checkpoint_name(phase, progress.step), model=model,
                    objective=objective, optimizer=optimizer, info=info, masks=masks, rng=rng_state())


def _resume(ctx: Any, phase: str, model: torch.nn.Module, objective: torch.nn.Module,
            optimizer: torch.optim.Optimizer, progress: _Progress) -> Checkpoint | None:
    """Load the newest usable checkpoint of ``phase`` (a damaged one is reported and the previous one
    used); None when there is none, and the phase starts from its beginning."""

    def warn(message: str) -> None:
        ctx.log.warning("warning: %s", message)
        warnings.warn(message, CheckpointWarning, stacklevel=4)

    def restore(ckpt: Checkpoint) -> None:
        model_state = ckpt.fitting_tensors("model", model)
        objective_state = ckpt.fitting_tensors("objective", objective) if ckpt.has("objective") else {}
        if not ckpt.has("objective") and any(True for _ in objective.state_dict()):
            raise CheckpointError(f"checkpoint {ckpt.path}: objective.safetensors is missing")
        optimizer_state = ckpt.tree("optimizer")
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

    return latest_checkpoint(ctx.out_dir / "checkpoints", phase, warn, restore)
