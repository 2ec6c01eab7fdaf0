"""Pruning SwinFace to a stated budget (issue 14): latency budgets, and a MAC budget by FACES alone vs all kinds.

For one SwinFace preset at batch B on this CPU: the per-block latency cost table is measured (and timed),
then for each requested latency fraction F the planner (``prune.budget: {latency: F}``, uniform allocation,
heads + MLP neurons by L1, qkv/fc1 input channels by FACES' |LayerNorm γ|) gives a plan; each plan is removed
physically. Beside them: Torch-Pruning 1.6.1 at the same parameter count (on timm's Swin it can only remove
MLP neurons), and ``{macs: 0.5}`` with FACES channels only vs all three kinds. One interleaved timing of
every model in this process gives the measured speed-ups (ratios vs dense, with their spread); the MAC limit
is dense MACs / pruned MACs.

    python benchmarks/latency_budget.py --preset swin_t --threads 1 --batch 32 --budgets 0.5,0.6,0.7
    python benchmarks/latency_budget.py --preset nano --threads 2       # the quickstart's model, seconds

Methods: FACES (Lajić et al., ICT Express 2026) for channels; L1 magnitude for heads and neurons.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from pathlib import Path

import torch
from cli_args import count, float_list, repeats

from corecompress.plugin.loading import load_plugins
from corecompress.pruning.budget import MAX_LEVEL, BudgetRequest, BudgetUnreachable, plan_to_budget
from corecompress.pruning.cost_table import LatencyCost, measure_cost_table
from corecompress.pruning.physical import apply_physical
from corecompress.pruning.plan import make_plan
from corecompress.pruning.plan_cost import MacCost
from corecompress.tools import measure

ALL_KINDS = ("channels", "heads", "neurons")
MIN_KEEP = 0.1  # the recipe default of prune.min_keep_fraction


def scores_for(registry, model: torch.nn.Module, groups) -> dict[str, torch.Tensor]:
    """L1 for heads and neurons, FACES (|LayerNorm γ|) for the channels — as the recipes would score them."""
    l1, faces = registry.get("importance", "l1"), registry.get("importance", "faces")
    scores = l1.create(l1.parse({}, "i")).score(model, groups, None)
    scores.update(faces.create(faces.parse({}, "i")).score(model, groups, None))
    return scores


def budget_model(dense, groups, scores, cost, metric: str, fraction: float) -> tuple[torch.nn.Module | None, dict]:
    """The physically pruned copy meeting ``{metric: fraction}`` and the plan's budget record (None if unreachable)."""
    try:
        plan = plan_to_budget({g.name: scores[g.name] for g in groups}, groups, cost,
                              BudgetRequest(metric, fraction), min_keep_fraction=MIN_KEEP)
    except BudgetUnreachable as exc:
        return None, {"requested": fraction, "unreachable": str(exc)}
    return apply_physical(copy.deepcopy(dense), groups, plan).eval(), dict(plan.meta["budget"])


def torch_pruning_at(dense, input_size, n_params: int):
    """Torch-Pruning (MLP neurons only) bisected to at most ``n_params`` parameters, or the reason it failed."""
    from corecompress_prune_baselines.torch_pruning_reference import torch_pruning_prune

    example = torch.randn(1, *input_size)
    lo, hi = 0.0, 0.99
    for _ in range(12):
        mid = (lo + hi) / 2
        if measure.count_parameters(torch_pruning_prune(copy.deepcopy(dense), example, mid, heads=False)) > n_params:
            lo = mid
        else:
            hi = mid
    return torch_pruning_prune(copy.deepcopy(dense), example, hi, heads=False).eval(), hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=("swin_t", "nano", "micro"), default="swin_t")
    ap.add_argument("--threads", type=count(1), default=1)
    ap.add_argument("--batch", type=count(1), default=32)
    ap.add_argument("--budgets", type=float_list(0.0, 1.0), default=[0.5, 0.6, 0.7],
                    help="latency fractions to keep, comma-separated")
    ap.add_argument("--macs", type=float_list(0.0, 1.0), default=[0.5], help="MAC fractions (FACES-only vs all kinds)")
    ap.add_argument("--repeats", type=repeats, default=10)
    ap.add_argument("--no-torch-pruning", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Unwrapped parameters detected")  # Torch-Pruning on Swin's tables
    registry = load_plugins().registry
    comp = registry.get("model", "swinface")
    spec = comp.create(comp.parse({"preset": args.preset}, "model"))
    torch.manual_seed(0)
    dense = spec.build().eval()
    with torch.no_grad():  # trained-looking norm scales, so FACES' ranking is not all ties
        gen = torch.Generator().manual_seed(0)
        for module in dense.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
    input_size = tuple(spec.input_size)
    groups = spec.prunable_groups(dense, ALL_KINDS)
    channels = [g for g in groups if g.kind == "channels"]
    scores = scores_for(registry, dense, groups)
    print(f"machine: {platform.machine()} {platform.node()}, torch {torch.__version__}, {args.threads} threads, "
          f"batch {args.batch}, SwinFace {args.preset} at {input_size}")

    start = time.perf_counter()
    table = measure_cost_table(dense, groups, input_size, args.batch, {"benchmark": args.preset},
                               repeats=args.repeats, threads=args.threads)
    table_seconds = time.perf_counter() - start
    print(f"cost table: {table_seconds:.1f} s for {len(table.blocks)} blocks")
    latency = LatencyCost(table, groups)

    models: dict[str, torch.nn.Module] = {"dense": dense}
    records: dict[str, dict] = {}
    for fraction in args.budgets:
        model, record = budget_model(dense, groups, scores, latency, "latency", fraction)
        if model is not None:
            models[f"latency {fraction:g}"] = model
        records[f"latency {fraction:g}"] = record
        if model is not None and not args.no_torch_pruning:
            try:
                tp_model, ratio = torch_pruning_at(dense, input_size, measure.count_parameters(model))
                models[f"Torch-Pruning at params of latency {fraction:g}"] = tp_model
                records[f"Torch-Pruning at params of latency {fraction:g}"] = {"pruning_ratio": ratio}
            except Exception as exc:  # noqa: BLE001 - the external library's failure, reported verbatim
                records[f"Torch-Pruning at params of latency {fraction:g}"] = {"error": f"{type(exc).__name__}: {exc}"}
    for fraction in args.macs:
        for label, kinds in (("FACES channels only", channels), ("all kinds", groups)):
            model, record = budget_model(dense, kinds, scores, MacCost(dense, kinds, input_size), "macs", fraction)
            name = f"macs {fraction:g}, {label}"
            records[name] = record
            if model is not None:
                models[name] = model
    channel_latency = LatencyCost(table, channels)
    floor_plan = make_plan({g.name: scores[g.name] for g in channels}, channels, MAX_LEVEL, "local", MIN_KEEP)
    floor = channel_latency(floor_plan) / channel_latency.dense

    timing = measure.compare_throughput(models, input_size, args.batch, reference="dense", repeats=args.repeats)
    dense_macs = measure.count_macs(dense, input_size)
    rows = []
    print("| model | params | MMACs | MAC limit | predicted speed-up | measured speed-up (CV) |")
    print("|---|---|---|---|---|---|")
    for name in {"dense": {}} | records:
        if name not in models:
            print(f"| {name} | – | – | – | – | {records[name]} |")
            continue
        model, t, record = models[name], timing[name], records.get(name, {})
        macs = measure.count_macs(model, input_size)
        predicted = 1.0 / record["achieved"] if record.get("metric") == "latency" else None
        row = {"model": name, "params": measure.count_parameters(model), "macs": macs, "mac_limit": dense_macs / macs,
               "predicted_speedup": predicted, "measured_speedup": t["speedup"], "cv": t.get("speedup_cv"),
               "images_per_s": t["images_per_s"], "budget": record}
        rows.append(row)
        shown = f"{predicted:.3f}" if predicted else "–"
        cv = f" ({100 * row['cv']:.0f} %)" if row["cv"] is not None else ""
        print(f"| {name} | {row['params'] / 1e6:.3f} M | {macs / 1e6:.1f} | {row['mac_limit']:.3f} | {shown} "
              f"| {t['speedup']:.3f}{cv} |")
    print(f"FACES channels only: the fastest plan keeps {floor:.3f} of the predicted latency (every group at "
          f"the {MIN_KEEP:g} floor)")
    if args.json:
        args.json.write_text(json.dumps({"cost_table_seconds": table_seconds, "rows": rows, "records": records, "channels_only_latency_floor": floor,
                                         "threads": args.threads, "batch": args.batch, "preset": args.preset},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
