"""Resume overhead: time from process start to the first training step, fresh run vs ``run --resume``.

A fresh ``corecompress run`` pays interpreter start, imports, plugin loading, model and data set-up
before its first optimizer step. ``run --resume`` of a run interrupted at step ``--crash-at`` of the
first phase pays the same plus reading ``recipe.resolved.json``, verifying the newest checkpoint
(SHA-256 of every file) and loading model, objective, optimizer and generator state; the sampler jumps
straight to the resumed batch. Both are timed from just before the child process is started to the
end of its first optimizer step (a plugin writes the wall-clock time), interleaved over ``--repeats``
rounds; medians are reported. The model is a ViT of ``--dim`` width (default ≈ 4.8 M parameters;
its checkpoint with AdamW moments ≈ 58 MB) so checkpoint reading is visible. The part of the
difference that is checkpoint work — verifying the manifest and reading model, objective, optimizer
and generator state — is also timed in-process (median of ``--repeats``). Usage:

    python benchmarks/resume_overhead.py [--repeats 5] [--dim 384] [--depth 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cli_args import count

STEPS, CHECKPOINT_EVERY, HEADS = 20, 5, 4


def recipe(dim: int, depth: int, threads: int) -> dict:
    return {"version": 1, "name": "resume_bench", "seed": 0, "threads": threads,
            "model": {"name": "tiny_vit", "img_size": 32, "dim": dim, "depth": depth, "num_heads": HEADS,
                      "num_outputs": 20},
            "data": {"name": "synthetic_prototypes", "num_classes": 20, "train_per_class": 16, "img_size": 32},
            "train": {"steps": STEPS, "batch_size": 16, "lr": 1e-3, "checkpoint_every": CHECKPOINT_EVERY,
                      "log_every": 1000},
            "evaluate": [], "export": None, "report": []}


def child(stamp: Path, crash_at: int, args: list[str]) -> int:
    """The CLI with a plugin that writes the time of the first step and optionally crashes."""
    import corecompress.plugin.loading as plugins
    from corecompress.tools.cli import main
    from corecompress import hookimpl

    class FirstStep:
        seen = False

        @hookimpl
        def after_optimizer_step(self, run, step, model):  # noqa: ANN001, ANN201
            if not self.seen:
                stamp.write_text(repr(time.time()))
                self.seen = True
            if crash_at and step + 1 == crash_at:
                os._exit(9)  # like a kill right after that step: its checkpoint is on disk

    load = plugins.load_plugins

    def with_stamp(**kwargs):  # noqa: ANN003, ANN202
        kwargs["extra"] = list(kwargs.get("extra", ())) + [("first_step", FirstStep())]
        return load(**kwargs)

    plugins.load_plugins = with_stamp
    return main(args)


def timed(stamp: Path, crash_at: int, args: list[str], threads: int) -> float:
    if stamp.exists():
        stamp.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.time()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(stamp), str(crash_at),
                           *args], env=env, capture_output=True, text=True)
    if crash_at == 0 and done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr[-3000:]}")
    return float(stamp.read_text()) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=count(1), default=5)
    parser.add_argument("--dim", type=count(HEADS), default=384, help=f"a multiple of {HEADS} (the heads)")
    parser.add_argument("--depth", type=count(1), default=4)
    parser.add_argument("--threads", type=count(1), default=1)
    # the kill comes right after that step's optimizer step, before its checkpoint: the first checkpoint
    # (step CHECKPOINT_EVERY) must already be on disk
    parser.add_argument("--crash-at", type=count(CHECKPOINT_EVERY + 1, STEPS), default=10,
                        help=f"step of the interruption, {CHECKPOINT_EVERY + 1} to {STEPS} "
                             f"(after the first checkpoint, at step {CHECKPOINT_EVERY})")
    parser.add_argument("--child", nargs=2, metavar=("STAMP", "CRASH_AT"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        raise SystemExit(child(Path(args.child[0]), int(args.child[1]), rest))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.dim % HEADS:
        parser.error(f"--dim {args.dim} must be a multiple of {HEADS} (the ViT's heads)")
    fresh, resumed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(args.dim, args.depth, args.threads)))
        stamp = work / "stamp"
        # one interrupted run, copied before each resume
        timed(stamp, args.crash_at, ["run", str(path), "--out", str(work / "crashed")], args.threads)
        ckpt = sorted((work / "crashed" / "checkpoints").iterdir())[-1]
        size = sum(f.stat().st_size for f in ckpt.iterdir())
        for round_ in range(args.repeats):
            def run_fresh() -> None:
                fresh.append(timed(stamp, 0, ["run", str(path), "--out", str(work / f"fresh{round_}")], args.threads))

            def run_resume() -> None:
                target = work / f"resume{round_}"
                shutil.copytree(work / "crashed", target)
                resumed.append(timed(stamp, 0, ["run", "--resume", str(target)], args.threads))

            for call in ((run_fresh, run_resume) if round_ % 2 == 0 else (run_resume, run_fresh)):
                call()
        reading = []
        for _ in range(args.repeats):
            from corecompress.engine.checkpoint import open_checkpoint

            start = time.perf_counter()
            opened = open_checkpoint(ckpt)
            for part in ("model", "objective"):
                if opened.has(part):
                    opened.tensors(part)
            opened.tree("optimizer")
            opened.tree("rng")
            reading.append(time.perf_counter() - start)
    f, r = statistics.median(fresh), statistics.median(resumed)
    print(f"# resume overhead ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.threads} thread(s), ViT dim {args.dim} depth {args.depth}, checkpoint {ckpt.name} "
          f"{size / 1e6:.1f} MB, {args.repeats} rounds)")
    print(f"fresh run, start → first step: median {f:.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in fresh)})")
    print(f"resume,    start → first step: median {r:.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in resumed)})")
    print(f"resume overhead: {r - f:+.2f} s ({r / f:.2f}×); of which verifying + reading the checkpoint "
          f"(in-process): median {statistics.median(reading):.3f} s")


if __name__ == "__main__":
    main()
