"""``markdown``: report.md with the before/after table, the plan summary and plugin sections."""
from __future__ import annotations

import math
import re
from typing import Any

from corecompress.engine.rundir import atomic_write_bytes
from corecompress.tools.spread import CV_SUFFIX, noisy_label

from corecompress_builtin.report_plot import draw_summary


def nan_reason(key: str) -> str:
    """What a ``nan`` metric means, by its name: a TAR/VAL at a FAR needs enough impostor pairs."""
    far = re.search(r"@far([0-9.e+-]+)$", key)
    if far:
        return f"n/a (too few impostor pairs for FAR {far.group(1)})"
    return "n/a (not computable on this data)"


def _fmt(value: Any, key: str = "") -> str:
    if isinstance(value, float) and math.isnan(value):
        return nan_reason(key)
    if isinstance(value, float):
        if abs(value) >= 1e6:
            return f"{value / 1e6:.3f} M"
        if value.is_integer():
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def metrics_table(phases: dict[str, dict[str, Any]]) -> list[str]:
    """One row per metric, one column per phase (before pruning, pruned before retraining, after). A
    timing's spread (``<metric>_cv``) is no row of its own: it marks its metric when it is noisy."""
    keys = [k for k in dict.fromkeys(k for values in phases.values() for k in values) if not k.endswith(CV_SUFFIX)]
    lines = ["| metric | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_cell(values, k) for values in phases.values()) + " |")
    return lines


def _cell(values: dict[str, Any], key: str) -> str:
    text = _fmt(values.get(key, "–"), key)
    noisy = noisy_label(values.get(key + CV_SUFFIX))
    return f"{text} ({noisy})" if noisy and key in values else text


def budget_line(metrics: dict[str, Any]) -> str:
    """Requested and achieved budget; for latency the predicted and the measured speed-up."""
    b = metrics["budget"]
    line = (f"- budget: {b['metric']} {b['requested']:g} of the dense model requested, {b['achieved']:.3f} achieved "
            f"({b['allocation']} allocation, tolerance {b['tolerance']:g})")
    if b.get("predicted_speedup") is None:
        return line
    key = f"efficiency/speedup_vs_dense_b{b['batch_size']}"
    measured = [(phase, metrics[phase][key]) for phase in ("after", "pruned") if key in (metrics.get(phase) or {})]
    shown = (f"measured {measured[0][1]:.2f}× ({measured[0][0]}, interleaved with the dense model)" if measured
             else f"measured: n/a (add the efficiency evaluator with batch size {b['batch_size']})")
    return (line + f"; predicted speed-up {b['predicted_speedup']:.2f}× at batch {b['batch_size']}, "
            f"{b['threads']} thread{'' if b['threads'] == 1 else 's'} on {b['device']}, {shown}")


class MarkdownReporter:
    """Writes ``report.md`` into the run directory."""

    def write(self, run: Any) -> None:
        r = run.recipe
        lines = [f"# {r.name}", ""]
        if r.description:
            lines += [r.description, ""]
        lines += [f"- model: `{r.model.name}`, data: `{r.data.name}`, seed: {r.seed}"]
        lines.append(f"- computed on `{run.device}` in {run.precision}"
                     + "".join(f", {flag}" for flag in ("compile", "channels_last") if getattr(r, flag)))
        if r.prune is not None:
            applied = r.prune.apply.name
            amount = (f"to a {r.prune.budget.metric} budget of {r.prune.budget.fraction:g}" if r.prune.budget is not None
                      else f"at sparsity {r.prune.sparsity}")
            lines.append(f"- pruning: `{r.prune.importance.name}` {amount} "
                         f"({r.prune.scope}, targets {', '.join(r.prune.targets)}), applied as **{applied}**"
                         + (" — a masked model has the dense model's size and speed" if applied == "mask" else ""))
        if run.plan is not None:
            lines.append(f"- units removed: {100 * run.plan.unit_ratio():.1f} % of {sum(g.size for g in run.plan.groups.values())}"
                         f" in {len(run.plan.groups)} groups (plan.json)")
        unpruned = run.metrics.get("unpruned_groups") or {}
        if unpruned:
            lines.append(f"- left unpruned: {len(unpruned)} groups the importance declined — "
                         + "; ".join(f"`{name}` ({why})" for name, why in unpruned.items()))
        if run.metrics.get("budget"):
            lines.append(budget_line(run.metrics))
        lines.append("")
        labels = {"before": "before", "pruned": "pruned (not retrained)", "after": "after"}
        phases = {label: run.metrics[key] for key, label in labels.items() if run.metrics.get(key)}
        if phases:
            budget = run.metrics.get("budget") or {}
            lines += ["## Results", ""] + metrics_table(phases) + [""]
            lines += [draw_summary(run.metrics, run.out_dir, budget.get("batch_size")), ""]
        for phase in ("train", "retrain"):
            if phase in run.metrics:
                m = run.metrics[phase]
                lines.append(f"- {phase}: {len(m['history'])} log points, final loss {m['final_loss']:.4g}, {m['seconds']:.1f} s")
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items() if v >= 0.05)
        if timings:
            lines += ["", f"Stage times: {timings}."]
        for section in run.hook.report_sections(run=run):
            for title, body in section or []:
                lines += ["", f"## {title}", "", body]
        lines += ["", "Files: recipe.resolved.json, versions.json, metrics.json, plan.json (if pruned), "
                  "model.safetensors + architecture.json (reload with `corecompress.load(dir)`), log.txt; report.png (the "
                  "plot) and cost_table.json (latency budgets) where written.", ""]
        atomic_write_bytes(run.out_dir / "report.md", "\n".join(lines).encode())


def register(register: Any) -> None:
    register("markdown", MarkdownReporter, description="report.md with the before/after table")
