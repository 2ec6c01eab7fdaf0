"""Data-parallel training throughput: 2 processes (torchrun, gloo on the CPU) vs 1 process.

Runs the real ``corecompress run`` code path on a small ViT (32×32 inputs, dim 96, depth 4, global
batch 64) in three set-ups, interleaved over ``--repeats`` rounds so a loaded machine hurts them alike:

- ``1p×1t``: one process, one thread;
- ``1p×Nt``: one process, N threads (N = the processes of the DDP set-up: the same cores);
- ``Np×1t``: N processes under ``torchrun --standalone --nproc_per_node=N``, one thread each.

A step is timed from one ``after_optimizer_step`` to the next (the first ``--warmup`` steps are
dropped); each set-up's figure is the median over rounds of the median step time, reported as
global images/s and as a ratio. Usage:

    python benchmarks/ddp_throughput.py [--steps 40] [--warmup 5] [--repeats 3] [--nproc 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cli_args import count

RECIPE = {"version": 1, "name": "ddp_bench", "seed": 0, "threads": 1,
          "model": {"name": "tiny_vit", "img_size": 32, "dim": 96, "depth": 4, "num_heads": 4, "num_outputs": 20},
          "data": {"name": "synthetic_prototypes", "num_classes": 20, "train_per_class": 64, "img_size": 32},
          "train": {"steps": 40, "batch_size": 64, "lr": 1e-3, "log_every": 1000},
          "evaluate": [], "export": None, "report": []}


def worker(recipe: Path, out: Path, timings: Path) -> int:
    """Run the recipe with a plugin that stamps every optimizer step; rank 0 writes the stamps."""
    import corecompress.plugin.loading as plugins
    from corecompress.engine import distributed
    from corecompress.tools.cli import main
    from corecompress import hookimpl

    stamps: list[float] = []

    class StepClock:
        @hookimpl
        def after_optimizer_step(self, run, step, model):  # noqa: ANN001, ANN201
            stamps.append(time.perf_counter())

    load = plugins.load_plugins

    def with_clock(**kwargs):  # noqa: ANN003, ANN202
        kwargs["extra"] = list(kwargs.get("extra", ())) + [("step_clock", StepClock())]
        return load(**kwargs)

    plugins.load_plugins = with_clock
    code = main(["run", str(recipe), "--out", str(out)])
    if distributed.is_main():
        timings.write_text(json.dumps(stamps))
    return code


def measure(setup: str, nproc: int, recipe: Path, work: Path, warmup: int) -> float:
    """Median step time (s) of one run of ``setup``."""
    out, timings = work / f"run-{setup}-{time.monotonic_ns()}", work / "timings.json"
    data = yaml.safe_load(recipe.read_text())
    data["threads"] = nproc if setup == "1p×Nt" else 1
    run_recipe = work / f"{setup}.yaml"
    run_recipe.write_text(yaml.safe_dump(data))
    me = [str(Path(__file__).resolve()), "--worker", str(run_recipe), str(out), str(timings)]
    env = {**os.environ, "OMP_NUM_THREADS": str(data["threads"])}
    if setup.startswith("1p"):
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *me]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{setup} failed:\n{done.stderr[-3000:]}")
    stamps = json.loads(timings.read_text())
    steps = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    return statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    batch = RECIPE["train"]["batch_size"]
    parser.add_argument("--steps", type=count(2), default=40, help="at least --warmup + 2")
    parser.add_argument("--warmup", type=count(0), default=5, help="timed steps dropped")
    parser.add_argument("--repeats", type=count(1), default=3)
    parser.add_argument("--nproc", type=count(2, batch), default=2,
                        help=f"processes of the DDP set-up (2 to {batch}, the global batch)")
    parser.add_argument("--worker", nargs=3, metavar=("RECIPE", "OUT", "TIMINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.worker and args.steps < args.warmup + 2:
        parser.error(f"--steps {args.steps} leaves no timed step after --warmup {args.warmup} "
                     f"(need steps >= warmup + 2)")
    if args.worker:
        raise SystemExit(worker(*(Path(p) for p in args.worker)))
    setups = ["1p×1t", "1p×Nt", "Np×1t"]
    results: dict[str, list[float]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recipe = work / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "steps": args.steps}}))
        for round_ in range(args.repeats):
            order = setups if round_ % 2 == 0 else setups[::-1]
            for setup in order:
                results[setup].append(measure(setup, args.nproc, recipe, work, args.warmup))
    median = {s: statistics.median(v) for s, v in results.items()}
    print(f"# DDP throughput ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"nproc={args.nproc}, global batch {batch}, {args.steps} steps, {args.warmup} warm-up, "
          f"{args.repeats} rounds)")
    for setup in setups:
        label = setup.replace("N", str(args.nproc))
        runs = ", ".join(f"{1000 * t:.1f}" for t in results[setup])
        print(f"{label}: median step {1000 * median[setup]:.1f} ms ({batch / median[setup]:.0f} images/s); "
              f"rounds [ms]: {runs}")
    print(f"speed-up {args.nproc}p×1t vs 1p×1t: {median['1p×1t'] / median['Np×1t']:.2f}×; "
          f"vs 1p×{args.nproc}t (same cores): {median['1p×Nt'] / median['Np×1t']:.2f}×")


if __name__ == "__main__":
    main()
