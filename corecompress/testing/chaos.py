"""Chaos runs: kill a run with SIGKILL at chosen points, resume it each time, compare with an
uninterrupted run.

A kill point is an event of a run's timeline: an optimizer step of a phase, the write of one of its
checkpoints (killed after the first file of the checkpoint is written, so a partial temporary folder is
left), or an evaluation stage (killed in its first forward pass). The killed process is a real
``corecompress run`` (or ``torchrun`` of it) in a child with one extra in-process plugin that sends
itself SIGKILL at the event; nothing in corecompress itself knows about chaos. After every kill the
run continues with ``corecompress run --resume``. :func:`compare_runs` then checks the final weights,
plan, metrics (timings excepted) and the training objective's state (e.g. AdaDistill's class centres)
bitwise against the uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corecompress.engine.distributed import ENV_BACKEND

#: The child: ``python CHILD EVENT_JSON corecompress-args...``; under torchrun, every rank runs it.
CHILD = r'''
import json, os, signal, sys
import corecompress.engine.checkpoint as checkpoint
import corecompress.plugin.loading as loading
from corecompress import hookimpl

event = json.loads(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))

def die():
    if rank == event.get("rank", 0):
        os.kill(os.getpid(), signal.SIGKILL)

class Chaos:
    phase = None

    @hookimpl
    def on_stage_start(self, run, stage):
        self.phase = stage
        if event["kind"] == "evaluate" and stage == event["stage"]:
            run.model.register_forward_pre_hook(lambda module, args: die())  # inside the evaluator

    @hookimpl
    def after_optimizer_step(self, run, step, model):
        if event["kind"] == "step" and self.phase == event["phase"] and step + 1 == event["step"]:
            die()

real_save = checkpoint.write_tensors
def save_then_die(tensors, filename, metadata=None):
    real_save(tensors, filename, metadata=metadata)
    filename = str(filename)
    name = f".{event.get('phase')}-step{event.get('step', 0):07d}.tmp"
    if event["kind"] == "checkpoint" and name in filename and filename.endswith("model.safetensors"):
        die()
checkpoint.write_tensors = save_then_die

_load = loading.load_plugins
def load_plugins(**kwargs):
    kwargs["extra"] = list(kwargs.get("extra", ())) + [("chaos", Chaos())]
    return _load(**kwargs)
loading.load_plugins = load_plugins
from corecompress.tools.cli import main
sys.exit(main(sys.argv[2:]))
'''

def chaos_recipe(steps: int = 8, checkpoint_every: int = 3) -> dict[str, Any]:
    """The chaos runs' recipe: a tiny ViT trained with an ArcFace head, L1 physical pruning, then AdaDistill
    from the unpruned teacher (its class centres are part of what must survive), accuracy evaluation."""
    phase = {"steps": steps, "batch_size": 12, "checkpoint_every": checkpoint_every, "log_every": 2}
    return {
        "version": 1, "name": "chaos", "seed": 3, "threads": 1, "deterministic": True,
        "model": {"name": "tiny_vit", "num_outputs": 16},
        "data": {"name": "synthetic_prototypes", "num_classes": 6, "train_per_class": 8},
        "train": {**phase, "lr": 3e-3, "objective": {"name": "arcface", "s": 16}},
        "teacher": {}, "evaluate": ["accuracy"],
        "prune": {"importance": "l1", "targets": ["channels", "neurons"], "sparsity": 0.5, "apply": "physical"},
        "retrain": {**phase, "lr": 1e-3, "objective": {"name": "adadistill", "s": 16}},
    }


PHASE_STAGES = (("train", ("evaluate_before",)), ("retrain", ("evaluate_after",)))


def timeline(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """Every kill point of ``recipe`` in the order a run meets them."""
    events: list[dict[str, Any]] = []
    for phase, evaluations in PHASE_STAGES:
        section = recipe.get(phase)
        if section:
            every = int(section.get("checkpoint_every") or 0)
            for step in range(1, int(section["steps"]) + 1):
                events.append({"kind": "step", "phase": phase, "step": step})
                if step == section["steps"] or (every and step % every == 0):
                    events.append({"kind": "checkpoint", "phase": phase, "step": step})
        if recipe.get("evaluate"):
            stages = evaluations if phase == "retrain" else evaluations + (("evaluate_pruned",)
                                                                           if recipe.get("prune") else ())
            events += [{"kind": "evaluate", "stage": s} for s in stages]
    return events


def choose_kills(recipe: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` distinct kill points in run order: one of each kind first, the rest at random."""
    events = timeline(recipe)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for kind in ("step", "checkpoint", "evaluate"):
        of_kind = [i for i, e in enumerate(events) if e["kind"] == kind]
        if of_kind and len(chosen) < count:
            chosen.add(rng.choice(of_kind))
    rest = [i for i in range(len(events)) if i not in chosen]
    chosen |= set(rng.sample(rest, min(count - len(chosen), len(rest))))
    return [events[i] for i in sorted(chosen)]


@dataclass
class ChaosReport:
    """What a chaos run did: the kill points, how each process ended, and the differences found."""

    kills: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def survived(self) -> int:
        """Kills after which the run still finished identical to the uninterrupted one."""
        return len(self.kills) if not self.differences and self.exit_codes[-1:] == [0] else 0


def _command(work: Path, event: dict[str, Any], args: list[str], ranks: int) -> list[str]:
    child = work / "chaos_child.py"
    child.write_text(CHILD)
    if ranks > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                str(child), json.dumps(event), *args]
    return [sys.executable, str(child), json.dumps(event), *args]


def _environment(ranks: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CORECOMPRESS_SLOW_IMPORT_S": "600"}
    if ranks > 1:
        env[ENV_BACKEND] = "gloo"  # CPU processes, also on a machine with a GPU
    return env


def run_with_kills(work: Path, recipe: dict[str, Any], kills: list[dict[str, Any]], *, ranks: int = 1,
                   name: str = "killed", timeout: float = 600) -> tuple[Path, list[int]]:
    """Run ``recipe`` into ``work/name``, killed at each of ``kills`` in turn (resuming after each),
    then resumed to the end. Returns the run directory and every process's exit code."""
    work = Path(work).resolve()
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = work / name
    codes: list[int] = []
    for attempt, event in enumerate([*kills, {"kind": "none"}]):
        args = ["run", str(path), "--out", str(out)] if attempt == 0 else ["run", "--resume", str(out)]
        done = subprocess.run(_command(work, {**event, "rank": event.get("rank", 0)}, args, ranks), cwd=work,
                              env=_environment(ranks), capture_output=True, text=True, timeout=timeout)
        codes.append(done.returncode)
        if event["kind"] == "none" and done.returncode != 0:
            raise RuntimeError(f"the final resume failed ({done.returncode}): {done.stderr[-2000:]}")
        if event["kind"] != "none" and done.returncode == 0:
            raise RuntimeError(f"kill point {event} was never reached; the run finished")
    return out, codes


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not str(k).endswith("seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def compare_runs(a: Path, b: Path) -> list[str]:
    """Differences between two finished run directories: weights, plan, metrics (without timings),
    and every tensor of the final checkpoint of each phase (objective state such as AdaDistill's centres)."""
    import torch
    from safetensors.torch import load_file

    found: list[str] = []

    def tensors(path: Path) -> dict[str, Any]:
        return load_file(str(path)) if path.is_file() else {}

    def same_tensors(x: Path, y: Path, label: str) -> None:
        tx, ty = tensors(x), tensors(y)
        if tx.keys() != ty.keys():
            found.append(f"{label}: different tensors ({sorted(set(tx) ^ set(ty))[:3]})")
        found.extend(f"{label}: {k} differs" for k in sorted(tx) if k in ty and not torch.equal(tx[k], ty[k]))

    same_tensors(a / "model.safetensors", b / "model.safetensors", "model.safetensors")
    for name in ("plan.json", "metrics.json"):
        ja, jb = (json.loads((d / name).read_text()) if (d / name).is_file() else None for d in (a, b))
        if _without_timings(ja) != _without_timings(jb):
            found.append(f"{name} differs")
    finals = sorted({p.name for p in (a / "checkpoints").glob("*-step*")} if (a / "checkpoints").is_dir() else set())
    for phase in {n.split("-step")[0] for n in finals}:
        last = max(n for n in finals if n.startswith(f"{phase}-step"))
        for part in sorted(p.name for p in (a / "checkpoints" / last).glob("*.safetensors")):
            same_tensors(a / "checkpoints" / last / part, b / "checkpoints" / last / part, f"{last}/{part}")
    return found


def chaos(work: Path, recipe: dict[str, Any], kills: int, seed: int = 0, *, ranks: int = 1) -> ChaosReport:
    """An uninterrupted run and one killed at ``kills`` random points, resumed after each; compared."""
    work = Path(work).resolve()  # children run with work as their folder
    work.mkdir(parents=True, exist_ok=True)
    reference, _codes = run_with_kills(work, recipe, [], ranks=ranks, name="reference")
    # steps run on every rank (the kill alternates between them); only rank 0 writes and evaluates
    points = [{**e, "rank": i % ranks if e["kind"] == "step" else 0} for i, e in enumerate(choose_kills(recipe, kills, seed))]
    killed, codes = run_with_kills(work, recipe, points, ranks=ranks, name="killed")
    return ChaosReport(points, codes, compare_runs(reference, killed))
