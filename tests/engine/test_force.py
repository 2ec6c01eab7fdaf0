"""``--force`` replaces an earlier run or comparison, never anything else, and safely."""
from __future__ import annotations

import json

import pytest
import yaml

from corecompress.errors import UserError
from corecompress.engine.rundir import RUN_ENTRIES, RUN_MARKERS, Replacement, check_replaceable

TINY = {"version": 1, "name": "tiny", "threads": 1, "model": "tiny_vit",
        "data": {"name": "synthetic_prototypes", "train_per_class": 4, "test_per_class": 4},
        "train": {"steps": 2, "batch_size": 8}, "evaluate": []}


def _recipe(tmp_path, name="r.yaml", **changes):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _finished_run(cli, tmp_path, out):
    code, _o, err = cli("run", _recipe(tmp_path), "--out", out)
    assert code == 0, err
    return json.loads((out / "status.json").read_text())["started"]


def test_force_refuses_a_folder_with_user_files_and_touches_nothing(cli, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.txt").write_text("three years of work")
    recipe = _recipe(out, "recipe.yaml")  # the recipe itself lives in the folder
    code, _o, err = cli("run", recipe, "--out", out, "--force")
    assert code == 2
    assert err.strip() == (f"error: {out}: holds files that are not a corecompress run (recipe.yaml, thesis.txt); "
                           "--force replaces only an earlier run; choose another --out")
    assert sorted(p.name for p in out.iterdir()) == ["recipe.yaml", "thesis.txt"]
    assert (out / "thesis.txt").read_text() == "three years of work"


def test_force_refuses_a_run_directory_a_user_added_a_file_to(cli, tmp_path):
    out = tmp_path / "run"
    _finished_run(cli, tmp_path, out)
    (out / "notes.md").write_text("mine")
    code, _o, err = cli("run", _recipe(tmp_path), "--out", out, "--force")
    assert code == 2 and "(notes.md)" in err
    assert (out / "notes.md").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_force_replaces_an_earlier_run_and_leaves_nothing_aside(cli, tmp_path):
    out = tmp_path / "run"
    first = _finished_run(cli, tmp_path, out)
    code, _o, err = cli("run", _recipe(tmp_path), "--out", out, "--force")
    assert code == 0, err
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "complete" and status["started"] > first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no copy left behind


def test_force_into_an_empty_folder_runs(cli, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    code, _o, err = cli("run", _recipe(tmp_path), "--out", out, "--force")
    assert code == 0, err
    assert (out / "model.safetensors").is_file()


def test_a_run_that_fails_at_start_up_leaves_the_earlier_run_in_place(cli, tmp_path):
    out = tmp_path / "run"
    _finished_run(cli, tmp_path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    broken = _recipe(tmp_path, "broken.yaml", weights=str(tmp_path / "missing.safetensors"))  # build fails
    code, _o, err = cli("run", broken, "--out", out, "--force")
    assert code != 0 and "missing.safetensors" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_on_a_symlink_is_one_line_and_follows_nothing(cli, tmp_path):
    target = tmp_path / "real"
    _finished_run(cli, tmp_path, target)
    link = tmp_path / "link"
    link.symlink_to(target)
    code, _o, err = cli("run", _recipe(tmp_path), "--out", link, "--force")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "symbolic link" in err
    assert link.is_symlink() and (target / "model.safetensors").is_file()


def test_check_replaceable_accepts_only_run_files_with_both_markers(tmp_path):
    check_replaceable(tmp_path / "new", RUN_MARKERS, RUN_ENTRIES, "run")  # missing: fine
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "log.txt").write_text("")  # a run's file, but no markers: not known to be a run
    with pytest.raises(UserError, match="not a corecompress run"):
        check_replaceable(folder, RUN_MARKERS, RUN_ENTRIES, "run")
    for name in RUN_MARKERS:
        (folder / name).write_text("{}")
    (folder / "plan.round2.json").write_text("{}")
    check_replaceable(folder, RUN_MARKERS, RUN_ENTRIES, "run")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        check_replaceable(a_file, RUN_MARKERS, RUN_ENTRIES, "run")


def test_replacement_restores_or_drops_the_old_directory(tmp_path):
    old = tmp_path / "run"
    old.mkdir()
    (old / "status.json").write_text("old")
    moved = Replacement(old)
    assert not old.exists() and moved.aside is not None and moved.aside.is_dir()
    old.mkdir()
    (old / "status.json").write_text("new, failed")
    moved.restore()
    assert (old / "status.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 1
    moved = Replacement(old)
    old.mkdir()
    moved.keep_new()
    assert old.is_dir() and not any(old.iterdir()) and len(list(tmp_path.iterdir())) == 1


def test_compare_force_refuses_a_folder_that_is_not_a_comparison(cli, tmp_path):
    recipe = _recipe(tmp_path, matrix={"train.steps": [1]})
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    code, _o, err = cli("compare", recipe, "--out", out, "--force")
    assert code == 2 and "not a corecompress comparison (precious.txt)" in err
    assert (out / "precious.txt").read_text() == "keep" and not (out / "cells").exists()


def test_compare_force_replaces_an_earlier_comparison(cli, tmp_path):
    recipe = _recipe(tmp_path, matrix={"train.steps": [1]})
    out = tmp_path / "cmp"
    code, _o, err = cli("compare", recipe, "--out", out)
    assert code == 0, err
    run = next((out / "cells").glob("*/seed-*"))
    first = json.loads((run / "status.json").read_text())["started"]
    code, _o, err = cli("compare", recipe, "--out", out, "--force")
    assert code == 0, err
    assert json.loads((run / "status.json").read_text())["started"] > first  # ran again, not reused
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
