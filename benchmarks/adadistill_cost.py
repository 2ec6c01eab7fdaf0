"""Cost of AdaDistill vs the margin loss alone at many classes (same student, same batch, same process).

A full training step (student forward/backward + loss + AdamW) with a MobileFaceNet-small student,
K classes, batch 128, 128-d embeddings; teacher embeddings are given (cached), so the difference is
the loss: AdaDistill's ordered centre update + cosine to K centres vs a trainable margin head.

    python benchmarks/adadistill_cost.py [--classes 10000] [--steps 20] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from types import SimpleNamespace

import torch
from cli_args import count

from corecompress.plugin.loading import load_plugins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=count(2), default=10_000)
    ap.add_argument("--batch", type=count(2), default=128, help="at least 2 (the embedding's batch norm trains)")
    ap.add_argument("--steps", type=count(1), default=20)
    ap.add_argument("--repeats", type=count(1), default=5)
    ap.add_argument("--threads", type=count(1), default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = load_plugins().registry
    from corecompress_facekit.models.mobilefacenet import mobilefacenet_small

    student = mobilefacenet_small(embedding_size=128, input_size=64)
    teacher = mobilefacenet_small(embedding_size=128, input_size=64).eval()  # only its embedding size is read
    ctx = SimpleNamespace(data=SimpleNamespace(num_classes=args.classes), teacher=teacher, state={}, device=torch.device("cpu"),
                          recipe=SimpleNamespace(seed=0), model_spec=SimpleNamespace(embedding_size=128, input_size=(3, 64, 64)),
                          log=None)
    losses = {}
    for name in ("arcface", "adadistill"):
        comp = reg.get("loss", name)
        loss = comp.create(comp.parse({}, "loss"))
        loss.setup(ctx)
        losses[name] = loss
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 64, 64, generator=gen)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)
    f_t = torch.randn(args.batch, 128, generator=gen)
    batch = {"image": x, "label": y, "index": torch.arange(args.batch), "flipped": torch.zeros(args.batch, dtype=torch.bool)}
    times = {name: [] for name in losses}
    for r in range(args.repeats):
        for name in (list(losses) if r % 2 == 0 else list(losses)[::-1]):
            loss = losses[name]
            opt = torch.optim.AdamW(list(student.parameters()) + list(loss.parameters()), lr=1e-4)
            for step in range(args.steps + 2):
                if step == 2:
                    start = time.perf_counter()
                out = loss(student(x), batch, f_t)
                opt.zero_grad()
                out["loss"].backward()
                opt.step()
            times[name].append((time.perf_counter() - start) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    centres = dict(losses["adadistill"].named_buffers())
    centre_bytes = sum(b.numel() * b.element_size() for b in centres.values())
    head_bytes = sum(p.numel() * p.element_size() for p in losses["arcface"].parameters())
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads; K={args.classes}, batch {args.batch}")
    for k, v in med.items():
        print(f"{k}: {1000 * v:.1f} ms/step (median of {args.repeats} × {args.steps} steps)")
    print(f"step-time ratio adadistill/arcface = {med['adadistill'] / med['arcface']:.3f}")
    print(f"AdaDistill centres: {centre_bytes / 2**20:.2f} MiB (buffer, no optimizer state); "
          f"margin head: {head_bytes / 2**20:.2f} MiB weights + {2 * head_bytes / 2**20:.2f} MiB AdamW moments")


if __name__ == "__main__":
    main()
