"""SwinFace backbone: timm's Swin Transformer trunk plus the SwinFace embedding head.

SwinFace (L. Qin et al., arXiv 2308.11509) uses a Swin-T trunk at 112x112 with patch size 2 and an
insightface-style embedding head; FACES (Lajić et al., ICT Express 2026) prunes that trunk (the
``norm1``/``norm2`` LayerNorms and the ``attn.qkv``/``mlp.fc1`` input columns they gate).

The trunk is timm's ``SwinTransformer`` (``self.trunk``), built headless (``num_classes=0``,
``global_pool=''``) so it yields NHWC token maps.  Reference block ``layers.{s}.blocks.{b}`` lives at
``trunk.layers.{s}.blocks.{b}``; the reference patch merge *after* stage ``s`` lives in timm at the
*start* of stage ``s + 1`` (``trunk.layers.{s+1}.downsample``).  Nothing here hard-codes channel or
head counts of a block, so blocks whose ``attn.qkv`` / ``mlp.fc1`` take a channel subset, or whose
attention has fewer heads, keep working (tests/facekit/test_swinface.py).  Caveat from timm 1.0.x:
``SwinTransformerBlock._attn`` reshapes the attention output with the channel count of the *norm1
output*, so a slimmed ``norm1`` fails; slice inside ``attn.qkv`` instead
(``nn.Sequential(IndexSelect(kept), Linear(k, 3C))``).  A slimmed ``norm2`` feeding a sliced
``mlp.fc1`` works.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SwinFaceConfig", "PRESETS", "SwinFaceBackbone", "MultiLevelFeatures", "build_swinface",
    "resolve_config", "swin_block_paths", "swin_block_map", "unfused_attention", "count_macs",
]


@dataclass(frozen=True)
class SwinFaceConfig:
    """Hyper-parameters of a SwinFace backbone (defaults: the Swin-T backbone of SwinFace).

    Always as in SwinFace: no absolute position embedding, LayerNorm after the patch embedding.
    ``embedding_bn_eps`` is used by both BatchNorm1d of the embedding head: the reference SwinFace code uses
    2e-5 for the first; the insightface-style head the reference follows uses the same value for the second.
    """

    img_size: int = 112
    patch_size: int = 2
    in_chans: int = 3
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    embedding_size: int = 512
    embedding_bn_eps: float = 2e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        self._validate()

    def _validate(self) -> None:
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(f"SwinFaceConfig: depths {self.depths} and num_heads {self.num_heads} "
                             "must be non-empty and of equal length")
        if min(self.depths) < 1 or min(self.num_heads) < 1:
            raise ValueError("SwinFaceConfig: every stage needs at least one block and one head")
        if self.patch_size < 1 or self.img_size % self.patch_size:
            raise ValueError(f"SwinFaceConfig: img_size {self.img_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        grid = self.img_size // self.patch_size
        if grid % (2 ** (self.num_stages - 1)):
            raise ValueError(f"SwinFaceConfig: the {grid}x{grid} token grid cannot be halved "
                             f"{self.num_stages - 1} times without padding")
        for stage, (dim, heads, res) in enumerate(
                zip(self.stage_dims, self.num_heads, self.stage_resolutions)):
            if dim % heads:
                raise ValueError(f"SwinFaceConfig: stage {stage} width {dim} is not divisible by "
                                 f"{heads} heads")
            if res > self.window_size and res % self.window_size:
                raise ValueError(f"SwinFaceConfig: window {self.window_size} does not tile the "
                                 f"{res}x{res} grid of stage {stage}")
        if self.embedding_size < 1 or self.embed_dim < 1 or self.in_chans < 1:
            raise ValueError("SwinFaceConfig: embed_dim, embedding_size and in_chans must be positive")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"SwinFaceConfig: drop_path_rate {self.drop_path_rate} not in [0, 1)")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Channel width of each stage (doubling after every patch merge)."""
        return tuple(self.embed_dim * 2 ** s for s in range(self.num_stages))

    @property
    def stage_resolutions(self) -> tuple[int, ...]:
        """Side of the token grid in each stage."""
        grid = self.img_size // self.patch_size
        return tuple(grid // 2 ** s for s in range(self.num_stages))


PRESETS: Mapping[str, SwinFaceConfig] = MappingProxyType({
    # The SwinFace backbone (Qin et al.): 28.50 M params, 4.48 GMACs at 112x112.
    "swin_t": SwinFaceConfig(),
    # CPU training preset: 48x48 faces, 24/12/6 token grids, window 6 (last stage one window, as in
    # swin_t), widths 32/64/128, 2 heads or more per stage: about 0.6 M params and 50 MMACs.
    "nano": SwinFaceConfig(img_size=48, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8),
                           window_size=6, drop_path_rate=0.05, embedding_size=128),
    # Unit-test preset: 32x32, 16/8/4 grids, window 4 (shifted windows in stages 0-1), ~0.1 M params.
    "micro": SwinFaceConfig(img_size=32, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4),
                            window_size=4, drop_path_rate=0.0, embedding_size=32),
})


def resolve_config(preset_or_config: str | SwinFaceConfig = "swin_t", **overrides: object) -> SwinFaceConfig:
    """Turn a preset name or a config plus field overrides into a validated config."""
    if isinstance(preset_or_config, SwinFaceConfig):
        config = preset_or_config
    elif isinstance(preset_or_config, str) and preset_or_config in PRESETS:
        config = PRESETS[preset_or_config]
    else:
        raise ValueError(f"unknown SwinFace preset {preset_or_config!r}; choose one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SwinFaceConfig)})
    if unknown:
        raise ValueError(f"unknown SwinFaceConfig field(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **overrides) if overrides else config


class MultiLevelFeatures(NamedTuple):
    """What the reference SwinFace forward returns: (local_features, global_features, embedding)."""

    local_features: torch.Tensor    # (B, sum of local level widths, R, R), e.g. (B, 1344, 7, 7)
    global_features: torch.Tensor   # (B, C_last, R, R), last-stage tokens before the final norm
    embedding: torch.Tensor         # (B, embedding_size)


class SwinFaceBackbone(nn.Module):
    """Swin trunk (timm) -> final LayerNorm -> token mean -> ``feature`` embedding head (SwinFace).

    ``feature`` = Linear(C->C, no bias) -> BatchNorm1d(C) -> Linear(C->E, no bias) -> BatchNorm1d(E),
    named as in the reference checkpoint (``feature.0`` .. ``feature.3``).
    """

    def __init__(self, config: SwinFaceConfig) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        self.config = config
        self.trunk = SwinTransformer(
            img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
            num_classes=0, global_pool="", embed_dim=config.embed_dim, depths=config.depths,
            num_heads=config.num_heads, window_size=config.window_size, mlp_ratio=config.mlp_ratio,
            qkv_bias=config.qkv_bias, drop_path_rate=config.drop_path_rate, strict_img_size=True,
        )
        width = config.stage_dims[-1]
        self.feature = nn.Sequential(
            nn.Linear(width, width, bias=False),
            nn.BatchNorm1d(width, eps=config.embedding_bn_eps),
            nn.Linear(width, config.embedding_size, bias=False),
            nn.BatchNorm1d(config.embedding_size, eps=config.embedding_bn_eps),
        )

    @property
    def embedding_size(self) -> int:
        return self.config.embedding_size

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Widths of the multi-level features: local levels (stages 0..S-2 after merging), then global."""
        dims = self.config.stage_dims
        return dims[1:] + dims[-1:]

    @property
    def feature_resolution(self) -> int:
        """Side of the last-stage token grid, to which the local levels are pooled (7 for swin_t)."""
        return self.config.stage_resolutions[-1]

    def _embed(self, normed_tokens: torch.Tensor) -> torch.Tensor:
        # (B, H, W, C) after the final LayerNorm -> average over tokens -> embedding head
        return self.feature(normed_tokens.mean(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) face crops -> (B, embedding_size) face embedding."""
        return self._embed(self.trunk.forward_features(x))

    def forward_features_multilevel(self, x: torch.Tensor) -> MultiLevelFeatures:
        """Reference SwinFace forward: local levels, global map and embedding in one pass.

        Local level ``s`` is the output of reference stage ``s`` after its patch merge (= the input of
        timm stage ``s+1`` after ``downsample``), average-pooled to the last-stage grid.
        """
        trunk = self.trunk
        tokens = trunk.patch_embed(x)
        side = self.feature_resolution
        local_levels = []
        for index, stage in enumerate(trunk.layers):
            tokens = stage.downsample(tokens)
            if index > 0:
                level = tokens.permute(0, 3, 1, 2)
                local_levels.append(F.adaptive_avg_pool2d(level, side))
            tokens = stage.blocks(tokens)
        global_features = tokens.permute(0, 3, 1, 2).contiguous()
        embedding = self._embed(trunk.norm(tokens))
        if local_levels:
            local_features = torch.cat(local_levels, dim=1)
        else:
            local_features = global_features.new_zeros(global_features.shape[0], 0, side, side)
        return MultiLevelFeatures(local_features, global_features, embedding)


def build_swinface(preset_or_config: str | SwinFaceConfig = "swin_t", **overrides: object) -> SwinFaceBackbone:
    """Build a SwinFace backbone from a preset name (``swin_t``, ``nano``, ``micro``) or a config."""
    return SwinFaceBackbone(resolve_config(preset_or_config, **overrides))


_BLOCK_PATH = re.compile(r"(?:^|\.)layers\.(\d+)\.blocks\.(\d+)$")


def swin_block_map(model: nn.Module) -> dict[str, str]:
    """Reference block name ``layers.{s}.blocks.{b}`` -> module path in ``model``, in forward order.

    Works on a ``SwinFaceBackbone``, a model holding one (e.g. the multi-task model), or a bare timm
    Swin; raises ``ValueError`` when the model has no Swin blocks.
    """
    from timm.models.swin_transformer import SwinTransformerBlock

    mapping: dict[str, str] = {}
    for path, module in model.named_modules():
        if not isinstance(module, SwinTransformerBlock):
            continue
        match = _BLOCK_PATH.search(path)
        if match is None:
            raise ValueError(f"Swin block at unexpected path {path!r}")
        reference = f"layers.{match.group(1)}.blocks.{match.group(2)}"
        if reference in mapping:
            raise ValueError(f"model holds more than one Swin trunk ({mapping[reference]!r}, {path!r})")
        mapping[reference] = path
    if not mapping:
        raise ValueError(f"{type(model).__name__} contains no Swin Transformer blocks")
    return mapping


def swin_block_paths(model: nn.Module) -> list[str]:
    """Module paths of every Swin block in forward (= reference) order, e.g. ``trunk.layers.0.blocks.0``."""
    return list(swin_block_map(model).values())


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily route timm attention through explicit matmuls.

    timm's Swin attention is unfused by default, but fused SDPA can be switched on
    (``TIMM_FUSED_ATTN=2`` or ``timm.layers.set_fused_attn``); ``FlopCounterMode`` has no formula for
    the CPU fused kernel, so the attention matmuls (0.14 of Swin-T's 4.48 GMACs) would go uncounted.
    """
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    try:
        for module, _ in saved:
            module.fused_attn = False
        yield model
    finally:
        for module, flag in saved:
            module.fused_attn = flag


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one eval-mode forward on ``example`` (FLOPs / 2, torch FlopCounterMode).

    Works on the ``meta`` device too (shapes only), which makes counting large models instant.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with unfused_attention(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
