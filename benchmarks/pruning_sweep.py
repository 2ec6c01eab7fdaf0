"""Issue 6 #1 (and issue 4's sweep): every pruning criterion on the trained SwinFace-nano, one table.

Runs (or resumes) the comparisons ``recipes/bench/faces_sweep_{a..g}.yaml`` — faces, random, l1, taylor,
nvit (global), vit_slim (global), and FACES reached gradually — each at sparsity 0.3/0.5/0.7 × 3 seeds
with the same 80 retraining steps, then measures the CPU throughput of every pruned model against the
dense teacher in this one process (interleaved; the comparisons themselves run with ``speed: false``
because they run side by side) and writes one Markdown table: accuracy before and after retraining,
attributes, params, MACs, images/s and speed-up.

    corecompress run recipes/bench/teacher_swinface_nano.yaml --out runs/bench/teacher   # once, first
    python benchmarks/pruning_sweep.py --jobs 2 --update-benchmarks

``--jobs N`` runs N comparisons at a time (each single-threaded); ``--update-benchmarks`` replaces the
block between the ``pruning-sweep`` markers in BENCHMARKS.md with the new table (nothing else is touched).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cli_args
import torch

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {  # comparison → (criterion label, scope, schedule)
    "a": ("faces", "local", "one-shot"), "b": ("random", "local", "one-shot"), "c": ("l1", "local", "one-shot"),
    "d": ("taylor", "local", "one-shot"), "e": ("nvit", "global", "one-shot"),
    "f": ("vit_slim", "global", "one-shot"), "g": ("faces", "local", "gradual (4 rounds, cubic)"),
}
ACC = "verification/synthetic_accuracy"
ATTR = "attributes/synthetic_attributes_mean_accuracy"
BEGIN, END = "<!-- pruning-sweep:begin -->", "<!-- pruning-sweep:end -->"


def run_comparisons(letters: list[str], jobs: int) -> None:
    def one(letter: str) -> int:
        recipe = ROOT / "recipes" / "bench" / f"faces_sweep_{letter}.yaml"
        out = ROOT / "runs" / "bench" / f"faces_sweep_{letter}"
        print(f"comparison {letter}: {recipe.name} → {out}", flush=True)
        return subprocess.call([sys.executable, "-m", "corecompress", "compare", str(recipe), "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        codes = dict(zip(letters, pool.map(one, letters)))
    failed = [k for k, c in codes.items() if c != 0]
    if failed:
        sys.exit(f"error: comparisons {failed} failed; see runs/bench/faces_sweep_<x>/")


def read_rows(letter: str) -> list[dict[str, str]]:
    path = ROOT / "runs" / "bench" / f"faces_sweep_{letter}" / "results.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["status"] == "complete"]


def measure_speed(run_dirs: list[Path], threads: int, batch: int, repeats: int) -> tuple[dict[Path, float], list[float]]:
    """Speed-up of every run's exported model over the dense teacher, each measured interleaved with it;
    and the dense images/s of every measurement. Models with the same tensor shapes (e.g. the seeds of a
    local-scope cell) are measured once."""
    import corecompress
    from corecompress.tools import measure

    dense = corecompress.load(str(ROOT / "runs" / "bench" / "teacher"))
    speed: dict[Path, float] = {}
    dense_rates: list[float] = []
    by_shape: dict[tuple, float] = {}
    for run in run_dirs:
        pruned = corecompress.load(str(run))
        shapes = tuple((k, tuple(v.shape)) for k, v in pruned.state_dict().items())
        if shapes not in by_shape:
            result = measure.compare_throughput({"dense": dense, "pruned": pruned}, (3, 48, 48), batch,
                                                reference="dense", threads=threads, repeats=repeats)
            by_shape[shapes] = result["pruned"]["speedup"]
            dense_rates.append(result["dense"]["images_per_s"])
        speed[run] = by_shape[shapes]
    return speed, dense_rates


def fmt(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(letters: list[str], speed: dict[Path, float]) -> str:
    lines = ["| criterion | scope | schedule | sparsity | n | verif. one-shot | verif. after retraining | "
             "attributes after | params (M) | MMACs | speed-up vs dense (b32) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for letter in letters:
        name, scope, schedule = SWEEPS[letter]
        rows = read_rows(letter)
        for sparsity in sorted({r["prune.sparsity"] for r in rows}, key=float):
            cell = [r for r in rows if r["prune.sparsity"] == sparsity]
            get = lambda key: [float(r.get(key) or "nan") for r in cell]  # noqa: E731
            runs = [ROOT / "runs" / "bench" / f"faces_sweep_{letter}" / r["run_dir"] for r in cell]
            ups = [speed[p] for p in runs if p in speed]
            lines.append(f"| {name} | {scope} | {schedule} | {sparsity} | {len(cell)} | {fmt(get('pruned/' + ACC))} | "
                         f"{fmt(get('after/' + ACC))} | {fmt(get('after/' + ATTR))} | "
                         f"{fmt([v / 1e6 for v in get('after/efficiency/params')], 4)} | "
                         f"{fmt([v / 1e6 for v in get('after/efficiency/macs')], 1)} | {fmt(ups)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=cli_args.letters("".join(SWEEPS)), default="".join(SWEEPS),
                    help=f"which comparisons (letters {min(SWEEPS)}..{max(SWEEPS)})")
    ap.add_argument("--jobs", type=cli_args.count(1), default=1, help="comparisons at a time")
    ap.add_argument("--skip-runs", action="store_true", help="only collect and measure what already ran")
    ap.add_argument("--threads", type=cli_args.count(1), default=2, help="threads for the speed measurement")
    ap.add_argument("--batch", type=cli_args.count(1), default=32)
    ap.add_argument("--repeats", type=cli_args.repeats, default=10)
    ap.add_argument("--update-benchmarks", action="store_true", help="replace the marked block in BENCHMARKS.md")
    args = ap.parse_args()
    letters: list[str] = args.only
    if not (ROOT / "runs" / "bench" / "teacher" / "model.safetensors").is_file():
        ap.error("runs/bench/teacher is missing; first run: corecompress run recipes/bench/teacher_swinface_nano.yaml "
                 "--out runs/bench/teacher")
    bench = ROOT / "BENCHMARKS.md"
    if args.update_benchmarks and not (bench.is_file() and BEGIN in (content := bench.read_text()) and END in content):
        ap.error(f"BENCHMARKS.md has no {BEGIN} … {END} block to replace")
    if not args.skip_runs:
        run_comparisons(letters, args.jobs)
    runs = [ROOT / "runs" / "bench" / f"faces_sweep_{x}" / r["run_dir"] for x in letters for r in read_rows(x)]
    if not runs:
        ap.error(f"no complete runs under runs/bench/faces_sweep_[{''.join(letters)}]; run without --skip-runs")
    speed, dense_rates = measure_speed(runs, args.threads, args.batch, args.repeats)
    note = (f"Measured {datetime.date.today()} on {platform.machine()}, torch {torch.__version__}; "
            f"speed: {args.threads} thread(s), batch {args.batch}, "
            f"median of {args.repeats} interleaved with the dense teacher, once per distinct architecture (dense ≈ "
            f"{statistics.median(dense_rates):.0f} images/s). `python benchmarks/pruning_sweep.py "
            f"--only {''.join(letters)} --skip-runs --update-benchmarks` regenerates it.")
    text = f"{table(letters, speed)}\n\n{note}"
    print(text)
    if args.update_benchmarks:
        content = bench.read_text()
        if BEGIN not in content or END not in content:
            sys.exit(f"error: BENCHMARKS.md has no {BEGIN} … {END} block to replace")
        head, rest = content.split(BEGIN, 1)
        _old, tail = rest.split(END, 1)
        bench.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print("BENCHMARKS.md updated")


if __name__ == "__main__":
    main()
