"""Evaluators of the face plugin.

- ``verification``: the LFW-style 10-fold protocol on every pair set (flip-sum embeddings, squared
  distance, threshold grid 0:0.01:4, consecutive folds — insightface's protocol), plus ROC AUC, EER and
  TAR@FAR on the cosine scores of the same pairs.
- ``attributes``: attribute recognition with the FACES head (512→1024→BN→ReLU→Dropout→40, BCE, FACES)
  trained as a probe on the frozen model's embeddings of the training set, then mean accuracy (over the
  labelled attributes) and macro precision/recall/F1 on each attribute set. A probe measures what the
  embedding carries; it is not the paper's end-to-end fine-tuning, and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from corecompress.engine.data_loaders import batches_of, loader_settings
from torch.utils.data import DataLoader, Dataset, Subset

from corecompress_facekit.datasets import AttributeSet, PairSet


@torch.no_grad()
def embed(model: torch.nn.Module, images: Dataset, batch_size: int, flip: bool,
          indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings (and embeddings of the horizontally flipped images) of ``images``; images that
    are decoded when read (``.bin`` sets) are decoded by workers (``num_workers: auto`` rules)."""
    device = next(model.parameters()).device
    data = images if indices is None else Subset(images, indices.tolist())
    plain, flipped = [], []
    loader = DataLoader(data, batch_size=batch_size, **loader_settings(images, "auto", device, persistent=False))
    for batch in batches_of(loader):
        x = batch["image"].to(device)
        plain.append(model(x).float().cpu())
        if flip:
            flipped.append(model(x.flip(-1)).float().cpu())
    return torch.cat(plain).numpy(), (torch.cat(flipped).numpy() if flip else None)


@dataclass
class VerificationOptions:
    batch_size: int = 64
    flip: bool = field(default=True, metadata={"help": "add the embedding of the flipped image (the papers' protocol)"})
    far_targets: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3])
    sets: list[str] = field(default_factory=list, metadata={"help": "pair sets to evaluate (default: all)"})


class Verification:
    """10-fold verification accuracy (%), VAL@FAR=1e-3, AUC, EER and TAR@FAR on every pair set."""

    def __init__(self, options: VerificationOptions) -> None:
        self.options = options

    def evaluate(self, model: torch.nn.Module, data: Any, context: Any) -> dict[str, float]:
        from corecompress_facekit.evaluation.roc import evaluate_roc
        from corecompress_facekit.evaluation.verification import evaluate_verification

        out: dict[str, float] = {}
        for name, pairs in data.evaluation().items():
            if not isinstance(pairs, PairSet) or (self.options.sets and name not in self.options.sets):
                continue
            used = np.unique(pairs.pairs)
            emb, emb_flip = embed(model, pairs.images, self.options.batch_size, self.options.flip, used)
            where = np.searchsorted(used, pairs.pairs.reshape(-1))
            inter = emb[where]
            inter_flip = emb_flip[where] if emb_flip is not None else None
            result = evaluate_verification(inter, pairs.issame, inter_flip)
            out[f"{name}_accuracy"] = result.accuracy_mean_pct
            out[f"{name}_accuracy_std"] = result.accuracy_std_pct
            out[f"{name}_val@far1e-3"] = result.val_mean_pct
            combined = inter + inter_flip if inter_flip is not None else inter
            combined = combined / np.linalg.norm(combined, axis=1, keepdims=True).clip(1e-12)
            scores = np.sum(combined[0::2] * combined[1::2], axis=1)
            roc = evaluate_roc(scores, pairs.issame, far_targets=self.options.far_targets)
            out[f"{name}_auc"] = roc.auc
            out[f"{name}_eer"] = roc.eer
            for point in roc.tar_at_far:
                out[f"{name}_tar@far{point.far_target:g}"] = point.tar if point.reachable else float("nan")
        return out


@dataclass
class AttributeProbeOptions:
    head: Literal["auto", "probe", "trained"] = field(default="auto", metadata={
        "help": "trained = the attribute head trained by the faces_attributes objective; probe = fit one on "
                "frozen embeddings; auto = trained when there is one"})
    probe_steps: int = field(default=300, metadata={"help": "training steps of the attribute head on frozen embeddings"})
    probe_lr: float = 1e-3
    max_train_images: int = field(default=4000, metadata={"help": "training images embedded for the probe"})
    batch_size: int = 64
    seed: int = 0


class AttributeProbe:
    """Mean attribute accuracy of the FACES attribute head trained on frozen embeddings."""

    def __init__(self, options: AttributeProbeOptions) -> None:
        self.options = options

    def evaluate(self, model: torch.nn.Module, data: Any, context: Any) -> dict[str, float]:
        from corecompress_facekit.heads.attribute import AttributeHead

        sets = {n: s for n, s in data.evaluation().items() if isinstance(s, AttributeSet)}
        if not sets:
            return {}
        o = self.options
        store = getattr(context, "artifacts", None)
        found = store.get("attribute_head") if store is not None else None
        if o.head == "trained" or (o.head == "auto" and found is not None):
            if o.head == "trained":
                found = store.require("attribute_head", "evaluate.attributes (head: trained)")
            return self._score(model, found.value, sets)
        train = data.train()
        if len(train) == 0 or "attributes" not in train[0]:
            return {}
        gen = torch.Generator().manual_seed(o.seed)
        pick = torch.randperm(len(train), generator=gen)[: o.max_train_images].sort().values.numpy()
        x_train, _ = embed(model, train, o.batch_size, False, pick)
        y_train = torch.stack([train[int(i)]["attributes"] for i in pick])
        torch.manual_seed(o.seed)
        head = AttributeHead(x_train.shape[1])  # the FACES head's sizes (E→1024→40, dropout 0.2)
        opt = torch.optim.AdamW(head.parameters(), lr=o.probe_lr, weight_decay=0.01)
        xt = torch.from_numpy(x_train)
        with torch.enable_grad():
            head.train()
            for _step in range(o.probe_steps):
                idx = torch.randint(0, len(xt), (min(o.batch_size, len(xt)),), generator=gen)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return self._score(model, head, sets)

    def _score(self, model: torch.nn.Module, head: torch.nn.Module, sets: dict[str, AttributeSet]) -> dict[str, float]:
        from corecompress_facekit.evaluation.attributes import evaluate_attributes

        o = self.options
        was_training = head.training
        head.eval()
        out: dict[str, float] = {}
        for name, aset in sets.items():
            x, _ = embed(model, aset.images, o.batch_size, False)
            labels = torch.stack([aset.images[i]["attributes"] for i in range(len(aset.images))]).numpy()
            with torch.no_grad():
                logits = head(torch.from_numpy(x)).numpy()
            result = evaluate_attributes(logits, labels, attribute_mask=aset.mask)
            out[f"{name}_mean_accuracy"] = 100.0 * result.mean_accuracy
            out[f"{name}_macro_f1"] = 100.0 * result.macro_f1
        head.train(was_training)
        return out


def register(register: Any) -> None:
    register("verification", Verification, VerificationOptions, description="10-fold verification, AUC, EER, TAR@FAR")
    register("attributes", AttributeProbe, AttributeProbeOptions,
             needs=lambda o: {"artifact:attribute_head"} if o.head == "trained" else set(), description="attribute accuracy (the trained FACES head, or one fitted as a probe)")
