"""``corecompress compare RECIPE``: run every matrix cell × seed of a recipe, then tabulate and plot.

The comparison directory (default ``runs/<name>-compare``; deliberately not timestamped, so the
same command resumes) holds one ordinary run directory per cell and seed,
``cells/<cell-id>/seed-<s>/``, plus ``comparison.json``, ``results.csv``, ``results.md`` and
``plots/``. Runs execute one after another. A run whose ``status.json`` says "complete" is kept;
any other state (failed, or "running" left by an interrupted process) is removed and run again.
The whole recipe — every cell — is validated before anything is created, so a recipe mistake is
exit code 2 with nothing written; a run that fails at runtime is recorded and the comparison goes
on, ending with exit code 1.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corecompress.errors import UserError

COMPARISON_FILE = "comparison.json"
MAX_CELL_ID = 80
_SAFE_VALUE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass
class PlannedRun:
    """One (cell, seed) of a comparison: its validated recipe and where its run directory goes."""

    cell_id: str
    assignments: dict[str, Any]
    seed: int
    raw: dict[str, Any]
    recipe: Any
    run_dir: Path


def format_value(value: Any) -> str:
    """A matrix value as text: strings as they are, everything else as compact JSON (0.3, true, {...})."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def key_labels(keys: list[str]) -> dict[str, str]:
    """Short readable labels for matrix keys: the last part (the one before for ``.name``), or the full key if ambiguous."""
    def short(key: str) -> str:
        parts = key.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    labels = {k: short(k) for k in keys}
    if len(set(labels.values())) < len(labels):
        labels = {k: k.replace(".", "-") for k in keys}
    return labels


def cell_id(assignments: dict[str, Any], labels: dict[str, str]) -> str:
    """A stable folder name for a cell, e.g. ``importance-l1_sparsity-0.3``.

    It depends on this cell's assignments only (so adding cells never renames old ones); a short
    hash of the assignments is appended whenever the readable part lost information (characters
    outside ``[A-Za-z0-9.+-]``) or had to be shortened, which keeps ids unique.
    """
    if not assignments:
        return "base"
    parts, lossy = [], False
    for key, value in assignments.items():
        text = format_value(value)
        safe = _SAFE_VALUE.sub("-", text).strip("-") or "x"
        lossy = lossy or safe != text
        parts.append(f"{labels[key]}-{safe}")
    slug = "_".join(parts)
    if lossy or len(slug) > MAX_CELL_ID:
        digest = hashlib.sha1(json.dumps(assignments, sort_keys=True, default=str).encode()).hexdigest()[:6]
        slug = f"{slug[:MAX_CELL_ID - 7]}-{digest}"
    return slug


def plan_runs(raw: dict[str, Any], recipe: Any, registry: Any, out_dir: Path) -> list[PlannedRun]:
    """Every (cell, seed) of the recipe, each validated on its own (a seed replaces ``seed:``)."""
    from corecompress.config.recipe import expand_matrix, validate_recipe

    cells = expand_matrix(raw) if recipe.matrix else [({}, {k: v for k, v in raw.items() if k != "matrix"})]
    labels = key_labels(list(recipe.matrix))
    seeds = list(recipe.seeds) or [recipe.seed]
    runs, seen = [], set()
    for assignments, cell in cells:
        cid = cell_id(assignments, labels)
        if cid in seen:  # only possible when a matrix lists the same value twice
            raise UserError(f"matrix: two cells have the same settings ({cid}); list each value once")
        seen.add(cid)
        for seed in seeds:
            one = copy.deepcopy(cell)
            one.pop("seeds", None)
            one["seed"] = seed
            validated = validate_recipe(one, registry, check_matrix=False)
            runs.append(PlannedRun(cid, assignments, seed, one, validated, out_dir / "cells" / cid / f"seed-{seed}"))
    return runs


def run_state(run_dir: Path) -> tuple[str, str | None]:
    """(state, error) from a run directory's status.json: complete, failed, running, or missing."""
    from corecompress.engine.rundir import STATUS_FILE

    try:
        status = json.loads((run_dir / STATUS_FILE).read_text())
        return str(status.get("state", "unknown")), status.get("error")
    except FileNotFoundError:
        return "missing", None
    except (OSError, ValueError, AttributeError):
        return "unreadable", None


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in list(a) + [k for k in b if k not in a]:
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if a == b else [path or "(recipe)"]


def check_finished_runs_match(runs: list[PlannedRun]) -> None:
    """A complete run made from a different recipe would silently mix results: refuse it (exit 2)."""
    from corecompress.config.recipe import recipe_to_dict

    for run in runs:
        if run_state(run.run_dir)[0] != "complete":
            continue
        try:
            done = json.loads((run.run_dir / "recipe.resolved.json").read_text())
        except (OSError, ValueError):
            done = None
        wanted = json.loads(json.dumps(recipe_to_dict(run.recipe), default=str))
        if isinstance(done, dict):  # where a run computed does not change what it is
            wanted.pop("device", None)
            done = {k: v for k, v in done.items() if k != "device"}
        changed = _differences(wanted, done) if isinstance(done, dict) else ["recipe.resolved.json unreadable"]
        if changed:
            raise UserError(f"{run.run_dir}: finished with a different recipe (changed: {', '.join(changed[:3])}); "
                            "pass --force to run the comparison again or choose another --out")


#: What a comparison writes at the top of its directory; ``--force`` replaces only such folders.
COMPARISON_ENTRIES = (COMPARISON_FILE, "results.csv", "results.md", "plots", "cells", ".*.tmp")


def prepare_directory(out_dir: Path, force: bool, only_report: bool) -> Any:
    """Refuse to write into a folder that is not a comparison. With ``force`` an earlier comparison
    (never anything else) is moved aside: the returned :class:`~corecompress.engine.rundir.Replacement`."""
    from corecompress.engine.rundir import Replacement, check_replaceable

    is_comparison = (out_dir / COMPARISON_FILE).is_file()
    if only_report:
        if not is_comparison:
            raise UserError(f"{out_dir}: no comparison here ({COMPARISON_FILE} missing); run without --only-report first")
        return None
    if force:
        check_replaceable(out_dir, (COMPARISON_FILE,), COMPARISON_ENTRIES, "comparison")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not is_comparison and not force:
        raise UserError(f"{out_dir}: exists and is not a comparison directory; choose another --out or pass --force")
    return Replacement(out_dir) if force else None


def write_comparison_file(out_dir: Path, recipe_path: str, recipe: Any, runs: list[PlannedRun]) -> None:
    from corecompress.engine.rundir import write_json

    cells: dict[str, dict[str, Any]] = {}
    for run in runs:
        cell = cells.setdefault(run.cell_id, {"id": run.cell_id, "assignments": run.assignments, "runs": {}})
        cell["runs"][str(run.seed)] = str(run.run_dir.relative_to(out_dir))
    write_json(out_dir / COMPARISON_FILE, {
        "recipe": recipe_path, "recipe_absolute": str(Path(recipe_path).resolve()), "name": recipe.name,
        "matrix": recipe.matrix, "seeds": sorted({r.seed for r in runs}), "cells": list(cells.values())})


def execute_runs(runs: list[PlannedRun], plugins: Any, quiet: bool = False,
                 device: str | None = None, precision: str | None = None) -> dict[Path, str]:
    """Run every unfinished run in order, printing one progress line each; returns errors by run dir."""
    from corecompress.engine.runner import run_recipe

    errors: dict[Path, str] = {}
    for index, run in enumerate(runs, 1):
        head = f"[{index}/{len(runs)}] {run.cell_id} seed {run.seed} ..."
        if run_state(run.run_dir)[0] == "complete":
            print(f"{head} skipped (complete)", flush=True)
            continue
        if run.run_dir.exists():
            shutil.rmtree(run.run_dir)
        print(head, end=" ", flush=True)
        start = time.perf_counter()
        try:
            run_recipe(run.recipe, plugins, run.run_dir, raw_recipe=run.raw, quiet=quiet, device=device,
                       precision=precision)
        except Exception as exc:  # noqa: BLE001 - one failed run must not stop the comparison
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            errors[run.run_dir] = message
            if run.run_dir.is_dir():
                (run.run_dir / "traceback.txt").write_text(traceback.format_exc())
            print(f"failed after {time.perf_counter() - start:.1f} s: {message}", flush=True)
            continue
        print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return errors


def collect_results(runs: list[PlannedRun], errors: dict[Path, str]) -> list[Any]:
    """One :class:`RunResult` per run, read back from its run directory."""
    from corecompress.tools.compare_report import RunResult, flatten_metrics

    results = []
    for run in runs:
        state, error = run_state(run.run_dir)
        if state == "running":
            state = "interrupted"
        metrics: dict[str, float] = {}
        if state == "complete":
            try:
                metrics = flatten_metrics(json.loads((run.run_dir / "metrics.json").read_text()))
            except (OSError, ValueError) as exc:
                state, error = "unreadable", f"metrics.json: {exc}"
        prune = getattr(run.recipe, "prune", None)
        results.append(RunResult(run.cell_id, run.assignments, run.seed, run.run_dir, state,
                                 errors.get(run.run_dir, error), None if prune is None else prune.sparsity, metrics))
    return results


def cmd_compare(args: argparse.Namespace) -> int:
    """The ``compare`` subcommand: validate everything, run what is unfinished, write the reports."""
    from corecompress.config.loading import load_for_recipe
    from corecompress.tools.compare_report import write_reports

    if args.force and args.only_report:
        raise UserError("--force and --only-report exclude each other")
    raw, plugins, recipe = load_for_recipe(args.recipe, args.strict)
    out_dir = Path(args.out) if args.out else Path("runs") / f"{recipe.name}-compare"
    runs = plan_runs(raw, recipe, plugins.registry, out_dir)
    if not args.only_report:  # a device or precision this machine lacks: one line, before anything is written
        from corecompress.engine.runner import placement

        for where in sorted({(args.device or run.recipe.device, args.precision or run.recipe.precision)
                             for run in runs}):
            placement(*where)
    if not args.force:
        check_finished_runs_match(runs)
    replacement = prepare_directory(out_dir, args.force, args.only_report)
    errors: dict[Path, str] = {}
    if not args.only_report:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_comparison_file(out_dir, args.recipe, recipe, runs)
        except BaseException:
            if replacement is not None:  # the new comparison did not start: the earlier one is back
                replacement.restore()
            raise
        if replacement is not None:
            replacement.keep_new()
        cells = len({r.cell_id for r in runs})
        print(f"comparison '{recipe.name}': {cells} cell(s) x {len(runs) // cells} seed(s) = {len(runs)} run(s) in {out_dir}")
        errors = execute_runs(runs, plugins, quiet=args.quiet, device=args.device, precision=args.precision)
    results = collect_results(runs, errors)
    for line in write_reports(results, out_dir, title=recipe.name, metric=args.metric):
        print(line)
    unfinished = [r for r in results if r.status != "complete"]
    if unfinished:
        states = ", ".join(sorted({r.status for r in unfinished}))
        print(f"{len(unfinished)} of {len(results)} run(s) not complete ({states}); see {out_dir / 'results.md'}",
              file=sys.stderr)
        return 1
    return 0


def add_compare_parser(subparsers: Any) -> None:
    """Add the ``compare`` subcommand to the ``corecompress`` argument parser."""
    p = subparsers.add_parser("compare", help="run a recipe's matrix x seeds and compare the results",
                              description="Run every matrix cell and seed of RECIPE (resumable), then write "
                                          "results.csv, results.md and plots.")
    p.add_argument("recipe")
    p.add_argument("--out", help="comparison directory (default runs/<name>-compare; re-running resumes it)")
    p.add_argument("--force", action="store_true", help="replace an earlier comparison in --out (only a comparison directory or an empty folder) and run everything")
    p.add_argument("--only-report", action="store_true", help="run nothing; rewrite results and plots from the runs")
    p.add_argument("--metric", help="accuracy metric to plot (default: the first '*accuracy*' metric after pruning)")
    p.add_argument("--strict", action="store_true", help="a broken plugin is an error")
    p.add_argument("--quiet", action="store_true", help="no progress lines of the runs on stderr")
    from corecompress.tools.placement_args import add_placement_options

    add_placement_options(p, device_help="auto, cpu, cuda or cuda:N: overrides the recipe's 'device:' for every run",
                          precision_help="auto, fp32, bf16 or fp16: overrides the recipe's 'precision:' for every run")
    p.set_defaults(func=cmd_compare)
