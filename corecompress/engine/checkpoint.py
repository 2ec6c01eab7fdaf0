"""Training checkpoints: one directory per checkpoint, verified by a manifest, never pickled.

A checkpoint ``<phase>-step<N>`` holds the model (``model.safetensors``), the objective's state
(``objective.safetensors``: margin heads, AdaDistill centres — buffers included), the optimizer and
the random-number generators (tensors in ``*.safetensors``, the rest in ``*.json``; under torchrun
rank 0's as ``rng`` and rank r's as ``rng-rank<r>``), the soft masks if any, fp16's gradient
scaler (``scaler``) if any, ``info.json`` (phase, step, loss history) and ``manifest.json`` (size and
SHA-256 of every file). It is written into a hidden temporary directory, flushed to disk and renamed, so a crash
leaves either the whole checkpoint or none; a truncated or corrupt one fails verification with one
line and :func:`latest_checkpoint` falls back to the previous one. Nothing here calls ``pickle``:
a checkpoint directory cannot execute code when it is loaded. Tensors are written and read on the
CPU whatever device the run computes on, so a run resumes onto another device (``--device``):
``load_state_dict`` moves them to the model's and the optimizer's devices.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from corecompress.errors import UserError
from corecompress.engine.rundir import atomic_write_bytes
from corecompress.weights import write_tensors

CHECKPOINT_FORMAT = "corecompress-checkpoint"
CHECKPOINT_VERSION = 1
MANIFEST = "manifest.json"
SCALER_PART = "scaler"  # fp16's gradient-scaler state (scale, growth tracker)
_NAME = re.compile(r"^(?P<phase>[A-Za-z0-9_]+)-step(?P<step>\d+)$")


class CheckpointError(UserError):
    """A checkpoint that is missing a file, truncated, corrupt or does not fit the model (one line)."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped on resume (damaged); the previous one is used."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions); the previous checkpoints are intact."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(code or errno.EIO, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def checkpoint_name(phase: str, step: int) -> str:
    return f"{phase}-step{step:07d}"


def rank_rng_part(rank: int) -> str:
    """The checkpoint part holding the generator state of rank ``rank`` > 0 of a distributed run."""
    return f"rng-rank{rank}"


# --- nested state (optimizer, RNG) as safetensors + JSON ----------------------------------------

def encode_tree(obj: Any, tensors: dict[str, torch.Tensor], path: str = "t") -> Any:
    """Turn nested dicts/lists/tuples of tensors, arrays and scalars into JSON, moving tensors to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(obj.astype(np.int64) if obj.dtype.kind in "ui" else obj.copy())
        return {"__ndarray__": path, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors, f"{path}.{k}") for k, v in obj.items()}
        return {"__items__": [[encode_tree(k, tensors, f"{path}.k{i}"), encode_tree(v, tensors, f"{path}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path})")


def decode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(obj["dtype"])
    if "__tuple__" in obj:
        return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in obj["__items__"]}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


def rng_state() -> dict[str, Any]:
    """Every global random generator a training step may draw from (Python, NumPy, torch CPU/CUDA)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a run moved to fewer GPUs restores those it has
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


# --- writing ---------------------------------------------------------------------------------

def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()
            if isinstance(v, torch.Tensor)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _save_tree(folder: Path, part: str, obj: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_tree(obj, tensors)
    write_tensors(tensors, folder / f"{part}.safetensors")
    (folder / f"{part}.json").write_text(json.dumps(tree))


def save_checkpoint(root: Path, name: str, *, model: torch.nn.Module, objective: torch.nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, info: dict[str, Any], keep: int = 2,
                    masks: dict[str, torch.Tensor] | None = None, rng: dict[str, Any] | None = None,
                    rank_rngs: list[dict[str, Any]] | None = None, scaler: dict[str, Any] | None = None) -> Path:
    """Write ``root/name`` atomically; keep the newest ``keep`` checkpoints of the same phase.

    ``rank_rngs``: the generator states of ranks 1, 2, … of a distributed run (``rng`` is rank 0's);
    ``scaler``: a gradient scaler's ``state_dict()`` (fp16 training).

    A failed write (e.g. ENOSPC) removes the partial temporary directory and raises
    :class:`CheckpointWriteError`; the checkpoints already there are left untouched.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = root / f".{name}.tmp"
    try:
        for stale in root.glob(".*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        write_tensors(_tensors(model), tmp / "model.safetensors")
        if objective is not None:
            tensors = _tensors(objective)
            if tensors:
                write_tensors(tensors, tmp / "objective.safetensors")
        if optimizer is not None:
            _save_tree(tmp, "optimizer", optimizer.state_dict())
        if rng is not None:
            _save_tree(tmp, "rng", rng)
        for rank, state in enumerate(rank_rngs or [], start=1):
            _save_tree(tmp, rank_rng_part(rank), state)
        if scaler is not None:
            _save_tree(tmp, SCALER_PART, scaler)
        if masks:
            write_tensors({k: v.detach().cpu().contiguous() for k, v in masks.items()}, tmp / "masks.safetensors")
        (tmp / "info.json").write_text(json.dumps(info, indent=1, default=str))
        files = {}
        for f in sorted(tmp.iterdir()):
            _fsync(f)
            files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        atomic_write_bytes(tmp / MANIFEST, json.dumps(
            {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "files": files}, indent=1).encode())
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointWriteError(exc.errno, f"cannot write checkpoint {final}: {reason}; "
                                              "the previous checkpoint is kept") from exc
    _prune_old(root, name, keep)
    return final


def _prune_old(root: Path, name: str, keep: int) -> None:
    match = _NAME.match(name)
    if match is None or keep < 1:
        return
    for old in list_checkpoints(root, match["phase"])[keep:]:
        shutil.rmtree(old, ignore_errors=True)


# --- reading ---------------------------------------------------------------------------------

def list_checkpoints(root: Path, phase: str) -> list[Path]:
    """The checkpoint directories of ``phase`` under ``root``, newest (highest step) first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        match = _NAME.match(p.name)
        if match and match["phase"] == phase and p.is_dir():
            found.append((int(match["step"]), p))
    return [p for _step, p in sorted(found, reverse=True)]


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file against the manifest; return ``info.json``. Raises CheckpointError (one line)."""
    manifest_file = path / MANIFEST
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
        if manifest.get("format") != CHECKPOINT_FORMAT or manifest.get("version") != CHECKPOINT_VERSION:
            raise ValueError("unknown format")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no {MANIFEST} (incomplete write)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable") from None
    for name, expected in files.items():
        f = path / name
        if "/" in name or not f.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        size = f.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"checkpoint {path}: {name} is truncated or damaged "
                                  f"({size} bytes, the manifest says {expected['bytes']})")
        if _sha256(f) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {path}: {name} is corrupt (checksum mismatch)")
    if "info.json" not in files:
        raise CheckpointError(f"checkpoint {path}: info.json is missing")
    return json.loads((path / "info.json").read_text())


@dataclass
class Checkpoint:
    """A verified checkpoint directory; parts are read on demand."""

    path: Path
    info: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.info["step"])

    def has(self, part: str) -> bool:
        return (self.path / f"{part}.safetensors").is_file()

    def tensors(self, part: str) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.path / f"{part}.safetensors"), device="cpu")  # moved by load_state_dict
        except Exception as exc:  # noqa: BLE001 - a damaged file is reported, never executed
            detail = (str(exc).splitlines() or [""])[0][:160]
            raise CheckpointError(f"checkpoint {self.path}: {part}.safetensors is unreadable "
                                  f"({type(exc).__name__}: {detail})") from None

    def tree(self, part: str) -> Any:
        try:
            tree = json.loads((self.path / f"{part}.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.path}: {part}.json is unreadable ({exc})") from None
        return decode_tree(tree, self.tensors(part))

    def fitting_tensors(self, part: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``part.safetensors``, checked to have exactly the keys and shapes of ``module``'s state
        (checked before anything is loaded, so a checkpoint that does not fit changes nothing)."""
        state = self.tensors(part)
        own = {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
        if state.keys() != own.keys():
            missing = sorted(own.keys() - state.keys())[:3]
            extra = sorted(state.keys() - own.keys())[:3]
            raise CheckpointError(f"checkpoint {self.path}: {part}.safetensors does not fit the {part} "
                                  f"(missing: {', '.join(missing) or '-'}; unexpected: {', '.join(extra) or '-'})")
        for key, value in state.items():
            if value.shape != own[key].shape:
                raise CheckpointError(f"checkpoint {self.path}: {part}.safetensors does not fit the {part} "
                                      f"({key}: {tuple(value.shape)} vs {tuple(own[key].shape)})")
        return state


def open_checkpoint(path: Path) -> Checkpoint:
    return Checkpoint(path, verify_checkpoint(path))


def latest_checkpoint(root: Path, phase: str, warn: Callable[[str], None] | None = None,
                      usable: Callable[[Checkpoint], None] | None = None) -> Checkpoint | None:
    """The newest checkpoint of ``phase`` that verifies (and passes ``usable``, which may raise
    CheckpointError); each rejected one is reported through ``warn`` and the previous one is tried."""
    for path in list_checkpoints(root, phase):
        try:
            ckpt = open_checkpoint(path)
            if usable is not None:
                usable(ckpt)
            return ckpt
        except CheckpointError as exc:
            if warn is not None:
                warn(f"{exc}; trying the previous checkpoint")
    return None


def load_checkpoint_tensors(path: Path, part: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(path / f"{part}.safetensors"))
