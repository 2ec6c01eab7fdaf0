"""Any timm model as a face backbone: timm feature extractor → Linear → BatchNorm1d embedding head.

Any timm model (ViT, DeiT, Swin, ConvNeXt, ResNet …) becomes a face backbone by adding the
insightface-style embedding head. Nothing is downloaded: the timm
model is built with ``pretrained=False`` and, optionally, local weights are loaded from a file.
Input normalisation is the data pipeline's job (face pipelines use (x/255 − 0.5)/0.5; ImageNet
weights expect ImageNet statistics).
"""
from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from corecompress.weights import WeightsFileError, read_weights, unwrap_state_dict

from .dlib_resnet import DataFormatError


class UnknownModelError(ValueError):
    """The requested timm model name does not exist."""


def _create_timm_model(model_name: str, img_size: int | None, timm_kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"unknown timm model {model_name!r}{hint}")
    kwargs = dict(timm_kwargs)
    kwargs.setdefault("num_classes", 0)
    if img_size is not None and "img_size" not in kwargs:
        try:
            return timm.create_model(model_name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError as err:  # CNNs take any input size and reject the keyword
            if "img_size" not in str(err):
                raise
    return timm.create_model(model_name, pretrained=False, **kwargs)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a safetensors file or a torch checkpoint (``weights_only=True``), unwrapping common nests."""
    try:
        state = unwrap_state_dict(read_weights(path), ("state_dict", "model", "model_state_dict", "module"))
    except WeightsFileError as err:
        raise DataFormatError(str(err)) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataFormatError(f"{path}: expected a state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


class TimmFaceBackbone(nn.Module):
    """A timm model's pooled features (``num_classes=0``) → ``fc`` (Linear) → ``features`` (BatchNorm1d).

    ``img_size`` is passed to timm where the architecture accepts it (ViT, DeiT, Swin …); CNNs take
    any size. ``pretrained_path``: a local ``.safetensors`` / ``.pt``/``.pth`` file holding either a
    timm backbone state dict (its classifier is dropped; the model module's ``checkpoint_filter_fn``
    adapts e.g. position embeddings to ``img_size``) or a whole ``TimmFaceBackbone`` state dict
    (keys ``backbone.*``, ``fc.*``, ``features.*``).
    """

    def __init__(self, model_name: str, embedding_size: int = 512, img_size: int | None = 112,
                 pretrained_path: str | Path | None = None, **timm_kwargs: Any) -> None:
        super().__init__()
        self.model_name = model_name
        self.img_size = img_size
        self.embedding_size = embedding_size
        self.backbone = _create_timm_model(model_name, img_size, timm_kwargs)
        feature_dim = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.feature_dim = int(feature_dim)
        self.fc = nn.Linear(self.feature_dim, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        if pretrained_path is not None:
            self.load_weights(pretrained_path)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(self.fc(self.backbone(x)))

    def load_weights(self, path: str | Path) -> None:
        """Load local weights (see class docstring); mismatches raise :class:`DataFormatError`."""
        path = Path(path)
        state = _read_state_dict(path)
        if any(k.startswith("backbone.") for k in state):
            target: nn.Module = self
        else:
            target = self.backbone
            state = self._adapt_backbone_state(state)
        try:
            result = target.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err))
            raise DataFormatError(f"{path}: weights do not fit {self.model_name}: {detail}") from None
        if result.missing_keys:
            raise DataFormatError(f"{path}: no weight for {result.missing_keys[0]!r} of {self.model_name} "
                                  f"({len(result.missing_keys)} missing in all)")
        if result.unexpected_keys:
            raise DataFormatError(f"{path}: weight {result.unexpected_keys[0]!r} is not part of "
                                  f"{self.model_name} ({len(result.unexpected_keys)} unexpected in all)")

    def _adapt_backbone_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop the timm classifier and apply the model family's checkpoint filter, where it has one."""
        classifier = self.backbone.pretrained_cfg.get("classifier") if hasattr(
            self.backbone, "pretrained_cfg") else None
        names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
        own_keys = set(self.backbone.state_dict())
        state = {k: v for k, v in state.items()
                 if k in own_keys or not any(k.startswith(f"{name}.") for name in names)}
        filter_fn = getattr(sys.modules.get(type(self.backbone).__module__), "checkpoint_filter_fn", None)
        if callable(filter_fn):
            state = filter_fn(state, self.backbone)
        return state
