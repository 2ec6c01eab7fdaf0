"""Per-rank memory and step time of the class-sharded margin head (Partial FC) vs the replicated head.

Paper: An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021.
Run under torchrun (gloo on the CPU by default):

    torchrun --standalone --nproc_per_node=2 benchmarks/partial_fc.py --classes 100000 --dim 512

Each rank builds a small stand-in model (Linear 128 → E) and the ``arcface`` objective with
``sharded: false`` and ``sharded: true``, wraps them as the training loop does (``StudentWithObjective``
in DDP, the sharded rows ignored by DDP), and times forward + backward + AdamW step, the two set-ups
interleaved. Memory is counted from the real tensors: the head's parameter and its AdamW moments
on this rank. Prints one line per figure (rank 0).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from types import SimpleNamespace

import torch
from cli_args import count

from corecompress.engine import distributed, row_shards
from corecompress.engine.training import StudentWithObjective
from corecompress_facekit.losses import MarginObjective, MarginObjectiveOptions


def build(sharded: bool, classes: int, dim: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, MarginObjective]:
    ctx = SimpleNamespace(data=SimpleNamespace(num_classes=classes), model_spec=SimpleNamespace(embedding_size=dim),
                          recipe=SimpleNamespace(seed=0), device=distributed.device(), state={})
    torch.manual_seed(0)
    objective = MarginObjective(MarginObjectiveOptions(sharded=sharded))
    objective.setup(ctx)
    module: torch.nn.Module = StudentWithObjective(torch.nn.Linear(128, dim), objective)
    params = list(module.parameters())
    if distributed.world() > 1:
        module = distributed.wrap_ddp(module, ignore=row_shards.ddp_ignore_names(module))
    return module, torch.optim.AdamW(params, lr=1e-3), objective


def head_bytes(objective: MarginObjective, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    weight = objective.head.weight
    state = optimizer.state.get(weight, {})
    moments = sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor) and v.ndim)
    return weight.numel() * weight.element_size(), moments


def step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    loss = module(x, {"label": y})["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=count(2), default=100_000)
    parser.add_argument("--dim", type=count(1), default=512)
    parser.add_argument("--batch", type=count(1), default=64, help="global batch (at least one row per process)")
    parser.add_argument("--steps", type=count(1), default=5)
    parser.add_argument("--warmup", type=count(0), default=2)
    parser.add_argument("--rounds", type=count(1), default=3)
    args = parser.parse_args()
    world_env = os.environ.get("WORLD_SIZE", "1")  # torchrun's; a malformed value is init_from_env's error
    procs = int(world_env) if world_env.isdigit() else 1
    if args.batch < procs or args.classes < procs:
        parser.error(f"--batch {args.batch} and --classes {args.classes} must each be >= the {procs} processes "
                     f"(every process gets batch rows and head rows)")
    torch.set_num_threads(1)
    os.environ.setdefault(distributed.ENV_BACKEND, "gloo")
    distributed.init_from_env()
    world, rank = distributed.world(), distributed.rank()
    lo, hi = distributed.shard_bounds(args.batch, rank, world)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 128, generator=gen)[lo:hi]
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)[lo:hi]
    setups = {name: build(name == "sharded", args.classes, args.dim) for name in ("replicated", "sharded")}
    times: dict[str, list[float]] = {name: [] for name in setups}
    for name, (module, optimizer, _) in setups.items():
        for _ in range(args.warmup):
            step(module, optimizer, x, y)
    for _ in range(args.rounds):
        for name, (module, optimizer, _) in setups.items():
            distributed.barrier()
            times[name].append(statistics.median(step(module, optimizer, x, y) for _ in range(args.steps)))
    if rank == 0:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
              f"world {world}, 1 thread per process, K={args.classes}, E={args.dim}, global batch {args.batch}")
        for name, (_, optimizer, objective) in setups.items():
            weight, moments = head_bytes(objective, optimizer)
            rounds = ", ".join(f"{t * 1e3:.0f}" for t in times[name])
            print(f"{name}: head rows on rank 0 {tuple(objective.head.weight.shape)}, weight {weight / 1e6:.1f} MB, "
                  f"AdamW moments {moments / 1e6:.1f} MB; median step {statistics.median(times[name]) * 1e3:.0f} ms "
                  f"(rounds: {rounds})")
        ratio = statistics.median(times["sharded"]) / statistics.median(times["replicated"])
        print(f"step time sharded / replicated: {ratio:.2f}")


if __name__ == "__main__":
    main()
