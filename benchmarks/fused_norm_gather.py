"""Where the fused LayerNorm-then-gather pays: FACES-pruned SwinFace blocks, GatheredLinear vs NormGatheredLinear.

    python benchmarks/fused_norm_gather.py [--presets nano,swin_t] [--sparsities 0.5,0.75] [--threads 1]
                                           [--batch 32] [--repeats 10]

FACES channel pruning (Lajić et al., ICT Express 2026; |LayerNorm γ|, local) applied physically twice per
sparsity — LayerNorm(C) → gather → Linear (``fuse_norms=False``) and the fused module everywhere
(``fuse_norms=True``) — timed interleaved with the dense model in one process; speed as images/s ratios.
Whether physical removal fuses by default (it does not) comes from these runs.
"""
from __future__ import annotations

import argparse
import copy
import platform

import torch
from cli_args import add_timing_options, float_list, name_list

from corecompress.plugin.loading import load_plugins
from corecompress.pruning import make_plan
from corecompress.pruning.physical import apply_physical
from corecompress.tools import measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", type=name_list(("nano", "swin_t", "micro")), default=["nano", "swin_t"])
    ap.add_argument("--sparsities", type=float_list(0.0, 1.0), default=[0.5, 0.75])
    add_timing_options(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = load_plugins().registry
    comp = reg.get("model", "swinface")
    faces = reg.get("importance", "faces").create(reg.get("importance", "faces").parse({}, "i"))
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print("| model | sparsity | gathered / dense | fused / dense | fused / gathered |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        spec = comp.create(comp.parse({"preset": preset}, "model"))
        torch.manual_seed(0)
        dense = spec.build().eval()
        groups = spec.prunable_groups(dense, ("channels",))
        scores = faces.score(dense, groups, None)
        for s in args.sparsities:
            plan = make_plan(scores, groups, s)
            models = {"dense": dense,
                      "gathered": apply_physical(copy.deepcopy(dense), groups, plan, fuse_norms=False),
                      "fused": apply_physical(copy.deepcopy(dense), groups, plan, fuse_norms=True)}
            t = measure.compare_throughput(models, spec.input_size, args.batch, reference="dense", repeats=args.repeats)
            print(f"| {preset} | {s} | {t['gathered']['speedup']:.3f} | {t['fused']['speedup']:.3f} | "
                  f"{t['fused']['speedup'] / t['gathered']['speedup']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
