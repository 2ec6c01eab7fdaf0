"""Artifacts: what one component produces for others (a trained margin head, an attribute head).

A component declares the names it ``produces`` and the ``artifact:NAME``s it ``needs`` when it is
registered. The engine collects a training objective's artifacts (``artifacts()`` on the loss or any
module inside it) right after its ``setup`` (live, in memory) and when its phase ends (also written to
the run directory as ``NAME.safetensors``), and hands them to consumers through
``ctx.artifacts.require(NAME, consumer)``. The runner itself names no artifact and no method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from corecompress.weights import write_tensors
from torch import nn

from corecompress.errors import UserError


@dataclass
class Artifact:
    """One published artifact: its value (a tensor or a module), the phase and component that made it."""

    name: str
    value: torch.Tensor | nn.Module
    phase: str
    producer: str

    def tensors(self) -> dict[str, torch.Tensor]:
        """What its file holds: a module's state dict, or ``{"tensor": value}``."""
        if isinstance(self.value, nn.Module):
            return {k: v.detach().cpu().contiguous().clone() for k, v in self.value.state_dict().items()}
        return {"tensor": self.value.detach().cpu().contiguous().clone()}


@dataclass
class ArtifactStore:
    """The run's artifacts by name, newest first per phase; ``producers(name)`` lists the registered
    components that declare they produce ``name`` (for the error when one is missing)."""

    folder: Path | None = None
    producers: Callable[[str], list[str]] = lambda name: []
    by_phase: dict[str, dict[str, Artifact]] = field(default_factory=dict)

    def publish(self, name: str, value: Any, *, phase: str, producer: str, write: bool = False) -> Artifact:
        if not isinstance(value, (torch.Tensor, nn.Module)):
            raise TypeError(f"{producer}: artifact '{name}' must be a tensor or a module, got {type(value).__name__}")
        artifact = Artifact(name, value, phase, producer)
        self.by_phase.setdefault(name, {})[phase] = artifact
        if write and self.folder is not None:
            write_tensors(artifact.tensors(), self.folder / f"{name}.safetensors",
                      metadata={"phase": phase, "producer": producer})
        return artifact

    def get(self, name: str, phase: str | None = None) -> Artifact | None:
        """The artifact of ``phase`` (default: the newest published), or None."""
        phases = self.by_phase.get(name, {})
        if phase is not None:
            return phases.get(phase)
        return next(reversed(phases.values()), None) if phases else None

    def require(self, name: str, consumer: str, phase: str | None = None, hint: str = "") -> Artifact:
        """The artifact, or a one-line UserError naming what would produce it."""
        found = self.get(name, phase)
        if found is not None:
            return found
        makers = self.producers(name)
        where = f" by the {phase} phase" if phase else ""
        made_by = f"produced by {', '.join(makers)}" if makers else "no installed component produces it"
        raise UserError(f"{consumer} needs the artifact '{name}'{where}, which this run did not produce "
                        f"({made_by}){'; ' + hint if hint else ''}")


def objective_artifacts(objective: nn.Module) -> dict[str, Any]:
    """What a training objective offers: the ``artifacts()`` of the objective and of every module inside it."""
    found: dict[str, Any] = {}
    for module in objective.modules():
        offer = getattr(module, "artifacts", None)
        if callable(offer):
            found.update({k: v for k, v in (offer() or {}).items() if v is not None})
    return found


def publish_objective(ctx: Any, component: Any, objective: nn.Module, phase: str, *, final: bool) -> None:
    """Publish the declared artifacts of ``objective`` (component ``component``) into ``ctx.artifacts``;
    ``final`` (the phase ended) also writes them to the run directory on rank 0. An artifact offered but
    not declared is an error of the plugin (``produces`` lists what a component may produce; with some
    options it may produce less, and a consumer that needs what is missing says so in one line)."""
    from corecompress.engine import distributed

    offered = objective_artifacts(objective)
    undeclared = sorted(set(offered) - set(component.produces))
    if undeclared:
        raise RuntimeError(f"plugin '{component.plugin}': loss '{component.name}' offers artifacts {undeclared} it "
                           "did not declare (register(..., produces=...))")
    for name, value in offered.items():
        ctx.artifacts.publish(name, value, phase=phase, producer=component.name,
                              write=final and distributed.is_main())
