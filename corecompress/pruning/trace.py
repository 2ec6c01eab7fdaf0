"""One recorded forward pass: the order modules start in, and the inputs of each module's first call.

Structure finders read what a model *does* from it (which norm runs right before which linear, what
a block is called with) instead of trusting attribute names. The pass runs in eval mode without
gradients on a seeded random input, and leaves the global random state untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable
import torch
from torch import nn


@dataclass
class Trace:
    """``order``: module names in the order their first call started; ``calls``: (args, kwargs) of that
    call; ``outputs``: its output, for the modules asked for."""

    order: list[str] = field(default_factory=list)
    calls: dict[str, tuple[tuple, dict]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def position(self, name: str) -> int:
        """Index of ``name`` in ``order``; -1 when the module never ran through its forward."""
        try:
            return self.order.index(name)
        except ValueError:
            return -1


def example_input(input_size: tuple[int, ...], batch: int = 2, seed: int = 0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded standard-normal batch of ``input_size`` (fp32), drawn without touching the global RNG."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_size), generator=generator).to(device)


@torch.no_grad()
def record_forward(model: nn.Module, example: torch.Tensor,
                   keep_output: Callable[[nn.Module], bool] | None = None) -> Trace:
    """Run ``model(example)`` in eval mode and record every module's first call (training flags restored);
    the outputs of the modules ``keep_output`` selects are kept too."""
    trace = Trace()
    modes = {m: m.training for m in model.modules()}
    handles = []

    def hook_for(name: str):  # noqa: ANN202 - a forward pre-hook
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if name not in trace.calls:
                trace.order.append(name)
                trace.calls[name] = (args, dict(kwargs))
        return hook

    def output_hook_for(name: str):  # noqa: ANN202 - a forward hook
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            trace.outputs.setdefault(name, output)
        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(hook_for(name), with_kwargs=True))
        if keep_output is not None and keep_output(module):
            handles.append(module.register_forward_hook(output_hook_for(name)))
    try:
        model.eval()
        model(example)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return trace
