"""``teacher_cache``: teacher embeddings computed once per training image (and its mirror), then read back.

A frozen teacher gives the same embedding for the same input every epoch, so a distillation run
need not run it again: ``prepare`` embeds every dataset index twice — the image as the dataset
returns it and its horizontal mirror (``image.flip(-1)``, exactly what the training loop's
``flip_half`` does) — and ``__call__(batch)`` returns, for ``batch["index"]``, the mirrored or
plain embedding as ``batch["flipped"]`` says (all plain when the batch has no ``flipped``).

Cache key (documented rule): SHA-256 over
- the teacher: its class name and every state_dict entry (name, dtype, shape, raw bytes) in name order;
- the dataset identity: the dataset's ``cache_identity`` attribute if it has one (a string the
  dataset promises changes whenever its content does), else its class name, the repr of its
  ``options`` (or, if it has none, of the dataset component's ``ctx.data.options``) and its length;
- the run's precision (``ctx.precision``) when it is not fp32: the teacher computes the cache under
  the run's autocast, so a bf16 cache never serves an fp32 run (fp32 keys are as they always were).
So a changed teacher weight or a differently configured dataset gets a new file. Embeddings are
the teacher's outputs as they are (not normalised) — losses normalise where they need to.

Valid only without random augmentation other than the flip: a dataset that declares
``augmented = True`` (random crops, colour jitter, RandAugment, ...) is refused with
:class:`CacheUnsafeError`, since one cached embedding would stand for many different inputs.
Files: ``<dir>/<key>.safetensors`` with tensors ``plain`` and ``flipped`` (N × d), written to a
temporary name and renamed (a crash leaves no half file). ``dir`` defaults to
``$CORECOMPRESS_CACHE/teacher`` when that variable is set, else ``~/.cache/corecompress/teacher``.
The whole cache is held in memory during training (N·d·2 values; use ``dtype: float16`` to halve it).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import torch
from torch import Tensor, nn

from corecompress.cache_dirs import cache_dir
from corecompress.errors import UserError
from corecompress_facekit.losses import as_embedding

CACHE_FORMAT = "teacher_cache/1"


class CacheUnsafeError(UserError, ValueError):
    """The dataset's samples are randomly augmented, so per-index cached embeddings would be wrong."""


class CacheFileError(UserError, ValueError):
    """A cache file that cannot be read or does not match the dataset."""


@dataclass
class TeacherCacheOptions:
    dir: str | None = field(default=None, metadata={
        "help": "cache directory; null = $CORECOMPRESS_CACHE/teacher or ~/.cache/corecompress/teacher"})
    batch_size: int = field(default=128, metadata={"help": "images per teacher forward while filling the cache"})
    dtype: Literal["float32", "float16"] = field(default="float32", metadata={"help": "storage precision"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size: must be at least 1")


def default_cache_dir() -> Path:
    return cache_dir("teacher")


def teacher_fingerprint(teacher: nn.Module) -> bytes:
    """Bytes that change whenever the teacher's class or any state_dict entry changes."""
    digest = hashlib.sha256(f"{type(teacher).__module__}.{type(teacher).__qualname__}".encode())
    for name, value in sorted(teacher.state_dict().items()):
        if not isinstance(value, Tensor):
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.digest()


def dataset_identity(dataset: Any, ctx: Any = None) -> str:
    """The dataset's identity string (module docstring rule)."""
    own = getattr(dataset, "cache_identity", None)
    if isinstance(own, str) and own:
        return f"identity={own}|len={len(dataset)}"
    options = getattr(dataset, "options", None)
    component = getattr(ctx, "data", None) if ctx is not None else None
    if options is None and component is not None:
        options = getattr(component, "options", None)
    owner = f"{type(component).__qualname__}/" if component is not None else ""
    return f"class={owner}{type(dataset).__qualname__}|options={options!r}|len={len(dataset)}"


def cache_key(teacher: nn.Module, dataset: Any, ctx: Any = None) -> str:
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    digest.update(teacher_fingerprint(teacher))
    digest.update(dataset_identity(dataset, ctx).encode())
    precision = getattr(ctx, "precision", "fp32") if ctx is not None else "fp32"
    if precision != "fp32":
        digest.update(f"|precision={precision}".encode())
    return digest.hexdigest()[:32]


def _stack_images(samples: list[Mapping[str, Any]]) -> Tensor:
    images = [s["image"] if isinstance(s["image"], Tensor) else torch.as_tensor(s["image"]) for s in samples]
    return torch.stack(images)


class TeacherCache:
    """Distillation target serving cached teacher embeddings by dataset index (see module docstring)."""

    def __init__(self, options: TeacherCacheOptions | None = None) -> None:
        self.options = options or TeacherCacheOptions()
        self.plain: Tensor | None = None
        self.flipped: Tensor | None = None
        self.path: Path | None = None
        self.computed = False          # True when the last prepare ran the teacher

    def prepare(self, teacher: nn.Module, dataset: Any, ctx: Any = None) -> None:
        """Load the cache for (teacher, dataset), computing and writing it first if absent."""
        if getattr(dataset, "augmented", False):
            raise CacheUnsafeError(f"teacher_cache: dataset {type(dataset).__name__} declares random augmentation "
                                   "(augmented=True); cached embeddings would not match the images seen in "
                                   "training — use the live teacher (no target) instead")
        directory = Path(self.options.dir).expanduser() if self.options.dir else default_cache_dir()
        self.path = directory / f"{cache_key(teacher, dataset, ctx)}.safetensors"
        size = len(dataset)
        if self.path.is_file():
            self.plain, self.flipped = self._read(self.path, size)
            self.computed = False
        else:
            self.plain, self.flipped = self._compute(teacher, dataset, ctx)
            self._write(directory, self.path, dataset, ctx)
            self.computed = True
        log = getattr(ctx, "log", None)
        if log is not None:
            log.info("teacher_cache: %s %s (%d images × 2)", "wrote" if self.computed else "read", self.path, size)

    def _compute(self, teacher: nn.Module, dataset: Any, ctx: Any) -> tuple[Tensor, Tensor]:
        param = next(teacher.parameters(), None)
        # on the teacher's own device (the run's device: the runner puts the teacher there)
        device = param.device if param is not None else torch.device(getattr(ctx, "device", None) or "cpu")
        dtype = getattr(torch, self.options.dtype)
        modes = [(m, m.training) for m in teacher.modules()]
        teacher.eval()
        plain, flipped = [], []
        try:
            with torch.no_grad():
                for start in range(0, len(dataset), self.options.batch_size):
                    stop = min(start + self.options.batch_size, len(dataset))
                    images = _stack_images([dataset[i] for i in range(start, stop)]).to(device)
                    plain.append(as_embedding(teacher(images)).to("cpu", dtype))
                    flipped.append(as_embedding(teacher(images.flip(-1))).to("cpu", dtype))
        finally:
            for module, training in modes:
                module.training = training
        return torch.cat(plain).contiguous(), torch.cat(flipped).contiguous()

    def _write(self, directory: Path, path: Path, dataset: Any, ctx: Any) -> None:
        from corecompress.weights import write_tensors

        directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write_tensors({"plain": self.plain, "flipped": self.flipped}, tmp,
                  metadata={"format": CACHE_FORMAT, "dataset": dataset_identity(dataset, ctx)[:2000]})
        os.replace(tmp, path)

    @staticmethod
    def _read(path: Path, size: int) -> tuple[Tensor, Tensor]:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a damaged file is a user-fixable state
            raise CacheFileError(f"{path}: unreadable teacher cache ({type(exc).__name__}: {exc}); delete it") from None
        plain, flipped = tensors.get("plain"), tensors.get("flipped")
        if plain is None or flipped is None or plain.shape != flipped.shape or plain.shape[0] != size:
            raise CacheFileError(f"{path}: teacher cache does not match the dataset ({size} images); delete it")
        return plain, flipped

    def __call__(self, batch: Mapping[str, Any]) -> Tensor:
        """Cached teacher embeddings (float32) for ``batch["index"]``, mirrored where ``batch["flipped"]``."""
        if self.plain is None or self.flipped is None:
            raise RuntimeError("teacher_cache: prepare(teacher, dataset, ctx) must run first")
        index = torch.as_tensor(batch["index"]).long()
        device = index.device
        cpu_index = index.cpu()
        if cpu_index.numel() and (int(cpu_index.min()) < 0 or int(cpu_index.max()) >= self.plain.shape[0]):
            raise IndexError(f"teacher_cache: dataset index out of range 0..{self.plain.shape[0] - 1}")
        out = self.plain.index_select(0, cpu_index)
        flipped = batch.get("flipped")
        if flipped is not None:
            mask = torch.as_tensor(flipped).bool().cpu()
            if mask.any():
                out[mask] = self.flipped.index_select(0, cpu_index[mask])
        return out.float().to(device)


def register_targets(register: Callable[..., None]) -> None:
    """Register ``teacher_cache`` (called by the face plugin's registration module)."""
    register("teacher_cache", TeacherCache, TeacherCacheOptions,
             description="teacher embeddings (plain and mirrored) computed once per image, cached on disk")
