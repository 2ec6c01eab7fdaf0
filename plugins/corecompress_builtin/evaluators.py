"""Generic evaluators: ``accuracy`` (classification) and ``efficiency`` (params, MACs, measured speed).

``efficiency`` measures the dense model when it first runs (before pruning) and keeps a copy, so the
after-pruning throughput is reported as a ratio measured in the same process, never inferred from
sparsity.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from corecompress.engine.data_loaders import batches_of, loader_settings
from torch.utils.data import DataLoader



@dataclass
class AccuracyOptions:
    batch_size: int = 64
    sets: list[str] = field(default_factory=list, metadata={"help": "evaluation sets to use (default: all with labels)"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size: must be at least 1")


class Accuracy:
    """Top-1 accuracy of the model's outputs on every labelled evaluation set."""

    def __init__(self, options: AccuracyOptions) -> None:
        self.options = options

    def evaluate(self, model: torch.nn.Module, data: Any, context: Any) -> dict[str, float]:
        results = {}
        device = next(model.parameters()).device
        for name, dataset in data.evaluation().items():
            if self.options.sets and name not in self.options.sets:
                continue
            correct = total = 0
            settings = loader_settings(dataset, "auto", device, persistent=False)
            for batch in batches_of(DataLoader(dataset, batch_size=self.options.batch_size, **settings)):
                if not isinstance(batch, dict) or "label" not in batch:
                    break
                pred = model(batch["image"].to(device)).argmax(1).cpu()
                correct += int((pred == batch["label"]).sum())
                total += len(pred)
            if total:
                results[f"{name}_accuracy"] = 100.0 * correct / total
        return results


@dataclass
class EfficiencyOptions:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    repeats: int = field(default=10, metadata={"help": "timed runs (≥ 10); the median is reported"})
    threads: int | None = field(default=None, metadata={"help": "torch threads while timing (default: current)"})
    speed: bool = field(default=True, metadata={"help": "measure throughput (off: only params and MACs)"})

    def __post_init__(self) -> None:
        from corecompress.tools.measure import MIN_REPEATS

        if self.repeats < MIN_REPEATS:
            raise ValueError(f"repeats: must be at least {MIN_REPEATS} (the median of at least {MIN_REPEATS} runs)")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes: give batch sizes of at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads: must be at least 1 (or null)")


class Efficiency:
    """Parameters (and non-zero parameters), MACs with attention matmuls, measured throughput — each
    throughput and speed-up with its spread over the repeats, ``<metric>_cv`` (reports mark it noisy)."""

    def __init__(self, options: EfficiencyOptions) -> None:
        self.options = options

    def evaluate(self, model: torch.nn.Module, data: Any, context: Any) -> dict[str, float]:
        from corecompress.tools import measure

        input_size = tuple(context.model_spec.input_size)
        device = next(model.parameters()).device
        results: dict[str, float] = {
            "params": float(measure.count_parameters(model)),
            "nonzero_params": float(measure.count_nonzero_parameters(model)),
            "macs": float(measure.count_macs(model, example_input=torch.zeros(1, *input_size, device=device))),
        }
        if not self.options.speed:
            return results
        dense = context.state.get("efficiency_dense_model")
        if dense is None:
            context.state["efficiency_dense_model"] = copy.deepcopy(model).eval()
        for bs in self.options.batch_sizes:
            models = {"model": model} if dense is None else {"model": model, "dense": dense}
            timing = measure.compare_throughput(models, input_size, bs, reference="dense" if dense is not None else "model",
                                                repeats=self.options.repeats, threads=self.options.threads)
            results[f"images_per_s_b{bs}"] = timing["model"]["images_per_s"]
            results[f"images_per_s_b{bs}{measure.CV_SUFFIX}"] = timing["model"]["cv"]  # its spread over repeats
            if dense is not None:
                results[f"speedup_vs_dense_b{bs}"] = timing["model"]["speedup"]
                results[f"speedup_vs_dense_b{bs}{measure.CV_SUFFIX}"] = timing["model"]["speedup_cv"]
        return results


def register(register: Any) -> None:
    register("accuracy", Accuracy, AccuracyOptions, description="top-1 accuracy on labelled evaluation sets")
    register("efficiency", Efficiency, EfficiencyOptions, description="params, MACs, measured throughput")
