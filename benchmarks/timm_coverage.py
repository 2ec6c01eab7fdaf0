"""Coverage of timm architectures: corecompress's ``timm`` adapter next to Torch-Pruning, at 30 %.

For every architecture of :data:`ARCHITECTURES` (a TimmFaceBackbone: the timm model, pretrained=False,
+ a 64-d embedding head), in its own subprocess:

- corecompress: the adapter's groups for all kinds (channels, heads, neurons, filters), a local plan
  at ``--sparsity`` from seeded random scores (coverage is about structure, not importance), soft
  masks and physical removal through the API (adapter → make_plan → masks / apply_physical, what
  one ``corecompress run`` step does), then masked ≡ physical (relative error ≤ 1e-5) and a forward
  + backward of the pruned model. Status: pruned, refused: <the UserError line>, mismatch, or crash.
- Torch-Pruning 1.6.1: ``tp.pruner.MetaPruner`` with ``MagnitudeImportance`` at the same ratio,
  the embedding head ignored; pruned when the pruned model still runs a forward + backward with the
  same output shape.

    python benchmarks/timm_coverage.py [--only resnet18,vit_tiny_patch16_224] [--sparsity 0.3] [--timeout 600]

Prints a Markdown table (the one in BENCHMARKS.md) and the counts.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings


KINDS = ("channels", "heads", "neurons", "filters")
EMBEDDING = 64
TOLERANCE = 1e-5

#: (timm name, input size, family) — small variants, the smallest input each accepts comfortably.
ARCHITECTURES: list[tuple[str, int, str]] = [
    ("resnet18", 64, "CNN"), ("resnet50d", 64, "CNN"), ("seresnet18", 64, "CNN (SE)"),
    ("convnext_atto", 64, "CNN"), ("efficientnet_b0", 64, "CNN (SE)"), ("tf_efficientnetv2_b0", 64, "CNN (SE)"),
    ("mobilenetv2_050", 64, "CNN"), ("mobilenetv3_small_050", 64, "CNN (SE)"), ("ghostnet_050", 64, "CNN (GhostFaceNets)"),
    ("regnetx_002", 64, "CNN (grouped)"), ("repvgg_a0", 64, "CNN"), ("densenet121", 64, "CNN (concat)"),
    ("convmixer_768_32", 64, "CNN"), ("poolformer_s12", 64, "MetaFormer"),
    ("edgenext_xx_small", 64, "hybrid (EdgeFace)"), ("mobilevit_xxs", 64, "hybrid"),
    ("efficientformerv2_s0", 64, "hybrid"), ("levit_128", 64, "hybrid"), ("coat_lite_tiny", 64, "hierarchical (conv position encodings)"),
    ("vit_tiny_patch16_224", 64, "ViT"), ("deit_tiny_patch16_224", 64, "ViT"), ("deit3_small_patch16_224", 64, "ViT"),
    ("beit_base_patch16_224", 64, "ViT"), ("eva02_tiny_patch14_224", 56, "ViT"), ("cait_xxs24_224", 64, "ViT"),
    ("xcit_nano_12_p16_224", 64, "ViT"), ("swin_tiny_patch4_window7_224", 224, "hierarchical"),
    ("swinv2_tiny_window8_256", 256, "hierarchical"), ("pvt_v2_b0", 64, "hierarchical"),
    ("twins_svt_small", 224, "hierarchical"), ("nest_tiny", 224, "hierarchical"),
    ("maxvit_tiny_rw_224", 224, "hierarchical"),
]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:120] if text else ''}"


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _runs(model, size: int, batch: int = 2):
    """Forward + backward in train mode; the output."""
    import torch

    x = torch.randn(batch, 3, size, size)
    out = model.train()(x)
    out.float().pow(2).mean().backward()
    return out


def prune_ours(name: str, size: int, sparsity: float) -> dict:
    import torch

    from corecompress.errors import UserError
    from corecompress.pruning import make_plan
    from corecompress.pruning.agreement import masked_and_physical, relative_error
    from corecompress_facekit.adapters import TimmBackboneAdapter, TimmBackboneOptions

    adapter = TimmBackboneAdapter(TimmBackboneOptions(model_name=name, embedding_size=EMBEDDING, img_size=size))
    model = adapter.build().eval()
    row = {"before": _parameters(model)}
    try:
        groups = adapter.prunable_groups(model, KINDS)
    except UserError as exc:
        return {**row, "status": f"refused: {str(exc).splitlines()[0]}"}
    if not groups:
        return {**row, "status": "refused: no prunable groups"}
    row["kinds"] = sorted({g.kind for g in groups})
    gen = torch.Generator().manual_seed(0)
    plan = make_plan({g.name: torch.rand(g.size, generator=gen) for g in groups}, groups, sparsity)
    masked, physical = masked_and_physical(model, groups, plan)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        error = relative_error(masked.eval()(x), physical.eval()(x))
    row.update(after=_parameters(physical), error=error)
    if error > TOLERANCE:
        return {**row, "status": f"mismatch: masked vs physical {error:.1e}"}
    _runs(physical, size)
    return {**row, "status": "pruned"}


def prune_torch_pruning(name: str, size: int, sparsity: float) -> dict:
    import torch
    import torch_pruning as tp

    from corecompress_facekit.models.timm_backbone import TimmFaceBackbone

    model = TimmFaceBackbone(name, embedding_size=EMBEDDING, img_size=size).eval()
    row = {"before": _parameters(model)}
    x = torch.randn(1, 3, size, size)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=sparsity, ignored_layers=[model.fc])
    pruner.step()
    row["after"] = _parameters(model)
    out = _runs(model, size)
    if out.shape[-1] != EMBEDDING:
        return {**row, "status": f"crash: output width {out.shape[-1]}"}
    return {**row, "status": "pruned" if row["after"] < row["before"] else "unchanged"}


SIDES = {"ours": prune_ours, "tp": prune_torch_pruning}


def run_case(side: str, name: str, size: int, sparsity: float) -> dict:
    """One side on one architecture, in this process; any exception is a crash row."""
    import torch

    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        row = SIDES[side](name, size, sparsity)
    except Exception as exc:  # noqa: BLE001 - the table reports every failure
        row = {"status": f"crash: {_one_line(exc)}"}
    return {**row, "side": side, "seconds": time.perf_counter() - start}


def limit_memory(gigabytes: int) -> None:
    """Cap this process's address space, so a runaway side fails with MemoryError instead of swapping the machine
    (Torch-Pruning's index mappings on EfficientFormerV2 grow past 20 GB)."""
    import resource

    cap = gigabytes * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def run_isolated(name: str, size: int, sparsity: float, timeout: int, memory_gb: int) -> dict[str, dict]:
    """Both sides on one architecture in a subprocess (one JSON line each, as soon as it is done), so a
    hang or a hard crash is a row of the table, not the end of it."""
    command = [sys.executable, __file__, "--case", name, str(size), "--sparsity", str(sparsity),
               "--memory-gb", str(memory_gb)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        stdout, failure = done.stdout, f"exit {done.returncode}: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        stdout, failure = out.decode() if isinstance(out, bytes) else out, f"no result within {timeout} s"
    rows = {side: {"status": f"crash: {failure}"} for side in SIDES}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row.pop("side")] = row
    return rows


def _params(row: dict) -> str:
    before, after = row.get("before"), row.get("after")
    if before is None:
        return "–"
    if after is None:
        return f"{before / 1e6:.2f} M → –"
    return f"{before / 1e6:.2f} M → {after / 1e6:.2f} M"


def table(rows: list[tuple[str, str, dict, dict]]) -> str:
    out = ["| architecture | family | kinds (corecompress) | corecompress: params | corecompress | "
           "Torch-Pruning: params | Torch-Pruning |", "|---|---|---|---|---|---|---|"]
    for name, family, ours, theirs in rows:
        kinds = ", ".join(ours.get("kinds", [])) or "–"
        out.append(f"| {name} | {family} | {kinds} | {_params(ours)} | {ours['status']} | {_params(theirs)} | "
                   f"{theirs['status']} |")
    return "\n".join(out)


def main() -> None:
    from cli_args import count, name_list, number  # here, so tests can import the list without this folder on sys.path

    names = [a[0] for a in ARCHITECTURES]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=name_list(names), default=names, help="comma-separated architectures")
    ap.add_argument("--sparsity", type=number(0.0, 1.0, low_open=True, high_open=True), default=0.3, help="fraction of units removed, in (0, 1)")
    ap.add_argument("--timeout", type=count(10), default=900, help="seconds per architecture (both sides)")
    ap.add_argument("--threads", type=count(1), default=2)
    ap.add_argument("--memory-gb", type=count(2), default=12, help="address-space cap of each architecture's process")
    ap.add_argument("--case", nargs=2, metavar=("NAME", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.case:
        limit_memory(args.memory_gb)
        warnings.simplefilter("ignore")
        for side in SIDES:
            print(json.dumps(run_case(side, args.case[0], int(args.case[1]), args.sparsity)), flush=True)
        return
    sizes = {name: (size, family) for name, size, family in ARCHITECTURES}
    rows = []
    for name in args.only:
        size, family = sizes[name]
        found = run_isolated(name, size, args.sparsity, args.timeout, args.memory_gb)
        ours, theirs = found["ours"], found["tp"]
        print(f"{name}: ours {ours['status']} ({ours.get('seconds', 0):.0f} s); Torch-Pruning {theirs['status']} "
              f"({theirs.get('seconds', 0):.0f} s)", file=sys.stderr, flush=True)
        rows.append((name, family, ours, theirs))
    print(table(rows))
    for side, index in (("corecompress", 2), ("Torch-Pruning", 3)):
        statuses = [r[index]["status"] for r in rows]
        pruned = sum(s == "pruned" for s in statuses)
        refused = sum(s.startswith("refused") for s in statuses)
        print(f"\n{side}: {pruned} of {len(rows)} pruned, {refused} refused, {len(rows) - pruned - refused} other "
              "(crash / mismatch / unchanged)")


if __name__ == "__main__":
    main()
