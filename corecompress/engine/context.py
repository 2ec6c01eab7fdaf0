"""The state of one run, handed to every stage, component and lifecycle hook."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from corecompress.engine.artifacts import ArtifactStore
from corecompress.plugin.loading import LoadedPlugins
from corecompress.config.recipe import Recipe


@dataclass
class RunContext:
    recipe: Recipe
    plugins: LoadedPlugins
    out_dir: Path
    log: logging.Logger
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"         # resolved (fp32 | bf16 | fp16): what the recipe's ``precision: auto`` became
    model_spec: Any = None          # the model adapter component
    model: torch.nn.Module | None = None
    teacher: torch.nn.Module | None = None
    data: Any = None                # the dataset component
    groups: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    plan: Any = None                # PruningPlan
    masks: Any = None               # MaskSet while soft masks are active
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    resuming: bool = False          # ``run --resume``: training phases continue from their checkpoints
    resume_plan: str | None = None  # on resume: the run's own plan.json, used instead of scoring
    artifacts: ArtifactStore = field(default_factory=ArtifactStore)  # what components hand to each other
    state: dict[str, Any] = field(default_factory=dict)  # a component's own scratch space (never a handover)

    @property
    def hook(self) -> Any:
        return self.plugins.hook

    @property
    def registry(self) -> Any:
        return self.plugins.registry

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.model_spec.input_size)

    def create(self, kind: str, chosen: Any) -> Any:
        """Instantiate a recipe :class:`~corecompress.config.recipe.Choice` of ``kind``."""
        return self.registry.get(kind, chosen.name).create(chosen.options)
