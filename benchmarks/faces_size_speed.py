"""FACES on SwinFace-T: size at each sparsity, CPU throughput of physical vs dense vs masked, scoring time.

    python benchmarks/faces_size_speed.py [--threads 2] [--batch 32] [--repeats 10]

Everything is measured in this process; speed is reported as ratios of images/s (interleaved runs).
"""
from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
from cli_args import count, repeats

from corecompress.tools import measure
from corecompress.plugin.loading import load_plugins
from corecompress.pruning import make_plan
from corecompress.pruning.masking import apply_masks
from corecompress.pruning.physical import apply_physical


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=count(1), default=2)
    ap.add_argument("--batch", type=count(1), default=32)
    ap.add_argument("--repeats", type=repeats, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = load_plugins().registry
    comp = reg.get("model", "swinface")
    spec = comp.create(comp.parse({"preset": "swin_t"}, "model"))
    torch.manual_seed(0)
    dense = spec.build().eval()
    faces = reg.get("importance", "faces").create(reg.get("importance", "faces").parse({}, "i"))
    groups = spec.prunable_groups(dense, ("channels",))
    start = time.perf_counter()
    for _ in range(100):
        scores = faces.score(dense, groups, None)
    score_ms = (time.perf_counter() - start) / 100 * 1000
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"faces scoring time on SwinFace-T (12 blocks, 24 groups): {score_ms:.3f} ms (mean of 100)")
    p0, m0 = measure.count_parameters(dense), measure.count_macs(dense, spec.input_size)
    print("| sparsity | params (physical) | non-zero params (masked) | MACs (physical) |")
    print("|---|---|---|---|")
    print(f"| 0 | {p0 / 1e6:.2f} M | {measure.count_nonzero_parameters(dense) / 1e6:.2f} M | {m0 / 1e9:.3f} G |")
    models = {}
    for s in (0.1, 0.3, 0.5, 0.7):
        plan = make_plan(scores, groups, s)
        phys = apply_physical(copy.deepcopy(dense), groups, plan)
        masked = copy.deepcopy(dense)
        apply_masks(masked, groups, plan)
        print(f"| {s} | {measure.count_parameters(phys) / 1e6:.2f} M | {measure.count_nonzero_parameters(masked) / 1e6:.2f} M"
              f" | {measure.count_macs(phys, spec.input_size) / 1e9:.3f} G |")
        if s == 0.5:
            models = {"dense": dense, "physical_0.5": phys, "masked_0.5": masked}
    timing = measure.compare_throughput(models, spec.input_size, args.batch, reference="dense", repeats=args.repeats)
    for name, t in timing.items():
        print(f"{name}: {t['images_per_s']:.1f} images/s at batch {args.batch} (median of {t['repeats']}),"
              f" ratio vs dense {t['speedup']:.3f}")


if __name__ == "__main__":
    main()
