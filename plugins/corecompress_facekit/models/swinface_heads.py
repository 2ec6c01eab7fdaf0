"""Attribute heads for SwinFace: the SwinFace multi-task heads (the FACES attribute head lives in the
``corecompress_faces_pruner`` plugin, built from :class:`corecompress_facekit.heads.attribute.AttributeHead`).

* ``SwinFaceMultiTask`` - SwinFace (Qin et al., arXiv 2308.11509, its multi-task
  heads): per task group a multi-level channel-attention branch (``fam``), a task subnet (``tss``)
  and the 42 output linears (``om``): 40 CelebA attributes as 2-way softmaxes, age (1 regression
  output) and expression (7-way).

Width rule for presets smaller than Swin-T: the attention width ``attention_channels`` defaults to the
embedding size (512 for swin_t, where SwinFace fixes it at 512) and is split over the levels in
proportion to their widths, by largest remainder: 192/384/768/768 -> 47/93/186/186 for Swin-T.
The CBAM bottleneck is width // 16 (512 -> 32).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .swinface import SwinFaceBackbone, SwinFaceConfig, resolve_config

__all__ = [
    "CELEBA_ATTRIBUTES", "TASK_GROUPS", "TaskOutput", "TASK_OUTPUTS", "NUM_EXPRESSIONS",
    "celeba_output_indices", "celeba_logits", "split_channels", "ChannelGate",
    "ChannelAttentionBranch", "TaskSubnet", "OutputModule", "MultiTaskOutput", "SwinFaceMultiTask",
    "build_swinface_multitask",
]

from corecompress_facekit.celeba import CELEBA_ATTRIBUTES  # noqa: E402 - one definition for the plugin

#: SwinFace task groups (one attention branch + subnet each) and their outputs, in output order.
TASK_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gender", ("Male",)),
    ("age", ("Age", "Young")),
    ("expression", ("Expression", "Smiling")),
    ("whole_face", ("Attractive", "Blurry", "Chubby", "Heavy_Makeup", "Oval_Face", "Pale_Skin")),
    ("hair", ("Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair",
              "Receding_Hairline", "Straight_Hair", "Wavy_Hair", "Wearing_Hat")),
    ("eyes", ("Arched_Eyebrows", "Bags_Under_Eyes", "Bushy_Eyebrows", "Eyeglasses", "Narrow_Eyes")),
    ("nose", ("Big_Nose", "Pointy_Nose")),
    ("cheeks", ("High_Cheekbones", "Rosy_Cheeks", "Wearing_Earrings", "Sideburns")),
    ("mouth", ("5_o_Clock_Shadow", "Big_Lips", "Mouth_Slightly_Open", "Mustache", "Wearing_Lipstick",
               "No_Beard")),
    ("chin", ("Double_Chin", "Goatee")),
    ("neck", ("Wearing_Necklace", "Wearing_Necktie")),
)

NUM_EXPRESSIONS = 7


@dataclass(frozen=True)
class TaskOutput:
    """One output linear: its name, task group index, width and kind (attribute / age / expression)."""

    name: str
    group: int
    width: int
    kind: str


def _task_outputs() -> tuple[TaskOutput, ...]:
    outputs = []
    for group, (_, names) in enumerate(TASK_GROUPS):
        for name in names:
            if name == "Age":
                outputs.append(TaskOutput(name, group, 1, "age"))
            elif name == "Expression":
                outputs.append(TaskOutput(name, group, NUM_EXPRESSIONS, "expression"))
            else:
                outputs.append(TaskOutput(name, group, 2, "attribute"))
    return tuple(outputs)


#: The 42 outputs in the order the output module returns them.
TASK_OUTPUTS: tuple[TaskOutput, ...] = _task_outputs()


def celeba_output_indices() -> tuple[int, ...]:
    """For each CelebA attribute, in official order, the index of its output in ``TASK_OUTPUTS``."""
    position = {output.name: index for index, output in enumerate(TASK_OUTPUTS)}
    return tuple(position[name] for name in CELEBA_ATTRIBUTES)


def celeba_logits(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, 40) attribute log-odds in official CelebA order from the 42 outputs.

    Each attribute output is a 2-way softmax with class 1 = attribute present, so its log-odds are
    ``z1 - z0`` (``sigmoid(z1 - z0) = softmax(z)[1]``); ``> 0`` is the usual 0.5 decision.
    """
    if len(outputs) != len(TASK_OUTPUTS):
        raise ValueError(f"expected {len(TASK_OUTPUTS)} task outputs, got {len(outputs)}")
    return torch.stack([outputs[i][:, 1] - outputs[i][:, 0] for i in celeba_output_indices()], dim=1)


def split_channels(widths: Sequence[int], total: int) -> tuple[int, ...]:
    """Split ``total`` output channels over inputs in proportion to ``widths`` (largest remainder)."""
    if total < len(widths) or not widths or min(widths) < 1:
        raise ValueError(f"cannot split {total} channels over input widths {tuple(widths)}")
    shares = [w * total / sum(widths) for w in widths]
    parts = [max(1, int(s)) for s in shares]
    by_remainder = sorted(range(len(widths)), key=lambda i: (parts[i] - shares[i], i))
    for index in by_remainder[: total - sum(parts)]:
        parts[index] += 1
    while sum(parts) > total:  # only after max(1, .) bumps: take from the largest
        parts[parts.index(max(parts))] -= 1
    return tuple(parts)


class ChannelGate(nn.Module):
    """CBAM channel attention (Woo et al., ECCV 2018): sigmoid(MLP(avg) + MLP(max)) scales channels."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(pooled)[:, :, None, None]


class ChannelAttentionBranch(nn.Module):
    """One multi-level channel-attention branch of SwinFace: a 3x3 conv per level, concat,
    CBAM channel gate, ReLU, global max pool, BatchNorm1d."""

    def __init__(self, level_channels: Sequence[int], out_channels: int = 512, reduction: int = 16) -> None:
        super().__init__()
        splits = split_channels(level_channels, out_channels)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
                                   for c_in, c_out in zip(level_channels, splits))
        self.gate = ChannelGate(out_channels, reduction)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps (one per level, same grid) -> (B, out_channels)."""
        x = torch.cat([conv(level) for conv, level in zip(self.convs, levels)], dim=1)
        x = F.relu(self.gate(x))
        return self.norm(x.amax(dim=(2, 3)))


class TaskSubnet(nn.Module):
    """Task-specific subnet: (Linear -> ReLU -> Dropout(0.5)) x 2 (SwinFace, Qin et al.)."""

    def __init__(self, width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(width, width), nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OutputModule(nn.Module):
    """The 42 output linears; output ``i`` reads the subnet feature of its task group."""

    def __init__(self, width: int = 512) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, output.width) for output in TASK_OUTPUTS)

    def forward(self, group_features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(layer(group_features[output.group])
                     for layer, output in zip(self.layers, TASK_OUTPUTS))


class MultiTaskOutput(NamedTuple):
    """Face embedding plus the 42 task outputs in ``TASK_OUTPUTS`` order."""

    embedding: torch.Tensor
    outputs: tuple[torch.Tensor, ...]


class SwinFaceMultiTask(nn.Module):
    """SwinFace backbone with the multi-task heads (``fam``, ``tss``, ``om`` as in the checkpoint)."""

    def __init__(self, backbone: SwinFaceBackbone, attention_channels: int | None = None) -> None:
        super().__init__()
        width = attention_channels or backbone.embedding_size
        self.backbone = backbone
        self.fam = nn.ModuleList(ChannelAttentionBranch(backbone.level_channels, width)
                                 for _ in TASK_GROUPS)
        self.tss = nn.ModuleList(TaskSubnet(width) for _ in TASK_GROUPS)
        self.om = OutputModule(width)

    def forward(self, x: torch.Tensor) -> MultiTaskOutput:
        local_features, global_features, embedding = self.backbone.forward_features_multilevel(x)
        levels = list(torch.split(local_features, list(self.backbone.level_channels[:-1]), dim=1))
        levels.append(global_features)
        group_features = [subnet(branch(levels)) for branch, subnet in zip(self.fam, self.tss)]
        return MultiTaskOutput(embedding, self.om(group_features))


def build_swinface_multitask(preset_or_config: str | SwinFaceConfig = "swin_t", *,
                             attention_channels: int | None = None, **overrides: object) -> SwinFaceMultiTask:
    """Build the full SwinFace multi-task model from a backbone preset/config."""
    backbone = SwinFaceBackbone(resolve_config(preset_or_config, **overrides))
    return SwinFaceMultiTask(backbone, attention_channels)

