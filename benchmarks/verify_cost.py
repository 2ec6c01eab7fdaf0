"""Cost of ``prune.verify`` (the masked-vs-physical probe before a plan is used) on SwinFace presets.

    python benchmarks/verify_cost.py [--threads 2] [--repeats 3] [--presets nano swin_t]

For each preset: FACES-style plan at 30 % over channels + heads + neurons, then the probe the runner
runs (batch 2 at the model's input size, fp32, eval, deep copies); the median of the repeats, seconds.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from cli_args import count, repeats

from corecompress.plugin.loading import load_plugins
from corecompress.pruning import make_plan
from corecompress.pruning.verify import check_plan

KINDS = ("channels", "heads", "neurons")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=count(1), default=2)
    ap.add_argument("--repeats", type=repeats, default=3)
    ap.add_argument("--presets", nargs="+", default=["nano", "swin_t"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_plugins().registry
    component = registry.get("model", "swinface")
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} threads, fp32")
    print("| preset | params (M) | groups | verify (s, median of %d) |" % args.repeats)
    print("|---|---|---|---|")
    for preset in args.presets:
        spec = component.create(component.parse({"preset": preset}, "model"))
        torch.manual_seed(0)
        model = spec.build().eval()
        groups = spec.prunable_groups(model, KINDS)
        scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(0)) for g in groups}
        plan = make_plan(scores, groups, 0.3)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            check_plan(model, groups, plan, spec.input_size)
            times.append(time.perf_counter() - start)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {preset} | {params:.2f} | {len(groups)} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
