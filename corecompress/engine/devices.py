"""Which device a run computes on: the recipe's ``device:`` (or ``--device``) made concrete.

The setting is one of ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` (the first
visible GPU) or ``cuda:N`` (GPU N). Under torchrun (``local_rank`` given) each rank keeps its own
GPU, ``cuda:LOCAL_RANK``: ``auto`` and ``cuda`` both mean that, and ``cuda:N`` is refused because N
processes cannot share one GPU. A setting this machine cannot honour is a one-line
:class:`DeviceError` (exit code 2), raised before anything is created.
"""
from __future__ import annotations

import re

import torch

from corecompress.errors import UserError

#: The accepted forms, as every message names them.
DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_CUDA_INDEX = re.compile(r"cuda:(0|[1-9][0-9]{0,3})")


class DeviceError(UserError):
    """A device setting that is malformed or names a device this machine does not have."""


def check_device_setting(setting: object) -> str:
    """``setting`` if it is one of the accepted forms (see :data:`DEVICE_FORMS`); else ValueError."""
    if isinstance(setting, str) and (setting in ("auto", "cpu", "cuda") or _CUDA_INDEX.fullmatch(setting)):
        return setting
    shown = repr(setting) if isinstance(setting, str) else type(setting).__name__
    raise ValueError(f"expected {DEVICE_FORMS}, got {shown}")


def resolve_device(setting: str = "auto", *, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` for ``setting``; ``local_rank``: this process's GPU under torchrun.

    Raises :class:`DeviceError` (one line) for a malformed setting, CUDA asked for where there is
    none, or a GPU index at or above the number of visible GPUs.
    """
    try:
        check_device_setting(setting)
    except ValueError as exc:
        raise DeviceError(f"device: {exc}") from None
    if setting == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if setting == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise DeviceError(f"device: {setting}: CUDA is not available on this machine (use device: auto or cpu)")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if setting.startswith("cuda:"):
            raise DeviceError(f"device: {setting}: under torchrun each rank uses its own GPU (cuda:LOCAL_RANK); "
                              "use device: cuda or auto")
        index = local_rank
        if index >= count:
            raise DeviceError(f"device: LOCAL_RANK={index} but only {count} GPU(s) are visible; "
                              "use --nproc_per_node ≤ the number of GPUs")
        return torch.device("cuda", index)
    index = int(setting.split(":", 1)[1]) if ":" in setting else 0
    if index >= count:
        raise DeviceError(f"device: {setting}: only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)
