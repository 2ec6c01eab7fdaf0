"""The training step's loss, read by the host one step late on a GPU, so the loop never waits for it.

Reading a CUDA tensor on the host (``float(loss)``, ``bool(torch.isfinite(loss))``) blocks until
the GPU has finished everything queued before it: read every step, the GPU idles while the host
prepares the next one. :class:`DeferredLoss` instead copies the loss into a pinned host scalar
without blocking and records a CUDA event behind the copy (:meth:`DeferredLoss.put`); the host reads
it (:meth:`DeferredLoss.take`) one step later — after it has queued the next step's forward, so the
GPU is busy meanwhile — and waits only for that event, not for the queued work. On a CPU the copy is
immediate and nothing waits. At most one step is pending: ``take`` comes before the next ``put``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pending:
    """The loss of the (0-based) ``step``, as the host read it."""

    step: int
    value: float


class DeferredLoss:
    """One pending step loss: :meth:`put` after the step is queued, :meth:`take` when it is needed."""

    def __init__(self, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self._host = torch.empty((), dtype=torch.float64, pin_memory=cuda)  # exact for any float loss
        self._event = torch.cuda.Event() if cuda else None
        self._step: int | None = None

    def put(self, step: int, loss: torch.Tensor) -> None:
        """Start copying ``loss`` (a scalar on any device) to the host; nothing waits for it."""
        if self._step is not None:
            raise RuntimeError("DeferredLoss.put: the previous step's loss was not taken")
        self._host.copy_(loss.detach(), non_blocking=self._event is not None)
        if self._event is not None:
            self._event.record()
        self._step = step

    def take(self) -> Pending | None:
        """The pending step's loss (waiting for its copy only), or None when nothing is pending."""
        if self._step is None:
            return None
        if self._event is not None:
            self._event.synchronize()
        pending, self._step = Pending(self._step, float(self._host)), None
        return pending
