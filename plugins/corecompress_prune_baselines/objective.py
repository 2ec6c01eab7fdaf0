"""The loss that gradient- and search-based baselines differentiate at scoring time.

The run's training objective (a margin head, a distillation loss, ...) is not available when the
``score`` stage runs, so every baseline here uses one documented stand-in, chosen by ``loss``:

- ``ce``: cross-entropy of the outputs against ``label`` — for models that output logits (the test
  kit's ``num_outputs`` = classes). The outputs must have one column per class.
- ``teacher_cosine``: mean ``1 − cos(model(x), teacher(x))`` with ``context.teacher`` — the natural
  choice for face embedding models (their outputs are compared by cosine).
- ``embedding_norm``: mean ``½‖model(x)‖²`` — the simplest label-free proxy. Beware: for a
  cosine-compared embedding it measures how a unit changes the embedding *along itself* (its norm),
  which verification ignores.
- ``random_projection``: ``Σ_b z_bᵀ model(x_b)`` with fixed Gaussian ``z`` (seeded per batch). For
  a unit with parameters ``w`` the squared Taylor term ``(Σ w·∂L/∂w)²`` is then an unbiased estimate
  of ``Σ_b ‖J_b w‖²``, the squared first-order change of the outputs when the unit is removed — in
  every direction, not only along the embedding.
- ``auto`` (default): ``ce`` when the outputs have ``num_classes`` columns; else ``teacher_cosine``
  when a teacher exists and differs from the model; else ``random_projection``. A teacher that *is*
  the model (the default teacher "the model before pruning") gives a loss of exactly 0 at scoring
  time and therefore zero gradients, hence the fallback. For ViT-Slim's mask search (which moves
  away from the unmasked model) ``auto`` instead prefers ``teacher_cosine`` whenever the outputs are
  not logits, using the teacher if any, else the model's own unmasked outputs as the target.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator, Literal

import torch
import torch.nn.functional as F

from corecompress.errors import UserError

LossName = Literal["auto", "ce", "teacher_cosine", "embedding_norm", "random_projection"]
LOSS_HELP = ("scoring loss: auto | ce (logits + labels) | teacher_cosine (1 − cos to context.teacher) | "
             "embedding_norm (½‖f(x)‖²) | random_projection (zᵀf(x), label-free)")

log = logging.getLogger("corecompress.baselines")


def calibration(context: Any) -> list[dict[str, Any]]:
    """The calibration batches: ``context.calibration`` when present (tests), else the recipe's."""
    batches = getattr(context, "calibration", None)
    if batches is None:
        from corecompress.engine.calibration import run_batches

        batches = run_batches(context)
    if not batches:
        raise UserError("prune.calibration_batches: this importance needs at least one calibration batch")
    return list(batches)


def context_log(context: Any) -> logging.Logger:
    return getattr(context, "log", None) or log


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards every submodule's own train/eval flag as it was."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's output on ``batch['image']`` as a (B, D) tensor (first element of a tuple/dict)."""
    out = model(batch["image"].to(model_device(model)))
    if isinstance(out, dict):
        out = out.get("embedding", out.get("logits", next(iter(out.values()))))
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out.reshape(out.shape[0], -1)


class Objective:
    """``objective(outputs, batch, batch_index) -> scalar loss`` for one scoring run."""

    def __init__(self, name: str, teacher: torch.nn.Module | None = None, seed: int = 0,
                 teacher_outputs: dict[int, torch.Tensor] | None = None) -> None:
        self.name = name
        self.teacher = teacher
        self.seed = seed
        self._teacher_cache: dict[int, torch.Tensor] = dict(teacher_outputs or {})

    def teacher_outputs(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        if index not in self._teacher_cache:
            if self.teacher is None:
                raise UserError("loss teacher_cosine needs a teacher (recipe 'teacher:'); use loss: random_projection")
            with eval_mode(self.teacher), torch.no_grad():
                self._teacher_cache[index] = forward(self.teacher, batch).detach()
        return self._teacher_cache[index]

    def __call__(self, outputs: torch.Tensor, batch: dict[str, Any], index: int) -> torch.Tensor:
        if self.name == "ce":
            labels = batch["label"].to(outputs.device).long()
            if outputs.shape[1] <= int(labels.max()):
                raise UserError(f"loss ce needs one output column per class; the model outputs {outputs.shape[1]} "
                                "columns (an embedding model?): use loss teacher_cosine or random_projection")
            return F.cross_entropy(outputs, labels)
        if self.name == "teacher_cosine":
            target = self.teacher_outputs(batch, index).to(outputs.device)
            if target.shape != outputs.shape:
                raise UserError(f"loss teacher_cosine: the teacher outputs {tuple(target.shape[1:])} per sample, "
                                f"the model {tuple(outputs.shape[1:])}")
            return (1.0 - F.cosine_similarity(outputs, target, dim=1)).mean()
        if self.name == "embedding_norm":
            return 0.5 * outputs.pow(2).sum(1).mean()
        if self.name == "random_projection":
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            z = torch.randn(outputs.shape, generator=gen).to(outputs.device, outputs.dtype)
            return (z * outputs).sum()
        raise ValueError(f"unknown scoring loss {self.name!r}")


def make_objective(name: str, model: torch.nn.Module, context: Any, batches: list[dict[str, Any]],
                   self_teacher: bool = False) -> Objective:
    """Resolve ``name`` (``auto`` included) into an :class:`Objective` for ``model``.

    ``self_teacher``: for ``teacher_cosine`` without ``context.teacher``, use the model's own
    current outputs as the target (ViT-Slim's search: keep the masked model close to the unmasked one).
    """
    seed = int(getattr(getattr(context, "recipe", None), "seed", 0) or 0)
    teacher = getattr(context, "teacher", None)
    if name == "auto":
        name = _auto(model, context, batches, teacher, self_teacher)
        context_log(context).info("baseline scoring loss: %s (loss: auto)", name)
    own: dict[int, torch.Tensor] = {}
    if name == "teacher_cosine" and teacher is None:
        if not self_teacher:
            raise UserError("loss teacher_cosine needs a teacher (recipe 'teacher:'); use loss: random_projection")
        own = _own_outputs(model, batches)
    return Objective(name, teacher, seed, own)


def _own_outputs(model: torch.nn.Module, batches: list[dict[str, Any]]) -> dict[int, torch.Tensor]:
    with eval_mode(model), torch.no_grad():
        return {i: forward(model, b).detach() for i, b in enumerate(batches)}


def _auto(model: torch.nn.Module, context: Any, batches: list[dict[str, Any]],
          teacher: torch.nn.Module | None, self_teacher: bool) -> str:
    num_classes = getattr(getattr(context, "data", None), "num_classes", None)
    with eval_mode(model), torch.no_grad():
        out = forward(model, batches[0])
    if num_classes is not None and out.shape[1] == int(num_classes):
        return "ce"
    if teacher is not None and self_teacher:
        return "teacher_cosine"
    if teacher is not None:
        probe = Objective("teacher_cosine", teacher)
        if float(probe(out, batches[0], 0)) > 1e-6:
            return "teacher_cosine"
        context_log(context).info("the teacher gives the model's own outputs; teacher_cosine would have zero gradients")
    return "teacher_cosine" if self_teacher else "random_projection"
