"""Bad input, fuzzed (issue 7): random and mutated recipes, raw bytes and random command lines.

Property: ``corecompress`` answers every input with exit code 0, or with exit code 2 and exactly one
``error:`` line (``warning:``/``note:`` lines aside) and no traceback; a recipe that does not validate
never creates its run directory; a run that fails never leaves a directory that says ``complete``.

The examples are derandomized (the same every run, so CI is stable). To search harder set
``CORECOMPRESS_FUZZ_RANDOM=1`` (fresh examples) and ``CORECOMPRESS_FUZZ_SCALE=10`` (10x more).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
RECIPES = {name: REPO / "recipes" / f"{name}.yaml" for name in ("smoke", "quickstart", "compare_smoke")}
SCALE = float(os.environ.get("CORECOMPRESS_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None,
                    derandomize=not os.environ.get("CORECOMPRESS_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


# ------------------------------------------------------------------------------------------ strategies
ODD_STRINGS = ["", " ", "\n", "a\nb", "\t", "\x00", "~", "null", "yes", "1e-3", ".nan", "-.inf", "{", "[", "*a",
               "&a", "!!python/object/apply:os.system", "../../etc", "/", "é", "\u2028", "\ufeff", "x" * 300,
               "2020-13-45", "0x1F", "1_000", "tiny_vit ", "TINY_VIT"]
HUGE_INTS = [2**31, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30), 10**400]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), TEXT, st.sampled_from(ODD_STRINGS),
)
KEYS = st.one_of(TEXT, st.sampled_from(ODD_STRINGS), st.integers(-3, 3), st.booleans(), st.none(), st.floats())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)
# Cheap values for recipes that are really run: small numbers cannot ask for hours of work.
CHEAP_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 4), st.floats(-2, 2),
                          st.sampled_from([math.nan, math.inf, -math.inf, 1e-3, 0.5]), st.sampled_from(ODD_STRINGS[:14]))
CHEAP_VALUES = st.recursive(CHEAP_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(KEYS, inner, max_size=3)),
                            max_leaves=6)


def recipe_keys() -> list[str]:
    import dataclasses

    from corecompress.config.recipe import PruneSection, Recipe, TrainSection

    return sorted({f.name for cls in (Recipe, TrainSection, PruneSection) for f in dataclasses.fields(cls)})


def component_names() -> list[str]:
    from corecompress.plugin.loading import load_plugins

    registry = load_plugins().registry
    return sorted({name for kind in registry.components for name in registry.names(kind)})


def typo(word: str) -> st.SearchStrategy[str]:
    """Near misses of ``word``: one character dropped, doubled or changed case."""
    if not word:
        return st.just("x")
    return st.integers(0, len(word) - 1).flatmap(lambda i: st.sampled_from(
        [word[:i] + word[i + 1:], word[:i] + word[i] * 2 + word[i + 1:], word[:i] + word[i].swapcase() + word[i + 1:]]))


def all_paths(tree: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key/index path below ``tree`` (not the root itself)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from all_paths(value, prefix + (key,))


def mappings(tree: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Paths of every mapping in ``tree``, the root included."""
    if isinstance(tree, dict):
        yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from mappings(value, prefix + (key,))


def node_at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


COMPONENT_FIELDS = {"model", "data", "importance", "apply", "objective", "lr_schedule", "target", "evaluate", "report"}


def component_paths(tree: dict) -> list[tuple]:
    """Where a component name sits: ``x: name``, ``x: {name: ...}`` or an item of ``evaluate``/``report``."""
    found = []
    for path in all_paths(tree):
        value = node_at(tree, path)
        if not isinstance(value, str):
            continue
        if path[-1] == "name" or path[-1] in COMPONENT_FIELDS or (len(path) > 1 and path[-2] in COMPONENT_FIELDS):
            found.append(path)
    return found


def same_type(value: Any, cheap: bool) -> st.SearchStrategy:
    """Another value of the same type: mutations that often still validate and so reach the runner."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-2, 4) if cheap else st.one_of(st.integers(-2, 2**20), st.sampled_from(HUGE_INTS))
    if isinstance(value, float):
        return st.one_of(st.floats(-1.0, 2.0), st.sampled_from([0.0, 1.0, 0.999, 1e-9, math.inf, -math.inf]))
    if isinstance(value, str):
        return st.one_of(st.sampled_from(component_names()), typo(value))
    if isinstance(value, list) and value:
        return st.one_of(st.just([]), st.permutations(value), st.just(value + value[:1]), st.just(value[1:]))
    return CHEAP_VALUES if cheap else VALUES


@st.composite
def mutated_recipe(draw: Any, base_names: tuple[str, ...], values: st.SearchStrategy = VALUES, cheap: bool = False) -> dict:
    """A valid recipe after 1-3 mutations: other values of the same type, delete/rename keys, other
    types, unknown keys at any depth, other component names, bad matrix entries, bad seeds."""
    recipe = copy.deepcopy(yaml.safe_load(RECIPES[draw(st.sampled_from(base_names))].read_text()))
    if cheap:
        recipe = smoke_for_running()
    ops = ["perturb"] * 4 + ["delete", "rename", "retype", "insert", "component"] + ([] if cheap else ["matrix", "seeds"])
    for _ in range(draw(st.integers(1, 2 if cheap else 3))):  # (``run`` ignores matrix and seeds)
        op = draw(st.sampled_from(ops))
        paths = list(all_paths(recipe))
        if op == "perturb" and paths:
            path = draw(st.sampled_from(paths))
            parent = node_at(recipe, path[:-1])
            parent[path[-1]] = draw(same_type(parent[path[-1]], cheap))
        elif op in ("delete", "rename", "retype") and paths:
            path = draw(st.sampled_from(paths))
            parent, key = node_at(recipe, path[:-1]), path[-1]
            if op == "delete":
                del parent[key]
            elif op == "retype":
                parent[key] = draw(values)
            elif isinstance(parent, dict):
                new_key = draw(st.one_of(typo(str(key)), KEYS, st.sampled_from(recipe_keys())))
                parent[new_key] = parent.pop(key)
        elif op == "insert":
            target = node_at(recipe, draw(st.sampled_from(list(mappings(recipe)))))
            target[draw(st.one_of(KEYS, st.sampled_from(recipe_keys())))] = draw(values)
        elif op == "component" and component_paths(recipe):
            path = draw(st.sampled_from(component_paths(recipe)))
            old = node_at(recipe, path)
            node_at(recipe, path[:-1])[path[-1]] = draw(st.one_of(st.sampled_from(component_names()), typo(old), TEXT))
        elif op == "matrix":
            dotted = [".".join(map(str, p)) for p in all_paths(recipe) if all(isinstance(k, str) for k in p)]
            key = draw(st.one_of(st.sampled_from(dotted or ["seed"]), TEXT, st.sampled_from(["version", "matrix.x", "a..b"])))
            entry = draw(st.one_of(st.lists(values, max_size=3), values))
            matrix = recipe.get("matrix")
            if not isinstance(matrix, dict) or draw(st.booleans()):
                recipe["matrix"] = matrix = {}
            matrix[key] = entry
        elif op == "seeds":
            recipe["seeds"] = draw(st.one_of(st.lists(st.integers(-3, 3) | st.sampled_from(HUGE_INTS), max_size=3), values))
    return recipe


RANDOM_RECIPES = st.one_of(
    VALUES,
    st.dictionaries(st.one_of(st.sampled_from(recipe_keys()), KEYS), VALUES, max_size=6),
    st.fixed_dictionaries({"version": st.just(1), "model": st.sampled_from(["tiny_vit", {"name": "tiny_cnn"}]),
                           "data": st.just("synthetic_prototypes")},
                          optional={k: VALUES for k in recipe_keys() if k not in ("version", "model", "data")}),
)
YAML_TOKENS = ["version: 1\n", "model: tiny_vit\n", "data: synthetic_prototypes\n", "prune:\n", "  ", "- ", ": ", "\n",
               "{", "}", "[", "]", ",", "&a ", "*a", "&b [*a, *a]", "!!binary ", "!!int ", "!!bool ", "!!python/name:os.system",
               "? ", "'", '"', "|\n", ">-\n", "#", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\t", "\\",
               "2020-13-45", "1e400", ".nan", "~", "\x00", "\x85", "\ufeff", "é", "<<: ", "=", "@", "`"]
YAML_SOUP = st.lists(st.sampled_from(YAML_TOKENS), max_size=25).map("".join)


# ------------------------------------------------------------------------------------------ checks
@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per example (pytest's tmp_path is shared by every example of a test)."""
    with tempfile.TemporaryDirectory(prefix="cc-fuzz-") as folder:
        yield Path(folder)


@pytest.fixture(autouse=True)
def _restore_torch_state() -> Iterator[None]:
    """A fuzzed recipe may set threads or deterministic mode; other tests must not inherit them."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs seconds the first time
        torch.use_deterministic_algorithms(deterministic)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip() and not line.startswith(("warning:", "note:"))]


def assert_clean_outcome(code: Any, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    assert code in allowed, f"exit code {code!r}; stderr:\n{err}"
    assert "Traceback" not in err, err
    if code != 0:
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err


def dump(recipe: Any) -> str:
    try:
        return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    except yaml.YAMLError:  # pragma: no cover - a structure PyYAML cannot write is not an input
        assume(False)
        raise


def check_validate_and_failed_run(cli: Any, text: str | bytes) -> int:
    """Validate ``text``; when it does not validate, ``run`` must fail the same way before its directory."""
    with scratch() as folder:
        path = folder / "recipe.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        code, out, err = cli("validate", path)
        assert_clean_outcome(code, err)
        event(f"validate exit {code}")
        if code == 0:
            assert "valid (recipe" in out
            return code
        out_dir = folder / "run"
        run_code, _out, run_err = cli("run", path, "--out", out_dir)
        assert_clean_outcome(run_code, run_err)
        assert run_code == 2 and error_lines(run_err) == error_lines(err), (err, run_err)
        assert not out_dir.exists(), "a recipe that does not validate must not create its run directory"
        return code


# ------------------------------------------------------------------------------------------ tests
@fuzz_settings(80)
@given(recipe=mutated_recipe(tuple(RECIPES)))
def test_mutated_recipes_validate_or_fail_in_one_line(cli: Any, recipe: dict) -> None:
    check_validate_and_failed_run(cli, dump(recipe))


@fuzz_settings(70)
@given(recipe=RANDOM_RECIPES)
def test_random_structures_validate_or_fail_in_one_line(cli: Any, recipe: Any) -> None:
    check_validate_and_failed_run(cli, dump(recipe))


@fuzz_settings(100)
@given(raw=st.one_of(st.binary(max_size=300), YAML_SOUP, YAML_SOUP.map(lambda s: s.encode("utf-16"))))
def test_raw_bytes_and_yaml_soup_fail_in_one_line(cli: Any, raw: str | bytes) -> None:
    check_validate_and_failed_run(cli, raw)


def smoke_for_running() -> dict:
    recipe = yaml.safe_load(RECIPES["smoke"].read_text())
    recipe["train"]["steps"] = recipe["retrain"]["steps"] = 2
    recipe["threads"] = 1
    recipe["data"]["train_per_class"], recipe["data"]["test_per_class"] = 8, 4
    return recipe


def clamp_work(recipe: dict) -> dict:
    """Keep a mutated recipe cheap to run: at most 2 steps per phase, small batches."""
    for phase in ("train", "retrain"):
        section = recipe.get(phase)
        if isinstance(section, dict):
            for key, cap in (("steps", 2), ("batch_size", 32)):
                if isinstance(section.get(key), int) and not isinstance(section.get(key), bool):
                    section[key] = min(section[key], cap)
    return recipe


@fuzz_settings(20)
@given(recipe=mutated_recipe(("smoke",), CHEAP_VALUES, cheap=True).map(clamp_work))
def test_mutated_smoke_runs_or_fails_cleanly(cli: Any, recipe: dict) -> None:
    """A mutated smoke recipe: if it validates, ``run`` finishes (status complete) or fails with one line
    and a directory whose status is not ``complete``; if it does not validate, no directory at all."""
    text = dump(recipe)
    if check_validate_and_failed_run(cli, text) != 0:
        return
    with scratch() as folder:
        path, out_dir = folder / "recipe.yaml", folder / "run"
        path.write_text(text)
        code, out, err = cli("run", path, "--out", out_dir)
        assert_clean_outcome(code, err)
        status = json.loads((out_dir / "status.json").read_text()) if (out_dir / "status.json").is_file() else {}
        event(f"run exit {code}")
        if code == 0:
            assert status.get("state") == "complete" and (out_dir / "report.md").is_file(), out
        else:
            assert status.get("state") != "complete", status


# --------------------------------------------------------------------- YAML bombs and the size guards
def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["version: 1", "model: tiny_vit", "data: synthetic_prototypes", 'a0: &a0 ["lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + f"\ndescription: *a{levels - 1}\n"


def bomb_list(levels: int = 9, width: int = 9) -> str:
    """A flow list whose item i is an anchor repeating item i-1 ``width`` times: ~width^(levels-1) strings."""
    items = ['&a0 ["lol"]'] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


@pytest.mark.parametrize("where", ["description: {}", "prune: {{scope: {}}}", "evaluate: {}", "matrix: {{seed: {}}}"])
def test_alias_bomb_is_refused_quickly(cli: Any, tmp_path: Path, where: str) -> None:
    """Refused by read_recipe before anything copies, validates, prints or writes the expanded value."""
    path = tmp_path / "bomb.yaml"
    path.write_text("version: 1\nmodel: tiny_vit\ndata: synthetic_prototypes\n" + where.format(bomb_list()) + "\n")
    assert path.stat().st_size < 1000  # the point: a tiny file that expands to ~9^8 strings
    start = time.perf_counter()
    code, _out, err = cli("validate", path)
    assert time.perf_counter() - start < 5.0
    assert_clean_outcome(code, err)
    assert code == 2 and "alias bomb" in err, err


def test_classic_billion_laughs_is_refused(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "lol.yaml"
    path.write_text(billion_laughs())
    start = time.perf_counter()
    code, _out, err = cli("validate", path)
    assert time.perf_counter() - start < 5.0
    assert code == 2 and "alias bomb" in err and len(error_lines(err)) == 1, err


def test_recursive_alias_is_refused(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("version: 1\nmodel: tiny_vit\ndata: synthetic_prototypes\nevaluate: &loop [accuracy, *loop]\n")
    code, _out, err = cli("validate", path)
    assert code == 2 and "recursive recipe" in err and len(error_lines(err)) == 1, err


@pytest.mark.parametrize("depth", [65, 600])
def test_deep_nesting_is_refused(cli: Any, tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("version: 1\ndescription: " + "[" * depth + "]" * depth + "\n")
    code, _out, err = cli("validate", path)
    assert code == 2 and "nested too deeply" in err and len(error_lines(err)) == 1, err


def test_oversized_file_is_refused(cli: Any, tmp_path: Path) -> None:
    from corecompress.config.recipe import MAX_RECIPE_BYTES

    path = tmp_path / "big.yaml"
    path.write_text(RECIPES["smoke"].read_text() + "#" * MAX_RECIPE_BYTES + "\n")
    code, _out, err = cli("validate", path)
    assert code == 2 and "too large for a recipe" in err, err


def test_aliases_used_sensibly_still_validate(cli: Any, tmp_path: Path) -> None:
    """The guards count expanded values, so ordinary anchor reuse is unaffected."""
    recipe = RECIPES["smoke"].read_text().replace("retrain:\n  steps: 30\n  batch_size: 32\n  lr: 1e-3\n",
                                                  "retrain: *phase\n").replace("train:\n", "train: &phase\n", 1)
    assert "*phase" in recipe and "&phase" in recipe
    path = tmp_path / "alias.yaml"
    path.write_text(recipe)
    code, out, err = cli("validate", path)
    assert code == 0 and "valid (recipe 'smoke'" in out, err


HEAD = "version: 1\nmodel: tiny_vit\ndata: synthetic_prototypes\n"


@pytest.mark.parametrize("text, expected", [
    ("version: 1\ndescription: 2020-13-45\n", "a value cannot be read (month must be in 1..12)"),
    ("version: !!bool maybe\n", "a value cannot be read"),
    ("version: !!int one\n", "a value cannot be read"),
    ("!!int ", "a value cannot be read"),
    ("version: 1\nmodel: tiny_vit\ndata: []\n", "data: expected a component name or a mapping with 'name', got a list"),
    ("version: 1\nmodel: [tiny_vit, tiny_cnn]\ndata: synthetic_prototypes\n", "model: expected a component name"),
    (HEAD + "train: {steps: 1, lr: " + "9" * 400 + "}\n",
     "train.lr: number too large"),
    (HEAD + "train: {steps: 1, lr: .nan}\n", "train.lr: expected a number, got nan"),
    (HEAD + "train: {steps: 1, log_every: 0}\n", "train.log_every: must be at least 1"),
    (HEAD + "train: {steps: 1, num_workers: -1}\n", "train.num_workers: must be at least 0"),
    (HEAD + "train: {steps: 1, momentum: -1}\n", "train.momentum: must be in"),
    (HEAD + "train: {steps: 1, weight_decay: -1}\n", "train.weight_decay: must be in"),
    (HEAD + "seed: 18446744073709551616\n", "seed: must be in [0, 2^63)"),
    (HEAD + "threads: -1\n", "threads: must be in [0, 4096]"),
    (HEAD + "name: \"a\\0b\"\n", "name: must be a non-empty name"),
    ("version: 1\nmodel: \"tiny\\nvit\"\ndata: synthetic_prototypes\n", "model: unknown model 'tiny\\nvit'"),
    (HEAD + "prune: {\"sco\\npe\": local}\n", "prune.'sco\\npe': unknown option"),
    (HEAD + "prune: {scope: [" + ", ".join(["x" * 50] * 50) + "]}\n",
     "prune.scope: must be one of 'local', 'global', got ["),
])
def test_found_by_fuzzing(cli: Any, tmp_path: Path, text: str, expected: str) -> None:
    """Inputs the fuzzer found that crashed with a traceback, validated silently or printed several lines."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    code, _out, err = cli("validate", path)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and expected in lines[0] and len(lines[0]) < 400, err


# ------------------------------------------------------------------------------------------ CLI argv
def argv_world(folder: Path) -> dict[str, str]:
    """Paths a random command line may name: missing, empty, garbage, invalid, valid, run directories."""
    (folder / "empty_dir").mkdir()
    (folder / "garbage.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (folder / "invalid.yaml").write_text("version: 1\nmodel: nope\n")
    tiny = {"version": 1, "name": "tiny", "threads": 1, "model": {"name": "tiny_vit", "num_outputs": 3},
            "data": {"name": "synthetic_prototypes", "num_classes": 3, "train_per_class": 2, "test_per_class": 2},
            "train": {"steps": 1, "batch_size": 4}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    fake_run = folder / "fake_run"
    fake_run.mkdir()
    (fake_run / "recipe.resolved.json").write_text('{"version": 1, "model": "tiny_vit"')
    (fake_run / "status.json").write_text("[]")
    (fake_run / "architecture.json").write_text("{not json")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    names = ["empty_dir", "garbage.yaml", "invalid.yaml", "tiny.yaml", "fake_run", "missing.yaml", "missing_dir",
             "fake_run/architecture.json", "model.safetensors", "out_a", "out_b"]
    return {name: str(folder / name) for name in names}


ARG_TOKENS = ["run", "export", "validate", "plugins", "options", "compare", "--out", "--force", "--resume",
              "--strict", "--format", "onnx", "safetensors", "--json", "--only-report", "--metric", "accuracy",
              "model", "dataset", "importance", "kind", "tiny_vit", "l1", "synthetic_faces", "zzz", "-", "--", "-x",
              "--version", "--help", "", "\x00", "é", "=", "--out=", "--format=tar"]
ARGV = st.lists(st.one_of(st.sampled_from(ARG_TOKENS), st.sampled_from(["@empty_dir", "@garbage.yaml", "@invalid.yaml",
                                                                         "@tiny.yaml", "@fake_run", "@missing.yaml",
                                                                         "@missing_dir", "@fake_run/architecture.json",
                                                                         "@model.safetensors", "@out_a", "@out_b"]),
                          TEXT.filter(lambda t: not t.startswith(("/", "~")))), max_size=6)
COMMAND_ARGV = st.tuples(st.sampled_from(["run", "export", "validate", "plugins", "options", "compare"]), ARGV).map(
    lambda parts: [parts[0], *parts[1]])


@fuzz_settings(80)
@given(argv=st.one_of(ARGV, COMMAND_ARGV))
def test_random_command_lines_exit_cleanly(cli: Any, argv: list[str]) -> None:
    """Random argv: argparse usage errors (2), user errors (2), OS errors (1) or success (0); never a
    traceback. Runs happen inside a scratch directory (``runs/`` defaults land there)."""
    with scratch() as folder:
        world = argv_world(folder)
        args = [world[a[1:]] if a.startswith("@") and a[1:] in world else a for a in argv]
        previous = os.getcwd()
        os.chdir(folder)
        try:
            code, _out, err = cli(*args)
        finally:
            os.chdir(previous)
        event(f"exit {code}")
        assert code in (0, 1, 2), (args, code, err)
        assert "Traceback" not in err, err
        lines = error_lines(err)
        if code == 1:
            assert len(lines) == 1, err
        if code == 2 and "usage:" not in err:
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)


# ------------------------------------------------------- cases the fuzzer once found (regression tests)
TINY = {"version": 1, "name": "gap", "threads": 1, "model": {"name": "tiny_vit", "num_outputs": 4},
        "data": {"name": "synthetic_prototypes", "num_classes": 4, "train_per_class": 2, "test_per_class": 2},
        "train": {"steps": 1, "batch_size": 4}}


def _with(path: str, value: Any) -> dict:
    recipe = copy.deepcopy(TINY)
    node = recipe
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return recipe


@pytest.mark.parametrize("recipe", [
    _with("model.num_outputs", -1),                        # corecompress_builtin/models.py: TinyViTOptions
    _with("data.test_per_class", -2),                      # corecompress_builtin/data.py: PrototypeOptions
    _with("evaluate", [{"name": "efficiency", "repeats": 2}]),         # corecompress_builtin/evaluators.py
    _with("evaluate", [{"name": "efficiency", "batch_sizes": [0]}]),   # corecompress_builtin/evaluators.py
    _with("evaluate", [{"name": "efficiency", "threads": 0}]),         # corecompress_builtin/evaluators.py
], ids=["tiny_vit-num_outputs", "prototypes-test_per_class", "efficiency-repeats", "efficiency-batch_sizes",
        "efficiency-threads"])
def test_option_validated_before_running(cli: Any, tmp_path: Path, recipe: dict) -> None:
    """Found by fuzzing: these once validated and then crashed with a traceback in the middle of the run."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _out, err = cli("validate", path)
    assert code == 2 and len(error_lines(err)) == 1, err


def test_fewer_outputs_than_classes_is_one_line(cli: Any, tmp_path: Path) -> None:
    """Found by fuzzing: num_outputs 2 with 4 classes once gave an IndexError from cross-entropy."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_with("model.num_outputs", 2)))
    code, _out, err = cli("run", path, "--out", tmp_path / "run", "--quiet")
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err


def test_options_kind_with_line_break_is_one_line(cli: Any) -> None:
    """Found by fuzzing: the kind printed as typed once split the error line."""
    code, _out, err = cli("options", "a\rb", "run")
    assert code == 2 and len(error_lines(err)) == 1, err


@pytest.mark.parametrize("command", ["run", "export"])
def test_nul_in_output_path_is_one_line(cli: Any, tmp_path: Path, command: str) -> None:
    """``--out 'a\\0b'``: ValueError (run) / SafetensorError (export) escape cli.main with a traceback."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY))
    assert cli("run", path, "--out", tmp_path / "run")[0] == 0
    args = ("run", path, "--out", f"{tmp_path}/a\x00b") if command == "run" else \
        ("export", tmp_path / "run", "--out", f"{tmp_path}/m\x00.safetensors")
    code, _out, err = cli(*args)
    assert code == 2 and len(error_lines(err)) == 1, err


def test_an_error_naming_a_line_separator_character_stays_one_line(cli, tmp_path):
    """Regression (found by the fuzzer): str.splitlines also splits on \\x1e, \\x85, \\u2028 ..."""
    for name in ("\x1e", "a\u2028b", "c\x85"):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({"version": 1, "model": "tiny_vit", "data": "synthetic_prototypes",
                                        "require": [name]}))
        code, _out, err = cli("validate", path)
        assert code == 2 and len(err.splitlines()) == 1 and "is not installed" in err, repr(err)
