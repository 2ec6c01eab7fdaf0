"""Benchmark scripts reject bad arguments as argparse errors (usage + one error line, exit 2), never tracebacks.

Each case runs ``python benchmarks/<script> ARGS`` in a subprocess (the scripts import torch, so a few
seconds each); the helpers of ``benchmarks/cli_args.py`` are also checked in-process.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"

# (script, bad arguments, text the error must name): one case per script
BAD = [
    ("adadistill_cost.py", ["--classes", "1"], "--classes"),
    ("chaos.py", ["--kills", "-1"], "--kills"),
    ("data_pipeline.py", ["--workers", "0,-1"], "--workers"),
    ("ddp_throughput.py", ["--nproc", "1"], "--nproc"),
    ("distill_table.py", [str(REPO / "no-such-comparison")], "no-such-comparison"),
    ("dlib_oneshot.py", ["--sparsities", "0.2,1.0"], "--sparsities"),
    ("face_models.py", ["--threads", "0"], "--threads"),
    ("faces_size_speed.py", ["--batch", "0"], "--batch"),
    ("fused_norm_gather.py", ["--presets", "foo"], "--presets"),
    ("gpu_check.py", ["--sections", "a,e"], "--sections"),
    ("latency_budget.py", ["--budgets", "0.5,1.5"], "--budgets"),
    ("partial_fc.py", ["--steps", "0"], "--steps"),
    ("pruning_sweep.py", ["--only", "az"], "--only"),
    ("resume_overhead.py", ["--crash-at", "5"], "--crash-at"),
    ("structured_speed.py", ["--repeats", "6"], "--repeats"),
    ("synthetic_difficulty.py", ["--difficulty", "-1"], "--difficulty"),
    ("timm_coverage.py", ["--only", "resnet18,no_such_net"], "--only"),
    ("training_overhead.py", ["--steps", "many"], "--steps"),
    ("verify_cost.py", ["--threads", "0"], "--threads"),
    ("training_overhead.py", ["--variants", "eager,fast"], "--variants"),
]
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "cli_args.py")


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/<script> ARGS`` from the repository root, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)


def test_every_script_has_a_bad_argument_case() -> None:
    assert sorted({script for script, _args, _named in BAD}) == SCRIPTS


@pytest.mark.parametrize(("script", "args", "named"), BAD, ids=[f"{s}:{' '.join(a)}" for s, a, _n in BAD])
def test_bad_argument_is_an_argparse_error(script: str, args: list[str], named: str) -> None:
    done = run_script(script, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "usage:" in done.stderr and "error:" in done.stderr, done.stderr
    error = done.stderr.split("error:", 1)[1]
    assert named in error, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_zero(script: str) -> None:
    done = run_script(script, "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


@pytest.fixture(scope="module")
def cli_args() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_args", BENCHMARKS / "cli_args.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_helpers_accept_good_values(cli_args: ModuleType) -> None:
    from corecompress.tools.measure import MIN_REPEATS

    assert cli_args.count(1)("3") == 3
    assert cli_args.count(5, 19)("19") == 19
    assert cli_args.repeats(str(MIN_REPEATS)) == MIN_REPEATS
    assert cli_args.fraction("1") == 1.0
    assert cli_args.number(0.0)("0") == 0.0
    assert cli_args.float_list(0.0, 1.0, high_open=True)("0, 0.5") == [0.0, 0.5]
    assert cli_args.name_list({"l1", "faces"})("faces,l1") == ["faces", "l1"]
    assert cli_args.letters("abc")("cac") == ["c", "a"]
    assert cli_args.data_folder("tests")(str(REPO)) == REPO


@pytest.mark.parametrize(("helper", "text", "message"), [
    (lambda m: m.count(1), "0", ">= 1"),
    (lambda m: m.count(1), "1.5", "integer"),
    (lambda m: m.count(5, 19), "20", "between 5 and 19"),
    (lambda m: m.repeats, "6", ">= "),
    (lambda m: m.fraction, "0", "(0, 1]"),
    (lambda m: m.fraction, "nan", "finite"),
    (lambda m: m.float_list(0.0, 1.0, high_open=True), "0.1,,0.2", "comma-separated"),
    (lambda m: m.float_list(0.0, 1.0, high_open=True), "0.1,1", "not: 1"),
    (lambda m: m.name_list({"l1", "faces"}), "l1,l9", "unknown l9"),
    (lambda m: m.letters("abc"), "", "got none"),
    (lambda m: m.letters("abc"), "abz", "'z'"),
    (lambda m: m.directory, str(REPO / "no-such-folder"), "missing"),
    (lambda m: m.data_folder("no-such-entry"), str(REPO), "lacks no-such-entry"),
])
def test_helpers_reject_bad_values(cli_args: ModuleType, helper: Callable[[ModuleType], Callable[[str], object]],
                                   text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        helper(cli_args)(text)
    assert message in str(caught.value)
