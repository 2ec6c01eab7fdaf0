"""Entry point of the built-in face plugin: face models, face data, face evaluation, margin losses."""
from __future__ import annotations

from typing import Any

from corecompress import hookimpl


@hookimpl
def register_models(register: Any) -> None:
    from corecompress_facekit import adapters

    adapters.register(register)


@hookimpl
def register_datasets(register: Any) -> None:
    from corecompress_facekit import datasets

    datasets.register(register)


@hookimpl
def register_evaluators(register: Any) -> None:
    from corecompress_facekit import evaluators

    evaluators.register(register)


@hookimpl
def register_losses(register: Any) -> None:
    from corecompress_facekit import losses

    losses.register_losses(register)


@hookimpl
def register_targets(register: Any) -> None:
    from corecompress_facekit import targets

    targets.register_targets(register)


@hookimpl
def after_physical_prune(run: Any, model: Any, plan: Any) -> None:
    """timm's BEiT/EVA/SwinV2 attentions: fold split q/v biases into a gathering qkv (see the fix-up's module)."""
    from corecompress.pruning.transformer_fixups import fold_split_qkv_biases

    fold_split_qkv_biases(model)
