"""Model adapters of the face plugin: build a face backbone and describe what can be pruned.

Each adapter turns the model's structure into :class:`~corecompress.pruning.PrunableGroup` data;
masking and physical removal are derived from it by the core, so both agree by construction.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from corecompress.errors import UserError
from corecompress.pruning.cnn import inner_channel_group
from corecompress.pruning.groups import PrunableGroup
from corecompress.pruning.transformer import block_groups
from corecompress.pruning.transformer_finder import Finding, find_transformer_groups


def transformer_groups(model: nn.Module, block_paths: list[str], targets: tuple[str, ...],
                       rel_pos_table: str | None = None) -> list[PrunableGroup]:
    """Groups of every pre-norm block at ``block_paths`` (sizes read from the modules)."""
    groups: list[PrunableGroup] = []
    for path in block_paths:
        block = model.get_submodule(path)
        attn = block.attn
        qkv = attn.qkv
        heads = int(attn.num_heads)
        head_dim = qkv.out_features // 3 // heads
        found = block_groups(path, dim=block.norm1.normalized_shape[0], num_heads=heads, head_dim=head_dim,
                             hidden=block.mlp.fc1.out_features, targets=targets, qkv_bias=qkv.bias is not None,
                             rel_pos_table=rel_pos_table if rel_pos_table and hasattr(attn, rel_pos_table) else None)
        if hasattr(attn, "attn_dim"):  # timm's ViT attention reshapes with attn_dim = heads × head_dim
            found = [dataclasses.replace(g, attributes=g.attributes + ((f"{path}.attn", "attn_dim", head_dim),))
                     if g.kind == "heads" else g for g in found]
        groups += found
    return groups


def _blocks_line(kind: str, notes: list, what: str) -> str:
    shown = ", ".join(r.block for r in notes[:3]) + (f" and {len(notes) - 3} more" if len(notes) > 3 else "")
    return f"prune.targets: {kind} {what} in {len(notes)} block(s) ({shown}): {notes[0].reason}"


def refusals_said(finding: Finding, targets: tuple[str, ...]) -> list[PrunableGroup]:
    """The finding's groups; each refused kind that was asked for is one warning line naming its blocks
    (heads taken from the projections only too), and a UserError (exit 2) when nothing at all can be
    pruned for the asked kinds."""
    lines = []
    for kind in dict.fromkeys(r.kind for r in finding.refusals if r.kind in targets):
        lines.append(_blocks_line(kind, finding.refused(kind), "not prunable"))
    if not finding.groups and lines:
        raise UserError(lines[0])
    if finding.partial:
        lines.append(_blocks_line("heads", finding.partial, "come out of q/k/v and the output projection only "
                                  "(the attention still runs every head)"))
    for line in lines:
        warnings.warn(line, stacklevel=2)
    return finding.groups


@dataclass
class SwinFaceOptions:
    preset: Literal["swin_t", "nano", "micro"] = field(
        default="swin_t", metadata={"help": "swin_t = the SwinFace backbone (28.5 M, 4.48 GMACs); nano/micro for CPU"})
    embedding_size: int | None = field(default=None, metadata={"help": "override the preset's embedding size"})
    img_size: int | None = None
    drop_path_rate: float | None = None
    checkpoint: Literal["auto", "corecompress", "reference"] = field(
        default="auto", metadata={"help": "layout of weights files: reference = the SwinFace release's keys"})


class SwinFaceAdapter:
    """SwinFace (Qin et al., arXiv 2308.11509) on timm's Swin; groups per block: FACES channels
    (norm1→qkv, norm2→fc1 inputs), attention heads (with the relative-position table), MLP neurons."""

    def __init__(self, options: SwinFaceOptions) -> None:
        from corecompress_facekit.models.swinface import resolve_config

        self.options = options
        overrides = {k: getattr(options, k) for k in ("embedding_size", "img_size", "drop_path_rate")
                     if getattr(options, k) is not None}
        try:
            self.config = resolve_config(options.preset, **overrides)
        except ValueError as exc:
            raise UserError(f"model: {exc}") from None
        self.input_size = (3, self.config.img_size, self.config.img_size)
        self.embedding_size = self.config.embedding_size

    def build(self) -> nn.Module:
        from corecompress_facekit.models.swinface import SwinFaceBackbone

        return SwinFaceBackbone(self.config)

    def prunable_groups(self, model: nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        from corecompress_facekit.models.swinface import swin_block_paths

        return transformer_groups(model, swin_block_paths(model), targets, "relative_position_bias_table")

    def load_weights(self, model: nn.Module, path: str) -> None:
        from corecompress.tools.export import load_weights_file

        if self.options.checkpoint == "corecompress":
            load_weights_file(model, path)
            return
        try:
            load_weights_file(model, path)
            return
        except UserError:
            if self.options.checkpoint == "corecompress":
                raise
        from corecompress_facekit.models.swinface_checkpoint import load_reference_backbone

        try:
            load_reference_backbone(model, path)
        except (ValueError, KeyError) as exc:
            raise UserError(f"weights: {path}: {str(exc).splitlines()[0]}") from None


@dataclass
class IResNetOptions:
    depth: Literal[18, 50, 100, 0] = field(default=50, metadata={"help": "0 = the small CPU variant (widths/layers)"})
    embedding_size: int = 512
    input_size: int = 112
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128], metadata={"help": "depth 0 only"})
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1], metadata={"help": "depth 0 only"})


class IResNetAdapter:
    """IResNet (Deng et al., ArcFace, CVPR 2019; insightface layout); groups: inner channels of each block."""

    def __init__(self, options: IResNetOptions) -> None:
        self.options = options
        self.input_size = (3, options.input_size, options.input_size)
        self.embedding_size = options.embedding_size

    def build(self) -> nn.Module:
        from corecompress_facekit.models import iresnet

        o = self.options
        if o.depth == 0:
            return iresnet.iresnet_small(widths=tuple(o.widths), layers=tuple(o.layers),
                                         embedding_size=o.embedding_size, input_size=o.input_size)
        return iresnet.iresnet(o.depth, embedding_size=o.embedding_size, input_size=o.input_size)

    def prunable_groups(self, model: nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        from corecompress_facekit.models.iresnet import IBasicBlock

        if "filters" not in targets:
            return []
        groups = []
        for path, block in model.named_modules():
            if isinstance(block, IBasicBlock):
                bn = f"{path}.bn2"
                groups.append(inner_channel_group(
                    f"{path}.inner", block.conv1.out_channels, block=path,
                    produced=[f"{path}.conv1.weight", f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean",
                              f"{bn}.running_var", f"{path}.prelu.weight"],
                    consumed=[f"{path}.conv2.weight"], scale=f"{bn}.weight"))
        return groups


@dataclass
class MobileFaceNetOptions:
    embedding_size: int = 512
    input_size: int = 112
    width: float = 1.0
    blocks: list[int] = field(default_factory=lambda: [4, 6, 2])


class MobileFaceNetAdapter:
    """MobileFaceNet (Chen et al., CCBR 2018): the AdaDistill student. Not a pruning target here."""

    def __init__(self, options: MobileFaceNetOptions) -> None:
        self.options = options
        self.input_size = (3, options.input_size, options.input_size)
        self.embedding_size = options.embedding_size

    def build(self) -> nn.Module:
        from corecompress_facekit.models.mobilefacenet import MobileFaceNet

        o = self.options
        return MobileFaceNet(embedding_size=o.embedding_size, width=o.width, input_size=o.input_size,
                             blocks=tuple(o.blocks))

    def prunable_groups(self, model: nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        return []


@dataclass
class DlibResNetOptions:
    weights: str | None = field(default=None, metadata={
        "help": "folder (or manifest) of the face-api files; null = random init (architecture only)"})
    input: Literal["raw", "normalized"] = field(default="raw", metadata={
        "help": "raw = 150x150 RGB in 0..255 (dlib's own); normalized = the pipeline's (x/255-0.5)/0.5 at any size"})


class NormalizedInput(nn.Module):
    """Feeds a dlib ResNet from the pipeline's normalised images: back to 0..255, bilinear to 150×150."""

    def __init__(self, net: nn.Module, size: int = 150) -> None:
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * 0.5 + 0.5) * 255.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(x)


class DlibResNetAdapter:
    """dlib's face-recognition ResNet (128-d) from face-api's TF.js files; groups: inner channels of every
    residual block (conv1 outputs = conv2 inputs), scored by FACES' rule via the folded affine scale."""

    def __init__(self, options: DlibResNetOptions) -> None:
        self.options = options
        self.input_size = (3, 150, 150)
        self.embedding_size = 128

    def build(self) -> nn.Module:
        from corecompress_facekit.models.dlib_resnet import DlibFaceResNet, load_dlib_resnet

        if self.options.weights is None:
            net = DlibFaceResNet()
        else:
            try:
                net = load_dlib_resnet(self.options.weights)
            except (ValueError, FileNotFoundError) as exc:
                raise UserError(f"model.weights: {str(exc).splitlines()[0]}") from None
        return NormalizedInput(net) if self.options.input == "normalized" else net

    def prunable_groups(self, model: nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        if "filters" not in targets:
            return []
        groups = []
        net = model.net if isinstance(model, NormalizedInput) else model
        for block in net.blocks():
            path = next(name for name, m in model.named_modules() if m is block)
            c1 = f"{path}.conv1"
            groups.append(inner_channel_group(
                f"{path}.inner", block.conv1.conv.out_channels, block=path,
                produced=[f"{c1}.conv.weight", f"{c1}.conv.bias", f"{c1}.scale.weight", f"{c1}.scale.bias"],
                consumed=[f"{path}.conv2.conv.weight"], scale=f"{c1}.scale.weight"))
        return groups


@dataclass
class TimmBackboneOptions:
    model_name: str = field(default="vit_tiny_patch16_224", metadata={"help": "any timm model name"})
    embedding_size: int = 512
    img_size: int = 112
    weights: str | None = field(default=None, metadata={"help": "local timm weights (safetensors or .pt)"})


class TimmBackboneAdapter:
    """Any timm model + an embedding head; its transformer blocks are found by what they do
    (:mod:`corecompress.pruning.transformer_finder`) and expose their groups."""

    def __init__(self, options: TimmBackboneOptions) -> None:
        self.options = options
        self.input_size = (3, options.img_size, options.img_size)
        self.embedding_size = options.embedding_size

    def build(self) -> nn.Module:
        from corecompress_facekit.models.timm_backbone import TimmFaceBackbone

        o = self.options
        try:
            return TimmFaceBackbone(o.model_name, embedding_size=o.embedding_size, img_size=o.img_size,
                                    pretrained_path=o.weights)
        except (ValueError, FileNotFoundError) as exc:
            raise UserError(f"model: {str(exc).splitlines()[0]}") from None

    def prunable_groups(self, model: nn.Module, targets: tuple[str, ...]) -> list[PrunableGroup]:
        finding = find_transformer_groups(model, self.input_size, targets)
        groups = refusals_said(finding, targets)
        if "filters" in targets:
            groups += self.graph_groups(model, groups)
        return groups

    def graph_groups(self, model: nn.Module, owned: list[PrunableGroup]) -> list[PrunableGroup]:
        """CNN filters from the dependency graph, outside the tensors the ``owned`` groups slice; the
        embedding head keeps its outputs. Without Torch-Pruning: the owned groups suffice, else one line."""
        from corecompress.pruning.dependency_graph import graph_filter_groups

        try:
            return graph_filter_groups(model, torch.zeros(1, *self.input_size, device=_device(model)),
                                       keep_outputs=[model.fc], skip_tensors={s.tensor for g in owned for s in g.slices})
        except UserError:
            if owned:
                return []
            raise


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def register(register: Any) -> None:
    register("swinface", SwinFaceAdapter, SwinFaceOptions, description="SwinFace backbone (timm Swin), presets swin_t/nano/micro")
    register("iresnet", IResNetAdapter, IResNetOptions, description="IResNet-18/50/100 (insightface layout) or a small variant")
    register("mobilefacenet", MobileFaceNetAdapter, MobileFaceNetOptions, description="MobileFaceNet (512-d, 1.2 M params)")
    register("dlib_resnet", DlibResNetAdapter, DlibResNetOptions, description="dlib's pretrained face ResNet (face-api files)")
    register("timm", TimmBackboneAdapter, TimmBackboneOptions, description="any timm model as a face backbone")
