"""``benchmarks/gpu_check.py --cpu-smoke``: the GPU check's code paths on tiny shapes on this CPU.

One subprocess run of every section; the printed table and the JSON must hold every section, every
variant and every metric, each a finite number (not only "it ran"); plus the helpers that decide what
cannot be exercised here (device peaks, MFU, the precision keys) and the refusal to overwrite results.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpucheck.device import bf16_peak_tflops, mfu_pct  # noqa: E402
from gpucheck.precision import precision_keys  # noqa: E402
from gpucheck.report import OOM, Row, Section, table, write_json  # noqa: E402

VARIANTS = ["dense", "faces_0.5", "hnc_50pct", "faces_0.5_r8", "hnc_50pct_r8"]


def _gpu_check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)  # 300: a loaded shared machine


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    path = tmp_path_factory.mktemp("gpu-check") / "smoke.json"
    done = _gpu_check("--cpu-smoke", "--json", str(path), "--peak-tflops", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(path.read_text()), done.stdout


def _rows(result: dict, key: str) -> list[dict]:
    section = result["sections"][key]
    assert section["status"] == "ok" and section["seconds"] > 0, section
    return section["rows"]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_every_section_ran_and_every_figure_is_a_finite_number(smoke: tuple[dict, str]) -> None:
    result, _stdout = smoke
    assert list(result["sections"]) == ["a", "b", "c", "d"]
    for key in "abcd":
        rows = _rows(result, key)
        assert rows and all(_finite(row["value"]) for row in rows), rows
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"]
    assert result["settings"]["precision"]["hand_written"] == "fp32"


def test_section_a_has_every_variant_metric_ratio_and_mfu(smoke: tuple[dict, str]) -> None:
    rows = _rows(smoke[0], "a")
    metrics = ["parameters", "MACs per image", "fp32 inference, batch 1", "fp32 inference, batch 4",
               "fp32 inference, batch 8", "fp32 training step, batch 8"]
    cells = {(row["item"], row["metric"]): row for row in rows}
    assert set(cells) == {(v, m) for v in VARIANTS for m in metrics}
    assert all(_finite(row["ratio"]) for row in rows)
    assert all(_finite(row["mfu_pct"]) and row["mfu_pct"] > 0 for row in rows if "images/s" == row["unit"])
    assert all(cells[("dense", m)]["ratio"] == 1.0 for m in metrics)
    for variant in ("hnc_50pct", "hnc_50pct_r8"):  # pruned to at most half the parameters
        assert 0.4 < cells[(variant, "parameters")]["ratio"] <= 0.5
    assert cells[("faces_0.5", "MACs per image")]["ratio"] < 1.0


def test_sections_b_c_d_report_ratios_equivalence_and_the_quickstart(smoke: tuple[dict, str]) -> None:
    result, _stdout = smoke
    distill = {(row["item"], row["metric"]): row for row in _rows(result, "b")}
    for loop in ("framework adadistill", "framework arcface", "hand-written adadistill"):
        assert distill[(loop, "step time")]["value"] > 0 and distill[(loop, "throughput")]["value"] > 0
    assert _finite(distill[("framework adadistill", "step time")]["ratio"])  # vs the ArcFace step
    overhead = distill[("framework overhead", "adadistill step vs hand-written")]
    assert overhead["limit"] == "<= 3 %" and isinstance(overhead["passed"], bool)
    equivalence = _rows(result, "c")
    assert [row["metric"] for row in equivalence] == ["masked vs physical, fp32", "masked vs physical, bf16"]
    assert all(row["passed"] and 0 <= row["value"] <= 2e-2 for row in equivalence)
    quickstart = {row["metric"]: row for row in _rows(result, "d")}
    assert quickstart["corecompress run, wall time"]["value"] > 0
    assert quickstart["status.json state complete"]["passed"]


def test_the_printed_table_has_every_row_and_section_line(smoke: tuple[dict, str]) -> None:
    result, stdout = smoke
    lines = stdout.splitlines()
    for key, section in result["sections"].items():
        assert any(line.startswith(f"({key}) ") and f": {section['status']}, " in line for line in lines)
        for row in section["rows"]:
            assert any(line.split()[:1] == [key] and f"  {row['item']}  " in line and row["metric"] in line
                       for line in lines if line.strip()), row


def test_an_existing_results_file_is_kept_without_force(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text("keep me")
    done = _gpu_check("--cpu-smoke", "--json", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--force" in done.stderr.splitlines()[-1]
    assert path.read_text() == "keep me"


def test_the_full_check_without_a_gpu_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _gpu_check("--sections", "c", "--json", str(tmp_path / "gpu.json"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--cpu-smoke" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "gpu.json").exists()


def test_device_peaks_mfu_and_precision_keys() -> None:
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4  # the SXM part's name
    assert bf16_peak_tflops("NVIDIA H200") == 989.4 and bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA GeForce RTX 4090") is None
    assert mfu_pct(2e9, 1000.0, 1.0) == pytest.approx(200.0) and mfu_pct(2e9, 1000.0, None) is None
    keys, framework = precision_keys("bf16")
    assert (keys, framework) in [({"precision": "bf16"}, "bf16"), ({}, "fp32")]  # with or without the setting
    with pytest.raises(ValueError, match="precision"):
        precision_keys("int8")


def test_an_out_of_memory_figure_and_a_failed_section_are_recorded_not_fatal(tmp_path: Path) -> None:
    done = Section("a", "speed", "ok", 1.5, [Row("dense", "inference, batch 256", OOM, "images/s"),
                                             Row("dense", "inference, batch 1", 12.5, "images/s", ratio=1.0)])
    failed = Section("b", "distill", "OOM", 0.5)
    path = tmp_path / "partial.json"
    write_json(path, {"name": "GPU"}, {}, [done, failed])
    data = json.loads(path.read_text())
    assert data["sections"]["a"]["rows"][0]["value"] == OOM and data["sections"]["b"]["status"] == OOM
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed
    printed = table([done, failed])
    assert "OOM" in printed and "x1.000" in printed and "(b) distill: OOM, 0.5 s" in printed
