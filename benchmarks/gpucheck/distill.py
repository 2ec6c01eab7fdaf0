"""Section (b): one AdaDistill step (frozen teacher → student, many classes) in the real engine loop,
against the ArcFace step on the same student and a hand-written loop doing the AdaDistill work.

Framework steps run ``corecompress.engine.training.train`` with a recipe (as
benchmarks/training_overhead.py drives it); steps are timed from the end of the warm-up steps to the
last, through ``train``'s ``on_step`` callback (CUDA synchronised at those two steps only), so
start-up and the final checkpoint are outside the clock. The hand loop is timed the same way. Runs
alternate order from repeat to repeat; medians are reported.
"""
from __future__ import annotations

import itertools
import shutil
import statistics
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from corecompress.config.recipe import validate_recipe
from corecompress.engine.runner import RunContext, _make_logger, build
from corecompress.engine.training import train
from corecompress.tools import measure
from gpucheck.context import CheckEnv
from gpucheck.device import synchronize
from gpucheck.pool_data import NAME as POOL, register_pool
from gpucheck.precision import autocast, observed_dtypes
from gpucheck.report import Row

OVERHEAD_GOAL = 0.03


class StepClock:
    """Called after every optimizer step with the steps done: reads the clock (synchronised) after
    the warm-up steps and after the last one."""

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.start = self.end = 0.0

    def __call__(self, completed: int, _model: Any = None) -> None:
        if completed in (self.warmup, self.warmup + self.steps):
            synchronize(self.device)
            now = time.perf_counter()
            self.start, self.end = (now, self.end) if completed == self.warmup else (self.start, now)

    def seconds_per_step(self) -> float:
        return (self.end - self.start) / self.steps


def recipe(env: CheckEnv, objective: str) -> dict[str, Any]:
    s = env.shapes
    return {
        "version": 1, "name": f"gpu-check-{objective}", "seed": 0, "device": str(env.device), **env.recipe_keys,
        "model": dict(s.student), "teacher": {"model": dict(s.teacher)},
        "data": {"name": POOL, "num_classes": s.classes, "image_size": s.student["input_size"],
                 "images": s.pool_images, "length": s.distill_batch * (s.distill_warmup + s.distill_steps)},
        "train": {"steps": s.distill_warmup + s.distill_steps, "batch_size": s.distill_batch, "lr": 1e-3,
                  "lr_schedule": "constant", "augment": "none", "objective": {"name": objective},
                  "log_every": 10**6, "checkpoint_every": 0, "num_workers": s.num_workers},
        "evaluate": [], "evaluate_before": False, "export": None, "report": [],
    }


def framework_step(ctx: RunContext, section: Any, phase: str, timed: int) -> tuple[float, set[str]]:
    """Seconds per step over the last ``timed`` steps of the engine loop, and the dtypes the student computed in."""
    clock = StepClock(ctx.device, section.steps - timed, timed)
    with observed_dtypes(ctx.model) as dtypes:
        train(ctx, section, ctx.model, phase, on_step=clock)
    shutil.rmtree(ctx.out_dir / "checkpoints", ignore_errors=True)
    return clock.seconds_per_step(), dtypes


def hand_step(ctx: RunContext, section: Any, timed: int, precision: str, seed: int) -> tuple[float, set[str]]:
    """Seconds per step over the last ``timed`` steps of a hand-written loop: same student, teacher, loss
    module, batches, AdamW and clipping as the engine's."""
    device, student, teacher = ctx.device, ctx.model, ctx.teacher
    objective = ctx.create("loss", section.objective).to(device)
    objective.setup(ctx)
    params = list(student.parameters()) + list(objective.parameters())
    decay = [p for p in params if p.requires_grad and p.ndim >= 2]
    rest = [p for p in params if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": section.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=section.lr)
    loader = DataLoader(ctx.data.train(), batch_size=section.batch_size, shuffle=True, drop_last=True,
                        num_workers=section.num_workers, persistent_workers=section.num_workers > 0,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    clock = StepClock(device, section.steps - timed, timed)
    student.train()
    last = None
    with observed_dtypes(student) as dtypes:
        for step in range(section.steps):
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in next(batches).items()}
            with autocast(device, precision):
                embedding = student(batch["image"])
                with torch.no_grad():
                    target = teacher(batch["image"])
            loss = objective(embedding, batch, target)["loss"]  # margin and cosine math in fp32
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if section.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, section.clip_grad_norm)
            optimizer.step()
            last = loss.detach()
            clock(step + 1)
    if last is None or not bool(torch.isfinite(last)):
        raise RuntimeError(f"hand-written loop: non-finite loss {last}")
    return clock.seconds_per_step(), dtypes


def run(env: CheckEnv) -> tuple[list[Row], list[str]]:
    s = env.shapes
    register_pool(env.registry)
    recipes = {name: validate_recipe(recipe(env, name), env.registry) for name in ("adadistill", "arcface")}
    out = env.work_dir / "distill"
    out.mkdir()
    ctx = RunContext(recipe=recipes["adadistill"], plugins=env.plugins, out_dir=out, log=_make_logger(out, quiet=True),
                     device=env.device)
    torch.manual_seed(0)
    build(ctx)
    initial = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    timed = s.distill_steps
    runs = {
        "framework adadistill": lambda r: framework_step(ctx, recipes["adadistill"].train, f"ada{r}", timed),
        "framework arcface": lambda r: framework_step(ctx, recipes["arcface"].train, f"arc{r}", timed),
        "hand-written adadistill": lambda r: hand_step(ctx, recipes["adadistill"].train, timed,
                                                       env.framework_precision, r),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    dtypes: dict[str, set[str]] = {name: set() for name in runs}
    names = list(runs)
    for r in range(s.distill_repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            ctx.model.load_state_dict(initial)
            took, seen = runs[name](r)
            seconds[name].append(took)
            dtypes[name] |= seen
    for handler in list(ctx.log.handlers):  # the run's log.txt and stderr lines
        handler.close()
        ctx.log.removeHandler(handler)
    median = {name: statistics.median(t) for name, t in seconds.items()}
    rows = [Row(name, "step time", 1000 * t, "ms", ratio=t / median["framework arcface"] if "ada" in name else None)
            for name, t in median.items()]
    rows += [Row(name, "throughput", s.distill_batch / t, "images/s") for name, t in median.items()]
    overhead = median["framework adadistill"] / median["hand-written adadistill"] - 1
    rows.append(Row("framework overhead", "adadistill step vs hand-written", 100 * overhead, "%",
                    limit=f"<= {100 * OVERHEAD_GOAL:g} %", passed=overhead <= OVERHEAD_GOAL))
    teacher_params, student_params = measure.count_parameters(ctx.teacher), measure.count_parameters(ctx.model)
    notes = [f"teacher {s.teacher['name']} ({teacher_params / 1e6:.2f} M, frozen) -> student {s.student['name']} "
             f"({student_params / 1e6:.2f} M), {s.classes} classes, batch {s.distill_batch}; median of "
             f"{s.distill_repeats} repeats x {s.distill_steps} timed steps after {s.distill_warmup} warm-up steps",
             "ratio column: vs the framework ArcFace step; the hand loop pins host memory on CUDA and runs the "
             "loss outside autocast",
             "student computed in: " + "; ".join(f"{name} {'/'.join(sorted(d)) or '?'}" for name, d in dtypes.items())]
    if env.framework_precision != s.precision:
        notes.append(f"this corecompress has no precision setting: framework runs and the hand loop ran "
                     f"{env.framework_precision}, not {s.precision}")
    return rows, notes
