"""``device: auto | cpu | cuda | cuda:N`` and ``--device``: resolution (CUDA faked with monkeypatch, no GPU
needed), one-line errors before anything is created, and where the resolved device is recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file

from corecompress.engine import distributed
from corecompress.engine.devices import DEVICE_FORMS, DeviceError, resolve_device

TINY = {"version": 1, "name": "tiny", "threads": 1, "model": "tiny_vit",
        "data": {"name": "synthetic_prototypes", "train_per_class": 4, "test_per_class": 4},
        "train": {"steps": 2, "batch_size": 8}, "evaluate": []}


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make torch believe ``count`` GPUs are visible (0: no CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def recipe_file(tmp_path: Path, name: str = "r.yaml", **changes: object) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


# --- resolve_device -------------------------------------------------------------------------------

def test_auto_is_the_cpu_without_cuda(monkeypatch):
    fake_cuda(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_and_cuda_pick_the_first_gpu_when_present(monkeypatch):
    fake_cuda(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_index_is_bounds_checked(monkeypatch):
    fake_cuda(monkeypatch, 2)
    with pytest.raises(DeviceError, match=r"^device: cuda:2: only 2 GPU\(s\) are visible \(cuda:0..cuda:1\)$"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("setting", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_line(monkeypatch, setting):
    fake_cuda(monkeypatch, 0)
    with pytest.raises(DeviceError, match=rf"^device: {setting}: CUDA is not available on this machine"):
        resolve_device(setting)


@pytest.mark.parametrize("setting", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:01", "cuda:x", "", " cpu", 0, None])
def test_malformed_settings_name_the_accepted_forms(setting):
    with pytest.raises(DeviceError) as info:
        resolve_device(setting)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"device: expected {DEVICE_FORMS}, got ")
    assert "\n" not in str(info.value)


def test_under_torchrun_each_rank_keeps_its_local_gpu(monkeypatch):
    fake_cuda(monkeypatch, 4)
    assert resolve_device("auto", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"LOCAL_RANK=4 but only 4 GPU\(s\)"):
        resolve_device("cuda", local_rank=4)
    with pytest.raises(DeviceError, match="each rank uses its own GPU"):
        resolve_device("cuda:1", local_rank=1)
    fake_cuda(monkeypatch, 0)
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")


# --- torchrun: the setting chooses the backend ----------------------------------------------------

def torchrun_env(monkeypatch: pytest.MonkeyPatch, local_rank: int) -> None:
    for name, value in (("WORLD_SIZE", "2"), ("RANK", str(local_rank)), ("LOCAL_RANK", str(local_rank)),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(distributed.ENV_BACKEND, raising=False)


def test_backend_follows_the_device_setting(monkeypatch):
    fake_cuda(monkeypatch, 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.delenv(distributed.ENV_BACKEND, raising=False)
    assert distributed.choose_backend("auto") == "nccl"
    assert distributed.choose_backend("cuda") == "nccl"
    assert distributed.choose_backend("cpu") == "gloo"
    monkeypatch.setenv(distributed.ENV_BACKEND, "gloo")
    with pytest.raises(distributed.DistributedSetupError, match="gloo runs on the CPU, but device: cuda"):
        distributed.choose_backend("cuda")
    monkeypatch.setenv(distributed.ENV_BACKEND, "nccl")
    with pytest.raises(distributed.DistributedSetupError, match="nccl needs CUDA, but device: cpu"):
        distributed.choose_backend("cpu")
    fake_cuda(monkeypatch, 0)
    monkeypatch.delenv(distributed.ENV_BACKEND)
    assert distributed.choose_backend("auto") == "gloo"
    with pytest.raises(DeviceError, match="CUDA is not available"):
        distributed.choose_backend("cuda")


def test_init_maps_local_rank_to_its_gpu(monkeypatch):
    fake_cuda(monkeypatch, 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    torchrun_env(monkeypatch, local_rank=1)
    joined: dict[str, object] = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda where: joined.setdefault("gpu", where))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: joined.setdefault("backend", backend))
    monkeypatch.setattr(distributed.atexit, "register", lambda fn: fn)
    monkeypatch.setattr(distributed, "_initialised_here", False)
    monkeypatch.setattr(distributed, "_rank_device", None)
    assert distributed.init_from_env("auto") is True
    assert joined == {"gpu": torch.device("cuda", 1), "backend": "nccl"}
    assert distributed._rank_device == torch.device("cuda", 1)  # noqa: SLF001


@pytest.mark.parametrize("setting,local,message", [
    ("cuda:0", 0, "each rank uses its own GPU"),
    ("cuda", 3, r"LOCAL_RANK=3 but only 2 GPU\(s\)"),
    ("gpu", 0, "expected auto, cpu, cuda or cuda:N"),
])
def test_init_refuses_a_device_the_ranks_cannot_use(monkeypatch, setting, local, message):
    fake_cuda(monkeypatch, 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    torchrun_env(monkeypatch, local_rank=local)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: pytest.fail("must fail before connecting"))
    with pytest.raises(DeviceError, match=message):
        distributed.init_from_env(setting)
    assert not dist.is_initialized()


def test_a_single_process_resolves_the_setting(monkeypatch):
    fake_cuda(monkeypatch, 0)
    assert distributed.run_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError):
        distributed.run_device("cuda")


# --- the commands ---------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_auto_runs_on_the_cpu_here_and_records_it(monkeypatch, cli, tmp_path):
    fake_cuda(monkeypatch, 0)
    out = tmp_path / "run"
    code, _out, err = cli("run", recipe_file(tmp_path), "--out", out, "--quiet")
    assert code == 0, err
    assert read_json(out / "recipe.resolved.json")["device"] == "auto"  # the user's intent
    assert read_json(out / "versions.json")["device"] == "cpu"          # what was used
    assert read_json(out / "status.json")["device"] == "cpu"


@pytest.mark.parametrize("where", ["recipe", "flag"])
def test_cuda_where_there_is_none_is_exit_2_and_creates_nothing(monkeypatch, cli, tmp_path, where):
    fake_cuda(monkeypatch, 0)
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, device="cuda") if where == "recipe" else recipe_file(tmp_path)
    extra = ["--device", "cuda:3"] if where == "flag" else []
    code, stdout, err = cli("run", recipe, "--out", out, *extra)
    assert code == 2
    setting = "cuda" if where == "recipe" else "cuda:3"
    assert err == f"error: device: {setting}: CUDA is not available on this machine (use device: auto or cpu)\n"
    assert stdout == ""
    assert not out.exists()


def test_a_gpu_index_beyond_the_visible_ones_creates_nothing(monkeypatch, cli, tmp_path):
    fake_cuda(monkeypatch, 2)
    out = tmp_path / "run"
    code, _stdout, err = cli("run", recipe_file(tmp_path), "--out", out, "--device", "cuda:3")
    assert (code, err) == (2, "error: device: cuda:3: only 2 GPU(s) are visible (cuda:0..cuda:1)\n")
    assert not out.exists()


def test_device_cpu_runs_and_flag_overrides_the_recipe(monkeypatch, cli, tmp_path):
    fake_cuda(monkeypatch, 0)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("run", recipe_file(tmp_path, device="cpu"), "--out", a, "--quiet")[0] == 0
    assert read_json(a / "recipe.resolved.json")["device"] == "cpu"
    code, _o, err = cli("run", recipe_file(tmp_path, "c.yaml", device="cuda"), "--out", b, "--quiet",
                        "--device", "cpu")
    assert code == 0, err
    assert read_json(b / "recipe.resolved.json")["device"] == "cuda"  # kept; --device applied to this run
    assert read_json(b / "status.json")["device"] == "cpu"
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_malformed_device_is_a_one_line_recipe_error(cli, tmp_path):
    recipe = recipe_file(tmp_path, device="gpu")
    code, _o, err = cli("validate", recipe)
    assert (code, err) == (2, f"error: device: expected {DEVICE_FORMS}, got 'gpu'\n")
    out = tmp_path / "run"
    code, _o, err = cli("run", recipe, "--out", out)
    assert code == 2 and err.count("\n") == 1 and "device: expected" in err
    assert not out.exists()
    code, _o, err = cli("run", recipe_file(tmp_path, "ok.yaml"), "--out", out, "--device", "gpu")
    assert (code, err) == (2, f"error: device: expected {DEVICE_FORMS}, got 'gpu'\n")
    assert not out.exists()


def test_resume_may_change_the_device(monkeypatch, cli, tmp_path):
    fake_cuda(monkeypatch, 0)
    out = tmp_path / "run"
    assert cli("run", recipe_file(tmp_path, device="cpu"), "--out", out, "--quiet")[0] == 0
    before = load_file(str(out / "model.safetensors"))
    status = read_json(out / "status.json")
    (out / "status.json").write_text(json.dumps({**status, "state": "interrupted", "device": "cuda:0"}))
    code, _o, err = cli("run", "--resume", out, "--device", "cuda")
    assert (code, err) == (2, "error: device: cuda: CUDA is not available on this machine (use device: auto or cpu)\n")
    assert read_json(out / "status.json")["state"] == "interrupted"  # untouched
    code, _o, err = cli("run", "--resume", out, "--device", "auto", "--quiet")
    assert code == 0, err
    status = read_json(out / "status.json")
    assert (status["state"], status["device"], status["resumed_from_device"]) == ("complete", "cpu", "cuda:0")
    assert "device: cpu (the run was on cuda:0)" in (out / "log.txt").read_text()
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_takes_device(monkeypatch, cli, tmp_path):
    fake_cuda(monkeypatch, 0)
    out = tmp_path / "run"
    assert cli("run", recipe_file(tmp_path), "--out", out, "--quiet")[0] == 0
    target = tmp_path / "m.safetensors"
    code, stdout, err = cli("export", out, "--device", "auto", "--out", target)
    assert code == 0, err
    assert stdout == f"exported: {target}\n"
    code, _o, err = cli("export", out, "--device", "cuda:1", "--out", tmp_path / "n.safetensors")
    assert (code, err) == (2, "error: device: cuda:1: CUDA is not available on this machine (use device: auto or cpu)\n")
    assert not (tmp_path / "n.safetensors").exists()


def test_compare_takes_device_and_checks_it_first(monkeypatch, cli, tmp_path):
    fake_cuda(monkeypatch, 0)
    recipe = recipe_file(tmp_path, seeds=[0])
    out = tmp_path / "cmp"
    code, _o, err = cli("compare", recipe, "--out", out, "--device", "cuda")
    assert (code, err) == (2, "error: device: cuda: CUDA is not available on this machine (use device: auto or cpu)\n")
    assert not out.exists()
    code, _o, err = cli("compare", recipe, "--out", out, "--device", "cpu", "--quiet")
    assert code == 0, err
    run = out / "cells" / "base" / "seed-0"
    assert read_json(run / "status.json")["device"] == "cpu"
    # where a finished run computed does not make it a different run
    code, stdout, err = cli("compare", recipe_file(tmp_path, seeds=[0], device="cpu"), "--out", out, "--quiet")
    assert code == 0, err
    assert "skipped (complete)" in stdout
