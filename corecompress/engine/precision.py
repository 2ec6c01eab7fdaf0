"""Which number format a run computes in: the recipe's ``precision:`` (or ``--precision``) made concrete.

``fp32`` computes everything in float32. ``bf16`` and ``fp16`` run the student's forward and its
objective, the teacher's forward (live or filling a teacher cache) and the evaluators' forward passes
under ``torch.autocast`` with that dtype (Micikevicius et al., "Mixed Precision Training", ICLR 2018):
matrix products and convolutions in the low precision, reductions and the weights in float32.
``fp16`` adds a gradient scaler (``torch.amp.GradScaler``) whose state is checkpointed, so a resumed
run continues exactly. ``auto`` is bf16 on a GPU that supports it, fp32 everywhere else — never bf16 on
a CPU: without AVX-512/AMX a bf16 matmul is hundreds of times slower than fp32 there, so bf16/fp16 on a
CPU is for correctness tests on tiny models only.

Margin and cosine math stays float32 under autocast (a bf16 cosine has 8 bits of mantissa; fp16
cannot represent 1 − eps): every margin-penalty loss runs inside :func:`float32_math` — its floating
inputs cast to float32 and autocast switched off — and so do the cosine helpers of the face heads.
A setting this machine cannot honour is a one-line :class:`PrecisionError` (exit code 2), raised
before anything is created.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Iterator, TypeVar

import torch

from corecompress.errors import UserError

#: The accepted settings, as every message names them.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_FORMS = "auto, fp32, bf16 or fp16"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Device types whose autocast :func:`autocast_off` switches off where it is on.
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")

F = TypeVar("F", bound=Callable[..., Any])


class PrecisionError(UserError):
    """A precision setting that is malformed or that this device cannot compute in."""


def check_precision_setting(setting: object) -> str:
    """``setting`` if it is one of :data:`PRECISIONS`; else ValueError naming the accepted forms."""
    if isinstance(setting, str) and setting in PRECISIONS:
        return setting
    shown = repr(setting) if isinstance(setting, str) else type(setting).__name__
    raise ValueError(f"expected {PRECISION_FORMS}, got {shown}")


def resolve_precision(setting: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what ``setting`` means on ``device`` (``auto``: module docstring).

    Raises :class:`PrecisionError` (one line) for a malformed setting, bf16 on a GPU without bf16,
    or a dtype this torch cannot autocast to on this device type.
    """
    try:
        check_precision_setting(setting)
    except ValueError as exc:
        raise PrecisionError(f"precision: {exc}") from None
    cuda = device.type == "cuda"
    if setting == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if setting == "fp32":
        return setting
    if setting == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise PrecisionError(f"precision: bf16: {torch.cuda.get_device_name(device)} does not support bfloat16 "
                             "(use precision: fp16 or auto)")
    with warnings.catch_warnings():  # torch warns and disables autocast for a dtype it cannot use here
        warnings.simplefilter("error")
        try:
            torch.autocast(device.type, dtype=_DTYPES[setting])
        except (RuntimeError, UserWarning) as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise PrecisionError(f"precision: {setting}: torch {torch.__version__} cannot autocast to it on "
                                 f"{device.type} ({detail}); use precision: fp32") from None
    return setting


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The region's autocast for a resolved ``precision`` (no autocast for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def run_autocast(ctx: Any) -> contextlib.AbstractContextManager[Any]:
    """:func:`autocast` for a run context (its ``precision`` and ``device``; fp32 when it has none)."""
    return autocast(getattr(ctx, "precision", "fp32"), torch.device(getattr(ctx, "device", None) or "cpu"))


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (gradients that overflow skip the step and lower the scale); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Switch autocast off (on every device type where it is on) for the region."""
    with contextlib.ExitStack() as stack:
        for device_type in _AUTOCAST_DEVICE_TYPES:
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def as_float32(value: Any) -> Any:
    """``value`` with every bf16/fp16 tensor in it (also inside dicts, lists, tuples) as float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, dict):
        return {k: as_float32(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(as_float32(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(v) for v in value)
    return value


def float32_math(fn: F) -> F:
    """Decorator for a loss's ``forward``: its low-precision tensor arguments become float32 and it
    runs with autocast off, so normalisation, cosine logits, margins and cross-entropy are float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with autocast_off():
            return fn(*as_float32(args), **as_float32(kwargs))

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def autocast_forward(module: torch.nn.Module, precision: str, device: torch.device) -> Iterator[None]:
    """While active, ``module``'s forward runs under :func:`autocast` and returns float32 outputs, so
    what a caller computes from them (an evaluator's similarities, thresholds) stays float32."""
    if precision == "fp32":
        yield
        return
    own = module.__dict__.get("forward")  # an instance forward already set (a compiled one), else the class's
    inner = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        with autocast(precision, device):
            outputs = inner(*args, **kwargs)
        return as_float32(outputs)

    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        if own is not None:
            module.forward = own  # type: ignore[method-assign]
        else:
            module.__dict__.pop("forward", None)
