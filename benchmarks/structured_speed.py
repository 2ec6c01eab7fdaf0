"""Structured pruning of SwinFace-T to ≈ 50 % of its parameters: heads + MLP neurons + FACES channels.

One sparsity s for all three targets is chosen so the physically pruned backbone has ≈ 50 % of the
dense parameters; beside it, Torch-Pruning (1.6.x, magnitude) pruning the same model to the same
parameter budget — on timm's Swin it can only remove MLP neurons (its head and width pruning fail or
do nothing there; see BENCHMARKS.md). CPU throughput at batch 32, ratios measured in the same process.

    python benchmarks/structured_speed.py [--threads 2] [--batch 32] [--repeats 10]
"""
from __future__ import annotations

import argparse
import copy
import platform
import warnings

import torch
from cli_args import count, fraction, repeats

from corecompress.tools import measure
from corecompress.plugin.loading import load_plugins
from corecompress.pruning import make_plan
from corecompress.pruning.plan import PruningPlan
from corecompress.pruning.physical import apply_physical

TARGETS = ("channels", "heads", "neurons")


def structured_plan(spec, dense: torch.nn.Module, scores_by_name: dict[str, torch.Tensor], sparsity: float,
                    round_to: int = 1) -> tuple[list, PruningPlan]:
    """The groups (heads, MLP neurons, channels) of ``dense`` and the plan removing ``sparsity`` of each."""
    groups = spec.prunable_groups(dense, TARGETS)
    return groups, make_plan({g.name: scores_by_name[g.name] for g in groups}, groups, sparsity, round_to=round_to)


def prune_ours(spec, dense: torch.nn.Module, scores_by_name: dict[str, torch.Tensor], sparsity: float,
               round_to: int = 1) -> torch.nn.Module:
    """A physically pruned copy of ``dense``: heads, MLP neurons and channels, one sparsity for all."""
    groups, plan = structured_plan(spec, dense, scores_by_name, sparsity, round_to)
    return apply_physical(copy.deepcopy(dense), groups, plan)


def structured_scores(registry, spec, dense: torch.nn.Module) -> dict[str, torch.Tensor]:
    """L1 scores for heads and neurons, FACES scores for the channels."""
    groups = spec.prunable_groups(dense, TARGETS)
    l1, faces = registry.get("importance", "l1"), registry.get("importance", "faces")
    scores = l1.create(l1.parse({}, "i")).score(dense, groups, None)
    scores.update(faces.create(faces.parse({}, "i")).score(dense, groups, None))  # FACES for the channels
    return scores


def prune_to_budget(spec, dense: torch.nn.Module, scores: dict[str, torch.Tensor], target: float,
                    round_to: int = 1, iterations: int = 20) -> tuple[torch.nn.Module, float]:
    """The pruned model with at most ``target`` × the dense parameters, and its sparsity (bisection on s)."""
    n_dense = measure.count_parameters(dense)
    lo, hi = 0.0, 0.95
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if measure.count_parameters(prune_ours(spec, dense, scores, mid, round_to)) > target * n_dense:
            lo = mid
        else:
            hi = mid
    return prune_ours(spec, dense, scores, hi, round_to), hi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=count(1), default=2)
    ap.add_argument("--batch", type=count(1), default=32)
    ap.add_argument("--repeats", type=repeats, default=10)
    ap.add_argument("--target", type=fraction, default=0.5, help="fraction of the dense parameters to keep, in (0, 1]")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # Torch-Pruning warns once per trace that Swin's relative-position tables are "unwrapped parameters"
    warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
    reg = load_plugins().registry
    comp = reg.get("model", "swinface")
    spec = comp.create(comp.parse({"preset": "swin_t"}, "model"))
    torch.manual_seed(0)
    dense = spec.build().eval()
    n_dense = measure.count_parameters(dense)
    ours, hi = prune_to_budget(spec, dense, structured_scores(reg, spec, dense), args.target)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
    print(f"dense: {n_dense / 1e6:.2f} M params, {measure.count_macs(dense, spec.input_size) / 1e9:.3f} GMACs")
    print(f"corecompress heads+neurons+FACES channels at s={hi:.3f}: {measure.count_parameters(ours) / 1e6:.2f} M params"
          f" ({100 * measure.count_parameters(ours) / n_dense:.1f} %), {measure.count_macs(ours, spec.input_size) / 1e9:.3f} GMACs")
    models = {"dense": dense, "corecompress": ours}
    try:
        from corecompress_prune_baselines.torch_pruning_reference import torch_pruning_prune

        example = torch.randn(1, *spec.input_size)
        lo, hi = 0.0, 0.99
        for _ in range(12):
            mid = (lo + hi) / 2
            trial = torch_pruning_prune(copy.deepcopy(dense), example, mid, heads=False)
            if measure.count_parameters(trial) > args.target * n_dense:
                lo = mid
            else:
                hi = mid
        tp_model = torch_pruning_prune(copy.deepcopy(dense), example, hi, heads=False).eval()
        print(f"Torch-Pruning (MLP neurons only) at ratio {hi:.3f}: {measure.count_parameters(tp_model) / 1e6:.2f} M params"
              f" ({100 * measure.count_parameters(tp_model) / n_dense:.1f} %), {measure.count_macs(tp_model, spec.input_size) / 1e9:.3f} GMACs")
        models["torch_pruning"] = tp_model
    except Exception as exc:  # noqa: BLE001 - report what the external library does, verbatim
        print(f"Torch-Pruning: could not prune ({type(exc).__name__}: {exc})")
    timing = measure.compare_throughput(models, spec.input_size, args.batch, reference="dense", repeats=args.repeats)
    for name, t in timing.items():
        print(f"{name}: {t['images_per_s']:.2f} images/s (median of {t['repeats']}), ratio vs dense {t['speedup']:.3f}")


if __name__ == "__main__":
    main()
