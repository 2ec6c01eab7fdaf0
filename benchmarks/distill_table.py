"""Issue 5 #1: one table of the synthetic distillation comparison (recipes/bench/distill_a.yaml + distill_b.yaml).

    corecompress compare recipes/bench/distill_a.yaml --out runs/bench/distill_a
    corecompress compare recipes/bench/distill_b.yaml --out runs/bench/distill_b
    python benchmarks/distill_table.py [runs/bench/distill_a runs/bench/distill_b]

Per method, mean ± sample std over seeds of the held-out verification accuracy, AUC, TAR@FAR 1 % and 10 %.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from cli_args import directory

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "after/verification/synthetic_"
COLUMNS = [("accuracy", "verification %", 1.0, 2), ("auc", "AUC", 1.0, 4), ("tar@far0.01", "TAR@FAR 1 %", 100.0, 1),
           ("tar@far0.1", "TAR@FAR 10 %", 100.0, 1)]


def method_label(objective: dict) -> str:
    name = objective.get("name", "?")
    if name == "adadistill":
        return "AdaDistill α′ (weighted)" if objective.get("variant", "weighted") == "weighted" else "AdaDistill α (plain)"
    return {"arcface": "no KD (ArcFace)", "feature_mse": "feature MSE + ArcFace", "arcdistill": "ArcDistill",
            "hinton_kd": "Hinton KD"}.get(name, name)


def fmt(values: list[float], scale: float, digits: int) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=directory, metavar="COMPARISON_DIR",
                        help="output folders of `corecompress compare` (default: runs/bench/distill_a and distill_b)")
    args = parser.parse_args()
    dirs = args.dirs or [ROOT / "runs" / "bench" / "distill_a", ROOT / "runs" / "bench" / "distill_b"]
    missing = [str(d / "results.csv") for d in dirs if not (d / "results.csv").is_file()]
    if missing:
        parser.error(f"missing {', '.join(missing)}; run the comparisons first: corecompress compare "
                     f"recipes/bench/distill_a.yaml --out runs/bench/distill_a (and distill_b)")
    cells: dict[str, list[dict[str, str]]] = {}
    for d in dirs:
        with (d / "results.csv").open() as f:
            for row in csv.DictReader(f):
                if row["status"] == "complete":
                    cells.setdefault(method_label(json.loads(row["retrain.objective"])), []).append(row)
    print("| method | n | " + " | ".join(c[1] for c in COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for label, rows in cells.items():
        parts = [fmt([float(r.get(PREFIX + key) or "nan") for r in rows], scale, digits) for key, _t, scale, digits in COLUMNS]
        print(f"| {label} | {len(rows)} | " + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
