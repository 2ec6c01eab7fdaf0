"""Export and reload: a pruned model = base architecture + pruning plan (JSON) + weights (safetensors).

``load_exported(dir)`` rebuilds the model from ``architecture.json`` through the registered model
adapter, re-applies the plan physically and loads the weights — no recipe, no pickle.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from corecompress.errors import UserError
from corecompress.rundir import write_json

ARCH_FORMAT = "corecompress-model"
ARCH_VERSION = 1


def load_weights_file(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load weights from .safetensors, or a .pt/.pth state dict via ``torch.load(weights_only=True)``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state dict")
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        missing = ", ".join(result.missing_keys[:3])
        unexpected = ", ".join(result.unexpected_keys[:3])
        raise UserError(f"{path}: weights do not fit the model (missing: {missing or '-'}; unexpected: {unexpected or '-'})")


def export_run(ctx: Any, formats: list[str]) -> dict[str, str]:
    out = ctx.out_dir
    model = ctx.model
    tensors = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / "model.safetensors"))
    p = ctx.recipe.prune
    arch = {"format": ARCH_FORMAT, "version": ARCH_VERSION,
            "model": ctx.recipe.model.to_dict(),
            "plan": ctx.plan.to_dict() if ctx.plan is not None else None,
            "applied": p.apply.name if p is not None else None,
            "targets": list(p.targets) if p is not None else [],
            "input_size": list(ctx.model_spec.input_size)}
    write_json(out / "architecture.json", arch)
    written = {"safetensors": str(out / "model.safetensors")}
    if "onnx" in formats:
        from corecompress.onnx_export import export_onnx

        written["onnx"] = str(export_onnx(model, ctx.model_spec.input_size, out / "model.onnx"))
    return written


def load_exported(path: str | Path, map_location: str = "cpu") -> torch.nn.Module:
    """Rebuild an exported model from its directory (or its architecture.json)."""
    from corecompress.plugins import load_plugins
    from corecompress.pruning.physical import apply_physical
    from corecompress.pruning.plan import PruningPlan

    root = Path(path)
    arch_file = root / "architecture.json" if root.is_dir() else root
    if not arch_file.is_file():
        raise UserError(f"{path}: no architecture.json (is this an exported run directory?)")
    arch = json.loads(arch_file.read_text())
    if arch.get("format") != ARCH_FORMAT or arch.get("version") != ARCH_VERSION:
        raise UserError(f"{arch_file}: not a corecompress model description")
    registry = load_plugins().registry
    chosen = arch["model"]
    comp = registry.get("model", chosen["name"], "model.name")
    spec = comp.create(comp.parse(chosen, "model"))
    model = spec.build()
    if arch.get("plan") and arch.get("applied") == "physical":
        plan = PruningPlan.from_dict(arch["plan"])
        apply_physical(model, spec.prunable_groups(model, tuple(arch["targets"])), plan)
    load_weights_file(model, arch_file.parent / "model.safetensors")
    return model.to(map_location).eval()
