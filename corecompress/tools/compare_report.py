"""Results of a comparison: ``results.csv`` (one row per run), ``results.md`` (mean ± std per cell), plots.

Spread is the sample standard deviation over seeds (n − 1 denominator); a cell with one finished
run shows "±0 (n=1)". Plots need matplotlib (the optional extra ``plots``); it is imported only
here, through the object API with the Agg canvas, so no global backend is switched.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from corecompress.errors import UserError
from corecompress.engine.rundir import atomic_write_bytes
from corecompress.tools.spread import CV_SUFFIX, NOISY_CV, noisy_label

KEY_METRIC_WORDS = ("accuracy", "params", "macs", "images_per_s", "speedup")
PLOTS_HINT = "pip install 'corecompress[plots]'"


@dataclass
class RunResult:
    """What one (cell, seed) run produced; ``metrics`` holds flattened ``before/…``, ``after/…`` and timings."""

    cell_id: str
    assignments: dict[str, Any]
    seed: int
    run_dir: Path
    status: str
    error: str | None = None
    sparsity: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numbers of a run's metrics.json: ``before/<m>``, ``after/<m>`` and ``<phase>_seconds``."""
    out: dict[str, float] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, f"{path}/{key}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = float(value)

    for phase in ("before", "pruned", "after"):
        walk(metrics.get(phase) or {}, phase)
    for phase in ("train", "retrain"):
        seconds = (metrics.get(phase) or {}).get("seconds")
        if isinstance(seconds, (int, float)):
            out[f"{phase}_seconds"] = float(seconds)
    if isinstance(metrics.get("scoring_seconds"), (int, float)):
        out["scoring_seconds"] = float(metrics["scoring_seconds"])
    return out


def _ordered_union(keys: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in keys:
        for key in group:
            seen.setdefault(key, None)
    return list(seen)


def metric_columns(results: list[RunResult]) -> list[str]:
    """Every metric column, in the order first seen: before/…, after/…, then timings."""
    keys = _ordered_union(r.metrics for r in results)
    rank = {"before": 0, "pruned": 1, "after": 2}
    return sorted(keys, key=lambda k: rank.get(k.split("/")[0], 3))  # stable: keeps first-seen order


def results_csv(results: list[RunResult], out_dir: Path) -> str:
    """The CSV text: cell, the matrix assignments, seed, status, every metric, error, run_dir."""
    from corecompress.tools.compare import format_value

    assignment_keys = _ordered_union(r.assignments for r in results)
    metrics = metric_columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cell", *assignment_keys, "seed", "status", *metrics, "error", "run_dir"])
    for r in results:
        where = r.run_dir.relative_to(out_dir) if r.run_dir.is_relative_to(out_dir) else r.run_dir
        writer.writerow([r.cell_id, *(format_value(r.assignments[k]) if k in r.assignments else "" for k in assignment_keys),
                         r.seed, r.status, *(repr(r.metrics[m]) if m in r.metrics else "" for m in metrics),
                         r.error or "", where.as_posix()])
    return buffer.getvalue()


def _short_names(keys: list[str]) -> dict[str, str]:
    """``after/accuracy/test_accuracy`` → ``test_accuracy`` (the evaluator prefix only when ambiguous)."""
    full = {k: k.split("/", 1)[1] for k in keys}
    short = {k: v.split("/")[-1] for k, v in full.items()}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: full[k] if short[k] in clashes else short[k] for k in keys}


def key_metrics(results: list[RunResult]) -> list[str]:
    """The ``after/`` metrics worth a table column, accuracies first (nonzero_params only when it differs)."""
    done = [r for r in results if r.status == "complete"]
    after = [k for k in metric_columns(done) if k.startswith("after/")]
    chosen = [k for k in after if any(w in k.split("/")[-1].lower() for w in KEY_METRIC_WORDS)
              and not k.endswith(CV_SUFFIX)]  # a timing's spread marks its column instead
    redundant = set()
    for k in chosen:
        if k.endswith("nonzero_params"):
            dense = k[: -len("nonzero_params")] + "params"
            if all(r.metrics.get(k) == r.metrics.get(dense) for r in done):
                redundant.add(k)
    chosen = [k for k in chosen if k not in redundant]
    return sorted(chosen, key=lambda k: 0 if "accuracy" in k.split("/")[-1].lower() else 1)


def _decimals(mean: float) -> int:
    """About four significant digits, never more than six decimals."""
    if mean == 0 or not math.isfinite(mean):
        return 2
    return max(0, min(6, 3 - math.floor(math.log10(abs(mean)))))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1); the spread of one value is 0."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: list[float], metric: str) -> str:
    """``87.50 ± 1.20``: accuracy with 2 decimals, params/MACs in millions, others ~4 significant digits."""
    if not values:
        return "—"
    name = metric.split("/")[-1].lower()
    scale = 1e6 if ("params" in name or "macs" in name) else 1.0
    mean, std = (v / scale for v in mean_std(values))
    places = 2 if ("accuracy" in name or "speedup" in name) else _decimals(mean)
    if len(values) == 1:
        return f"{mean:.{places}f} ±0 (n=1)"
    return f"{mean:.{places}f} ± {std:.{places}f}" if std else f"{mean:.{places}f} ± 0"


def _marked(text: str, spreads: list[float]) -> str:
    """``text`` with "(noisy: CV 85 %)" when the noisiest run's timing spread exceeds the threshold."""
    noisy = noisy_label(max(spreads)) if spreads else ""
    return f"{text} ({noisy})" if noisy else text


def _header(short: str) -> str:
    name = short.lower()
    unit = " (M)" if ("params" in name or "macs" in name) else " (×)" if "speedup" in name else ""
    return f"{short}{unit}"


def group_by_cell(results: list[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.cell_id, []).append(r)
    return groups


def results_markdown(results: list[RunResult], title: str) -> str:
    """A table per cell: assignments, n, then mean ± std of the key metrics after pruning."""
    from corecompress.tools.compare import format_value, key_labels

    assignment_keys = _ordered_union(r.assignments for r in results)
    labels = key_labels(assignment_keys)
    after = key_metrics(results)
    shorts = _short_names(after)
    columns: list[tuple[str, str]] = []  # (metric key, header)
    for key in after:
        if "accuracy" in key.split("/")[-1].lower():
            columns.append((key, f"{shorts[key]} (after)"))
            for phase, label in (("pruned", "pruned, not retrained"), ("before", "before")):
                other = f"{phase}/" + key.split("/", 1)[1]
                if any(other in r.metrics for r in results):
                    columns.append((other, f"{shorts[key]} ({label})"))
        else:
            columns.append((key, _header(shorts[key])))
    seeds = sorted({r.seed for r in results})
    done = sum(r.status == "complete" for r in results)
    lines = [f"# Comparison: {title}", "",
             f"{len(results)} run(s), {done} complete; seeds {seeds}. Each entry is the mean ± sample standard "
             "deviation (n − 1 denominator) over the cell's complete runs; '±0 (n=1)' marks a single run.",
             "Params and MACs in millions; throughput (images_per_s) measured on this machine; speedup is "
             "against the dense model measured in the same run; \"noisy: CV x %\" marks a timing whose "
             f"repeats varied by more than {100 * NOISY_CV:.0f} % (coefficient of variation): not to be trusted.", ""]
    head = [labels[k] for k in assignment_keys] + ["n"] + [h for _k, h in columns]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(assignment_keys) + "---:|" + "---:|" * len(columns))
    for cell_runs in group_by_cell(results).values():
        complete = [r for r in cell_runs if r.status == "complete"]
        failed = len(cell_runs) - len(complete)
        n = f"{len(complete)}" + (f" ({failed} not complete)" if failed else "")
        row = [format_value(cell_runs[0].assignments[k]) if k in cell_runs[0].assignments else "" for k in assignment_keys]
        row.append(n)
        for key, _h in columns:
            row.append(_marked(format_mean_std([r.metrics[key] for r in complete if key in r.metrics], key),
                               [r.metrics[key + CV_SUFFIX] for r in complete if key + CV_SUFFIX in r.metrics]))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    problems = [r for r in results if r.status != "complete"]
    if problems:
        lines += ["", "## Runs not complete", ""]
        lines += [f"- `{r.cell_id}` seed {r.seed}: {r.status}" + (f" — {r.error}" if r.error else "") for r in problems]
    return "\n".join(lines) + "\n"


def choose_metric(results: list[RunResult], requested: str | None) -> str | None:
    """The ``after/`` accuracy to plot: ``requested`` (full or short name) or the first '*accuracy*' one."""
    after = [k for k in metric_columns([r for r in results if r.status == "complete"]) if k.startswith("after/")]
    if requested:
        for key in after:
            if requested in (key, key.split("/", 1)[1], key.split("/")[-1]):
                return key
        have = ", ".join(k.split("/", 1)[1] for k in after) or "none"
        raise UserError(f"--metric: no metric '{requested}' after pruning in these runs (have: {have})")
    return next((k for k in after if "accuracy" in k.split("/")[-1].lower()), None)


def _line_label(assignments: dict[str, Any], x_keys: set[str]) -> str:
    from corecompress.tools.compare import format_value, key_labels

    rest = {k: v for k, v in assignments.items() if k not in x_keys}
    if len(rest) == 1:
        return format_value(next(iter(rest.values())))
    labels = key_labels(list(rest))
    return ", ".join(f"{labels[k]}={format_value(v)}" for k, v in rest.items()) or "all runs"


def _plot(path: Path, results: list[RunResult], metric: str, x_of: Callable[[RunResult, str], float | None],
          x_label: str) -> bool:
    """One accuracy-vs-x figure: a line per combination of the non-sparsity assignments, y error = std."""
    from matplotlib.figure import Figure

    x_keys = {k for r in results for k in r.assignments if k.split(".")[-1] == "sparsity"}
    lines: dict[str, list[tuple[float, float, float, float, float]]] = {}  # (order, x, x std, y, y std)
    for cell_runs in group_by_cell(results).values():
        runs = [r for r in cell_runs if r.status == "complete" and metric in r.metrics and x_of(r, "after") is not None]
        if not runs:
            continue
        ym, ys = mean_std([r.metrics[metric] for r in runs])
        xm, xs = mean_std([x_of(r, "after") for r in runs])
        order = runs[0].sparsity if runs[0].sparsity is not None else xm  # join points in sparsity order
        lines.setdefault(_line_label(runs[0].assignments, x_keys), []).append((order, xm, xs, ym, ys))
    if not lines:
        return False
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for label, points in lines.items():
        points.sort()
        ax.errorbar([p[1] for p in points], [p[3] for p in points], yerr=[p[4] for p in points],
                    xerr=[p[2] for p in points] if any(p[2] for p in points) else None,
                    marker="o", capsize=3, label=label)
    before = "before/" + metric.split("/", 1)[1]
    dense = [r for r in results if r.status == "complete" and before in r.metrics and x_of(r, "before") is not None]
    if dense:
        ax.plot([statistics.fmean(x_of(r, "before") for r in dense)],
                [statistics.fmean(r.metrics[before] for r in dense)], marker="*", markersize=12,
                linestyle="none", color="black", label="dense (before pruning)")
    ax.set_xlabel(x_label)
    ax.set_ylabel(f"{metric.split('/', 1)[1]} after pruning")
    ax.set_title(f"{metric.split('/')[-1]} vs {x_label.split(' (')[0]} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def write_plots(results: list[RunResult], plots_dir: Path, metric: str) -> list[Path]:
    """accuracy vs sparsity, vs MACs, vs measured throughput; raises ImportError without matplotlib."""
    import matplotlib  # noqa: F401 - fail early with ImportError when the optional extra is missing

    after = metric_columns([r for r in results if r.status == "complete"])
    macs = next((k for k in after if k.startswith("after/") and k.split("/")[-1] == "macs"), None)
    speed = next((k for k in after if k.startswith("after/") and k.split("/")[-1].startswith("images_per_s")), None)

    def sparsity(r: RunResult, phase: str) -> float | None:
        return (0.0 if phase == "before" else r.sparsity) if r.sparsity is not None else None

    def measured(key: str | None, scale: float) -> Callable[[RunResult, str], float | None]:
        def x_of(r: RunResult, phase: str) -> float | None:
            if key is None:
                return None
            value = r.metrics.get(f"{phase}/" + key.split("/", 1)[1])
            return None if value is None else value / scale
        return x_of

    written = []
    specs = [("accuracy_vs_sparsity.png", sparsity, "sparsity (fraction of units removed)"),
             ("accuracy_vs_macs.png", measured(macs, 1e6), "MACs (M)"),
             ("accuracy_vs_throughput.png", measured(speed, 1.0),
              f"throughput ({speed.split('/')[-1] if speed else 'images_per_s'}, images/s)")]
    for name, x_of, label in specs:
        if _plot(plots_dir / name, results, metric, x_of, label):
            written.append(plots_dir / name)
    return written


def write_reports(results: list[RunResult], out_dir: Path, *, title: str, metric: str | None = None) -> list[str]:
    """Write results.csv, results.md and plots/; return the lines to print."""
    atomic_write_bytes(out_dir / "results.csv", results_csv(results, out_dir).encode("utf-8"))
    atomic_write_bytes(out_dir / "results.md", results_markdown(results, title).encode("utf-8"))
    lines = [f"results: {out_dir / 'results.csv'}", f"table: {out_dir / 'results.md'}"]
    chosen = choose_metric(results, metric)
    if chosen is None:
        lines.append("note: no accuracy metric after pruning in the complete runs; no plots (pass --metric NAME)")
        return lines
    try:
        plots = write_plots(results, out_dir / "plots", chosen)
    except ImportError:
        lines.append(f"note: matplotlib is not installed, so no plots were drawn; {PLOTS_HINT} adds it")
        return lines
    lines.append(f"plots: {out_dir / 'plots'} ({len(plots)} file(s), {chosen.split('/', 1)[1]})")
    return lines
