"""Section (d): the README's main job, ``recipes/quickstart.yaml``, end to end through ``corecompress run``
in a subprocess on the device (the CPU smoke: the same recipe, shrunk), wall time."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpucheck.context import CheckEnv
from gpucheck.report import Row

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def wrapper_recipe(env: CheckEnv) -> dict[str, Any]:
    """The quickstart (``extends``), with the precision keys and the shapes' shrinking merged over it."""
    return {"extends": str(QUICKSTART), **env.recipe_keys, **env.shapes.quickstart_overrides}


def _verification(metrics: dict[str, Any]) -> float | None:
    """The final model's verification accuracy from ``metrics.json`` (None when absent)."""
    after = metrics.get("after") or {}
    found = [v for k, v in _flat(after) if "verification" in k and "accuracy" in k and isinstance(v, (int, float))]
    return float(found[0]) if found else None


def _flat(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [pair for k, v in tree.items() for pair in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), tree)]


def run(env: CheckEnv) -> tuple[list[Row], list[str]]:
    recipe_path = env.work_dir / "quickstart-check.yaml"
    recipe_path.write_text(json.dumps(wrapper_recipe(env), indent=1))  # JSON is YAML
    out = env.work_dir / "quickstart-run"
    paths = [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    command = [sys.executable, "-m", "corecompress", "run", str(recipe_path), "--out", str(out),
               "--device", str(env.device), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=env.shapes.quickstart_timeout_s)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"corecompress run exited {done.returncode}: {tail}")
    rows = [Row("quickstart", "corecompress run, wall time", wall, "s")]
    complete = json.loads((out / "status.json").read_text()).get("state") == "complete"
    rows.append(Row("quickstart", "status.json state complete", float(complete), "1 = yes", limit="= 1",
                    passed=complete))
    accuracy = _verification(json.loads((out / "metrics.json").read_text()))
    if accuracy is not None and math.isfinite(accuracy):
        rows.append(Row("quickstart", "verification accuracy after", accuracy, "(as metrics.json)"))
    notes = [f"{QUICKSTART.relative_to(REPO)}" + (" shrunk for the CPU smoke" if env.shapes.quickstart_overrides
                                                    else "") + f", --device {env.device}, subprocess incl. start-up"]
    return rows, notes
