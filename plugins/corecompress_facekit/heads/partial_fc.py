"""A margin head sharded by classes across ranks (model-parallel class centres, Partial FC).

Paper: An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021.
Rank r of N holds only rows [start_r, stop_r) of the K × E class centres (K // N rows each, the
remainder one each to the first ranks; :func:`corecompress.engine.row_shards.row_bounds`). One step:

1. the embeddings (and labels) of the global batch are all-gathered — with autograd: the backward
   sums the embedding gradients of all ranks and returns each rank its own slice (:func:`gather_batch`);
2. every rank computes the cosines of all B embeddings to its own centres (B × K/N) and applies the
   margin (:func:`~corecompress_facekit.heads.margin.margin_logits`, the same ArcFace / CosFace /
   combined code as the unsharded head) only where the label's class is one of its rows;
3. the softmax cross-entropy is computed exactly across ranks: an all-reduced row maximum, an
   all-reduced sum of exponentials and an all-reduced target logit (3·B values); its backward,
   (softmax − one-hot)/B, needs no communication (:class:`DistributedCrossEntropy`).

The loss is the global-batch mean, identical on every rank, with exact gradients: each rank's
centre gradient is complete locally, nothing of size K·E is communicated, and the result equals the
unsharded head's loss and gradients (tested on 2 gloo processes). With one process the objective uses
the ordinary :class:`~corecompress_facekit.heads.margin.CombinedMarginHead` (identical bit for bit).

Deviations from Partial FC: no class sampling (the paper's ``sample_rate`` < 1, keeping the batch's
positive centres and a random subset of negatives, is not implemented: every rank uses all its
rows); the gradient of the all-gather is an all-reduce followed by a slice (gloo has no
reduce-scatter) — same values, B × E more traffic.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from corecompress.engine.precision import autocast_off, float32_math
from corecompress.engine import distributed, row_shards
from corecompress_facekit.heads.margin import DEFAULT_EPS, CombinedMarginHead, _check_margins, margin_logits


class _AllGatherRows(torch.autograd.Function):
    """All-gather along rows; backward: the gradients of all ranks summed, this rank's slice returned."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sizes: list[int], rank: int) -> Tensor:
        ctx.start = sum(sizes[:rank])
        ctx.rows = sizes[rank]
        return row_shards.all_gather_rows(tensor.detach().contiguous(), sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start: ctx.start + ctx.rows], None, None


def gather_batch(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """(embeddings, labels) of the global batch in rank order, and this rank's first row in it.
    Gradients of the gathered embeddings flow back to the rank that produced each row."""
    if not distributed.is_active():
        return embeddings, labels, 0
    size = torch.tensor([embeddings.shape[0]], device=embeddings.device)
    sizes = [torch.zeros_like(size) for _ in range(distributed.world())]
    dist.all_gather(sizes, size)
    sizes_ = [int(s) for s in sizes]
    rank = distributed.rank()
    gathered = _AllGatherRows.apply(embeddings, sizes_, rank)
    return gathered, row_shards.all_gather_rows(labels.long(), sizes_), sum(sizes_[:rank])


def _all_reduce(tensor: Tensor, op: Any = None) -> Tensor:
    if distributed.is_active():
        dist.all_reduce(tensor, op=op if op is not None else dist.ReduceOp.SUM)
    return tensor


class DistributedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over classes split across ranks (Partial FC's DistCrossEntropy).

    ``logits`` (B, K_local) are this rank's columns; ``local_target`` (B,) the label's column here,
    or −1 where another rank holds the class. Forward: log Σ_all exp(z − max) − (z_y − max) from an
    all-reduced maximum, sum of exponentials and target logit; backward: (softmax − one-hot) / B on
    this rank's columns (complete: the softmax denominators are global already).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, local_target: Tensor) -> Tensor:
        logits = logits.detach()
        row_max = _all_reduce(logits.max(dim=1).values, dist.ReduceOp.MAX)
        exp = (logits - row_max[:, None]).exp()
        sum_exp = _all_reduce(exp.sum(dim=1))
        rows = torch.nonzero(local_target >= 0, as_tuple=True)[0]
        cols = local_target[rows]
        target = torch.zeros_like(row_max)
        target[rows] = logits[rows, cols] - row_max[rows]
        target = _all_reduce(target)
        ctx.save_for_backward(exp / sum_exp[:, None], rows, cols)
        return (sum_exp.log() - target).mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        softmax, rows, cols = ctx.saved_tensors
        out = softmax.clone()
        out[rows, cols] -= 1.0
        return out * (grad / softmax.shape[0]), None


def _cosine(embeddings: Tensor, centres: Tensor) -> Tensor:
    # exactly CombinedMarginHead.cosine: float32 even under autocast, no clamp (margin_logits clamps)
    with autocast_off():
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(centres.float(), dim=1))


def sharded_margin_loss(embeddings: Tensor, labels: Tensor, centres: Tensor, class_start: int,
                        s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                        eps: float = DEFAULT_EPS) -> tuple[Tensor, int]:
    """(global-batch mean margin cross-entropy, global batch size) from this rank's ``embeddings``
    (b, E), ``labels`` (b,) and its ``centres`` (rows [class_start, class_start + K_local) of the
    K × E matrix). Every rank calls it; the loss is the same everywhere and its gradients are exact:
    ``embeddings`` receive ∂L/∂(their rows), ``centres`` ∂L/∂(their rows) — as if one process held
    the whole batch and the whole matrix."""
    everything, all_labels, _ = gather_batch(embeddings, labels)
    local_target = all_labels - class_start
    local_target = torch.where((local_target >= 0) & (local_target < centres.shape[0]), local_target,
                               torch.full_like(local_target, -1))
    logits = margin_logits(_cosine(everything, centres), local_target, s, m1, m2, m3, eps)
    return DistributedCrossEntropy.apply(logits, local_target), int(everything.shape[0])


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


class ShardedMarginHead(nn.Module):
    """This rank's rows of the class centres of a combined-margin head (``weight``: K_local × E).

    ``init_weight`` is the full K × E start (the unsharded head's), of which this rank keeps its rows,
    so the concatenated shards are the unsharded head. The parameter is tagged for the core
    (:mod:`corecompress.engine.row_shards`): DDP leaves it alone, checkpoints gather it into the full matrix
    under the same name (``head.weight``) as the unsharded head's, resume slices it again.
    """

    def __init__(self, embedding_size: int, num_classes: int, init_weight: Tensor, s: float = 64.0,
                 m1: float = 1.0, m2: float = 0.5, m3: float = 0.0, rank: int = 0, world: int = 1,
                 eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        _check_margins(m1, m2)
        if tuple(init_weight.shape) != (num_classes, embedding_size):
            raise ValueError(f"init_weight has shape {list(init_weight.shape)}, expected [{num_classes}, "
                             f"{embedding_size}]")
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.s, self.m1, self.m2, self.m3, self.eps = s, m1, m2, m3, eps
        self.class_start, self.class_stop = row_shards.row_bounds(num_classes, rank, world)
        self.weight = nn.Parameter(init_weight[self.class_start:self.class_stop].detach().clone().float())
        row_shards.mark(self.weight, self.class_start, self.class_stop, num_classes)

    @float32_math
    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The exact global-batch mean loss (see :func:`sharded_margin_loss`)."""
        return self._loss(embeddings, labels)[0]

    def _loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, int]:
        return sharded_margin_loss(embeddings, labels, self.weight, self.class_start, self.s, self.m1, self.m2,
                                   self.m3, self.eps)

    def data_parallel_loss(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(loss to return to corecompress's data-parallel training loop, the global mean loss to log).

        The loop multiplies rank r's loss by its share n_r·N/B and DDP averages the *model*'s gradients
        over N ranks (docs/distributed.md) — right for a loss that is the local batch mean. This one is
        the global mean on every rank already, so it is divided by the share (the centres' gradient,
        which DDP does not average, stays exact) and the embeddings' gradient is multiplied by N
        (cancelling DDP's 1/N, so the model's gradient is the global mean's too). The loop's
        sample-weighted logging of the returned value gives back the global mean.
        """
        world = distributed.world()
        scaled = _ScaleGradient.apply(embeddings, float(world)) if world > 1 else embeddings
        loss, global_batch = self._loss(scaled, labels)
        share = embeddings.shape[0] * world / global_batch
        return (loss / share if share != 1.0 else loss), loss.detach()

    def full_head(self) -> CombinedMarginHead:
        """The unsharded head with every rank's rows (a collective: all-gathers K × E on every rank)."""
        shard = row_shards.shard_of(self.weight)
        full = row_shards.gather_rows(self.weight.detach(), shard, dst=None)
        return CombinedMarginHead(self.embedding_size, self.num_classes, s=self.s, m1=self.m1, m2=self.m2,
                                  m3=self.m3, init_weight=full, init_weight_layout="KE",
                                  eps=self.eps).to(self.weight.device)

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"rows=[{self.class_start}, {self.class_stop}), s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}")
