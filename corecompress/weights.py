"""Reading weights files safely: one reader for every place a user hands corecompress a weights file.

``.safetensors`` through safetensors; anything else through ``torch.load(weights_only=True)``, which
refuses a pickle that would run code or build objects other than tensors. Failures are one-line
:class:`WeightsFileError` messages naming the file.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from corecompress.errors import UserError


class WeightsFileError(UserError, ValueError):
    """A weights file that cannot be read (or is refused)."""


def read_weights(path: str | Path) -> Any:
    """The content of a weights file: a dict of tensors (safetensors), or whatever tensors-only
    structure a torch file holds. Raises FileNotFoundError when ``path`` is not a file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a refusal: bytes that are no valid pickle
            raise WeightsFileError(f"{path}: cannot read weights (not a safetensors file or a tensors-only torch file)") from None
        raise WeightsFileError(f"{path}: refused: a pickle that would run code or build objects other than tensors "
                               "(read with torch.load(weights_only=True)); save the weights as safetensors") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise WeightsFileError(f"{path}: cannot read weights ({type(exc).__name__}: {detail})") from None


def unwrap_state_dict(content: Any, wrappers: tuple[str, ...] = ("state_dict",)) -> Any:
    """Step into the common nests of training checkpoints (``{"state_dict": {...}}`` and the like)."""
    for wrapper in wrappers:
        if isinstance(content, dict) and isinstance(content.get(wrapper), dict):
            content = content[wrapper]
    return content


_OS_ERROR = re.compile(r"os error (\d+)")


def write_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, except that a failing write (a full disk, a vanished folder) is the
    ``OSError`` it is — safetensors reports it as its own ``SafetensorError`` ("... (os error 28)"), which
    would escape every ``except OSError`` that keeps the previous checkpoint and exits with one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        found = _OS_ERROR.search(str(exc))
        if found is None:
            raise
        number = int(found.group(1))
        raise OSError(number, os.strerror(number), str(path)) from exc
