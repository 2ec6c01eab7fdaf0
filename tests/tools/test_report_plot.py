"""The run report's picture (report.png where matplotlib is installed, one plain line where not) and
``nan`` metrics shown with their reason."""
from __future__ import annotations

import math
import sys
import types
from pathlib import Path

from corecompress_builtin.report_plot import NO_MATPLOTLIB, PLOT_FILE, draw_summary
from corecompress_builtin.reporters import MarkdownReporter, metrics_table

METRICS = {
    "before": {"verification/synthetic_accuracy": 86.0, "verification/synthetic_tar@far0.001": 40.0,
               "efficiency/images_per_s_b32": 200.0},
    "pruned": {"verification/synthetic_accuracy": 70.0, "verification/synthetic_tar@far0.001": math.nan,
               "efficiency/speedup_vs_dense_b32": 1.6},
    "after": {"verification/synthetic_accuracy": 85.0, "verification/synthetic_tar@far0.001": math.nan,
              "efficiency/speedup_vs_dense_b32": 1.55},
    "budget": {"metric": "latency", "requested": 0.6, "achieved": 0.598, "tolerance": 0.02, "allocation": "uniform",
               "predicted_speedup": 1.67, "batch_size": 32, "threads": 2, "device": "cpu"},
}


def test_the_plot_is_written_beside_the_report(tmp_path):
    line = draw_summary(METRICS, tmp_path, 32)
    assert line == f"![accuracy and speed before / pruned / after]({PLOT_FILE})"
    assert (tmp_path / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_report_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert draw_summary(METRICS, tmp_path, 32) == NO_MATPLOTLIB
    assert not (tmp_path / PLOT_FILE).exists()


def test_nan_is_shown_with_its_reason_never_bare():
    table = "\n".join(metrics_table({k: METRICS[k] for k in ("before", "pruned", "after")}))
    assert "n/a (too few impostor pairs for FAR 0.001)" in table
    assert "nan" not in table.replace("n/a", "")


def test_the_report_shows_budget_predicted_and_measured_speed(tmp_path):
    prune = types.SimpleNamespace(importance=types.SimpleNamespace(name="faces"), scope="local", targets=["heads"],
                                  apply=types.SimpleNamespace(name="physical"), sparsity=None,
                                  budget=types.SimpleNamespace(metric="latency", fraction=0.6))
    recipe = types.SimpleNamespace(name="r", description="", model=types.SimpleNamespace(name="swinface"),
                                   data=types.SimpleNamespace(name="synthetic_faces"), seed=0, prune=prune, compile=False,
                                   channels_last=False)
    run = types.SimpleNamespace(recipe=recipe, metrics=METRICS, out_dir=Path(tmp_path), plan=None, timings={},
                                device="cpu", precision="fp32",
                                hook=types.SimpleNamespace(report_sections=lambda run: []))
    MarkdownReporter().write(run)
    text = (tmp_path / "report.md").read_text()
    assert "to a latency budget of 0.6" in text
    assert "latency 0.6 of the dense model requested, 0.598 achieved" in text
    assert "predicted speed-up 1.67× at batch 32" in text and "measured 1.55× (after" in text
    assert f"]({PLOT_FILE})" in text and (tmp_path / PLOT_FILE).is_file()
