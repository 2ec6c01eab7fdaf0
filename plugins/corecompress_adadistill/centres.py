"""AdaDistill's adaptive class centres: the ordered update (Boutros et al., ECCV 2024, Eqs. 7–8).

Layout: ``centres`` is K × d (one row per class, like ``nn.Linear`` and the margin heads); the paper's
W ∈ R^{d×K} is its transpose. Rows are stored un-normalised; cosines normalise on the fly.

Per sample i (f_s, f_t L2-normalised; the paper's centre update, done under no_grad):
    c_i  = clamp(cos(f_s,i, f_t,i), −1, 1)
    λ_i  = clamp(cos(W[y_i], f_t,i), 1e-6, 1)
    α′_i = clamp(c_i·λ_i, 1e-6, 1)            ("weighted", Eq. 8, the default)
    α_i  = clamp(c_i, 0, 1)                   ("plain", Eq. 7)
    W[y_i] ← α_i·W[y_i] + (1 − α_i)·f_t,i

Deviations from the reference implementation (on purpose; each is a defect there):
- duplicate labels in one batch: the reference writes all rows at once, so one write wins, in an
  order undefined on GPU. Here the updates of a class's samples are applied sequentially in batch
  order — the second sample's λ sees the centre already moved by the first. Vectorised over the
  distinct classes; the Python loop runs only over the repeat depth (max samples per class).
- several processes: :func:`gather_from_ranks` concatenates (f_s, f_t, y) of all ranks in rank order,
  and every rank applies the same ordered update, so the centres stay identical (the reference
  updates each rank's copy from its local batch only, and the copies drift apart).
- the plain-α branch works (the reference's raises at start-up).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

Variant = Literal["weighted", "plain"]
ALPHA_FLOOR = 1e-6


@dataclass
class UpdateStats:
    """Per-sample values of one update, in batch order: α (α′ or plain α), λ and c."""

    alpha: Tensor
    lam: Tensor
    c: Tensor


def occurrence_rank(labels: Tensor) -> Tensor:
    """For each sample, how many earlier samples of the batch carry the same label (0 = first)."""
    n = labels.shape[0]
    if n == 0:
        return labels.new_zeros(0)
    order = torch.sort(labels, stable=True).indices
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(n, device=labels.device) - torch.repeat_interleave(starts, counts)
    rank = torch.empty_like(position)
    rank[order] = position
    return rank


@torch.no_grad()
def adaptive_update(centres: Tensor, f_s: Tensor, f_t: Tensor, labels: Tensor,
                    variant: Variant = "weighted") -> UpdateStats:
    """Update ``centres`` (K × d) in place from one batch, in batch order; returns α, λ, c per sample.

    ``f_s`` and ``f_t`` are (N, d) and are L2-normalised here (normalised inputs pass unchanged).
    Samples of distinct classes are independent, so each "depth" (the r-th occurrence of every
    class) is one vectorised step.
    """
    if variant not in ("weighted", "plain"):
        raise ValueError(f"variant must be 'weighted' or 'plain', got {variant!r}")
    f_s = F.normalize(f_s.to(centres.dtype), dim=1)
    f_t = F.normalize(f_t.to(centres.dtype), dim=1)
    labels = labels.long()
    c = (f_s * f_t).sum(dim=1).clamp(-1.0, 1.0)
    alpha = torch.empty_like(c)
    lam = torch.empty_like(c)
    rank = occurrence_rank(labels)
    depth = int(rank.max()) + 1 if rank.numel() else 0
    for r in range(depth):
        idx = torch.nonzero(rank == r, as_tuple=True)[0]
        classes = labels[idx]                      # distinct within one depth
        rows = centres.index_select(0, classes)
        target = f_t.index_select(0, idx)
        lam_r = (F.normalize(rows, dim=1) * target).sum(dim=1).clamp(ALPHA_FLOOR, 1.0)
        c_r = c.index_select(0, idx)
        a = (c_r * lam_r).clamp(ALPHA_FLOOR, 1.0) if variant == "weighted" else c_r.clamp(0.0, 1.0)
        centres.index_copy_(0, classes, a[:, None] * rows + (1.0 - a[:, None]) * target)
        alpha.index_copy_(0, idx, a)
        lam.index_copy_(0, idx, lam_r)
    return UpdateStats(alpha=alpha, lam=lam, c=c)


def distributed_world() -> int:
    """The number of processes of an initialised default process group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def gather_from_ranks(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Concatenate each tensor over all ranks in rank order (identity without a process group).

    All tensors share their first dimension; ranks may hold different batch sizes (padded for
    the collective, trimmed after).
    """
    world = distributed_world()
    if world == 1:
        return tensors
    device = tensors[0].device
    size = torch.tensor([tensors[0].shape[0]], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        gathered.append(torch.cat([part[:n] for part, n in zip(parts, counts)]))
    return tuple(gathered)
