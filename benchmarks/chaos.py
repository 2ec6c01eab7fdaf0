"""Faults survived, as a figure: SIGKILL a run at random points, resume after each, compare bitwise.

    python benchmarks/chaos.py [--kills 7] [--torchrun-kills 3] [--seed 0] [--work runs/bench/chaos]

The run (tiny ViT: train with an ArcFace head → physical pruning → AdaDistill from the unpruned teacher,
accuracy evaluation) is killed at ``--kills`` points in one process and at ``--torchrun-kills`` points
under torchrun with 2 gloo processes; the points are events of the run's timeline (optimizer steps,
checkpoint writes, evaluations), at least one of each kind. After every kill ``corecompress run --resume``
continues. Printed: faults injected / survived, where a run survives when its final weights, plan, metrics
(timings excepted) and final checkpoints (AdaDistill centres included) equal those of an uninterrupted run
bitwise. See corecompress/testing/chaos.py.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import torch

from cli_args import count
from corecompress.testing.chaos import chaos, chaos_recipe

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=count(0), default=7, help="kill points in a single-process run")
    ap.add_argument("--torchrun-kills", type=count(0), default=3, help="kill points under torchrun (2 gloo ranks)")
    ap.add_argument("--seed", type=count(0), default=0, help="which kill points")
    ap.add_argument("--work", type=Path, default=Path("runs/bench/chaos"), help="scratch folder (replaced)")
    args = ap.parse_args()
    if args.kills + args.torchrun_kills == 0:
        ap.error("nothing to do: --kills and --torchrun-kills are both 0")
    if args.work.exists() and not {p.name for p in args.work.iterdir()} <= {"ranks1", "ranks2"}:
        ap.error(f"{args.work} exists and is not an earlier chaos folder; choose another --work")
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    injected = survived = 0
    for ranks, kills in ((1, args.kills), (2, args.torchrun_kills)):
        if not kills:
            continue
        start = time.perf_counter()
        report = chaos(args.work / f"ranks{ranks}", chaos_recipe(steps=12), kills, args.seed, ranks=ranks)
        injected += len(report.kills)
        survived += report.survived
        where = ", ".join(f"{k['kind']} {k.get('phase', k.get('stage'))}{' ' + str(k['step']) if 'step' in k else ''}"
                          f"{' (rank ' + str(k['rank']) + ')' if ranks > 1 else ''}" for k in report.kills)
        print(f"{'torchrun x2' if ranks > 1 else 'one process'}: {len(report.kills)} kills ({where}); exit codes "
              f"{report.exit_codes}; differences: {report.differences or 'none'}; "
              f"{time.perf_counter() - start:.0f} s")
    print(f"faults injected: {injected}, survived: {survived}")
    raise SystemExit(0 if survived == injected else 1)


if __name__ == "__main__":
    main()
