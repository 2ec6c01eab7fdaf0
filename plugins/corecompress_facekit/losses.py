"""The plain margin-penalty objective (``margin``, ``arcface``, ``cosface``): a face model trained alone.

Papers: ArcFace (Deng et al., CVPR 2019), CosFace (Wang et al., CVPR 2018). This is the
"no distillation" baseline of AdaDistill (Boutros et al., ECCV 2024: the student
trained alone with ArcFace/CosFace) and the retraining objective of FACES (Lajić et al., ICT Express 2026,
as its reference code retrains: an ArcFace head, s = 64, m = 0.5, initialised from the pretrained header).
A trainable :class:`~corecompress_facekit.heads.margin.CombinedMarginHead` over ``ctx.data.num_classes``
classes sits on the student embedding; logits s·(cos(m1·θ + m2) − m3) for the target, s·cos θ
otherwise; loss = cross-entropy. The head's weights are optimised with the model (the training loop
passes ``objective.parameters()`` to the optimizer) and saved with the objective's state_dict.
``sharded: true`` splits the head by classes across the ranks of a torchrun run (Partial FC, An et al.,
ICCVW 2021; :mod:`corecompress_facekit.heads.partial_fc`); in a single process it is the ordinary head.

Also home of the small helpers every face loss shares: :class:`MarginOptions`/:func:`margin_parameters`
(preset → m1, m2, m3), :func:`as_embedding`, :func:`student_embedding_size` and :func:`load_header_file`.
Other plugins import them from :mod:`corecompress_facekit.api`; the seeded generator and the context
device come from the core (:mod:`corecompress.engine.components`).

The lead registers the components from ``plugin.py`` through :func:`register_losses`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from corecompress.engine.precision import autocast_off, float32_math
from corecompress.engine import distributed
from corecompress.engine.components import context_device, seeded_generator  # noqa: F401 - also imported from here
from corecompress.errors import UserError
from corecompress.weights import WeightsFileError, read_weights
from corecompress_facekit.heads.margin import CombinedMarginHead
from corecompress_facekit.heads.partial_fc import ShardedMarginHead

MarginKind = Literal["arcface", "cosface", "combined"]
SHARDED_HELP = ("under torchrun: each rank holds only its K/N rows of the head (Partial FC); exact, same result as "
                "the replicated head; ignored in a single process")

#: Default m of the plain objective: ArcFace 0.5 (ArcFace paper, insightface, FACES retraining),
#: CosFace 0.35 (CosFace paper, AdaDistill).
MARGIN_DEFAULT_M: Mapping[str, float] = {"arcface": 0.5, "cosface": 0.35}
#: Default m of the distillation losses: AdaDistill's best settings (ArcFace 0.45, CosFace 0.35).
DISTILL_DEFAULT_M: Mapping[str, float] = {"arcface": 0.45, "cosface": 0.35}

_HEADER_SALT = 0x4EAD  # keeps the head's seeded stream apart from other seeded components


class LossConfigError(UserError, ValueError):
    """A loss that cannot be set up as configured (sizes, missing teacher data): one clear line."""


class HeaderFileError(UserError, ValueError):
    """A classifier (header) weights file that cannot be read or has the wrong content."""


class HeaderFileMissing(UserError, FileNotFoundError):
    """A classifier (header) weights file that does not exist."""


# --- margin options -------------------------------------------------------------------------------

@dataclass
class MarginOptions:
    """The margin of an ArcFace/CosFace/combined softmax (insightface's combined convention)."""

    margin: MarginKind = field(default="arcface", metadata={
        "help": "arcface: s·cos(θ+m); cosface: s·(cos θ − m); combined: s·(cos(m1·θ+m2) − m3)"})
    s: float = field(default=64.0, metadata={"help": "logit scale"})
    m: float | None = field(default=None, metadata={
        "help": "margin of arcface (radians) or cosface (cosine); null = the component's default "
                "(margin objective: ArcFace 0.5, CosFace 0.35; distillation losses: ArcFace 0.45, CosFace 0.35)"})
    m1: float = field(default=1.0, metadata={"help": "combined only: multiplicative angular margin"})
    m2: float = field(default=0.0, metadata={"help": "combined only: additive angular margin (radians)"})
    m3: float = field(default=0.0, metadata={"help": "combined only: additive cosine margin"})

    def __post_init__(self) -> None:
        if not self.s > 0:
            raise ValueError(f"s: must be > 0, got {self.s}")
        if self.margin == "combined":
            if self.m is not None:
                raise ValueError("m: not used with margin: combined; set m1, m2, m3 instead")
            if not self.m1 > 0:
                raise ValueError(f"m1: must be > 0, got {self.m1}")
            if self.m2 < 0:
                raise ValueError(f"m2: must be >= 0, got {self.m2}")
        else:
            for name, default in (("m1", 1.0), ("m2", 0.0), ("m3", 0.0)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name}: only used with margin: combined (margin is {self.margin}; set m)")
            if self.m is not None and self.m < 0:
                raise ValueError(f"m: must be >= 0, got {self.m}")


def margin_parameters(options: MarginOptions, default_m: Mapping[str, float]) -> tuple[float, float, float]:
    """(m1, m2, m3) of the combined margin for ``options``; ``m = None`` takes ``default_m[margin]``."""
    if options.margin == "combined":
        return options.m1, options.m2, options.m3
    m = default_m[options.margin] if options.m is None else options.m
    return (1.0, m, 0.0) if options.margin == "arcface" else (1.0, 0.0, m)


# --- shared helpers -------------------------------------------------------------------------------

def as_embedding(outputs: Any) -> Tensor:
    """The (B, E) embedding from a model output: a tensor, or an object/mapping with ``embedding``."""
    if isinstance(outputs, Tensor):
        emb = outputs
    elif isinstance(outputs, Mapping) and "embedding" in outputs:
        emb = outputs["embedding"]
    elif hasattr(outputs, "embedding"):
        emb = outputs.embedding
    else:
        raise LossConfigError(f"expected a (batch, embedding) tensor as model output, got {type(outputs).__name__}")
    if emb.ndim != 2:
        raise LossConfigError(f"expected a (batch, embedding) tensor as model output, got shape {tuple(emb.shape)}")
    return emb


def probe_output_size(module: nn.Module, input_size: tuple[int, ...], device: Any = None) -> int:
    """Embedding size of ``module`` by one no-grad forward of zeros (eval mode; every submodule's mode restored)."""
    param = next(module.parameters(), None)
    device = device if device is not None else (param.device if param is not None else "cpu")
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            out = as_embedding(module(torch.zeros(2, *input_size, device=device)))
    finally:
        for sub, training in modes:
            sub.training = training
    return int(out.shape[1])


def student_embedding_size(ctx: Any) -> int:
    """The student's embedding size: ``ctx.model_spec.embedding_size``, the model's own attribute, or a probe."""
    for source in (getattr(ctx, "model_spec", None), getattr(ctx, "model", None)):
        size = getattr(source, "embedding_size", None)
        if isinstance(size, int) and size > 0:
            return size
    model, spec = getattr(ctx, "model", None), getattr(ctx, "model_spec", None)
    if model is None or getattr(spec, "input_size", None) is None:
        raise LossConfigError("cannot tell the student's embedding size: the model adapter declares no "
                              "embedding_size and there is no model to probe")
    return probe_output_size(model, tuple(spec.input_size), getattr(ctx, "device", None))


def cosine_matrix(embeddings: Tensor, centres: Tensor) -> Tensor:
    """cos θ (B, K) between rows of ``embeddings`` (B, E) and ``centres`` (K, E), in float32 even under
    autocast (a bf16/fp16 cosine is too coarse for the margin), clamped to [−1, 1]."""
    with autocast_off():
        a = F.normalize(embeddings.float(), dim=1)
        b = F.normalize(centres.float(), dim=1)
        return F.linear(a, b).clamp(-1.0, 1.0)


def load_header_file(path: str | Path) -> Tensor:
    """The 2-D classifier matrix stored in ``path`` (safetensors, or ``torch.load(weights_only=True)``).

    The file holds a tensor, or a mapping with exactly one 2-D tensor, or several of which exactly
    one is named ``weight``/``*.weight`` or ``kernel``. Orientation is not decided here.
    """
    p = Path(path).expanduser()
    try:
        content = read_weights(p)
    except FileNotFoundError:
        raise HeaderFileMissing(f"{p}: no such classifier (header) weights file") from None
    except WeightsFileError as exc:
        raise HeaderFileError(str(exc)) from None
    if isinstance(content, Tensor):
        candidates = {"": content}
    elif isinstance(content, Mapping):
        candidates = {str(k): v for k, v in content.items() if isinstance(v, Tensor) and v.ndim == 2}
    else:
        raise HeaderFileError(f"{p}: expected a tensor or a mapping of tensors, found {type(content).__name__}")
    if len(candidates) > 1:
        named = {k: v for k, v in candidates.items() if k in ("weight", "kernel") or k.endswith(".weight")}
        candidates = named if len(named) == 1 else candidates
    if len(candidates) != 1:
        keys = ", ".join(sorted(candidates)) or "none"
        raise HeaderFileError(f"{p}: expected exactly one 2-D classifier matrix, found: {keys}")
    matrix = next(iter(candidates.values()))
    if matrix.ndim != 2:
        raise HeaderFileError(f"{p}: classifier must be 2-D (classes × embedding), got shape {list(matrix.shape)}")
    return matrix.detach().float()


def orient_header(matrix: Tensor, num_classes: int, source: str, embedding_size: int | None = None) -> Tensor:
    """``matrix`` as classes × embedding (K × E); an E × K matrix is transposed (square: taken as K × E)."""
    rows, cols = matrix.shape
    fits = (lambda e: embedding_size is None or e == embedding_size)
    if rows == num_classes and fits(cols):
        return matrix
    if cols == num_classes and fits(rows):
        return matrix.t().contiguous()
    want = f"[{num_classes}, {embedding_size if embedding_size is not None else 'E'}]"
    raise HeaderFileError(f"{source}: classifier has shape {list(matrix.shape)}, expected {want} "
                          "(classes × embedding) or its transpose")


def _check_scale_and_margin(s: float, m: float) -> None:
    if not s > 0:
        raise ValueError(f"s: must be > 0, got {s}")
    if m < 0:
        raise ValueError(f"m: must be >= 0, got {m}")


# --- the objective --------------------------------------------------------------------------------

@dataclass
class MarginObjectiveOptions(MarginOptions):
    init_header: str | None = field(default=None, metadata={
        "help": "file (safetensors/torch) with a classes × embedding header to start the head from, as FACES does"})
    sharded: bool = field(default=False, metadata={"help": SHARDED_HELP})


@dataclass
class ArcFaceOptions:
    s: float = field(default=64.0, metadata={"help": "logit scale"})
    m: float = field(default=0.5, metadata={"help": "additive angular margin (radians)"})
    init_header: str | None = field(default=None, metadata={"help": "classes × embedding header file to start from"})
    sharded: bool = field(default=False, metadata={"help": SHARDED_HELP})

    def __post_init__(self) -> None:
        _check_scale_and_margin(self.s, self.m)


@dataclass
class CosFaceOptions:
    s: float = field(default=64.0, metadata={"help": "logit scale"})
    m: float = field(default=0.35, metadata={"help": "additive cosine margin"})
    init_header: str | None = field(default=None, metadata={"help": "classes × embedding header file to start from"})
    sharded: bool = field(default=False, metadata={"help": SHARDED_HELP})

    def __post_init__(self) -> None:
        _check_scale_and_margin(self.s, self.m)


def objective_options(options: MarginOptions, init_header: str | None = None) -> MarginObjectiveOptions:
    """The margin part of a composite loss's options as :class:`MarginObjectiveOptions`."""
    return MarginObjectiveOptions(margin=options.margin, s=options.s, m=options.m, m1=options.m1,
                                  m2=options.m2, m3=options.m3, init_header=init_header)


class MarginObjective(nn.Module):
    """Margin-penalty softmax with a trainable head on the student embedding (no teacher).

    ``setup(ctx)`` builds the head (K = ``ctx.data.num_classes``, E = the student's embedding size),
    initialised N(0, 0.01²) from a generator seeded by the recipe seed, or from ``init_header``;
    it moves it to ``ctx.device`` and offers it as the artifact ``header`` (:meth:`artifacts`; the run
    directory's ``header.safetensors``), e.g. the teacher classifier of a later ArcDistill phase.

    ``sharded`` under torchrun: the head is a :class:`ShardedMarginHead` (this rank's rows only); the
    full head is gathered when training ends (:meth:`on_train_end`, K × E on every rank once) and
    only then offered as ``header``.
    """

    def __init__(self, options: MarginObjectiveOptions, default_m: Mapping[str, float] = MARGIN_DEFAULT_M) -> None:
        super().__init__()
        self.options = options
        self.m1, self.m2, self.m3 = margin_parameters(options, default_m)
        self.head: CombinedMarginHead | ShardedMarginHead | None = None
        self._gathered: tuple[CombinedMarginHead, ...] = ()  # a tuple: not a submodule, not checkpointed

    def setup(self, ctx: Any) -> None:
        num_classes = int(ctx.data.num_classes)
        size = student_embedding_size(ctx)
        if self.options.init_header is not None:
            init = orient_header(load_header_file(self.options.init_header), num_classes,
                                 str(self.options.init_header), size)
        else:
            init = torch.randn(num_classes, size, generator=seeded_generator(ctx, _HEADER_SALT)) * 0.01
        o = self.options
        if getattr(o, "sharded", False) and distributed.world() > 1:
            if num_classes < distributed.world():
                raise LossConfigError(f"sharded: {num_classes} classes cannot be split over "
                                      f"{distributed.world()} processes")
            self.head = ShardedMarginHead(size, num_classes, init, s=o.s, m1=self.m1, m2=self.m2, m3=self.m3,
                                          rank=distributed.rank(), world=distributed.world()).to(context_device(ctx))
            return  # the full head is published by on_train_end
        self.head = CombinedMarginHead(size, num_classes, s=o.s, m1=self.m1, m2=self.m2, m3=self.m3,
                                       init_weight=init).to(context_device(ctx))

    def on_train_end(self, ctx: Any) -> None:
        """Called by the training loop on every rank when the phase ends: a sharded head's rows are
        gathered into the full head, offered as the artifact ``header`` (header.safetensors)."""
        if isinstance(self.head, ShardedMarginHead):
            self._gathered = (self.head.full_head(),)

    def artifacts(self) -> dict[str, nn.Module]:
        """``header``: the trained margin head (a sharded one only once gathered at the end of training)."""
        head = (self._gathered or (None,))[0] if isinstance(self.head, ShardedMarginHead) else self.head
        return {"header": head} if head is not None else {}

    def margin_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of the margin logits of ``embeddings`` (B, E) against ``labels`` (B,)."""
        if self.head is None:
            raise RuntimeError("MarginObjective.setup(ctx) must run before the first forward")
        if isinstance(self.head, ShardedMarginHead):
            return self.head(embeddings, labels)  # the global batch's mean, on every rank
        return F.cross_entropy(self.head(embeddings, labels), labels.long())

    @float32_math
    def forward(self, outputs: Any, batch: Mapping[str, Any], teacher_outputs: Any = None) -> dict[str, Any]:
        if isinstance(self.head, ShardedMarginHead):  # scaled for the data-parallel loop (see there)
            loss, logged = self.head.data_parallel_loss(as_embedding(outputs), batch["label"])
            return {"loss": loss, "margin_loss": logged}
        loss = self.margin_loss(as_embedding(outputs), batch["label"])
        return {"loss": loss, "margin_loss": loss.detach()}


def _preset(kind: str) -> Callable[[Any], MarginObjective]:
    def build(options: Any) -> MarginObjective:
        return MarginObjective(MarginObjectiveOptions(margin=kind, s=options.s, m=options.m,
                                                      init_header=options.init_header, sharded=options.sharded))

    build.__doc__ = f"{kind} margin objective with a trainable head"
    return build


def register_losses(register: Callable[..., None]) -> None:
    """Register ``margin``, ``arcface`` and ``cosface`` (called by the face plugin's registration module)."""
    register("margin", MarginObjective, MarginObjectiveOptions, produces={"header"},
             description="margin-penalty softmax (ArcFace/CosFace/combined), trainable head; no distillation")
    register("arcface", _preset("arcface"), ArcFaceOptions, produces={"header"},
             description="ArcFace s·cos(θ+m), trainable head (m = 0.5); no distillation")
    register("cosface", _preset("cosface"), CosFaceOptions, produces={"header"},
             description="CosFace s·(cos θ − m), trainable head (m = 0.35); no distillation")
