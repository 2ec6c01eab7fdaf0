"""What every section of the GPU check is handed: shapes, device, plugins, peak and precisions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpucheck.shapes import Shapes


@dataclass
class CheckEnv:
    shapes: Shapes
    device: torch.device
    plugins: Any  # corecompress.plugin.loading.LoadedPlugins
    peak_tflops: float | None
    work_dir: Path  # a temporary folder for run directories
    recipe_keys: dict[str, str]  # what framework recipes get for the precision (gpucheck.precision.precision_keys)
    framework_precision: str  # the precision framework runs really use

    @property
    def registry(self) -> Any:
        return self.plugins.registry
