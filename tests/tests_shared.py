"""Locating ../shared/data for tests that need real files (skip with a clear message when absent), a CLI
child interrupted at a checkpoint, placeholder inputs, and deterministic faulty losses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

SHARED_DATA = Path(os.environ.get("CORECOMPRESS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data missing: {path} (set CORECOMPRESS_SHARED_DATA)")
    return path


# Runs the real CLI in a child process with one extra in-process plugin that sleeps after every
# optimizer step, so a test can see a checkpoint appear and interrupt the child mid-training.
SLOW_CLI = """
import sys, time
import corecompress.plugin.loading as plugins
from corecompress import hookimpl

class SlowSteps:
    @hookimpl
    def after_optimizer_step(self, run, step, model):
        time.sleep(float(sys.argv[1]))

_load = plugins.load_plugins
def load_plugins(**kwargs):
    kwargs["extra"] = list(kwargs.get("extra", ())) + [("slow_steps", SlowSteps())]
    return _load(**kwargs)
plugins.load_plugins = load_plugins
from corecompress.tools.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_until_checkpoint(tmp_path: Path, recipe: Path, out: Path, phase: str, sig: int,
                         delay: float = 0.05) -> subprocess.CompletedProcess:
    """Start ``corecompress run`` in a child; send ``sig`` once a ``phase`` checkpoint directory exists."""
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    env = {**os.environ, "CORECOMPRESS_SLOW_IMPORT_S": "600"}  # no slow-import note on a busy machine
    child = subprocess.Popen([sys.executable, str(script), str(delay), "run", str(recipe), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    try:
        while child.poll() is None and time.monotonic() < deadline:
            folder = out / "checkpoints"
            if folder.is_dir() and any(p.name.startswith(f"{phase}-step") for p in folder.iterdir()):
                child.send_signal(sig)
                break
            time.sleep(0.005)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def with_placeholder_inputs(node: Any, tmp_path: Path) -> Any:
    """``node`` (a recipe) with its input paths made to exist: ``/data/...`` (real-size data and weights) and
    ``runs/...`` (another run's outputs) as empty placeholders under ``tmp_path``, ``../shared/data/...``
    as the shared data (skipping the test, saying so, where it is absent)."""
    if isinstance(node, dict):
        return {k: with_placeholder_inputs(v, tmp_path) for k, v in node.items()}
    if isinstance(node, list):
        return [with_placeholder_inputs(v, tmp_path) for v in node]
    if isinstance(node, str) and node.startswith("../shared/data/"):
        return str(shared_file(node[len("../shared/data/"):]))
    if isinstance(node, str) and (node.startswith("/data/") or node.startswith("runs/")):
        target = tmp_path / "inputs" / node.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(node).suffix:
            target.write_bytes(b"")
        else:
            target.mkdir(exist_ok=True)
        return str(target)
    return node


def fake_distribution(root: Path, dist: str, plugins: dict[str, str]) -> None:
    """Install a distribution into ``root`` (on sys.path): modules + dist-info with entry points.

    ``plugins`` maps entry-point name → module source.
    """
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[corecompress]"]
    for ep_name, source in plugins.items():
        module = f"{dist.replace('-', '_')}_{ep_name}"
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        lines.append(f"{ep_name} = {module}")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


#: A third-party plugin whose importance takes the built-in name ``l1`` (a name conflict).
CLASHING_L1 = """
import torch
from corecompress import hookimpl

class Ones:
    def score(self, model, groups, ctx):
        return {g.name: torch.ones(g.size) for g in groups}

@hookimpl
def register_importances(register):
    register("l1", Ones)
"""
# Deterministic faults for training tests: cross-entropy, changed at chosen calls of the objective.


@dataclass
class AtCallsOptions:
    steps: list[int] = field(default_factory=list)  # 1-based calls of the objective to change


class LossAtCalls(torch.nn.Module):
    """Cross-entropy; at the listed calls ``perturb(loss, outputs)`` instead (subclasses say how)."""

    def __init__(self, options: AtCallsOptions) -> None:
        super().__init__()
        self.options, self.calls = options, 0

    def setup(self, context: Any) -> None:
        self.calls = 0

    @staticmethod
    def perturb(loss: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        return loss

    def forward(self, outputs: torch.Tensor, batch: dict, teacher_outputs: Any = None) -> dict:
        self.calls += 1
        loss = F.cross_entropy(outputs.float(), batch["label"])
        return {"loss": self.perturb(loss, outputs) if self.calls in self.options.steps else loss}


class NanAt(LossAtCalls):
    """NaN at the listed calls: a deterministic non-finite loss."""

    @staticmethod
    def perturb(loss: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        return loss * float("nan")
