"""Load reference SwinFace checkpoints (the state-dict key names released with SwinFace) into our models.

Mapping from the reference layout (Microsoft-Swin style, as released with SwinFace) to ours:

* ``patch_embed.*``, ``layers.{s}.blocks.{b}.*``, ``norm.*``  ->  ``trunk.<same>``
* ``layers.{s}.downsample.*`` (merge *after* stage s)          ->  ``trunk.layers.{s+1}.downsample.*``
  with the 4C axis of ``norm.weight/bias`` and the input columns of ``reduction.weight`` permuted from
  the reference neighbour order (row, col) = (0,0), (1,0), (0,1), (1,1) to the order timm's
  ``PatchMerging`` uses.  timm's order is read off its forward by probing (see ``merge_permutation``),
  so a change in timm cannot silently scramble weights; with timm 1.0.x the two orders agree.
* ``feature.0..3.*``                                           ->  ``feature.0..3.*`` (unchanged)
* ``attn.relative_position_index`` and ``attn_mask`` buffers: compared with ours, then dropped
  (timm recomputes them; a mismatch means a different geometry and is an error).
* ``head.*`` (Linear 768->512, unused by the reference forward): dropped, with a note.
* qkv rows are [q | k | v], each head-major, in both layouts: no change.

Our own mapping; timm's ``checkpoint_filter_fn`` targets the ImageNet release and is not used.
Loading goes through ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .swinface import SwinFaceBackbone, SwinFaceConfig, resolve_config

__all__ = [
    "DataFormatError", "LoadReport", "MultiTaskLoadReport", "REFERENCE_MERGE_ORDER",
    "read_state_dict", "merge_permutation", "convert_reference_backbone_state",
    "reference_key_for", "load_reference_backbone", "load_reference_multitask",
    "infer_reference_config", "build_reference_backbone",
]

StateSource = Union[str, Path, Mapping]

#: Order in which the reference patch merge concatenates the 2x2 neighbours, as (row, col) offsets.
REFERENCE_MERGE_ORDER: tuple[tuple[int, int], ...] = ((0, 0), (1, 0), (0, 1), (1, 1))

_MULTITASK_PARTS = ("state_dict_backbone", "state_dict_fam", "state_dict_tss", "state_dict_om")
_SHOWN = 4  # how many offending keys an error message lists


from corecompress.errors import DataFormatError  # noqa: E402 - shared by every reader


@dataclass
class LoadReport:
    """What a load did: tensors loaded, keys left out (reference names) and notes for the user."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class MultiTaskLoadReport(LoadReport):
    """``LoadReport`` plus the recognition classifier (``state_dict_softmax_fc``), kept for margin heads."""

    margin_weight: torch.Tensor | None = None
    softmax_fc: dict[str, torch.Tensor] = field(default_factory=dict)


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def read_state_dict(source: StateSource, what: str = "checkpoint") -> tuple[dict, str]:
    """Return (mapping, label) from a path (``torch.load``, weights only) or an already-loaded mapping."""
    if isinstance(source, Mapping):
        return dict(source), f"<{what}>"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt / non-weights files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFormatError(f"{path}: not a readable weights-only torch checkpoint ({reason})") from None
    if not isinstance(loaded, Mapping):
        raise DataFormatError(f"{path}: expected a state dict, found {type(loaded).__name__}")
    return dict(loaded), str(path)


def _strip_module_prefix(state: dict, notes: list[str]) -> dict:
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        notes.append("stripped the DataParallel 'module.' prefix")
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def merge_permutation(dim: int, reference_order: tuple[tuple[int, int], ...] = REFERENCE_MERGE_ORDER
                      ) -> torch.Tensor:
    """Index ``p`` (length 4*dim) with ``timm_vector = reference_vector[p]`` for the merge's 4C axis.

    Found by running timm's own ``PatchMerging`` forward (norm and reduction replaced by identities)
    on a 2x2 grid whose entries encode (neighbour, channel).
    """
    from timm.models.swin_transformer import PatchMerging

    if sorted(reference_order) != [(0, 0), (0, 1), (1, 0), (1, 1)]:
        raise ValueError(f"reference_order {reference_order} is not an order of the 2x2 neighbours")
    probe = PatchMerging(dim=dim)
    probe.norm, probe.reduction = nn.Identity(), nn.Identity()
    codes = torch.arange(4 * dim, dtype=torch.float64).view(1, 2, 2, dim)  # code = (2r + c) * dim + ch
    with torch.no_grad():
        timm_codes = probe(codes).reshape(-1).round().long()
    row, col, channel = timm_codes // dim // 2, timm_codes // dim % 2, timm_codes % dim
    slot = {offset: index for index, offset in enumerate(reference_order)}
    neighbour = torch.tensor([slot[(int(r), int(c))] for r, c in zip(row, col)])
    return neighbour * dim + channel


_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_BLOCK_BUFFER = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(attn\.relative_position_index|attn_mask)$")
_MODEL_DOWNSAMPLE = re.compile(r"^trunk\.layers\.(\d+)\.downsample\.(.+)$")


def reference_key_for(model_key: str) -> str:
    """Reference checkpoint name of one of our backbone state-dict keys (used in messages)."""
    match = _MODEL_DOWNSAMPLE.match(model_key)
    if match:
        return f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
    return model_key[len("trunk."):] if model_key.startswith("trunk.") else model_key


def _check_buffer(model: SwinFaceBackbone, match: re.Match, value: torch.Tensor, label: str) -> None:
    stage, block, name = int(match.group(1)), int(match.group(2)), match.group(3)
    try:
        ours = model.trunk.layers[stage].blocks[block]
    except (IndexError, AttributeError):
        raise DataFormatError(f"{label}: {match.group(0)} names a block the model does not have") from None
    expected = ours.attn.relative_position_index if name.startswith("attn.") else ours.attn_mask
    same = (expected is not None and tuple(expected.shape) == tuple(value.shape)
            and torch.allclose(expected.double(), value.double()))
    if not same:
        raise DataFormatError(f"{label}: buffer {match.group(0)} differs from the model's "
                              "(different window size, shift or input size?)")


def convert_reference_backbone_state(
        state: Mapping, model: SwinFaceBackbone, *, label: str = "<checkpoint>",
        reference_merge_order: tuple[tuple[int, int], ...] = REFERENCE_MERGE_ORDER,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename/permute a reference backbone state dict into ``model``'s keys; returns (state, notes).

    Keys that have no place in our model are passed through unchanged (the caller reports them).
    """
    notes: list[str] = []
    state = _strip_module_prefix(dict(state), notes)
    converted: dict[str, torch.Tensor] = {}
    dropped_head, checked_buffers = [], 0
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise DataFormatError(f"{label}: entry {key!r} is not a tensor")
        if key.startswith("head."):
            dropped_head.append(key)
            continue
        buffer = _BLOCK_BUFFER.match(key)
        if buffer:
            _check_buffer(model, buffer, value, label)
            checked_buffers += 1
            continue
        merge = _DOWNSAMPLE.match(key)
        if merge:
            stage, rest = int(merge.group(1)), merge.group(2)
            if rest in ("norm.weight", "norm.bias") and value.dim() == 1 and value.numel() % 4 == 0:
                value = value[merge_permutation(value.numel() // 4, reference_merge_order)]
            elif rest == "reduction.weight" and value.dim() == 2 and value.shape[1] % 4 == 0:
                value = value[:, merge_permutation(value.shape[1] // 4, reference_merge_order)]
            converted[f"trunk.layers.{stage + 1}.downsample.{rest}"] = value
        elif key.startswith(("patch_embed.", "layers.", "norm.")):
            converted["trunk." + key] = value
        else:
            converted[key] = value
    if dropped_head:
        notes.append(f"dropped the unused reference head ({', '.join(dropped_head)})")
    if checked_buffers:
        notes.append(f"verified and dropped {checked_buffers} relative_position_index / attn_mask "
                     "buffers (timm recomputes them)")
    return converted, notes


def _load_mapped(module: nn.Module, mapped: dict, label: str, strict: bool,
                 to_reference=lambda key: key) -> tuple[int, list[str], list[str]]:
    expected = module.state_dict()
    missing = [to_reference(k) for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in expected]
    wrong = [f"{to_reference(k)} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise DataFormatError(f"{label}: shape mismatch: {_first(wrong)}")
    if strict and (missing or unexpected):
        parts = [f"{len(missing)} missing key(s): {_first(missing)}"] if missing else []
        parts += [f"{len(unexpected)} unexpected key(s): {_first(unexpected)}"] if unexpected else []
        raise DataFormatError(f"{label}: does not fit the model; " + "; ".join(parts))
    usable = {k: v for k, v in mapped.items() if k in expected}
    module.load_state_dict(usable, strict=False)
    return len(usable), missing, unexpected


def load_reference_backbone(model: SwinFaceBackbone, source: StateSource, *, strict: bool = True,
                            ) -> LoadReport:
    """Load a reference SwinFace backbone state dict (path or mapping) into ``model``.

    Strict by default: any missing or unexpected key raises ``DataFormatError`` listing the first few.
    """
    state, label = read_state_dict(source, "SwinFace backbone checkpoint")
    return _load_backbone_state(model, state, label, strict)


def _load_backbone_state(model: SwinFaceBackbone, state: Mapping, label: str, strict: bool) -> LoadReport:
    if not isinstance(state, Mapping):
        raise DataFormatError(f"{label}: expected a state dict, found {type(state).__name__}")
    mapped, notes = convert_reference_backbone_state(state, model, label=label)
    loaded, missing, unexpected = _load_mapped(model, mapped, label, strict, reference_key_for)
    return LoadReport(loaded, missing, unexpected, notes)


def _load_head_part(module: nn.Module, part: Mapping, label: str, strict: bool, matching: str,
                    notes: list[str]) -> tuple[int, list[str], list[str]]:
    part = _strip_module_prefix(dict(part), notes)
    ours = module.state_dict()
    if matching == "order" and set(part) != set(ours):
        theirs = list(part.items())
        if len(theirs) != len(ours) or any(
                tuple(v.shape) != tuple(o.shape) for (_, v), o in zip(theirs, ours.values())):
            raise DataFormatError(f"{label}: cannot match by order, the {len(theirs)} tensors do not "
                                  f"have the shapes of the model's {len(ours)}")
        notes.append(f"{label}: matched {len(theirs)} tensors by order (shapes checked)")
        part = {key: value for key, (_, value) in zip(ours, theirs)}
    elif matching not in ("name", "order"):
        raise ValueError(f"head_key_matching must be 'name' or 'order', not {matching!r}")
    try:
        return _load_mapped(module, part, label, strict)
    except DataFormatError as err:
        if matching == "name":
            raise DataFormatError(f"{err} (try head_key_matching='order')") from None
        raise


def load_reference_multitask(model: nn.Module, source: StateSource, *, strict: bool = True,
                             head_key_matching: str = "name") -> MultiTaskLoadReport:
    """Load the released multi-task dict into a ``SwinFaceMultiTask`` (``backbone/fam/tss/om``).

    ``state_dict_backbone`` goes through the reference mapping; ``state_dict_fam/tss/om`` load into
    ``model.fam/tss/om`` by key name, or by registration order with every shape checked when
    ``head_key_matching='order'`` (the released heads' key names are not documented; order matching is the fallback).
    ``state_dict_softmax_fc`` is returned (``margin_weight``) to initialise a margin head.
    """
    state, label = read_state_dict(source, "SwinFace multi-task checkpoint")
    absent = [part for part in _MULTITASK_PARTS if part not in state]
    if "state_dict_backbone" in absent or (strict and absent):
        raise DataFormatError(f"{label}: not a SwinFace multi-task checkpoint, lacks {', '.join(absent)}")
    report = MultiTaskLoadReport()
    backbone = _load_backbone_state(model.backbone, state["state_dict_backbone"],
                                    f"{label}[state_dict_backbone]", strict)
    report.loaded, report.notes = backbone.loaded, list(backbone.notes)
    report.missing = ["state_dict_backbone/" + k for k in backbone.missing]
    report.unexpected = ["state_dict_backbone/" + k for k in backbone.unexpected]
    for part_name, attribute in (("state_dict_fam", "fam"), ("state_dict_tss", "tss"), ("state_dict_om", "om")):
        if part_name not in state:
            report.notes.append(f"{part_name} absent: model.{attribute} keeps its initial weights")
            continue
        if not isinstance(state[part_name], Mapping):
            raise DataFormatError(f"{label}: {part_name} is not a state dict")
        loaded, missing, unexpected = _load_head_part(
            getattr(model, attribute), state[part_name], f"{label}[{part_name}]", strict,
            head_key_matching, report.notes)
        report.loaded += loaded
        report.missing += [f"{part_name}/{k}" for k in missing]
        report.unexpected += [f"{part_name}/{k}" for k in unexpected]
    softmax_fc = state.get("state_dict_softmax_fc")
    if isinstance(softmax_fc, Mapping):
        report.softmax_fc = _strip_module_prefix(dict(softmax_fc), report.notes)
        matrices = [v for v in report.softmax_fc.values() if isinstance(v, torch.Tensor) and v.dim() == 2]
        report.margin_weight = report.softmax_fc.get("weight", matrices[0] if len(matrices) == 1 else None)
    if report.margin_weight is None:
        report.notes.append("no recognition classifier weight found in state_dict_softmax_fc")
    return report


def infer_reference_config(state: Mapping, **overrides: object) -> SwinFaceConfig:
    """Read a ``SwinFaceConfig`` off a reference backbone state dict's shapes.

    The input size comes from the stage attention masks (number of windows); when no stage has a
    mask (every stage one window) it cannot be seen and ``img_size`` falls back to 112 unless given.
    Training-only fields (drop-path, BN eps) keep their defaults.
    """
    notes: list[str] = []
    state = _strip_module_prefix(dict(state), notes)
    try:
        proj = state["patch_embed.proj.weight"]
        embed_dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
        tables = {}
        for key, value in state.items():
            match = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table$", key)
            if match:
                tables[(int(match.group(1)), int(match.group(2)))] = value
        num_stages = 1 + max(s for s, _ in tables)
        depths = tuple(1 + max(b for s, b in tables if s == stage) for stage in range(num_stages))
        heads = tuple(tables[(stage, 0)].shape[1] for stage in range(num_stages))
        window = (math.isqrt(tables[(0, 0)].shape[0]) + 1) // 2
        fc1 = state["layers.0.blocks.0.mlp.fc1.weight"]
        grid = None
        for (stage, block) in sorted(tables):
            mask = state.get(f"layers.{stage}.blocks.{block}.attn_mask")
            if mask is not None:
                grid = window * math.isqrt(mask.shape[0]) * 2 ** stage
                break
        found = dict(
            img_size=grid * patch if grid else 112, patch_size=patch, in_chans=in_chans,
            embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window,
            mlp_ratio=fc1.shape[0] / fc1.shape[1],
            qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state,
            embedding_size=state["feature.2.weight"].shape[0],
        )
    except (KeyError, ValueError, IndexError, AttributeError) as err:
        raise DataFormatError(f"not a SwinFace backbone state dict (cannot read its shape: {err})") from None
    found.update(overrides)
    return resolve_config(SwinFaceConfig(**found))


def build_reference_backbone(source: StateSource, *, strict: bool = True, **overrides: object
                             ) -> tuple[SwinFaceBackbone, LoadReport]:
    """Build a backbone shaped like a reference checkpoint and load it (backbone or multi-task dict)."""
    state, label = read_state_dict(source, "SwinFace checkpoint")
    if "state_dict_backbone" in state:
        state = dict(state["state_dict_backbone"])
    try:
        config = infer_reference_config(state, **overrides)
    except DataFormatError as err:
        raise DataFormatError(f"{label}: {err}") from None
    model = SwinFaceBackbone(config)
    report = _load_backbone_state(model, state, label, strict)
    return model, report
