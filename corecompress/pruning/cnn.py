"""Prunable groups of CNN blocks: the inner channels of a residual block (network slimming).

The block's output channels are tied to the residual stream (and, in dlib's ResNet, to zero-padded
shortcuts), so only the channels between the block's convolutions are pruned: the producing
conv's output filters (+ bias) and everything per-channel after it (norm/affine scale, PReLU), and
the consuming conv's input channels. Liu et al., "Learning Efficient Convolutional Networks through
Network Slimming", ICCV 2017 rank them by the norm scale γ that follows the producing conv.
"""
from __future__ import annotations

from corecompress.pruning.groups import PrunableGroup, Slice


def inner_channel_group(name: str, size: int, *, block: str, produced: list[str], consumed: list[str],
                        scale: str | None, attributes: tuple[tuple[str, str], ...] = ()) -> PrunableGroup:
    """``produced``: tensors indexed by the channel along dim 0; ``consumed``: along dim 1."""
    slices = tuple(Slice(t, 0) for t in produced) + tuple(Slice(t, 1) for t in consumed)
    return PrunableGroup(name=name, kind="filters", size=size, block=block, scale=scale, slices=slices,
                         attributes=attributes)
