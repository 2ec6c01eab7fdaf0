"""prune.verify: a masked-vs-physical probe before a plan is used; a wrong group is one line naming it."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from corecompress.errors import PlanVerificationError
from corecompress.pruning.groups import Slice
from corecompress.pruning.plan import make_plan
from corecompress.pruning.verify import check_plan, find_offenders, probe, thinning_plan
from corecompress_builtin.tiny_models import TinyViT

KINDS = ("channels", "heads", "neurons")
RECIPE = {
    "version": 1, "name": "verify", "seed": 0, "threads": 1,
    "model": {"name": "tiny_vit", "num_outputs": 4},
    "data": {"name": "synthetic_prototypes", "num_classes": 4, "train_per_class": 4},
    "prune": {"importance": "l1", "targets": list(KINDS), "sparsity": 0.5, "apply": "physical"},
}


def _forgets_the_bias(groups, name="blocks.1.heads"):
    """The heads group of block 1 without its qkv-bias slice: removal then leaves the bias too long."""
    return [dataclasses.replace(g, slices=tuple(s for s in g.slices if not s.tensor.endswith("qkv.bias")))
            if g.name == name else g for g in groups]


def _wrong_columns(groups, name="blocks.0.heads"):
    """The heads group of block 0 cutting proj columns strided (u, H+u, …) instead of head u's block."""
    out = []
    for g in groups:
        if g.name == name:
            d, h = g.meta["head_dim"], g.size
            proj = Slice("blocks.0.attn.proj.weight", 1, tuple(j * h for j in range(d)), 1)
            g = dataclasses.replace(g, slices=tuple(proj if s.tensor.endswith("proj.weight") else s for s in g.slices))
        out.append(g)
    return out


def _plan(model, groups):
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(1)) for g in groups}
    return make_plan(scores, groups, 0.5)


def test_correct_groups_pass_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = TinyViT().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = model.prunable_groups(KINDS)
    check_plan(model, groups, _plan(model, groups), (3, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_forgotten_bias_and_wrong_columns_are_named_by_group_and_kind():
    torch.manual_seed(0)
    model = TinyViT().eval()
    groups = _wrong_columns(_forgets_the_bias(model.prunable_groups(KINDS)))
    with pytest.raises(PlanVerificationError) as caught:
        check_plan(model, groups, _plan(model, groups), (3, 16, 16))
    message = str(caught.value)
    assert "\n" not in message and "group blocks.0.heads (kind heads, module blocks.0)" in message
    assert "differs from the masked model's" in message      # wrong columns: a value mismatch
    x = torch.randn(2, 3, 16, 16)
    plan = _plan(model, groups)
    found = find_offenders(lambda part: probe(model, groups, part, (x,)), groups, plan)
    assert [g.name for g, _ in found] == ["blocks.0.heads"]  # one per failing kind, bisected to the first
    only_bias = _forgets_the_bias(model.prunable_groups(KINDS))
    found = find_offenders(lambda part: probe(model, only_bias, part, (x,)), only_bias, _plan(model, only_bias))
    assert [g.name for g, _ in found] == ["blocks.1.heads"] and found[0][1].error is None  # it raised


def test_the_thinning_plan_removes_every_third_unit():
    groups = TinyViT().prunable_groups(("heads",))
    plan = thinning_plan(groups)
    assert plan.groups["blocks.0.heads"].keep == [0, 2, 3]


def _run(cli, tmp_path, data):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    code, _stdout, err = cli("run", path, "--out", out)
    return code, err, out


def test_a_broken_group_stops_the_run_in_one_line_with_only_the_log_written(cli, tmp_path, monkeypatch):
    original = TinyViT.prunable_groups
    monkeypatch.setattr(TinyViT, "prunable_groups", lambda self, targets=KINDS: _forgets_the_bias(original(self, targets)))
    code, err, out = _run(cli, tmp_path, RECIPE)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "group blocks.1.heads (kind heads, module blocks.1)" in lines[0] and "prune.verify: false" in lines[0]
    assert not (out / "plan.json").exists() and not (out / "model.safetensors").exists()
    written = {p.name for p in out.iterdir()}  # the run's own bookkeeping and the log; no plan, model or metrics
    assert written <= {"log.txt", "recipe.resolved.json", "status.json", "versions.json"}, written
    assert "blocks.1.heads" in (out / "log.txt").read_text()


def test_verify_runs_by_default_and_false_skips_it(cli, tmp_path):
    import json

    code, err, out = _run(cli, tmp_path / "on", RECIPE)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["verify_seconds"] > 0
    off = {**RECIPE, "prune": {**RECIPE["prune"], "verify": False}}
    code, err, out = _run(cli, tmp_path / "off", off)
    assert code == 0, err
    assert "verify_seconds" not in json.loads((out / "metrics.json").read_text())
    assert "prune.verify" not in (out / "log.txt").read_text()
