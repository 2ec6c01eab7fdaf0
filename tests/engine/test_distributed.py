"""Data-parallel runs under torchrun: 2 gloo processes on the CPU run real recipes through
``python -m torch.distributed.run --standalone --nproc_per_node=2 -m corecompress run ...``.

Checked: after training, physical pruning and retraining with a margin head, and after AdaDistill
retraining of a soft-masked model, the two ranks hold bitwise-identical weights, heads, centres and
masks (each rank dumps its state through the documented diagnostics variable
``CORECOMPRESS_DDP_DUMP_DIR``); the result is close to — not bitwise equal to — the single-process
run with the same global batch (the gradient is averaged from two half-batch gradients, in another
summation order); the logged losses are the global batch mean; only rank 0 writes (one run
directory, every log line once); a rank-0 error ends every rank with the same exit code; a resumed
distributed run ends bitwise equal to the uninterrupted one. The helpers are unit-tested in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from corecompress.engine import distributed
from corecompress.engine.training import EpochBatchSampler, flip_half

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

MARGIN = {  # train → physical prune (heads + neurons) → retrain, margin head trained with the model
    "version": 1, "name": "ddp_margin", "seed": 5, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_vit", "num_outputs": 16},
    "data": {"name": "synthetic_prototypes", "num_classes": 6, "train_per_class": 8},
    "train": {"steps": 8, "batch_size": 15, "lr": 3e-3, "checkpoint_every": 4, "log_every": 2,
              "objective": {"name": "arcface", "s": 16}},
    "evaluate": ["accuracy"],
    "prune": {"importance": "l1", "targets": ["heads", "neurons"], "sparsity": 0.5, "apply": "physical"},
    "retrain": {"steps": 8, "batch_size": 15, "lr": 1e-3, "checkpoint_every": 4, "log_every": 2,
                "objective": {"name": "arcface", "s": 16}},
}

ADA = {  # teacher = the model before pruning; soft masks; AdaDistill centres from the teacher
    "version": 1, "name": "ddp_ada", "seed": 1, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_vit", "num_outputs": 16},
    "data": {"name": "synthetic_prototypes", "num_classes": 6, "train_per_class": 8},
    "train": {"steps": 6, "batch_size": 12, "lr": 3e-3, "log_every": 3, "objective": {"name": "arcface", "s": 16}},
    "teacher": {},
    "evaluate": [],
    "prune": {"importance": "l1", "targets": ["channels", "neurons"], "sparsity": 0.5, "apply": "mask"},
    "retrain": {"steps": 6, "batch_size": 12, "lr": 1e-3, "log_every": 3,
                "objective": {"name": "adadistill", "s": 16}},
}

# Launched once by torchrun (process starts are the slow part on a CPU): the first call executes
# corecompress/__main__.py exactly as ``torchrun -m corecompress run ...`` does (it joins the process
# group from torchrun's variables); the next CLI calls reuse that group.
DRIVER = textwrap.dedent("""
    import json, os, runpy, shutil, sys
    from pathlib import Path
    import torch.distributed as dist

    work = Path(sys.argv[1])
    codes = {}
    os.environ["CORECOMPRESS_DDP_DUMP_DIR"] = str(work / "dump_margin")
    sys.argv = ["corecompress", "run", str(work / "margin.yaml"), "--out", str(work / "margin_run")]
    try:
        runpy.run_module("corecompress", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        codes["margin"] = exc.code
    from corecompress.tools.cli import main

    if dist.get_rank() == 0:  # the MARGIN run as if killed after retrain step 4; a directory in use
        written = sorted(p.name for p in work.iterdir())
        resumed = work / "resumed"
        shutil.copytree(work / "margin_run", resumed)
        shutil.rmtree(resumed / "checkpoints" / "retrain-step0000008")
        (resumed / "model.safetensors").unlink()
        status = json.loads((resumed / "status.json").read_text())
        (resumed / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
        (work / "taken").mkdir()
        (work / "taken" / "keep.txt").write_text("mine")
        codes["written_by_margin"] = written
    dist.barrier()
    for name, args in [("ada", ["run", str(work / "ada.yaml")]),
                       ("exists", ["run", str(work / "margin.yaml"), "--out", str(work / "taken")]),
                       ("resume", ["run", "--resume", str(work / "resumed")])]:
        os.environ["CORECOMPRESS_DDP_DUMP_DIR"] = str(work / f"dump_{name}")
        print(f"=== {name}", file=sys.stderr, flush=True)
        codes[name] = main(args)
        dist.barrier()
    (work / f"codes.rank{dist.get_rank()}.json").write_text(json.dumps(codes))
""")


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CORECOMPRESS_SLOW_IMPORT_S": "600",
           distributed.ENV_BACKEND: "gloo"}  # CPU processes, also on a machine with one GPU
    env.pop(distributed.ENV_DUMP_DIR, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch of DRIVER: MARGIN through ``-m corecompress``; ADA with the default run
    directory (cwd = the work folder); a refused ``--out``; resuming a copy of the MARGIN run."""
    work = tmp_path_factory.mktemp("ddp")
    write_recipe(work / "margin.yaml", MARGIN)
    write_recipe(work / "ada.yaml", ADA)
    (work / "driver.py").write_text(DRIVER)
    done = torchrun(["driver.py", str(work)], work)
    assert done.returncode == 0, done.stderr[-4000:]
    codes = [json.loads((work / f"codes.rank{r}.json").read_text()) for r in range(2)]
    return {"work": work, "done": done, "codes": codes}


def run_in_one_process(work: Path, recipes: dict[str, dict]) -> None:
    """Run each recipe in this process into ``work/<name>``, its trained state dumped to ``work/dump_<name>``."""
    from corecompress.tools.cli import main

    old = os.environ.pop(distributed.ENV_DUMP_DIR, None)
    try:
        for name, data in recipes.items():
            os.environ[distributed.ENV_DUMP_DIR] = str(work / f"dump_{name}")
            assert main(["run", str(write_recipe(work / f"{name}.yaml", data)), "--out", str(work / name)]) == 0
    finally:
        os.environ.pop(distributed.ENV_DUMP_DIR, None)
        if old is not None:
            os.environ[distributed.ENV_DUMP_DIR] = old


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same recipes in one process (same global batch)."""
    work = tmp_path_factory.mktemp("single")
    run_in_one_process(work, {"margin": MARGIN, "ada": ADA})
    return work


def dumps(folder: Path, phase: str) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(folder / f"{phase}.rank{r}.safetensors")) for r in range(2)]


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"ranks differ: {different[:5]}"


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# --- end to end ---------------------------------------------------------------------------------

def test_margin_run_ranks_hold_identical_weights_and_heads(launched):
    assert launched["codes"][0]["margin"] == launched["codes"][1]["margin"] == 0
    dump = launched["work"] / "dump_margin"
    for phase in ("train", "retrain"):
        rank0, rank1 = dumps(dump, phase)
        assert "objective.head.weight" in rank0  # the margin head is trained and synchronised too
        assert_bitwise_equal(rank0, rank1)
    pruned = load_file(str(launched["work"] / "margin_run" / "model.safetensors"))
    rank0, _ = dumps(dump, "retrain")
    assert_bitwise_equal({k: v for k, v in rank0.items() if k.startswith("model.")},
                         {f"model.{k}": v for k, v in pruned.items()})
    assert pruned["blocks.0.mlp.fc1.weight"].shape[0] == 32  # physically pruned: 64 → 32 neurons


def test_margin_run_is_close_to_the_single_process_run(launched, single):
    for phase in ("train", "retrain"):
        rank0, _ = dumps(launched["work"] / "dump_margin", phase)
        reference = load_file(str(single / "dump_margin" / f"{phase}.rank0.safetensors"))
        assert max_difference(rank0, reference) < 2e-4  # summation order only (see module docstring)
    ddp = json.loads((launched["work"] / "margin_run" / "metrics.json").read_text())
    one = json.loads((single / "margin" / "metrics.json").read_text())
    for phase in ("train", "retrain"):
        steps = [r["step"] for r in ddp[phase]["history"]]
        assert steps == [r["step"] for r in one[phase]["history"]] == [2, 4, 6, 8]
        for a, b in zip(ddp[phase]["history"], one[phase]["history"]):  # the global batch mean, not rank 0's
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert json.loads((launched["work"] / "margin_run" / "plan.json").read_text()) == \
        json.loads((single / "margin" / "plan.json").read_text())


def test_only_rank_zero_writes(launched):
    work, done = launched["work"], launched["done"]
    run = work / "margin_run"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "complete" and status["world_size"] == 2
    log = (run / "log.txt").read_text()
    assert log.count("model tiny_vit") == 1 and log.count("retrain step 8/8") == 1
    assert done.stdout.count(f"run complete: {run}") == 1  # printed by rank 0 alone
    assert launched["codes"][0]["written_by_margin"] == ["ada.yaml", "driver.py", "dump_margin", "margin.yaml",
                                                         "margin_run"]
    ckpt = run / "checkpoints" / "retrain-step0000008"
    assert (ckpt / "rng-rank1.json").is_file()  # rank 1's generators travel in rank 0's checkpoint
    assert json.loads((ckpt / "info.json").read_text())["world_size"] == 2


def test_adadistill_centres_masks_and_weights_identical_across_ranks(launched, single):
    assert launched["codes"][0]["ada"] == launched["codes"][1]["ada"] == 0
    rank0, rank1 = dumps(launched["work"] / "dump_ada", "retrain")
    assert rank0["objective.centres"].shape == (6, 16)
    assert_bitwise_equal(rank0, rank1)
    masks = {k[len("masks."):]: v for k, v in rank0.items() if k.startswith("masks.")}
    assert masks
    for name, mask in masks.items():  # every rank re-zeroed the removed units after each step
        assert (mask == 0).any() and torch.all(rank0[f"model.{name}"][mask == 0] == 0)
    reference = load_file(str(single / "dump_ada" / "retrain.rank0.safetensors"))
    assert max_difference(rank0, reference) < 2e-4
    centres_moved = (rank0["objective.centres"] - reference["objective.centres"]).abs().max()
    assert centres_moved < 1e-5  # the gathered, ordered update is the single-process one


def test_default_run_directory_is_rank_zeros(launched):
    runs = list((launched["work"] / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("ddp_ada-")
    assert json.loads((runs[0] / "status.json").read_text())["state"] == "complete"


def test_rank_zero_error_ends_every_rank_without_hanging(launched):
    codes = launched["codes"]
    assert codes[0]["exists"] == codes[1]["exists"] == 2
    assert launched["done"].stderr.count("run directory already exists") == 1  # printed by rank 0 alone
    assert [p.name for p in (launched["work"] / "taken").iterdir()] == ["keep.txt"]


def test_distributed_resume_is_bitwise_exact(launched):
    codes = launched["codes"]
    assert codes[0]["resume"] == codes[1]["resume"] == 0
    work = launched["work"]
    resumed, reference = load_file(str(work / "resumed" / "model.safetensors")), \
        load_file(str(work / "margin_run" / "model.safetensors"))
    assert_bitwise_equal(resumed, reference)
    rank0, rank1 = dumps(work / "dump_resume", "retrain")
    assert_bitwise_equal(rank0, rank1)
    log = (work / "resumed" / "log.txt").read_text()
    assert "retrain: resumed at step 4 of 8 from checkpoint retrain-step0000004" in log


# --- helpers, in one process ---------------------------------------------------------------------

@pytest.mark.parametrize("batch,world", [(15, 2), (16, 2), (7, 3), (4, 4)])
def test_shards_partition_every_global_batch_in_order(batch, world):
    bounds = [distributed.shard_bounds(batch, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    order = EpochBatchSampler(40, batch, seed=3, start_batch=2)
    shards = [iter(distributed.ShardedBatchSampler(EpochBatchSampler(40, batch, seed=3, start_batch=2), r, world))
              for r in range(world)]
    for whole, _ in zip(order, range(7)):  # across an epoch boundary (40 // batch batches per epoch)
        assert sum((next(s) for s in shards), []) == whole


def test_flip_of_a_shard_is_the_slice_of_the_global_flip():
    images = torch.arange(15 * 3 * 2 * 2, dtype=torch.float32).reshape(15, 3, 2, 2)
    whole, mask = flip_half(images, seed=4, step=9)
    assert 0 < int(mask.sum()) < 15
    for lo, hi in (distributed.shard_bounds(15, r, 2) for r in range(2)):
        part, part_mask = flip_half(images[lo:hi], seed=4, step=9, offset=lo, total=15)
        assert torch.equal(part_mask, mask[lo:hi]) and torch.equal(part, whole[lo:hi])


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.requested() and distributed.init_from_env() is False
    assert distributed.world() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert list(distributed.all_reduce_mean({"b": 2.0, "a": 1}, weight=5).items()) == [("b", 2.0), ("a", 1.0)]
    assert distributed.on_main(lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):
        distributed.on_main(lambda: 1 / 0)


def test_incomplete_torchrun_environment_is_one_line_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(distributed.DistributedSetupError, match="^MASTER_ADDR is not set"):
        distributed.init_from_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(distributed.DistributedSetupError, match="RANK=2 is outside"):
        distributed.init_from_env()
    monkeypatch.setenv(distributed.ENV_BACKEND, "mpi")
    with pytest.raises(distributed.DistributedSetupError, match="expected gloo or nccl"):
        distributed.choose_backend()
    assert not dist.is_initialized()


def test_only_run_is_distributed(monkeypatch, cli, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _out, err = cli("validate", tmp_path / "any.yaml")
    assert code == 2
    assert err == "error: 'validate' does not run distributed; start it without torchrun (only 'run' does)\n"
    assert not dist.is_initialized()


def test_rank_zero_errors_are_rebuilt_with_their_class_or_category():
    from corecompress.engine.checkpoint import CheckpointWriteError
    from corecompress.errors import RecipeError
    from corecompress.engine.runner import RunAlreadyComplete
    from corecompress.engine.training import TrainingInterrupted

    def again(exc: BaseException) -> BaseException:
        return distributed.rebuild_error(distributed.describe_error(exc))

    done = again(RunAlreadyComplete("runs/x: the run is already complete; nothing to resume"))
    assert type(done) is RunAlreadyComplete and str(done) == "runs/x: the run is already complete; nothing to resume"
    stopped = again(TrainingInterrupted("train: interrupted at step 3 of 9"))
    assert type(stopped) is TrainingInterrupted
    recipe = again(RecipeError("train.lr", "must be positive"))  # a 2-argument constructor: a stand-in
    assert type(recipe) is distributed.MainRankError and str(recipe) == "train.lr: must be positive"
    disk = again(CheckpointWriteError(28, "cannot write checkpoint c: No space left on device"))
    assert isinstance(disk, OSError) and disk.errno == 28 and "No space left" in disk.strerror
    other = again(ZeroDivisionError("division by zero"))
    assert type(other) is ZeroDivisionError
