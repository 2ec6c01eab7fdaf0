"""Training checkpoints: one directory per checkpoint, written to a temporary name and renamed.

Tensors go to safetensors; the optimizer state through ``torch.save`` and back through
``torch.load(weights_only=True)`` (plain tensors and numbers, no pickled classes).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from corecompress.rundir import atomic_write_bytes


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


def save_checkpoint(root: Path, name: str, *, model: torch.nn.Module, objective: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, info: dict[str, Any], keep: int = 2) -> Path:
    """Write ``root/name`` atomically (tmp dir + rename); keep the newest ``keep`` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_tensors(model), str(tmp / "model.safetensors"))
    if objective is not None:
        tensors = _tensors(objective)
        if tensors:
            save_file(tensors, str(tmp / "objective.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_bytes(tmp / "info.json", json.dumps(info, indent=1, default=str).encode())
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    existing = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime)
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_tensors(path: Path, part: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(path / f"{part}.safetensors"))
