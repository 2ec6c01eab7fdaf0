"""Every size and iteration count of the GPU check: the H100/H200 run and the CPU smoke's tiny copy.

The full counts keep one H200 run under 8 minutes (a few seconds of timing per section; model
building, pruning and the quickstart dominate). The smoke runs the very same code with tiny models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Shapes:
    name: str
    precision: str  # hand-written parts (autocast) and what framework recipes ask for
    threads: int | None  # torch's CPU threads (None: torch's default)
    # (a) SwinFace-T speed
    swin_preset: str
    infer_batches: tuple[int, ...]
    train_batch: int
    infer_warmup: int
    infer_repeats: int
    train_warmup: int
    train_repeats: int
    train_inner: int  # steps per timed round
    bisect_iterations: int  # of the sparsity that prunes to 50 % of the parameters
    # (b) AdaDistill step
    teacher: dict[str, Any]
    student: dict[str, Any]
    classes: int
    distill_batch: int
    distill_warmup: int
    distill_steps: int
    distill_repeats: int
    pool_images: int  # distinct images the in-memory dataset cycles through
    num_workers: int
    # (c) masked vs physical
    equivalence_batch: int
    # (d) quickstart
    quickstart_overrides: dict[str, Any] = field(default_factory=dict)
    quickstart_timeout_s: int = 300


FULL = Shapes(
    name="full", precision="bf16", threads=None,
    swin_preset="swin_t", infer_batches=(1, 32, 256), train_batch=256,
    infer_warmup=5, infer_repeats=20, train_warmup=3, train_repeats=5, train_inner=5, bisect_iterations=20,
    teacher={"name": "iresnet", "depth": 50, "embedding_size": 512, "input_size": 112},
    student={"name": "mobilefacenet", "embedding_size": 512, "input_size": 112},
    classes=85_742, distill_batch=512, distill_warmup=5, distill_steps=20, distill_repeats=3,
    pool_images=256, num_workers=6,
    equivalence_batch=16,
    quickstart_timeout_s=300,
)

SMOKE = Shapes(
    name="cpu-smoke", precision="fp32",  # this CPU's bf16 is ~300x slower than its fp32 (issue 12)
    threads=1,  # tiny shapes on a shared 2-core machine: 2 threads contend (8x slower measured here)
    swin_preset="micro", infer_batches=(1, 4, 8), train_batch=8,
    infer_warmup=1, infer_repeats=10, train_warmup=1, train_repeats=2, train_inner=1, bisect_iterations=10,
    teacher={"name": "iresnet", "depth": 0, "embedding_size": 32, "input_size": 32, "widths": [8, 8, 8, 16]},
    student={"name": "mobilefacenet", "embedding_size": 32, "input_size": 32, "width": 0.125, "blocks": [1, 1, 1]},
    classes=50, distill_batch=8, distill_warmup=1, distill_steps=2, distill_repeats=2,
    pool_images=8, num_workers=0,
    equivalence_batch=2,
    quickstart_overrides={
        "threads": 1,
        "data": {"identities": 6, "images_per_identity": 4, "eval_identities": 4, "eval_images_per_identity": 2,
                 "eval_pairs": 24},
        "train": {"steps": 3, "batch_size": 8},
        "retrain": {"steps": 2, "batch_size": 8},
        "evaluate": ["verification"],
        "prune": {"budget": {"batch_size": 4}},  # the quickstart's latency budget, its cost table on small batches
    },
    quickstart_timeout_s=90,
)
