"""Export and reload: a pruned model = base architecture + pruning plan (JSON) + weights (safetensors).

``load_exported(path)`` rebuilds the model from ``architecture.json`` (or the same description in an
exported ``.safetensors`` file's metadata) through the registered model adapter, re-applies a
physical plan and loads the weights — no recipe, no pickle. User-supplied ``.pt`` weights are read
with ``torch.load(weights_only=True)``: a pickle that would call code is refused, never executed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from corecompress.weights import write_tensors

from corecompress.errors import UserError
from corecompress.engine.rundir import write_json
from corecompress.weights import read_weights, unwrap_state_dict

ARCH_FORMAT = "corecompress-model"
ARCH_VERSION = 1


def load_weights_file(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load weights from .safetensors, or a .pt/.pth state dict via ``torch.load(weights_only=True)``."""
    try:
        state = unwrap_state_dict(read_weights(path))
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state dict")
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        missing = ", ".join(result.missing_keys[:3])
        unexpected = ", ".join(result.unexpected_keys[:3])
        raise UserError(f"{path}: weights do not fit the model (missing: {missing or '-'}; unexpected: {unexpected or '-'})")


ARCH_METADATA_KEY = "corecompress.architecture"


def architecture_of(ctx: Any) -> dict[str, Any]:
    """What :func:`load_exported` needs to rebuild the model: adapter + options, plan, how it was applied."""
    p = ctx.recipe.prune
    return {"format": ARCH_FORMAT, "version": ARCH_VERSION,
            "model": ctx.recipe.model.to_dict(),
            "plan": ctx.plan.to_dict() if ctx.plan is not None else None,
            "applied": p.apply.name if p is not None else None,
            "targets": list(p.targets) if p is not None else [],
            "input_size": list(ctx.model_spec.input_size)}


def save_weights(model: torch.nn.Module, path: Path, arch: dict[str, Any] | None) -> Path:
    """The model's state as safetensors; ``arch`` goes into the file's metadata, so the one file reloads."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {ARCH_METADATA_KEY: json.dumps(arch)} if arch is not None else None
    write_tensors(tensors, path, metadata=metadata)
    return path


def export_run(ctx: Any, formats: list[str]) -> dict[str, str]:
    out = ctx.out_dir
    arch = architecture_of(ctx)
    save_weights(ctx.model, out / "model.safetensors", arch)
    write_json(out / "architecture.json", arch)
    written = {"safetensors": str(out / "model.safetensors")}
    if "onnx" in formats:
        from corecompress.tools.onnx_export import export_onnx, onnx_relative_error

        path = export_onnx(ctx.model, ctx.model_spec.input_size, out / "model.onnx")
        written["onnx"] = str(path)
        error = onnx_relative_error(ctx.model, path, tuple(ctx.model_spec.input_size))
        if error is not None:  # checked against PyTorch where onnxruntime is installed
            ctx.metrics.setdefault("export", {})["onnx_max_relative_error"] = error
    return written


def read_architecture(path: str | Path) -> tuple[dict[str, Any], Path]:
    """(architecture, weights file) of a run directory, its ``architecture.json``, or an exported
    ``.safetensors`` carrying the architecture in its metadata."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        arch_file, weights = p / "architecture.json", p / "model.safetensors"
        if not arch_file.is_file() or not weights.is_file():
            raise UserError(f"{path}: no exported model (architecture.json + model.safetensors); the run did not "
                            f"finish (resume it: corecompress run --resume {path}) or its recipe has 'export: null'")
    elif p.is_file() and p.suffix == ".json":
        arch_file, weights = p, p.parent / "model.safetensors"
    elif p.is_file() and p.suffix == ".safetensors":
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = (fh.metadata() or {}).get(ARCH_METADATA_KEY)
        except Exception as exc:  # noqa: BLE001 - unreadable file: the user's to fix
            raise UserError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
        if meta is None:
            raise UserError(f"{path}: carries no corecompress architecture; pass the run directory instead")
        return _check_arch(_parse_json(meta, p), p), p
    elif not p.exists():
        raise UserError(f"{path}: no such file or directory")
    else:
        raise UserError(f"{path}: not a corecompress export (expected a run directory, its architecture.json "
                        "or an exported .safetensors file)")
    try:
        text = arch_file.read_text()
    except OSError as exc:
        raise UserError(f"{arch_file}: cannot read ({exc.strerror})") from None
    return _check_arch(_parse_json(text, arch_file), arch_file), weights


def _parse_json(text: str, where: Path) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UserError(f"{where}: architecture is not valid JSON ({exc})") from None


def _check_arch(arch: Any, where: Path) -> dict[str, Any]:
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT or arch.get("version") != ARCH_VERSION \
            or not isinstance(arch.get("model"), dict) or "name" not in arch["model"]:
        raise UserError(f"{where}: not a corecompress model description")
    return arch


def build_architecture(arch: dict[str, Any], where: str | Path = "architecture") -> tuple[Any, torch.nn.Module]:
    """(adapter, model) rebuilt from an architecture description: build, then re-apply a physical plan
    (firing ``after_physical_prune`` with ``run=None``). Masked runs stay dense: their weights carry the zeros."""
    from corecompress.plugin.loading import load_plugins
    from corecompress.pruning.physical import apply_physical
    from corecompress.pruning.plan import PruningPlan

    plugins = load_plugins()
    chosen = arch["model"]
    comp = plugins.registry.get("model", chosen["name"], "model.name")
    spec = comp.create(comp.parse(chosen, "model"))
    model = spec.build()
    if arch.get("plan") and arch.get("applied") == "physical":
        try:
            plan = PruningPlan.from_dict(arch["plan"])
            apply_physical(model, spec.prunable_groups(model, tuple(arch.get("targets", []))), plan)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{where}: the pruning plan does not fit model '{chosen['name']}' "
                            f"({str(exc).splitlines()[0][:200]})") from None
        plugins.hook.after_physical_prune(run=None, model=model, plan=plan)
    return spec, model


def load_exported(path: str | Path, map_location: str = "cpu", weights: str | Path | None = None) -> torch.nn.Module:
    """Rebuild an exported model from a run directory, its architecture.json or an exported .safetensors.

    ``weights`` replaces the exported weights (safetensors, or a state dict read with
    ``torch.load(weights_only=True)`` — a pickle that would run code is refused).
    """
    arch, weights_file = read_architecture(path)
    _spec, model = build_architecture(arch, path)
    load_weights_file(model, weights if weights is not None else weights_file)
    return model.to(map_location).eval()


def export_model(run_dir: str | Path, fmt: str, out: str | Path | None = None,
                 device: str | None = None, precision: str | None = None) -> tuple[Path, float | None]:
    """``corecompress export``: write the run's model as ``fmt`` (safetensors | onnx) to ``out``.

    ``device`` (``auto | cpu | cuda | cuda:N``, default cpu): where the model is loaded, traced and
    checked; a device this machine lacks is a one-line error before anything is read.
    ``precision`` (default fp32; ``auto`` is fp32 too): the number format of the written weights —
    bf16 or fp16 halve a safetensors file (it reloads into a float32 model); ONNX is written in fp32.
    Returns (file, relative error of onnxruntime against PyTorch — None for safetensors or without onnxruntime).
    """
    from corecompress.engine.devices import resolve_device

    where = resolve_device(device or "cpu")
    dtype = _export_dtype(precision, fmt)
    arch, weights_file = read_architecture(run_dir)
    default = Path(run_dir) if Path(run_dir).is_dir() else weights_file.parent
    spec, model = build_architecture(arch, run_dir)
    load_weights_file(model, weights_file)
    model.to(where).eval()
    if fmt == "safetensors":
        model.to(dtype)
        target = Path(out) if out else default / "model.safetensors"
        _check_target(target)
        return save_weights(model, target, arch), None
    if fmt == "onnx":
        from corecompress.tools.onnx_export import export_onnx, onnx_relative_error

        target = Path(out) if out else default / "model.onnx"
        _check_target(target)
        input_size = tuple(arch.get("input_size") or spec.input_size)
        export_onnx(model, input_size, target)
        return target, onnx_relative_error(model, target, input_size)
    raise UserError(f"--format: unknown format '{fmt}' (safetensors, onnx)")


def _export_dtype(precision: str | None, fmt: str) -> torch.dtype:
    """The dtype of an export's floating weights for ``--precision`` (one line for a bad value)."""
    from corecompress.engine.precision import check_precision_setting

    try:
        setting = check_precision_setting(precision or "fp32")
    except ValueError as exc:
        raise UserError(f"--precision: {exc}") from None
    if setting in ("auto", "fp32"):
        return torch.float32
    if fmt != "safetensors":
        raise UserError(f"--precision {setting}: only safetensors exports are written in {setting}; ONNX is "
                        "written in fp32 (omit --precision)")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise UserError(f"{target}: is a directory; --out names the file to write")
    if not target.parent.is_dir():
        raise UserError(f"{target.parent}: no such directory")
