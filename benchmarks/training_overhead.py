"""Training-loop overhead: corecompress's train() vs a hand-written PyTorch loop doing the same work.

Same model (a small ViT), data, optimizer (AdamW, weight decay on matrices), cosine schedule, gradient
clipping, flip augmentation and batch size. Each repeat times N steps of every loop (order rotating);
the ratio of median step times is reported (1.00 = no overhead). ``--variants eager,deferred`` times the
framework twice per repeat: reading each step's loss at once (what a CPU run does) and one step late
(what a single CUDA process does, corecompress.engine.deferred), each against the same hand loop. Usage:

    python benchmarks/training_overhead.py [--steps 60] [--repeats 7] [--threads 2] [--variants eager,deferred]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from cli_args import count, name_list

from corecompress.plugin.loading import load_plugins
from corecompress.config.recipe import validate_recipe
from corecompress.engine.runner import RunContext, build, _make_logger
from corecompress.engine import training
from corecompress.engine.training import train

RECIPE = {"version": 1, "name": "overhead", "model": {"name": "tiny_vit", "img_size": 32, "dim": 96, "depth": 4,
                                                       "num_heads": 4, "num_outputs": 20},
          "data": {"name": "synthetic_prototypes", "num_classes": 20, "train_per_class": 64, "img_size": 32},
          "train": {"steps": 60, "batch_size": 64, "lr": 1e-3, "log_every": 1000, "checkpoint_every": 0},
          "export": None, "report": []}


def hand_loop(model: torch.nn.Module, dataset, steps: int, batch_size: int, seed: int) -> float:
    """What a user would write by hand."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen)
    warm = int(0.05 * steps)
    model.train()
    start = time.perf_counter()
    step = 0
    while step < steps:
        for batch in loader:
            if step == steps:
                break
            images, labels = batch["image"], batch["label"]
            flip = torch.rand(images.shape[0], generator=gen) < 0.5
            images = images.clone()
            images[flip] = images[flip].flip(-1)
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            factor = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
            for g in opt.param_groups:
                g["lr"] = 1e-3 * factor
            opt.step()
            step += 1
    return (time.perf_counter() - start) / steps


@contextlib.contextmanager
def loss_reads(variant: str):
    """``deferred``: the loop reads each step's loss one step late, as on a GPU (here: on the CPU)."""
    original = training._defers_reads
    if variant == "deferred":
        training._defers_reads = lambda loop: True
    try:
        yield
    finally:
        training._defers_reads = original


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=count(1), default=60)
    ap.add_argument("--repeats", type=count(1), default=7)
    ap.add_argument("--threads", type=count(1), default=2)
    ap.add_argument("--variants", type=name_list(["eager", "deferred"]), default=["eager"],
                    help="framework loops to time: eager (loss read every step), deferred (read one step late)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RECIPE["train"]["steps"] = args.steps
    plugins = load_plugins()
    recipe = validate_recipe(RECIPE, plugins.registry)
    framework: dict[str, list[float]] = {v: [] for v in args.variants}
    manual: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = Path(tmp) / f"r{r}"
            out.mkdir()
            ctx = RunContext(recipe=recipe, plugins=plugins, out_dir=out, log=_make_logger(out))
            torch.manual_seed(r)
            build(ctx)
            init = {k: v.clone() for k, v in ctx.model.state_dict().items()}
            loops = [*args.variants, "manual"]
            shift = r % len(loops)
            for which in loops[shift:] + loops[:shift]:
                ctx.model.load_state_dict(init)
                if which == "manual":
                    manual.append(hand_loop(ctx.model, ctx.data.train(), args.steps, recipe.train.batch_size, r))
                    continue
                with loss_reads(which):
                    framework[which].append(train(ctx, recipe.train, ctx.model, f"bench_{which}").seconds / args.steps)
    m = statistics.median(manual)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"hand loop step: median {1000 * m:.2f} ms over {args.repeats} repeats of {args.steps} steps")
    for variant, times in framework.items():
        f = statistics.median(times)
        print(f"framework step ({variant} loss reads): median {1000 * f:.2f} ms; "
              f"overhead ratio framework/hand = {f / m:.3f}")


if __name__ == "__main__":
    main()
