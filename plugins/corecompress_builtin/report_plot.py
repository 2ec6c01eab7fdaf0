"""The report's small picture: accuracy and measured speed before / pruned / after (and the budget).

Drawn with matplotlib's Agg backend (no display) into ``report.png`` beside ``report.md`` when
matplotlib is installed; without it the report says so in one plain line instead.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

PLOT_FILE = "report.png"
PHASE_LABELS = {"before": "before", "pruned": "pruned", "after": "after"}
NO_MATPLOTLIB = "Plot: not drawn — matplotlib is not installed (pip install matplotlib draws report.png)."


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def accuracy_key(metrics: dict[str, Any]) -> str | None:
    """The first accuracy-like metric any phase reports (``…_accuracy``, not its ``_std``)."""
    for phase in PHASE_LABELS:
        for key, value in (metrics.get(phase) or {}).items():
            if re.search(r"accuracy$", key) and _finite(value):
                return key
    return None


def speed_key(metrics: dict[str, Any], batch_size: int | None) -> str | None:
    """The measured speed-up over the dense model: at ``batch_size`` if measured, else the largest batch."""
    found = sorted({k for phase in PHASE_LABELS for k in (metrics.get(phase) or {})
                    if re.search(r"speedup_vs_dense_b\d+$", k)}, key=lambda k: int(re.search(r"\d+$", k).group()))
    wanted = [k for k in found if batch_size is not None and k.endswith(f"_b{batch_size}")]
    return (wanted or found[-1:] or [None])[0]


def draw_summary(metrics: dict[str, Any], out_dir: Path, batch_size: int | None = None) -> str:
    """Draw ``report.png``; return the Markdown line for the report (the picture, or why there is none)."""
    try:
        import matplotlib
    except ImportError:
        return NO_MATPLOTLIB
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    phases = [p for p in PHASE_LABELS if metrics.get(p)]
    accuracy, speed = accuracy_key(metrics), speed_key(metrics, batch_size)
    panels = [(key, title) for key, title in ((accuracy, "accuracy"), (speed, "measured speed-up")) if key]
    budget = metrics.get("budget")
    if not phases or (not panels and not budget):
        return "Plot: not drawn — no accuracy, speed or budget was measured."
    fig, axes = plt.subplots(1, len(panels) + (1 if budget else 0), figsize=(3.2 * (len(panels) + bool(budget)), 2.6),
                             squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        values = [(metrics[p].get(key, 1.0 if key == speed and p == "before" else math.nan)) for p in phases]
        ax.bar([PHASE_LABELS[p] for p in phases], [v if _finite(v) else 0.0 for v in values], color="#4c72b0")
        ax.set_title(f"{title}\n{key}", fontsize=8)
        ax.tick_params(labelsize=8)
    if budget:
        ax = axes[0][-1]
        ax.bar(["requested", "achieved"], [budget["requested"], budget["achieved"]], color=["#999999", "#dd8452"])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{budget['metric']} budget\n(fraction of dense kept)", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / PLOT_FILE, dpi=100)
    plt.close(fig)
    return f"![accuracy and speed before / pruned / after]({PLOT_FILE})"
