"""The class-sharded margin head (Partial FC, An et al., ICCVW 2021): ``sharded: true`` on the margin losses.

On 2 gloo processes (one torchrun launch through tests/engine/test_distributed.py's helper): the sharded loss
equals the unsharded one — loss value, embedding gradients and centre gradients within 1e-5 — for
ArcFace, CosFace and a combined margin, with unequal batch slices (3 + 4) and unequal class shards
(6 + 5 rows); a real ``corecompress run`` with ``sharded: true`` keeps different shards per rank and
bitwise-equal model weights (so DDP neither broadcast nor averaged the shards, and gradient clipping
used the global norm), writes the full head to header.safetensors and to checkpoints (with full
AdamW moments), resumes bitwise exactly, and stays as close to the single-process run as the
replicated head does (which fails if the model's or the head's gradient were mis-scaled).
In one process: ``sharded: true`` is the ordinary head bit for bit; the helpers of
:mod:`corecompress.engine.row_shards` slice checkpointed state by hand-made shards.
"""
from __future__ import annotations

import copy
import json
import logging
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from corecompress.engine import row_shards
from corecompress_facekit.heads.margin import CombinedMarginHead
from corecompress_facekit.heads.partial_fc import ShardedMarginHead, sharded_margin_loss
from corecompress_facekit.losses import MarginObjective, MarginObjectiveOptions
from test_distributed import (  # noqa: F401
    assert_bitwise_equal, dumps, max_difference, pytestmark, run_in_one_process, torchrun, write_recipe,
)

MARGINS = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.35), "combined": (1.2, 0.3, 0.1)}

SHARDED = {
    "version": 1, "name": "ddp_sharded", "seed": 3, "threads": 1, "deterministic": True,
    "model": {"name": "tiny_vit", "num_outputs": 16},
    "data": {"name": "synthetic_prototypes", "num_classes": 6, "train_per_class": 8},
    "train": {"steps": 8, "batch_size": 15, "lr": 3e-3, "checkpoint_every": 4, "log_every": 2,
              "clip_grad_norm": 0.05, "objective": {"name": "arcface", "s": 16, "sharded": True}},
    "evaluate": [],
}

DRIVER = textwrap.dedent("""
    import json, os, shutil, sys
    from pathlib import Path
    import torch, torch.nn.functional as F
    import torch.distributed as dist
    from corecompress.engine import distributed
    from corecompress.tools.cli import main
    from corecompress_facekit.heads.margin import CombinedMarginHead
    from corecompress_facekit.heads.partial_fc import ShardedMarginHead

    work = Path(sys.argv[1])
    torch.set_num_threads(1)
    distributed.init_from_env()
    rank, world = distributed.rank(), distributed.world()
    result = {}
    for name, (m1, m2, m3) in json.loads(sys.argv[2]).items():  # same data on every rank
        gen = torch.Generator().manual_seed(7)
        weight, emb = torch.randn(11, 8, generator=gen), torch.randn(7, 8, generator=gen)
        labels = torch.tensor([0, 10, 5, 6, 5, 2, 9])  # classes of both shards in both slices
        full = CombinedMarginHead(8, 11, s=16, m1=m1, m2=m2, m3=m3, init_weight=weight)
        ref_emb = emb.clone().requires_grad_()
        ref = F.cross_entropy(full(ref_emb, labels), labels)
        ref.backward()
        lo, hi = distributed.shard_bounds(7, rank, world)  # 3 + 4 rows
        head = ShardedMarginHead(8, 11, weight, s=16, m1=m1, m2=m2, m3=m3, rank=rank, world=world)
        mine = emb[lo:hi].clone().requires_grad_()
        loss = head(mine, labels[lo:hi])
        loss.backward()
        result[name] = {
            "rows": [head.class_start, head.class_stop],
            "loss": abs(float(loss.detach()) - float(ref.detach())),
            "emb_grad": float((mine.grad - ref_emb.grad[lo:hi]).abs().max()),
            "centre_grad": float((head.weight.grad - full.weight.grad[head.class_start:head.class_stop]).abs().max()),
            "grad_size": float(full.weight.grad.abs().max()),
        }
    # the loop's convention: rank r backpropagates loss·share_r and DDP averages the model's gradients
    from types import SimpleNamespace
    from corecompress.engine import row_shards
    from corecompress.engine.training import StudentWithObjective
    from corecompress_facekit.losses import MarginObjective, MarginObjectiveOptions
    gen = torch.Generator().manual_seed(11)
    x, labels = torch.randn(7, 5, generator=gen), torch.tensor([0, 10, 5, 6, 5, 2, 9])
    ctx = SimpleNamespace(data=SimpleNamespace(num_classes=11), model_spec=SimpleNamespace(embedding_size=8),
                          recipe=SimpleNamespace(seed=4), device=torch.device("cpu"), state={})
    modules = []
    for sharded in (False, True):
        torch.manual_seed(0)
        objective = MarginObjective(MarginObjectiveOptions(s=16, sharded=sharded))
        objective.setup(ctx)
        modules.append(StudentWithObjective(torch.nn.Linear(5, 8), objective))
    reference, module = modules
    ref = reference(x, {"label": labels})["loss"]
    ref.backward()
    ddp = distributed.wrap_ddp(module, ignore=row_shards.ddp_ignore_names(module))
    lo, hi = distributed.shard_bounds(7, rank, world)
    parts = ddp(x[lo:hi], {"label": labels[lo:hi]})
    (parts["loss"] * ((hi - lo) * world / 7)).backward()
    head, ref_head = module.objective.head, reference.objective.head
    logged = distributed.all_reduce_sum([float(parts["loss"].detach()) * (hi - lo)])[0] / 7
    result["ddp"] = {
        "model_grad": float((module.model.weight.grad - reference.model.weight.grad).abs().max()),
        "model_grad_size": float(reference.model.weight.grad.abs().max()),
        "centre_grad": float((head.weight.grad - ref_head.weight.grad[head.class_start:head.class_stop]).abs().max()),
        "centre_grad_size": float(ref_head.weight.grad.abs().max()),
        "logged": abs(logged - float(ref.detach())), "margin_loss": abs(float(parts["margin_loss"]) - float(ref.detach())),
    }
    codes = {}
    os.environ["CORECOMPRESS_DDP_DUMP_DIR"] = str(work / "dump_run")
    codes["run"] = main(["run", str(work / "sharded.yaml"), "--out", str(work / "run")])
    if rank == 0:  # as if killed after step 4
        resumed = work / "resumed"
        shutil.copytree(work / "run", resumed)
        shutil.rmtree(resumed / "checkpoints" / "train-step0000008")
        for name in ("model.safetensors", "header.safetensors"):
            (resumed / name).unlink()
        status = json.loads((resumed / "status.json").read_text())
        (resumed / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    dist.barrier()
    os.environ["CORECOMPRESS_DDP_DUMP_DIR"] = str(work / "dump_resume")
    codes["resume"] = main(["run", "--resume", str(work / "resumed")])
    (work / f"result.rank{rank}.json").write_text(json.dumps({"functional": result, "codes": codes}))
""")


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    work = tmp_path_factory.mktemp("partial_fc")
    write_recipe(work / "sharded.yaml", SHARDED)
    (work / "driver.py").write_text(DRIVER)
    done = torchrun(["driver.py", str(work), json.dumps(MARGINS)], work)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads((work / f"result.rank{r}.json").read_text()) for r in range(2)]
    return {"work": work, "results": results}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """SHARDED in one process, with ``sharded: true`` and with the replicated head."""
    work = tmp_path_factory.mktemp("single_fc")
    recipes = {}
    for name, sharded in (("sharded", True), ("plain", False)):
        recipes[name] = copy.deepcopy(SHARDED)
        recipes[name]["train"]["objective"]["sharded"] = sharded
    run_in_one_process(work, recipes)
    return work


# --- 2 processes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("margin", sorted(MARGINS))
def test_sharded_loss_and_gradients_equal_the_unsharded_head(launched, margin):
    for rank, result in enumerate(launched["results"]):
        got = result["functional"][margin]
        assert got["rows"] == ([0, 6] if rank == 0 else [6, 11])  # K // N each, remainder to rank 0
        assert got["grad_size"] > 1e-2  # the comparison is not between vanishing gradients
        assert got["loss"] < 1e-5 and got["emb_grad"] < 1e-5 and got["centre_grad"] < 1e-5, got


def test_data_parallel_loss_gives_the_single_process_gradients_under_ddp(launched):
    """Through DDP with the loop's share scaling (unequal slices 3 + 4): the model's gradient (averaged
    by DDP) and each rank's centre gradient (not averaged) are the single-process ones."""
    for result in launched["results"]:
        got = result["functional"]["ddp"]
        assert got["model_grad_size"] > 1e-2  # gradients of size ~1-10 here: compared relative to their size
        assert got["model_grad"] < 1e-5 * got["model_grad_size"], got
        assert got["centre_grad"] < 1e-5 * got["centre_grad_size"], got
        assert got["logged"] < 1e-5 and got["margin_loss"] < 1e-5, got


def test_run_keeps_shards_apart_and_models_bitwise_equal(launched):
    assert all(r["codes"] == {"run": 0, "resume": 0} for r in launched["results"])
    work = launched["work"]
    rank0, rank1 = dumps(work / "dump_run", "train")
    assert rank0["objective.head.weight"].shape == rank1["objective.head.weight"].shape == (3, 16)
    assert not torch.equal(rank0["objective.head.weight"], rank1["objective.head.weight"])
    assert_bitwise_equal({k: v for k, v in rank0.items() if k.startswith("model.")},
                         {k: v for k, v in rank1.items() if k.startswith("model.")})
    header = load_file(str(work / "run" / "header.safetensors"))["weight"]
    assert torch.equal(header, torch.cat([rank0["objective.head.weight"], rank1["objective.head.weight"]]))


def test_checkpoint_holds_the_full_head_and_moments(launched):
    ckpt = launched["work"] / "run" / "checkpoints" / "train-step0000008"
    assert load_file(str(ckpt / "objective.safetensors"))["head.weight"].shape == (6, 16)
    moments = [v for v in load_file(str(ckpt / "optimizer.safetensors")).values() if v.shape == (6, 16)]
    assert len(moments) == 2  # AdamW's exp_avg and exp_avg_sq of the whole head
    header = load_file(str(launched["work"] / "run" / "header.safetensors"))["weight"]
    assert torch.equal(load_file(str(ckpt / "objective.safetensors"))["head.weight"], header)


def test_sharded_resume_is_bitwise_exact(launched):
    work = launched["work"]
    for name in ("model.safetensors", "header.safetensors"):
        assert_bitwise_equal(load_file(str(work / "resumed" / name)), load_file(str(work / "run" / name)))
    for ran, resumed in zip(dumps(work / "dump_run", "train"), dumps(work / "dump_resume", "train")):
        assert_bitwise_equal(ran, resumed)  # each rank's shard too
    assert "train: resumed at step 4 of 8" in (work / "resumed" / "log.txt").read_text()


def test_sharded_run_is_close_to_the_single_process_run(launched, single):
    work = launched["work"]
    rank0, _ = dumps(work / "dump_run", "train")
    reference = load_file(str(single / "dump_plain" / "train.rank0.safetensors"))
    model = {k: v for k, v in rank0.items() if k.startswith("model.")}
    assert max_difference(model, {k: reference[k] for k in model}) < 2e-4
    header = load_file(str(work / "run" / "header.safetensors"))["weight"]
    assert (header - reference["objective.head.weight"]).abs().max() < 2e-4
    ddp = json.loads((work / "run" / "metrics.json").read_text())["train"]["history"]
    one = json.loads((single / "plain" / "metrics.json").read_text())["train"]["history"]
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [2, 4, 6, 8]
    for a, b in zip(ddp, one):  # the global batch mean, logged once
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["margin_loss"] == pytest.approx(b["margin_loss"], rel=1e-5)


# --- one process ---------------------------------------------------------------------------------

def test_single_process_sharded_run_is_the_plain_run(single):
    sharded = load_file(str(single / "dump_sharded" / "train.rank0.safetensors"))
    plain = load_file(str(single / "dump_plain" / "train.rank0.safetensors"))
    assert_bitwise_equal(sharded, plain)


def make_ctx(num_classes: int = 5, size: int = 4) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(num_classes=num_classes),
                           model_spec=SimpleNamespace(embedding_size=size, input_size=(3, 4, 4)), model=None,
                           teacher=None, state={}, recipe=SimpleNamespace(seed=2),
                           log=logging.getLogger("test"), device=torch.device("cpu"))


@pytest.mark.parametrize("margin", ["arcface", "cosface"])
def test_sharded_option_in_one_process_is_the_ordinary_head(margin):
    losses = []
    for sharded in (False, True):
        ctx = make_ctx()
        objective = MarginObjective(MarginObjectiveOptions(margin=margin, s=8.0, sharded=sharded))
        objective.setup(ctx)
        assert type(objective.head) is CombinedMarginHead and objective.artifacts()["header"] is objective.head
        emb = torch.linspace(-1, 1, 24).reshape(6, 4).requires_grad_()
        loss = objective(emb, {"label": torch.tensor([0, 1, 2, 3, 4, 0])})["loss"]
        loss.backward()
        losses.append((loss.detach(), emb.grad, objective.head.weight.grad))
    assert all(torch.equal(a, b) for a, b in zip(*losses))


def test_distributed_cross_entropy_in_one_process_matches_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    weight, emb, labels = torch.randn(9, 5, generator=gen), torch.randn(6, 5, generator=gen), torch.tensor([8, 0, 3, 3, 1, 7])
    for m1, m2, m3 in MARGINS.values():
        full = CombinedMarginHead(5, 9, s=20, m1=m1, m2=m2, m3=m3, init_weight=weight)
        a, b = emb.clone().requires_grad_(), emb.clone().requires_grad_()
        ref = F.cross_entropy(full(a, labels), labels)
        ref.backward()
        centres = weight.clone().requires_grad_()
        loss, batch = sharded_margin_loss(b, labels, centres, 0, s=20, m1=m1, m2=m2, m3=m3)
        loss.backward()
        assert batch == 6 and abs(float(loss.detach()) - float(ref.detach())) < 1e-5
        assert (a.grad - b.grad).abs().max() < 1e-6 and (full.weight.grad - centres.grad).abs().max() < 1e-6


def test_row_bounds_give_the_remainder_to_the_first_ranks():
    assert [row_shards.row_bounds(11, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert [row_shards.row_bounds(6, r, 2) for r in range(2)] == [(0, 3), (3, 6)]
    with pytest.raises(ValueError, match="fewer rows than ranks"):
        row_shards.row_bounds(1, 0, 2)


def test_checkpointed_state_is_sliced_to_this_ranks_rows():
    head = ShardedMarginHead(2, 7, torch.arange(14.0).reshape(7, 2), s=4.0, rank=1, world=2)  # rows 4..6
    objective = torch.nn.ModuleDict({"head": head})
    assert head.weight.tolist() == [[8.0, 9.0], [10.0, 11.0], [12.0, 13.0]]
    assert row_shards.ddp_ignore_names(objective) == ["head.weight"]
    assert row_shards.full_view(objective).state_dict()["head.weight"].shape == (7, 2)
    full = torch.arange(100.0, 114.0).reshape(7, 2)
    assert torch.equal(row_shards.local_rows({"head.weight": full}, objective)["head.weight"], full[4:])
    optimizer = torch.optim.AdamW(objective.parameters())
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": full, "exp_avg_sq": full * 2}},
             "param_groups": optimizer.state_dict()["param_groups"]}
    sliced = row_shards.local_optimizer_rows(state, optimizer, objective)
    assert torch.equal(sliced["state"][0]["exp_avg_sq"], full[4:] * 2) and sliced["state"][0]["step"] == 3
    optimizer.load_state_dict(sliced)  # fits the shard
    assert row_shards.checkpoint_views(objective, optimizer) == (objective, optimizer)  # one process: as is
