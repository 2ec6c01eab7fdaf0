"""`corecompress compare`: matrix × seeds runs, resuming, results.csv/.md/plots, failures, plugins."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corecompress.tools.compare import cell_id
from corecompress.tools.compare_report import format_mean_std

REPO = Path(__file__).resolve().parents[2]


def _tiny_recipe(path: Path, matrix: dict, seeds: list[int] | None = None, **changes) -> Path:
    """Seconds-long runs: tiny ViT, 4 images per class, 2 training and 1 retraining step."""
    recipe = {"version": 1, "name": "tiny", "threads": 1,
              "model": "tiny_vit", "data": {"name": "synthetic_prototypes", "train_per_class": 4, "test_per_class": 4},
              "train": {"steps": 2, "batch_size": 8},
              "evaluate": ["accuracy", {"name": "efficiency", "batch_sizes": [8]}],
              "prune": {"importance": "l1", "sparsity": 0.5, "targets": ["heads", "neurons"]},
              "retrain": {"steps": 1, "batch_size": 8},
              "matrix": matrix}
    if seeds is not None:
        recipe["seeds"] = seeds
    recipe.update(changes)
    path.write_text(yaml.safe_dump(recipe))
    return path


def _main(*args) -> tuple[int, str, str]:
    from corecompress.tools.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _table(out: Path) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in (out / "results.md").read_text().splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / "cells").glob("*/*/metrics.json"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One comparison (2 sparsities × 2 seeds = 4 runs), shared read-only; tests that change it copy it."""
    base = tmp_path_factory.mktemp("compare")
    recipe = _tiny_recipe(base / "tiny.yaml", {"prune.sparsity": [0.3, 0.5]}, seeds=[0, 1])
    out = base / "cmp"
    code, stdout, stderr = _main("compare", recipe, "--out", out)
    return {"recipe": recipe, "out": out, "code": code, "stdout": stdout, "stderr": stderr}


def test_every_cell_and_seed_runs_once_into_its_own_run_directory(finished):
    out = finished["out"]
    assert finished["code"] == 0, finished["stderr"]
    assert "[4/4] sparsity-0.5 seed 1 ... done in" in finished["stdout"]
    run_dirs = sorted(p.relative_to(out).as_posix() for p in (out / "cells").glob("*/seed-*"))
    assert run_dirs == ["cells/sparsity-0.3/seed-0", "cells/sparsity-0.3/seed-1",
                        "cells/sparsity-0.5/seed-0", "cells/sparsity-0.5/seed-1"]
    for run in run_dirs:
        assert json.loads((out / run / "status.json").read_text())["state"] == "complete"
        resolved = json.loads((out / run / "recipe.resolved.json").read_text())
        assert resolved["seed"] == int(run[-1]) and resolved["seeds"] == [] and resolved["matrix"] == {}
        assert resolved["prune"]["sparsity"] == float(run.split("/")[1].split("-")[1])
    info = json.loads((out / "comparison.json").read_text())
    assert info["matrix"] == {"prune.sparsity": [0.3, 0.5]} and info["seeds"] == [0, 1]
    assert [c["id"] for c in info["cells"]] == ["sparsity-0.3", "sparsity-0.5"]


def test_results_csv_has_a_row_per_run_with_flattened_metrics(finished):
    out = finished["out"]
    rows = _rows(out)
    assert len(rows) == 4
    assert [(r["prune.sparsity"], r["seed"], r["status"]) for r in rows] == [
        ("0.3", "0", "complete"), ("0.3", "1", "complete"), ("0.5", "0", "complete"), ("0.5", "1", "complete")]
    columns = list(rows[0])
    assert columns[:5] == ["cell", "prune.sparsity", "seed", "status", "before/accuracy/test_accuracy"]
    for key in ("after/accuracy/test_accuracy", "after/efficiency/macs", "after/efficiency/images_per_s_b8",
                "train_seconds", "retrain_seconds"):
        assert key in columns
    for row in rows:  # every number is the run's own metrics.json value
        metrics = json.loads((out / row["run_dir"] / "metrics.json").read_text())
        for phase in ("before", "after"):
            for name, value in metrics[phase].items():
                assert float(row[f"{phase}/{name}"]) == value
        assert float(row["retrain_seconds"]) == metrics["retrain"]["seconds"]
    assert float(rows[0]["after/efficiency/params"]) > float(rows[2]["after/efficiency/params"])  # 0.3 keeps more


def _parse(entry: str) -> tuple[float, float, int]:
    """'12.50 ± 1.25' → (12.5, 1.25, decimals); '3.00 ±0 (n=1)' → (3.0, 0.0, decimals); a timing on a busy
    machine may carry '(noisy: CV 85 %)'."""
    match = re.fullmatch(r"(-?[\d.]+) ±\s?([\d.]+)( \(n=1\))?( \(noisy: CV \d+ %\))?", entry)
    assert match, entry
    decimals = len(match.group(1).split(".")[1]) if "." in match.group(1) else 0
    return float(match.group(1)), float(match.group(2)), decimals


def test_results_md_shows_mean_and_sample_std_recomputed_from_the_csv(finished):
    out = finished["out"]
    rows = _rows(out)
    header, body = _table(out)
    assert header[:2] == ["sparsity", "n"]
    wanted = {"test_accuracy (after)": ("after/accuracy/test_accuracy", 1.0),
              "test_accuracy (before)": ("before/accuracy/test_accuracy", 1.0),
              "params (M)": ("after/efficiency/params", 1e6), "macs (M)": ("after/efficiency/macs", 1e6),
              "images_per_s_b8": ("after/efficiency/images_per_s_b8", 1.0)}
    assert set(wanted) <= set(header)
    assert "sample standard deviation (n − 1" in (out / "results.md").read_text()
    assert [line[:2] for line in body] == [["0.3", "2"], ["0.5", "2"]]
    for line in body:
        cell = [r for r in rows if r["prune.sparsity"] == line[0]]
        for title, (column, scale) in wanted.items():
            values = [float(r[column]) / scale for r in cell]
            mean, std, decimals = _parse(line[header.index(title)])
            tolerance = 0.51 * 10 ** -decimals
            assert mean == pytest.approx(statistics.mean(values), abs=tolerance), title
            assert std == pytest.approx(statistics.stdev(values), abs=tolerance), title
    assert body[0][header.index("test_accuracy (after)")].count(".") == 2  # "xx.yy ± z.ww": two decimals
    assert len(body[0][header.index("test_accuracy (after)")].split(" ± ")[0].split(".")[1]) == 2


def test_plots_are_written(finished):
    pytest.importorskip("matplotlib")
    plots = finished["out"] / "plots"
    for name in ("accuracy_vs_sparsity.png", "accuracy_vs_macs.png", "accuracy_vs_throughput.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert "plots:" in finished["stdout"]


def test_rerun_skips_complete_runs_and_reruns_failed_or_interrupted_ones(finished, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(finished["out"], out)
    before = _mtimes(out)
    code, stdout, stderr = _main("compare", finished["recipe"], "--out", out)
    assert code == 0, stderr
    assert stdout.count("skipped (complete)") == 4 and "done in" not in stdout
    assert _mtimes(out) == before

    failed = out / "cells" / "sparsity-0.5" / "seed-0"
    (failed / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom"}))
    (failed / "leftover.txt").write_text("from the failed attempt")
    interrupted = out / "cells" / "sparsity-0.3" / "seed-1"
    (interrupted / "status.json").write_text(json.dumps({"state": "running"}))
    code, stdout, stderr = _main("compare", finished["recipe"], "--out", out)
    assert code == 0, stderr
    assert "[2/4] sparsity-0.3 seed 1 ... done in" in stdout and "[3/4] sparsity-0.5 seed 0 ... done in" in stdout
    assert stdout.count("skipped (complete)") == 2
    assert not (failed / "leftover.txt").exists()
    assert json.loads((failed / "status.json").read_text())["state"] == "complete"
    after = _mtimes(out)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {"cells/sparsity-0.3/seed-1/metrics.json", "cells/sparsity-0.5/seed-0/metrics.json"}


def test_only_report_rewrites_results_without_running(finished, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(finished["out"], out)
    (out / "results.md").unlink()
    before = _mtimes(out)
    code, stdout, stderr = _main("compare", finished["recipe"], "--out", out, "--only-report")
    assert code == 0, stderr
    assert "[1/4]" not in stdout and _mtimes(out) == before
    assert (out / "results.md").read_text() == (finished["out"] / "results.md").read_text()


def test_missing_matplotlib_writes_everything_else_and_says_how_to_get_it(finished, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    shutil.copytree(finished["out"], out, ignore=shutil.ignore_patterns("plots", "results.*"))
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import matplotlib` raise ImportError
    code, stdout, stderr = _main("compare", finished["recipe"], "--out", out, "--only-report")
    assert code == 0, stderr
    notes = [ln for ln in stdout.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "pip install 'corecompress[plots]'" in notes[0]
    assert len(_rows(out)) == 4 and (out / "results.md").is_file() and not (out / "plots").exists()


def test_a_changed_recipe_does_not_reuse_finished_runs(finished, tmp_path):
    out = tmp_path / "cmp"
    shutil.copytree(finished["out"], out)
    recipe = yaml.safe_load(finished["recipe"].read_text())
    recipe["retrain"]["steps"] = 3
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(recipe))
    before = _mtimes(out)
    code, stdout, stderr = _main("compare", changed, "--out", out)
    assert code == 2 and "different recipe (changed: retrain.steps)" in stderr and "--force" in stderr
    assert len(stderr.strip().splitlines()) == 1 and _mtimes(out) == before


@pytest.mark.parametrize("matrix, message", [
    ({"prune.importance.name": ["l1", "no_such_importance"]}, "no_such_importance"),
    ({"prune.sparsity": [0.3, 1.5]}, "sparsity"),
    ({"prune.sparsity": []}, "matrix.prune.sparsity: expected a non-empty list"),
])
def test_a_bad_matrix_is_exit_2_and_creates_nothing(tmp_path, matrix, message):
    recipe = _tiny_recipe(tmp_path / "bad.yaml", matrix)
    out = tmp_path / "cmp"
    code, stdout, stderr = _main("compare", recipe, "--out", out)
    assert code == 2 and message in stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: ")
    assert not out.exists() and stdout == ""


def test_a_failing_run_is_recorded_and_the_comparison_goes_on(tmp_path):
    # tiny_vit has no convolution filters: that cell fails at runtime, the other one still runs
    recipe = _tiny_recipe(tmp_path / "r.yaml", {"prune.targets": [["filters"], ["heads"]]}, seeds=[0])
    out = tmp_path / "cmp"
    code, stdout, stderr = _main("compare", recipe, "--out", out)
    assert code == 1
    assert "1 of 2 run(s) not complete (failed)" in stderr
    rows = {r["prune.targets"]: r for r in _rows(out)}
    assert rows['["filters"]']["status"] == "failed" and "no prunable groups" in rows['["filters"]']["error"]
    assert rows['["heads"]']["status"] == "complete" and float(rows['["heads"]']["after/accuracy/test_accuracy"]) >= 0
    assert re.search(r"\[1/2\] targets-.* seed 0 \.\.\. failed after [\d.]+ s: UserError: .*no prunable groups", stdout)
    failed_dir = out / rows['["filters"]']["run_dir"]
    assert "no prunable groups" in (failed_dir / "traceback.txt").read_text()
    table = (out / "results.md").read_text()
    assert "## Runs not complete" in table and "0 (1 not complete)" in table


def test_existing_non_comparison_directory_is_refused(tmp_path):
    recipe = _tiny_recipe(tmp_path / "r.yaml", {"prune.sparsity": [0.3]})
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    code, _stdout, stderr = _main("compare", recipe, "--out", out)
    assert code == 2 and "not a comparison directory" in stderr
    assert (out / "precious.txt").read_text() == "keep" and not (out / "cells").exists()


def test_cell_ids_are_readable_stable_and_unique():
    labels = {"prune.importance.name": "importance", "prune.sparsity": "sparsity"}
    assert cell_id({"prune.importance.name": "l1", "prune.sparsity": 0.3}, labels) == "importance-l1_sparsity-0.3"
    assert cell_id({}, {}) == "base"
    # values with characters outside [A-Za-z0-9.+-] get a hash of the assignments, so they stay distinct
    a = cell_id({"prune.importance": {"name": "l1", "normalize": "mean"}}, {"prune.importance": "importance"})
    b = cell_id({"prune.importance": {"name": "l1", "normalize": "max"}}, {"prune.importance": "importance"})
    assert a != b and re.fullmatch(r"importance-[A-Za-z0-9.+-]+-[0-9a-f]{6}", a)
    assert a == cell_id({"prune.importance": {"normalize": "mean", "name": "l1"}}, {"prune.importance": "importance"})
    assert len(cell_id({"k": "x" * 200}, {"k": "k"})) <= 80


def test_a_timing_whose_repeats_vary_is_marked_noisy_not_printed_plain(tmp_path):
    from corecompress.tools.compare_report import RunResult, results_markdown

    def run(seed, rate, cv):
        return RunResult("c", {"prune.sparsity": 0.5}, seed, tmp_path / str(seed), "complete",
                         metrics={"after/efficiency/images_per_s_b1": rate, "after/efficiency/images_per_s_b1_cv": cv,
                                  "after/efficiency/speedup_vs_dense_b1": 0.04,
                                  "after/efficiency/speedup_vs_dense_b1_cv": cv})

    noisy = results_markdown([run(0, 39.0, 0.85), run(1, 41.0, 0.05)], "t")
    header = next(line for line in noisy.splitlines() if line.startswith("| sparsity"))
    assert "_cv" not in header  # the spread marks its column, it is no column of its own
    row = next(line for line in noisy.splitlines() if line.startswith("| 0.5"))
    assert row.count("(noisy: CV 85 %)") == 2 and "40.00 ± 1.41 (noisy: CV 85 %)" in row
    steady = results_markdown([run(0, 8000.0, 0.05), run(1, 8100.0, 0.29)], "t")
    assert "noisy" not in next(line for line in steady.splitlines() if line.startswith("| 0.5"))


def test_mean_std_formatting_uses_the_sample_std():
    # values 1, 2, 4: mean 7/3, sample variance ((4/3)² + (1/3)² + (5/3)²) / 2 = 7/3
    assert format_mean_std([1.0, 2.0, 4.0], "after/accuracy/test_accuracy") == \
        f"2.33 ± {math.sqrt(7 / 3):.2f}"
    assert format_mean_std([5.0], "after/accuracy/test_accuracy") == "5.00 ±0 (n=1)"
    assert format_mean_std([1.5e6, 2.5e6], "after/efficiency/params") == "2.000 ± 0.707"  # millions
    assert format_mean_std([], "after/efficiency/macs") == "—"


def test_a_third_party_pruner_joins_by_being_named_in_the_matrix(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(REPO / "tests" / "example_plugin")],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"installing the example plugin failed: {proc.stderr[-2000:]}")
    recipe = _tiny_recipe(tmp_path / "r.yaml", {"prune.importance.name": ["l1", "example_norm_ratio"]},
                          require=["corecompress-example"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO), str(REPO / "plugins"),
                                                        os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "corecompress", "compare", str(recipe)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "tiny-compare"  # the default, not timestamped
    rows = {r["prune.importance.name"]: r for r in _rows(out)}
    assert set(rows) == {"l1", "example_norm_ratio"} and all(r["status"] == "complete" for r in rows.values())
    plan = json.loads((out / rows["example_norm_ratio"]["run_dir"] / "plan.json").read_text())
    assert plan["meta"]["importance"] == "example_norm_ratio"
    _header, body = _table(out)
    assert [line[0] for line in body] == ["l1", "example_norm_ratio"]
