"""How the student and the teacher execute while a phase trains: ``compile:`` and ``channels_last:``.

``compile: true`` wraps each module's ``forward`` with ``torch.compile`` (Ansel et al., "PyTorch 2",
ASPLOS 2024) for the phase: the module itself is not wrapped, so its ``state_dict`` keys — and every
checkpoint's — stay those of the plain module (never ``_orig_mod.``). Where compiling fails, when
wrapping or at a call (a missing C++ compiler, an operator the compiler cannot trace), the log gets
one warning line and the module continues in eager mode. ``channels_last: true`` converts the
modules' 4-D weights to the channels-last memory format, and the loop does the same to 4-D batches,
which lets cuDNN pick its faster NHWC convolutions (a CNN; harmless for a ViT, which has no 4-D weights
beyond its patch embedding). Both are undone when the phase ends, so pruning, evaluation and export
see the plain modules.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch

from corecompress.errors import UserError


def _detail(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__


class _CompiledForward:
    """A module's compiled ``forward``; the first failure logs one line, and from then on the module's
    own (eager) forward runs — also where another wrapper (an evaluation's autocast) holds this one."""

    def __init__(self, module: torch.nn.Module, compiled: Callable[..., Any], name: str,
                 log: logging.Logger) -> None:
        self.module, self.compiled, self.name, self.log = module, compiled, name, log
        self.failed = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except UserError:  # the model's own one-line error: not the compiler's
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler failure: eager mode instead
                self.failed = True
                _warn(self.name, self.log, exc)
                if self.module.__dict__.get("forward") is self:
                    del self.module.__dict__["forward"]
        return type(self.module).forward(self.module, *args, **kwargs)


def _warn(name: str, log: logging.Logger, exc: BaseException) -> None:
    log.warning("warning: compile: torch.compile of the %s failed (%s: %s); continuing in eager mode", name,
                type(exc).__name__, _detail(exc))


def compile_forward(module: torch.nn.Module, name: str, log: logging.Logger) -> None:
    """Replace ``module``'s forward by its ``torch.compile``d form (eager, with one warning line, on failure)."""
    try:
        compiled = torch.compile(module.forward)
    except Exception as exc:  # noqa: BLE001 - e.g. no compiler backend on this platform
        _warn(name, log, exc)
        return
    module.forward = _CompiledForward(module, compiled, name, log)  # type: ignore[method-assign]


def uncompile(module: torch.nn.Module) -> None:
    """The module's own (eager) forward again."""
    if isinstance(module.__dict__.get("forward"), _CompiledForward):
        del module.__dict__["forward"]


def channels_last_batch(images: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in the channels-last memory format (the same values); anything else unchanged."""
    return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images


@contextlib.contextmanager
def training_execution(modules: dict[str, torch.nn.Module | None], *, compile: bool, channels_last: bool,
                       log: logging.Logger) -> Iterator[None]:
    """While active, the named modules (``{"student": model, "teacher": teacher}``; None is skipped)
    run compiled and/or in channels-last format (module docstring); both undone on exit."""
    present = {name: module for name, module in modules.items() if module is not None}
    try:
        for name, module in present.items():
            if channels_last:
                module.to(memory_format=torch.channels_last)
            if compile:
                compile_forward(module, name, log)
        yield
    finally:
        for module in present.values():
            uncompile(module)
            if channels_last:
                module.to(memory_format=torch.contiguous_format)
