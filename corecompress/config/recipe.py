"""YAML recipes: read with ``safe_load``, validated against typed sections and component options.

A recipe never executes code: it is data naming registered components. Validation reports the
first problem as one line ``key.path: message`` (with a close match for unknown names and keys).

A recipe may start from others: ``extends: base.yaml`` (or a list of paths, merged left to right)
names base recipes, relative to the extending file's folder. :func:`read_recipe` reads each base
(which may extend others in turn) and merges the file over it before anything is validated:
mappings merge key by key, recursively; any other value (a list, a scalar, ``null``) replaces the
base's, so ``prune: null`` drops the base's pruning and a list such as ``evaluate`` is replaced
whole. The result has no ``extends`` key, and is what a run stores in ``recipe.resolved.json``.
Other paths in a recipe (weights, data) stay relative to the working directory, as without
``extends``. A missing base, a cycle, a chain deeper than ``MAX_EXTENDS_DEPTH`` and a wrongly
typed ``extends`` are each one line.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from corecompress.errors import RecipeError, UserError
from corecompress.config.options import check_range, join_path, options_to_dict, parse_options, printable, short_repr, shown
from corecompress.config.options import close_match, quoted
from corecompress.pruning.gradual import RAMP_SHORTHANDS, round_sparsities, round_steps
from corecompress.plugin.registry import Registry
from corecompress.config.needs import check_recipe_needs
from corecompress.engine.devices import DEVICE_FORMS, check_device_setting
from corecompress.engine.precision import PRECISION_FORMS, check_precision_setting

RECIPE_VERSION = 1
MAX_MATRIX_CELLS = 1000
#: Guards of :func:`read_recipe`: a recipe is a small hand-written file. Aliases are counted as if
#: expanded, so a "billion laughs" alias bomb is refused before anything copies or prints it.
MAX_RECIPE_BYTES = 4 * 1024 * 1024
MAX_RECIPE_NODES = 200_000
MAX_RECIPE_DEPTH = 64
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
#: ``extends``: at most this many levels of base recipes below the file read, and this many base
#: files read in all (each one under the guards above), so a recipe stays a few small files.
MAX_EXTENDS_DEPTH = 16
MAX_EXTENDS_FILES = 64


@dataclass
class Choice:
    """A component chosen by name, with its validated options (filled in by :func:`validate_recipe`)."""

    name: str
    raw: dict[str, Any] = field(default_factory=dict)
    options: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **(options_to_dict(self.options) or {})}


def choice(kind: str, default: str | None = None, help: str = "",  # noqa: A002
           aliases: dict[str, str] | None = None) -> Any:
    """A dataclass field holding a component of ``kind`` (a name, or a mapping with ``name``);
    ``aliases`` maps other names this field accepts to registered ones."""
    meta = {"component": kind, "help": help, "aliases": dict(aliases or {})}
    if default is None:
        return field(default=None, metadata=meta)
    return field(default_factory=lambda: Choice(default), metadata=meta)


def _parse_choice(value: Any, path: str) -> Choice:
    if isinstance(value, Choice):
        return value
    if isinstance(value, str):
        return Choice(value)
    if isinstance(value, dict):
        if "name" not in value:
            raise RecipeError(join_path(path, "name"), "missing; say which component to use")
        if not isinstance(value["name"], str):
            raise RecipeError(join_path(path, "name"), f"expected a string, got {short_repr(value['name'])}")
        return Choice(value["name"], dict(value))
    raise RecipeError(path, f"expected a component name or a mapping with 'name', got {short_repr(value)}")


@dataclass
class PluginsSection:
    block: list[str] = field(default_factory=list, metadata={"help": "plugins never to load"})
    autoload: bool = field(default=True, metadata={"help": "load every installed plugin (else only required ones)"})
    strict: bool = field(default=False, metadata={"help": "a broken plugin is an error instead of a warning"})


@dataclass
class TrainSection:
    """A training phase (training before pruning, or retraining after it)."""

    steps: int = field(metadata={"help": "optimizer steps"})
    batch_size: int = 32
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    lr_schedule: Any = choice("schedule", "cosine", "learning-rate multiplier as a function of the step")
    clip_grad_norm: float | None = field(default=5.0, metadata={"help": "max gradient norm; null = no clipping"})
    objective: Any = choice("loss", "cross_entropy", "training objective / distillation loss")
    target: Any = choice("target", None, "what the teacher provides to a distillation loss")
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0 = only at the end)"})
    checkpoint_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    log_every: int = 20
    num_workers: int | Literal["auto"] = field(default="auto", metadata={
        "help": "DataLoader worker processes; auto = decode workers for data that decodes images "
                "(RecordIO, image folders), 0 for data held in memory (see docs/data_loading.md)"})
    augment: Literal["none", "flip"] = "flip"
    nonfinite: Literal["stop", "skip"] = field(default="stop", metadata={"help": "on a NaN/inf loss"})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError("steps: must be at least 1")
        if not 1 <= self.batch_size <= 2**31 - 1:
            raise ValueError("batch_size: must be in [1, 2^31)")
        check_range("lr", self.lr, 0.0, 10.0)
        check_range("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        check_range("momentum", self.momentum, 0.0, 1.0)
        if self.clip_grad_norm is not None:
            check_range("clip_grad_norm", self.clip_grad_norm, 0.0, math.inf, high_open=True)
        for name in ("eval_every", "checkpoint_every", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 0:
                raise ValueError(f"{name}: must be at least 0")
        if self.log_every < 1:
            raise ValueError("log_every: must be at least 1")


@dataclass
class BudgetSection:
    """``prune.budget``: the fraction of the dense model to keep — one of params, macs, latency."""

    params: float | None = field(default=None, metadata={"help": "keep at most this fraction of the parameters"})
    macs: float | None = field(default=None, metadata={"help": "keep at most this fraction of the MACs per image"})
    latency: float | None = field(default=None, metadata={
        "help": "keep at most this fraction of the dense model's latency on the run's device (a measured cost table)"})
    batch_size: int = field(default=32, metadata={"help": "latency: the batch size it is measured at"})
    tolerance: float = field(default=0.02, metadata={
        "help": "how far below the budget the plan may end (coarser units are reported, not refused)"})
    repeats: int = field(default=10, metadata={"help": "latency: timed runs per cost-table entry (≥ 10)"})

    def __post_init__(self) -> None:
        given = [name for name in BUDGET_METRICS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(BUDGET_METRICS)} (the fraction of the dense model to "
                             f"keep), got {', '.join(given) or 'none'}")
        check_range(given[0], getattr(self, given[0]), 0.0, 1.0)
        if getattr(self, given[0]) == 0.0:
            raise ValueError(f"{given[0]}: must be above 0 (the fraction of the dense model to keep)")
        if not 1 <= self.batch_size <= 65536:
            raise ValueError(f"batch_size: must be in [1, 65536], got {self.batch_size}")
        check_range("tolerance", self.tolerance, 0.0, 1.0)
        if self.repeats < 10:
            raise ValueError(f"repeats: must be at least 10 (the median of at least 10 runs), got {self.repeats}")

    @property
    def metric(self) -> str:
        return next(name for name in BUDGET_METRICS if getattr(self, name) is not None)

    @property
    def fraction(self) -> float:
        return float(getattr(self, self.metric))


BUDGET_METRICS = ("params", "macs", "latency")
DEFAULT_SPARSITY = 0.5


@dataclass
class PruneSection:
    importance: Any = choice("importance", "l1", "how units are scored")
    sparsity: float | None = field(default=None, metadata={
        "help": f"fraction of units REMOVED, relative to the original model (default {DEFAULT_SPARSITY}; "
                "not with budget)"})
    budget: BudgetSection | None = field(default=None, metadata={
        "help": "instead of sparsity: {params: F}, {macs: F} or {latency: F, batch_size: B}, the fraction of the "
                "dense model to keep; the planner finds the plan (docs: corecompress.pruning.budget)"})
    targets: list[str] = field(default_factory=lambda: ["channels"],
                               metadata={"help": "group kinds to prune (channels, heads, neurons, filters)"})
    scope: Literal["local", "global"] = "local"
    min_keep_fraction: float = field(default=0.1, metadata={"help": "per-group floor for global scope"})
    round_to: int = field(default=1, metadata={
        "help": "kept counts become multiples of this (nearest, ties up; at least the floor; or the whole "
                "group) for tensor-core friendly sizes; heads are not rounded; 1 = no rounding"})
    apply: Any = choice("applier", "physical", "mask (soft, same size) or physical (really smaller)")
    calibration_batches: int = field(default=4, metadata={"help": "batches for data/gradient-based importances"})
    plan: str | None = field(default=None, metadata={"help": "use this plan.json instead of scoring"})
    rounds: int = field(default=1, metadata={
        "help": "1 = one-shot (FACES); more = gradual pruning during retraining, soft masks between rounds"})
    ramp: Any = choice("schedule", "sparsity_cubic", "gradual: round k of R prunes to sparsity · ramp(k, R), a "
                       "schedule in [0, 1] rising to 1 (cubic: Zhu & Gupta 2018; linear; or a plugin's by name)",
                       aliases=RAMP_SHORTHANDS)
    ramp_fraction: float = field(default=0.5, metadata={
        "help": "gradual: the last round prunes after this fraction of retrain.steps"})
    verify: bool = field(default=True, metadata={
        "help": "before the plan is used, check on a batch of 2 that the masked and the physically pruned "
                "model agree (rel. err <= 1e-5); a group that breaks this stops the run naming it"})

    def __post_init__(self) -> None:
        if self.budget is not None and self.sparsity is not None:
            raise ValueError("budget: give sparsity or budget, not both (budget plans the sparsity itself)")
        if self.budget is not None and self.rounds > 1:
            raise ValueError("budget: a budget is planned one-shot; gradual pruning (rounds > 1) takes prune.sparsity")
        if self.budget is not None and self.plan is not None:
            raise ValueError("budget: a fixed plan has no budget to meet; drop plan or budget")
        if self.budget is None and self.sparsity is None:
            self.sparsity = DEFAULT_SPARSITY
        if self.sparsity is not None:
            check_range("sparsity", self.sparsity, 0.0, 1.0, high_open=True)
        if not 1 <= self.rounds <= 10_000:
            raise ValueError(f"rounds: must be in [1, 10000], got {self.rounds}")
        if not 0.0 < self.ramp_fraction < 1.0:
            raise ValueError(f"ramp_fraction: must be in (0, 1), got {self.ramp_fraction}")
        if self.rounds > 1 and self.plan is not None:
            raise ValueError("plan: a fixed plan cannot be reached gradually; drop plan or set rounds: 1")
        check_range("min_keep_fraction", self.min_keep_fraction, 0.0, 1.0)
        if self.round_to < 1:
            raise ValueError(f"round_to: must be at least 1, got {self.round_to}")
        if not self.targets:
            raise ValueError("targets: name at least one group kind")
        if self.plan is not None and not Path(self.plan).is_file():
            raise ValueError(f"plan: no such file: {self.plan}")


@dataclass
class TeacherSection:
    model: Any = choice("model", None, "teacher architecture; omitted = the model as it is before pruning")
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights: no such file: {self.weights}")


@dataclass
class ExportSection:
    formats: list[Literal["safetensors", "onnx"]] = field(default_factory=lambda: ["safetensors"])


@dataclass
class Recipe:
    version: int
    model: Any = choice("model", None, "the model to compress")
    data: Any = choice("dataset", None, "training and evaluation data")
    name: str = "run"
    description: str = ""
    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    matrix: dict[str, list[Any]] = field(default_factory=dict)
    require: list[str] = field(default_factory=list)
    plugins: PluginsSection = field(default_factory=PluginsSection)
    deterministic: bool = False
    threads: int | None = None
    device: str = field(default="auto", metadata={
        "help": f"where the run computes: {DEVICE_FORMS} (auto = CUDA when present, else the CPU; "
                "under torchrun each rank uses cuda:LOCAL_RANK); the command's --device overrides it"})
    precision: str = field(default="auto", metadata={
        "help": f"number format of training, the teacher and evaluation: {PRECISION_FORMS} (auto = bf16 on a GPU "
                "that has it, else fp32; bf16/fp16 autocast, fp16 with a gradient scaler; margin and cosine math "
                "stays fp32); the command's --precision overrides it"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the student's and the teacher's forward while training (eager, with one warning "
                "line, where compiling fails)"})
    channels_last: bool = field(default=False, metadata={
        "help": "channels-last memory format for the student, the teacher and 4-D batches while training (CNNs)"})
    weights: str | None = field(default=None, metadata={"help": "initial weights of the model"})
    teacher: TeacherSection | None = None
    train: TrainSection | None = None
    evaluate: list[Any] = field(default_factory=list, metadata={"component": "evaluator"})
    evaluate_before: bool = field(default=True, metadata={
        "help": "evaluate the starting model too (off in sweeps whose dense model is measured once elsewhere)"})
    prune: PruneSection | None = None
    retrain: TrainSection | None = None
    export: ExportSection | None = field(default_factory=ExportSection)
    report: list[Any] = field(default_factory=lambda: [Choice("markdown")], metadata={"component": "reporter"})

    def __post_init__(self) -> None:
        if self.version != RECIPE_VERSION:
            raise ValueError(f"version: unsupported recipe version {self.version}; this corecompress reads version {RECIPE_VERSION}")
        if self.model is None:
            raise ValueError("model: required; name a model component")
        if self.data is None:
            raise ValueError("data: required; name a dataset component")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights: no such file: {self.weights}")
        if not self.name or any(c in self.name for c in "/\\") or not self.name.isprintable():
            raise ValueError("name: must be a non-empty name without slashes or control characters")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed: must be in [0, 2^63), got {self.seed}")
        try:
            check_device_setting(self.device)
        except ValueError as exc:
            raise ValueError(f"device: {exc}") from None
        try:
            check_precision_setting(self.precision)
        except ValueError as exc:
            raise ValueError(f"precision: {exc}") from None
        if self.threads is not None and not 0 <= self.threads <= 4096:
            raise ValueError(f"threads: must be in [0, 4096] (0 or null = torch's default), got {self.threads}")
        if self.prune is not None and self.prune.rounds > 1:
            if self.retrain is None:
                raise ValueError("prune.rounds: gradual pruning happens during retraining; add a 'retrain:' section "
                                 "or set rounds: 1")
            try:
                round_steps(self.prune.rounds, self.retrain.steps, self.prune.ramp_fraction)
            except ValueError as exc:
                raise ValueError(f"prune.rounds: {exc}") from None


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Load a recipe file with ``yaml.safe_load`` (tags that would call code are refused), its
    ``extends`` bases merged in (see the module docstring).

    Guards, for the file and each base: at most ``MAX_RECIPE_BYTES``; no recursive aliases; at most
    ``MAX_RECIPE_NODES`` values with aliases expanded and ``MAX_RECIPE_DEPTH`` levels of nesting (the
    merged recipe too). Every failure is one line.
    """
    shown_path = printable(str(path))  # as it appears in messages: a control character must not break the line
    if not Path(path).is_file():
        raise UserError(f"{shown_path}: no such recipe file")
    data = _read_extending(Path(path), shown_path, [], [0])
    _check_size(data, f"{shown_path} (merged with its base recipes)")
    return data


def _read_extending(p: Path, shown_path: str, chain: list[tuple[Path, str]], files: list[int]) -> dict[str, Any]:
    """The recipe in ``p`` merged over its bases; ``chain`` holds the files extending it (outermost first)."""
    data = _read_one(p, shown_path, chain[-1][1] if chain else None)
    if "extends" not in data:
        return data
    refs = data.pop("extends")
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs):
        raise RecipeError("", f"{shown_path}: extends: expected a recipe path or a non-empty list of paths,"
                              f" got {short_repr(refs)}")
    here = [*chain, (p.resolve(), shown_path)]
    if len(here) > MAX_EXTENDS_DEPTH:
        raise RecipeError("", f"{here[0][1]}: extends: more than {MAX_EXTENDS_DEPTH} levels of base recipes"
                              f" ({' -> '.join(name for _, name in here)} -> ...)")
    merged: dict[str, Any] = {}
    for ref in refs:
        base = p.parent / ref
        base_shown = printable(os.path.normpath(str(base)))
        if not base.is_file():
            raise RecipeError("", f"{shown_path}: extends: no such recipe file: {base_shown}")
        seen = [real for real, _ in here]
        if base.resolve() in seen:
            cycle = [name for _, name in here[seen.index(base.resolve()):]] + [base_shown]
            raise RecipeError("", f"{shown_path}: extends: a cycle of base recipes: {' -> '.join(cycle)}")
        files[0] += 1
        if files[0] > MAX_EXTENDS_FILES:
            raise RecipeError("", f"{here[0][1]}: extends: more than {MAX_EXTENDS_FILES} base recipe files in all")
        merged = merge_recipes(merged, _read_extending(base, base_shown, here, files))
    return merge_recipes(merged, data)


def merge_recipes(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``: mappings merge key by key (recursively), anything else replaces.

    A new mapping; the base's key order is kept and keys new in ``override`` follow.
    """
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        merged[key] = merge_recipes(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def _read_one(p: Path, path: str, extended_by: str | None) -> dict[str, Any]:
    """One recipe file, guarded, as a mapping (its ``extends`` not yet followed)."""
    size = p.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError("", f"{path}: {size} bytes is too large for a recipe (at most {MAX_RECIPE_BYTES})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError("", f"{path}: not valid YAML{where}: {shown(problem)}") from None
    except UnicodeDecodeError:
        raise RecipeError("", f"{path}: not a text file") from None
    except RecursionError:
        raise RecipeError("", f"{path}: nested too deeply (at most {MAX_RECIPE_DEPTH} levels)") from None
    except (ValueError, TypeError, LookupError, ArithmeticError, AttributeError) as exc:  # a scalar its tag cannot build, e.g. 2020-13-45
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise RecipeError("", f"{path}: not valid YAML: a value cannot be read ({shown(detail)})") from None
    if not isinstance(data, dict):
        what = "a recipe" if extended_by is None else f"a base recipe (extended by {extended_by})"
        raise RecipeError("", f"{path}: {what} is a mapping of sections, got {type(data).__name__}")
    _check_size(data, path)
    return data


def _check_size(data: Any, where: str) -> None:
    """Refuse recursive aliases and alias bombs: count values as if every alias were expanded."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded values, nesting height)
    active: set[int] = set()

    def measure(node: Any, depth: int) -> tuple[int, int]:
        if not isinstance(node, (dict, list, tuple, set, frozenset)):
            return 1, 0
        key = id(node)
        if key in active:
            raise RecipeError("", f"{where}: a YAML alias refers to a value that contains it (recursive recipe)")
        if key not in memo:
            if depth >= MAX_RECIPE_DEPTH:
                raise RecipeError("", f"{where}: nested too deeply (at most {MAX_RECIPE_DEPTH} levels)")
            active.add(key)
            children = [v for kv in node.items() for v in kv] if isinstance(node, dict) else list(node)
            count, height = 1, 0
            for child in children:
                child_count, child_height = measure(child, depth + 1)
                count, height = count + child_count, max(height, child_height + 1)
                if count > MAX_RECIPE_NODES:
                    raise RecipeError("", f"{where}: more than {MAX_RECIPE_NODES} values once YAML aliases are"
                                          " expanded (an alias bomb?)")
            active.discard(key)
            memo[key] = (count, height)
        count, height = memo[key]
        if depth + height > MAX_RECIPE_DEPTH:
            raise RecipeError("", f"{where}: nested too deeply (at most {MAX_RECIPE_DEPTH} levels)")
        return count, height

    measure(data, 0)


def _walk_choices(obj: Any, cls: type, path: str, registry: Registry) -> None:
    """Resolve every component field of a parsed section against the registry."""
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("component")
        value = getattr(obj, f.name)
        fpath = join_path(path, f.name)
        if kind and isinstance(value, list) and not _is_list_field(cls, f):
            raise RecipeError(fpath, f"expected a component name or a mapping with 'name', got a list"
                                     f" (only one {kind} goes here)")
        if kind and isinstance(value, list):
            resolved = []
            for i, item in enumerate(value):
                c = _parse_choice(item, join_path(fpath, i))
                resolved.append(_resolve(c, kind, join_path(fpath, i), registry))
            setattr(obj, f.name, resolved)
        elif kind and value is not None:
            chosen = _alias(_parse_choice(value, fpath), f.metadata.get("aliases") or {}, kind, fpath, registry)
            setattr(obj, f.name, _resolve(chosen, kind, fpath, registry))
        elif dataclasses.is_dataclass(value):
            _walk_choices(value, type(value), fpath, registry)


def _is_list_field(cls: type, f: dataclasses.Field) -> bool:
    """A field holding a list of components (``evaluate: list[Any]``) rather than one component."""
    return typing.get_origin(typing.get_type_hints(cls).get(f.name)) is list


def _alias(c: Choice, aliases: dict[str, str], kind: str, path: str, registry: Registry) -> Choice:
    """The choice under its registered name (``prune.ramp: cubic`` is the schedule ``sparsity_cubic``);
    an unknown name is reported with close matches among the aliases too."""
    if not aliases:
        return c
    c.name = aliases.get(c.name, c.name)
    if c.name not in registry.components[kind] and c.name not in registry.conflicts[kind]:
        known = sorted(set(registry.names(kind)) | set(aliases))
        raise RecipeError(join_path(path, "name") if c.raw else path,
                          f"unknown {kind} {quoted(c.name)}" + close_match(c.name, known)
                          + f" (registered: {', '.join(known)})")
    return c


def _check_ramp(prune: PruneSection, registry: Registry) -> None:
    """Gradual pruning's round sparsities, ``sparsity · ramp(k, rounds)`` (Zhu & Gupta 2018), must be
    fractions in [0, 1] that rise to 1: checked here, so a bad ramp fails before anything runs."""
    if prune.rounds == 1:
        return
    ramp = registry.get("schedule", prune.ramp.name).create(prune.ramp.options)
    try:
        round_sparsities(prune.sparsity, prune.rounds, ramp)
    except ValueError as exc:
        raise RecipeError("prune.ramp", f"'{prune.ramp.name}': {exc}") from None


def _resolve(c: Choice, kind: str, path: str, registry: Registry) -> Choice:
    comp = registry.get(kind, c.name, join_path(path, "name") if c.raw else path)
    c.options = comp.parse(c.raw, path)
    return c


def validate_recipe(data: dict[str, Any], registry: Registry, *, check_matrix: bool = True) -> Recipe:
    """Parse and validate a recipe mapping; raise RecipeError on the first problem."""
    raw = copy.deepcopy(data)
    if "version" not in raw:
        raise RecipeError("version", f"missing; add 'version: {RECIPE_VERSION}' at the top of the recipe")
    recipe = parse_options(Recipe, raw, "")
    _walk_choices(recipe, Recipe, "", registry)
    check_recipe_needs(recipe, registry)
    if recipe.prune is not None:
        _check_ramp(recipe.prune, registry)
    if check_matrix:
        if recipe.matrix:
            for _label, cell in expand_matrix(raw):
                validate_recipe(cell, registry, check_matrix=False)
        for i, s in enumerate(recipe.seeds):
            if not 0 <= s <= MAX_SEED:
                raise RecipeError(f"seeds[{i}]", "seeds must be non-negative integers below 2^63")
    return recipe


def expand_matrix(raw: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """All cells of the recipe's ``matrix``: (assignments, recipe mapping without the matrix)."""
    matrix = raw.get("matrix") or {}
    if not isinstance(matrix, dict):
        raise RecipeError("matrix", "expected a mapping of 'dotted.key: [values]'")
    keys = list(matrix)
    for key in keys:
        values = matrix[key]
        if not isinstance(values, list) or not values:
            raise RecipeError(f"matrix.{shown(key)}", "expected a non-empty list of values")
        if not isinstance(key, str) or not key or key.split(".")[0] in {"matrix", "seeds", "version"}:
            raise RecipeError(f"matrix.{shown(key)}", "expected a dotted recipe key such as prune.sparsity")
    cells = []
    count = 1
    for key in keys:
        count *= len(matrix[key])
    if count > MAX_MATRIX_CELLS:
        raise RecipeError("matrix", f"{count} cells is more than {MAX_MATRIX_CELLS}; split the comparison")
    for values in itertools.product(*(matrix[k] for k in keys)):
        cell = copy.deepcopy({k: v for k, v in raw.items() if k != "matrix"})
        assignment = dict(zip(keys, values))
        for key, value in assignment.items():
            _set_dotted(cell, key, value)
        cells.append((assignment, cell))
    return cells


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if isinstance(nxt, str) and i == len(parts) - 2 and parts[-1] == "name":
            nxt = {"name": nxt}
            node[part] = nxt
        if nxt is None:
            nxt = {}
            node[part] = nxt
        if not isinstance(nxt, dict):
            raise RecipeError(f"matrix.{shown(key)}", f"'{shown('.'.join(parts[:i + 1]))}' is not a section")
        node = nxt
    node[parts[-1]] = value


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe with every default filled in (written to the run directory)."""

    def convert(obj: Any) -> Any:
        if isinstance(obj, Choice):
            return obj.to_dict()
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    return convert(recipe)
