"""The training loop used for training, retraining and distillation. Reads top to bottom.

One step: batch → (flip) → student forward → teacher targets (if the objective wants them) →
objective → backward → clip → learning rate from the schedule → optimizer step →
``after_optimizer_step`` hooks (masked pruning re-zeroes here) → log / evaluate / checkpoint.
The data order is a pure function of (seed, epoch) and the flips of (seed, step), so a run is
reproducible and can be resumed at any step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from corecompress.checkpoint import save_checkpoint
from corecompress.errors import UserError
from corecompress.evaluate import evaluate_model
from corecompress.recipe import TrainSection


class NonFiniteLossError(UserError):
    """The loss became NaN or inf; the run stops and the last good checkpoint stays."""


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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def train(ctx: Any, section: TrainSection, model: torch.nn.Module, phase: str) -> TrainResult:
    """Train ``model`` for ``section.steps`` steps; returns losses and timing."""
    from tqdm.auto import tqdm

    seed = ctx.recipe.seed
    objective = ctx.create("loss", section.objective).to(ctx.device)
    objective.setup(ctx)
    target = None
    if getattr(objective, "needs_teacher", False):
        if ctx.teacher is None:
            raise UserError(f"{phase}.objective: '{section.objective.name}' needs a teacher; add a 'teacher:' section")
        if section.target is not None:
            target = ctx.create("target", section.target)
            target.prepare(ctx.teacher, ctx.data.train(), ctx)
    params = list(model.parameters()) + list(objective.parameters())
    optimizer = make_optimizer(section, params)
    schedule = ctx.create("schedule", section.lr_schedule)
    dataset = ctx.data.train()
    loader = DataLoader(dataset, batch_sampler=EpochBatchSampler(len(dataset), section.batch_size, seed),
                        num_workers=section.num_workers, persistent_workers=section.num_workers > 0)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    history: list[dict[str, float]] = []
    skipped, last_loss = 0, math.nan
    model.train()
    start = time.perf_counter()
    batches = iter(loader)
    bar = tqdm(range(section.steps), desc=phase, leave=False, disable=None, dynamic_ncols=True)
    for step in bar:
        batch = _to_device(next(batches), ctx.device)
        images = batch["image"]
        if section.augment == "flip":
            images, batch["flipped"] = flip_half(images, seed, step)
        outputs = model(images)
        teacher_outputs = None
        if getattr(objective, "needs_teacher", False):
            if target is not None:
                teacher_outputs = target(batch)
            else:
                with torch.no_grad():
                    teacher_outputs = ctx.teacher(images)
        parts = objective(outputs, batch, teacher_outputs)
        loss = parts["loss"]
        if not torch.isfinite(loss):
            if section.nonfinite == "skip":
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            raise NonFiniteLossError(f"{phase}: loss is {loss.item()} at step {step}; stopped "
                                     f"(the last checkpoint is kept; set {phase}.nonfinite: skip to skip such steps)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if section.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, section.clip_grad_norm)
        factor = schedule(step, section.steps)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * factor
        optimizer.step()
        ctx.hook.after_optimizer_step(run=ctx, step=step, model=model)
        last_loss = float(loss.detach())
        if (step + 1) % section.log_every == 0 or step + 1 == section.steps:
            record = {"step": step + 1, "lr": optimizer.param_groups[0]["lr"]}
            record.update({k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                           for k, v in parts.items() if _is_scalar(v)})
            history.append(record)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            ctx.log.info("%s step %d/%d %s", phase, step + 1, section.steps,
                         " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step"))
        if section.eval_every and (step + 1) % section.eval_every == 0 and step + 1 < section.steps:
            ctx.log.info("%s step %d eval %s", phase, step + 1, evaluate_model(ctx, model))
        if section.checkpoint_every and (step + 1) % section.checkpoint_every == 0:
            _checkpoint(ctx, phase, step + 1, model, objective, optimizer)
    bar.close()
    seconds = time.perf_counter() - start
    _checkpoint(ctx, phase, section.steps, model, objective, optimizer)
    model.eval()
    ctx.state[f"{phase}_objective"] = objective
    return TrainResult(section.steps, seconds, last_loss, skipped, history)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


def _checkpoint(ctx: Any, phase: str, step: int, model: torch.nn.Module, objective: torch.nn.Module,
                optimizer: torch.optim.Optimizer) -> None:
    save_checkpoint(ctx.out_dir / "checkpoints", f"{phase}-step{step:07d}", model=model, objective=objective,
                    optimizer=optimizer, info={"phase": phase, "step": step, "seed": ctx.recipe.seed})
