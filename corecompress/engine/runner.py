"""The runner: one plain function per stage, executed in order; a stage the recipe omits does nothing.

build → train → evaluate_before → score → plan → apply → retrain → evaluate_after → export → report

``resume_run`` continues an interrupted run from its directory: it rebuilds the recipe from
``recipe.resolved.json``, re-runs the cheap deterministic stages (build, the run's own ``plan.json``
instead of scoring, apply), skips a training phase whose final checkpoint is complete (loading its
weights), continues a phase from its newest usable checkpoint, and finishes. ``status.json`` says
``running`` / ``complete`` / ``failed`` / ``interrupted`` and counts the resumes; ``log.txt`` is appended.

Under ``torchrun`` (docs/distributed.md) every rank runs every stage that shapes the model — build,
training, scoring, planning (rank 0's plan is then broadcast and used everywhere), applying,
retraining — and rank 0 alone runs the stages that only read the model or write files: evaluation,
export, report (:data:`MAIN_ONLY_STAGES`, with their hooks). Only rank 0 creates, locks and writes the
run directory; its failures reach every rank (:func:`corecompress.engine.distributed.on_main`).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from corecompress.engine import distributed
from corecompress.engine.artifacts import ArtifactStore
from corecompress.engine.context import RunContext
from corecompress.errors import UserError
from corecompress.engine.evaluate import evaluate_model
from corecompress.engine.preflight import as_component_error, check_scores, declined_reasons, preflight
from corecompress.engine.precision import resolve_precision
from corecompress.tools.export import export_run, load_weights_file
from corecompress.plugin.loading import LoadedPlugins
from corecompress.pruning.gradual import (
    GradualPruner, complete_masks, plan_from_masks, ramp_label, round_sparsities, round_steps,
)
from corecompress.pruning.plan import PruningPlan, make_plan
from corecompress.pruning.verify import check_plan
from corecompress.config.recipe import Recipe, recipe_to_dict
from corecompress.engine.rundir import (
    STATUS_FILE, RunLock, atomic_write_bytes, create_run_dir, environment, read_status, write_json,
)
from corecompress.engine.training import train


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build(ctx: RunContext) -> None:
    r = ctx.recipe
    ctx.model_spec = ctx.create("model", r.model)
    ctx.model = ctx.model_spec.build().to(ctx.device)
    if r.weights:
        _load_into(ctx.model_spec, ctx.model, r.weights)
    ctx.data = ctx.create("dataset", r.data)
    if r.teacher is not None and r.teacher.model is not None:
        spec = ctx.create("model", r.teacher.model)
        ctx.teacher = spec.build().to(ctx.device)
        if r.teacher.weights:
            _load_into(spec, ctx.teacher, r.teacher.weights)
        _freeze(ctx.teacher)
    ctx.log.info("model %s: %.3f M parameters", r.model.name, sum(p.numel() for p in ctx.model.parameters()) / 1e6)
    preflight(ctx)  # every chosen component once on stand-in inputs, before anything trains


def train_stage(ctx: RunContext) -> Any:
    result = train(ctx, ctx.recipe.train, ctx.model, "train") if ctx.recipe.train else None
    teacher = ctx.recipe.teacher
    if teacher is not None and teacher.model is None:      # teacher = the model before pruning
        ctx.teacher = _freeze(copy.deepcopy(ctx.model))
        if teacher.weights:
            load_weights_file(ctx.teacher, teacher.weights)
    if result is not None:
        ctx.metrics["train"] = {"seconds": result.seconds, "final_loss": result.final_loss,
                                "skipped_steps": result.skipped_steps, "history": result.history}
    return result


def evaluate_before(ctx: RunContext) -> Any:
    if ctx.recipe.evaluate and ctx.recipe.evaluate_before:
        ctx.metrics["before"] = evaluate_model(ctx, ctx.model)
        return ctx.metrics["before"]
    return None


def score(ctx: RunContext) -> Any:
    p = ctx.recipe.prune
    if p is None:
        return None
    ctx.groups = ctx.model_spec.prunable_groups(ctx.model, tuple(p.targets))
    if not ctx.groups:
        raise UserError(f"prune.targets: model '{ctx.recipe.model.name}' has no prunable groups of kind {p.targets}")
    if p.plan or ctx.resume_plan:
        return None
    importance = ctx.create("importance", p.importance)
    start = time.perf_counter()
    ctx.scores = _checked_scores(ctx, importance, ctx.model)
    ctx.metrics["scoring_seconds"] = time.perf_counter() - start
    return ctx.scores


def _checked_scores(ctx: RunContext, importance: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The importance's scores of ``ctx.groups``, checked (one line naming the plugin otherwise); groups
    an importance declared it may decline are logged and recorded as left unpruned, with why."""
    component = ctx.registry.get("importance", ctx.recipe.prune.importance.name)
    with as_component_error(component, "prune.importance: ", during="while scoring the model"):
        scores = importance.score(model, ctx.groups, ctx)
    missing = check_scores(scores, ctx.groups, component)
    if missing:
        reasons = declined_reasons(importance, missing, component)
        if reasons != ctx.metrics.get("unpruned_groups"):
            shown = "; ".join(f"{name}: {why}" for name, why in list(reasons.items())[:5])
            ctx.log.warning("warning: importance '%s' left %d of %d groups unpruned: %s%s", component.name,
                            len(missing), len(ctx.groups), shown, " ..." if len(reasons) > 5 else "")
        ctx.metrics["unpruned_groups"] = reasons
    return scores


def plan(ctx: RunContext) -> Any:
    p = ctx.recipe.prune
    if p is None:
        return None
    source = ctx.resume_plan or p.plan
    if source:
        try:
            ctx.plan = PruningPlan.load(source)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{source}: not a readable pruning plan ({str(exc).splitlines()[0][:200]})") from None
    elif p.budget is not None:
        from corecompress.engine.budget_stage import plan_for_budget

        ctx.plan = plan_for_budget(ctx, ctx.scores, _plan_meta(ctx))
    else:
        first = _round_sparsities(ctx)[0]  # = p.sparsity for one-shot pruning
        ctx.plan = _make_plan(ctx, ctx.scores, first)
    ctx.plan = _agree_on_plan(ctx, ctx.plan)
    if "budget" in ctx.plan.meta:
        ctx.metrics["budget"] = ctx.plan.meta["budget"]
    try:
        ctx.plan.check(ctx.groups)
    except ValueError as exc:
        raise UserError(f"prune.plan: {exc}") from None
    _verify_plan(ctx, ctx.plan)
    _save_plan(ctx, plan_file(ctx.recipe), ctx.plan)
    return ctx.plan


def _verify_plan(ctx: RunContext, plan: PruningPlan) -> None:
    """``prune.verify``: masked ≡ physical on a batch of 2 before the plan is saved or used (a mismatch
    or a failing pruned model is a one-line :class:`PlanVerificationError` naming the group)."""
    if not ctx.recipe.prune.verify:
        return
    start = time.perf_counter()
    check_plan(ctx.model, ctx.groups, plan, ctx.model_spec.input_size,
               after_physical=lambda model: ctx.hook.after_physical_prune(run=None, model=model, plan=plan))
    ctx.metrics["verify_seconds"] = time.perf_counter() - start
    ctx.log.info("prune.verify: masked and physically pruned models agree (%.2f s)", ctx.metrics["verify_seconds"])


def _make_plan(ctx: RunContext, scores: dict[str, torch.Tensor], sparsity: float) -> PruningPlan:
    p = ctx.recipe.prune
    meta = _plan_meta(ctx)
    if ctx.metrics.get("unpruned_groups"):
        meta["unpruned_groups"] = ctx.metrics["unpruned_groups"]
    try:
        return make_plan(scores, ctx.groups, sparsity, p.scope, p.min_keep_fraction, meta=meta, round_to=p.round_to)
    except ValueError as exc:  # scores are checked when made; this is the last line of defence
        raise UserError(f"prune: importance '{p.importance.name}': {exc}") from None


def _plan_meta(ctx: RunContext) -> dict[str, Any]:
    p = ctx.recipe.prune
    return {"importance": p.importance.name, "targets": list(p.targets), "model": ctx.recipe.model.name}


def _save_plan(ctx: RunContext, name: str, plan: PruningPlan) -> None:
    distributed.on_main(lambda: atomic_write_bytes(ctx.out_dir / name, json.dumps(plan.to_dict(), indent=1).encode()),
                        share=False)


def is_gradual(recipe: Recipe) -> bool:
    return recipe.prune is not None and recipe.prune.rounds > 1


def plan_file(recipe: Recipe, round_number: int = 1) -> str:
    """``plan.json`` holds the plan the final model has; gradual rounds write ``plan.round<k>.json``."""
    return f"plan.round{round_number}.json" if is_gradual(recipe) else "plan.json"


def _agree_on_plan(ctx: RunContext, own: PruningPlan) -> PruningPlan:
    """Rank 0's plan on every rank. Every rank scores (so whatever the importance does to the model
    happens everywhere, in the time of one scoring), but scores need not be bitwise equal on every
    device, and one different unit would give ranks different architectures."""
    if distributed.world() == 1:
        return own
    mine = own.to_dict()
    chosen = distributed.broadcast_object(mine)
    if chosen == mine:
        return own
    ctx.log.warning("warning: rank %d's pruning plan differs from rank 0's; rank 0's is used", distributed.rank())
    return PruningPlan.from_dict(chosen)


def apply(ctx: RunContext) -> Any:
    p = ctx.recipe.prune
    if p is None:
        return None
    if is_gradual(ctx.recipe):  # round 1 as soft masks; the recipe's applier runs after retraining
        ctx.masks = complete_masks(ctx.model, ctx.groups, ctx.plan)
        ctx.masks.apply(ctx.model)
        return ctx.model
    applier = ctx.create("applier", p.apply)
    ctx.model = applier.apply(ctx.model, ctx.groups, ctx.plan, ctx)
    return ctx.model


def evaluate_pruned(ctx: RunContext) -> Any:
    """One-shot quality: the pruned model before any retraining (only when both happen; not for
    gradual pruning, whose model is only partly pruned before retraining)."""
    if ctx.recipe.evaluate and ctx.recipe.prune and ctx.recipe.retrain and not is_gradual(ctx.recipe):
        ctx.metrics["pruned"] = evaluate_model(ctx, ctx.model)
        return ctx.metrics["pruned"]
    return None


def retrain(ctx: RunContext) -> Any:
    if ctx.recipe.retrain is None:
        return None
    gradual = _gradual_pruner(ctx) if is_gradual(ctx.recipe) else None
    result = train(ctx, ctx.recipe.retrain, ctx.model, "retrain", on_step=gradual)
    ctx.metrics["retrain"] = {"seconds": result.seconds, "final_loss": result.final_loss,
                              "skipped_steps": result.skipped_steps, "history": result.history}
    if gradual is not None:
        _finish_gradual(ctx)
    return result


def _gradual_pruner(ctx: RunContext) -> GradualPruner:
    p = ctx.recipe.prune
    importance = ctx.create("importance", p.importance)
    needs = ctx.registry.get("importance", p.importance.name).needs_for(p.importance.options)
    if "grad" in needs and distributed.world() > 1:
        raise UserError(f"prune.rounds: gradual pruning with the gradient-based importance '{p.importance.name}' "
                        "is not supported under torchrun; use rounds: 1 or a data-free importance")
    pruner = GradualPruner(
        ctx, ctx.groups, _round_sparsities(ctx),
        round_steps(p.rounds, ctx.recipe.retrain.steps, p.ramp_fraction),
        make=lambda scores, sparsity: _make_plan(ctx, scores, sparsity),
        score=lambda model: _checked_scores(ctx, importance, model),
        agree=lambda own: _agree_on_plan(ctx, own),
        save=lambda k, plan: _save_plan(ctx, plan_file(ctx.recipe, k), plan))
    if ctx.resuming and distributed.is_main():  # rounds done before the interruption, from their plans
        for k in range(2, p.rounds + 1):
            path = ctx.out_dir / plan_file(ctx.recipe, k)
            if _readable_plan(path, ctx.log):
                pruner.record(k, PruningPlan.load(path), None)
    return pruner


def _round_sparsities(ctx: RunContext) -> list[float]:
    """Round k's sparsity, ``prune.sparsity · ramp(k, rounds)`` with the recipe's ramp schedule (Zhu &
    Gupta 2018); one round (one-shot pruning) is ``[prune.sparsity]``."""
    p = ctx.recipe.prune
    if p.rounds == 1:
        return [p.sparsity]
    try:
        return round_sparsities(p.sparsity, p.rounds, ctx.create("schedule", p.ramp))
    except ValueError as exc:  # validate_recipe checks this too; here for recipes built without it
        raise UserError(f"prune.ramp: '{p.ramp.name}': {exc}") from None


def _finish_gradual(ctx: RunContext) -> None:
    """The masks hold the last round's plan: apply it with the recipe's applier (physical by default)."""
    p = ctx.recipe.prune
    final = plan_from_masks(ctx.groups, ctx.masks, meta={**ctx.plan.meta, "sparsity": p.sparsity, "rounds": p.rounds,
                                                         "ramp": ramp_label(p.ramp)},
                            names=set(ctx.plan.groups))
    ctx.plan = final
    _verify_plan(ctx, final)
    _save_plan(ctx, "plan.json", final)
    ctx.model = ctx.create("applier", p.apply).apply(ctx.model, ctx.groups, final, ctx)


def evaluate_after(ctx: RunContext) -> Any:
    if ctx.recipe.evaluate and (ctx.recipe.prune or ctx.recipe.retrain):
        ctx.metrics["after"] = evaluate_model(ctx, ctx.model)
        return ctx.metrics["after"]
    return None


def export(ctx: RunContext) -> Any:
    if ctx.recipe.export is None:
        return None
    return export_run(ctx, ctx.recipe.export.formats)


def report(ctx: RunContext) -> Any:
    write_json(ctx.out_dir / "metrics.json", ctx.metrics)
    for chosen in ctx.recipe.report:
        ctx.create("reporter", chosen).write(ctx)
    return ctx.out_dir / "report.md"


#: Stages that only read the model or write files: rank 0 alone runs them (and their hooks) under torchrun.
MAIN_ONLY_STAGES = frozenset({"evaluate_before", "evaluate_pruned", "evaluate_after", "export", "report"})

STAGES: list[tuple[str, Callable[[RunContext], Any]]] = [
    ("build", build), ("train", train_stage), ("evaluate_before", evaluate_before), ("score", score),
    ("plan", plan), ("apply", apply), ("evaluate_pruned", evaluate_pruned), ("retrain", retrain), ("evaluate_after", evaluate_after),
    ("export", export), ("report", report),
]




def placement(device: str, precision: str) -> tuple[torch.device, str]:
    """The device a run computes on and its resolved precision (``fp32 | bf16 | fp16``; what ``auto``
    means there), from the settings (the recipe's, or the command's ``--device``/``--precision``).
    A setting this machine cannot honour is a one-line error."""
    where = distributed.run_device(device)
    return where, resolve_precision(precision, where)


def run_recipe(recipe: Recipe, plugins: LoadedPlugins, out_dir: Path, *, force: bool = False,
               raw_recipe: dict | None = None, quiet: bool = False, device: str | None = None,
               precision: str | None = None) -> RunContext:
    """Execute every stage of ``recipe`` into the new run directory ``out_dir`` (under torchrun: the
    directory rank 0 created; every rank must be given the same ``out_dir``).

    ``device`` (``--device``) and ``precision`` (``--precision``) override the recipe's ``device:`` and
    ``precision:`` for this execution; they are resolved before the directory is created (a missing
    GPU is a one-line error and nothing is written)."""
    where, mode = placement(device or recipe.device, precision or recipe.precision)
    lock = RunLock(out_dir)
    replaced: list[Any] = []  # rank 0: the earlier run that --force moved aside, until this one has started

    def create() -> Path:  # rank 0 only; its errors are raised on every rank
        lock.acquire()  # refuses a directory another process is writing (also with --force)
        path, replacement = create_run_dir(out_dir, force)
        replaced.append(replacement)
        lock.acquire()
        write_json(path / "recipe.resolved.json", recipe_to_dict(recipe))
        write_json(path / "versions.json", {**environment(plugins.versions()), "seed": recipe.seed,
                                            "world_size": distributed.world(), "device": str(where),
                                            "precision": mode})
        return path

    def started() -> None:  # the new run is built: the earlier one can go
        if replaced and replaced[0] is not None:
            replaced[0].keep_new()

    try:
        out_dir = distributed.on_main(create)
        return _execute(recipe, plugins, out_dir, {"started": time.time()}, resumes=0, device=where,
                        precision=mode, on_started=started, quiet=quiet)
    except BaseException:
        if replaced and replaced[0] is not None:  # failed at start-up: the earlier run is back in place
            lock.release()
            replaced[0].restore()
        raise
    finally:
        lock.release()


def resume_run(run_dir: str | Path, plugins: LoadedPlugins | None = None, *, strict: bool | None = None,
               quiet: bool = False, device: str | None = None, precision: str | None = None) -> RunContext:
    """Continue the interrupted run in ``run_dir`` from its last checkpoints (see the module docstring).

    ``plugins`` (default: loaded as the resolved recipe asks) must provide the run's components.
    ``device`` (``--device``) overrides the recipe's ``device:``, so a run may move to another
    machine (checkpoints hold CPU tensors; they load onto any device); ``precision`` likewise.
    """
    from corecompress.config.recipe import validate_recipe

    root = Path(run_dir)
    resolved = root / "recipe.resolved.json"
    lock = RunLock(root)

    def claim() -> dict[str, Any]:  # rank 0 only; its errors are raised on every rank
        if not root.is_dir() or not resolved.is_file():
            raise UserError(f"{run_dir}: not a run directory (no recipe.resolved.json)")
        lock.acquire()
        status = read_status(root)
        if status.get("state") == "complete":
            raise RunAlreadyComplete(f"{run_dir}: the run is already complete; nothing to resume")
        return status

    try:
        status = distributed.on_main(claim)
        if plugins is None:
            from corecompress.config.loading import load_for_recipe

            _raw, plugins, recipe = load_for_recipe(str(resolved), strict)
        else:
            try:
                raw = json.loads(resolved.read_text())
            except ValueError as exc:
                raise UserError(f"{resolved}: not valid JSON ({exc})") from None
            recipe = validate_recipe(raw, plugins.registry)
        where, mode = placement(device or recipe.device, precision or recipe.precision)
        if distributed.is_main():
            _warn_if_versions_differ(root, plugins)
        resumes = int(status.get("resumes", 0)) + 1
        state = {"started": status.get("started"), "resumed_at": time.time(),
                 "resumed_from_state": status.get("state")}
        if status.get("device") and status.get("device") != str(where):
            state["resumed_from_device"] = status.get("device")
        if status.get("precision") and status.get("precision") != mode:
            state["resumed_from_precision"] = status.get("precision")
        return _execute(recipe, plugins, root, state, resumes=resumes, device=where, precision=mode, quiet=quiet)
    finally:
        lock.release()


class RunAlreadyComplete(UserError):
    """``--resume`` of a run that finished; nothing to do."""


def _execute(recipe: Recipe, plugins: LoadedPlugins, out_dir: Path, status: dict[str, Any], *,
             resumes: int, device: torch.device, precision: str = "fp32",
             on_started: Callable[[], None] | None = None, quiet: bool = False) -> RunContext:
    main = distributed.is_main()
    log = _make_logger(out_dir, quiet)
    status = {**status, "resumes": resumes, "pid": os.getpid(), "device": str(device), "precision": precision}
    if distributed.world() > 1:
        status["world_size"] = distributed.world()
    if main:
        write_json(out_dir / STATUS_FILE, {"state": "running", **status})
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    seed_everything(recipe.seed, recipe.deterministic)
    ctx = RunContext(recipe=recipe, plugins=plugins, out_dir=out_dir, log=log, device=device, precision=precision,
                     artifacts=ArtifactStore(out_dir, producers=plugins.registry.producers_of))
    if resumes:
        ctx.resuming = True
        first_plan = out_dir / plan_file(recipe)
        if recipe.prune is not None and distributed.on_main(lambda: _readable_plan(first_plan, log)):
            ctx.resume_plan = str(first_plan)
        log.info("resume #%d of %s (was %s)", resumes, out_dir, status.get("resumed_from_state"))
        if status.get("resumed_from_device"):
            log.info("device: %s (the run was on %s)", device, status["resumed_from_device"])
        if status.get("resumed_from_precision"):
            log.info("precision: %s (the run was in %s)", precision, status["resumed_from_precision"])
    try:
        for name, stage in STAGES:
            if name in MAIN_ONLY_STAGES and distributed.world() > 1:
                result = distributed.on_main(lambda: _run_stage(ctx, name, stage), share=False)
            else:
                result = _run_stage(ctx, name, stage)
            if name == "build" and on_started is not None and main:
                on_started()
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = str(exc).splitlines()[0] if str(exc) else ""
        if main or not (interrupted or getattr(exc, "from_main_rank", False)):  # rank 0 reports those
            log.error("%s: %s", "interrupted" if interrupted else "failed", f"{type(exc).__name__}: {message}",
                      extra={FILE_ONLY: True})  # the command prints the error itself, once
        try:
            if main:
                write_json(out_dir / STATUS_FILE, {"state": "interrupted" if interrupted else "failed",
                                                   "error": f"{type(exc).__name__}: {message}", **status})
        except OSError:  # e.g. the disk is full: the error itself matters more
            pass
        raise
    finally:
        for handler in list(log.handlers):
            handler.close()
            log.removeHandler(handler)
    if main:
        write_json(out_dir / STATUS_FILE, {"state": "complete", "timings": ctx.timings, "finished": time.time(),
                                           **status})
    return ctx


def _run_stage(ctx: RunContext, name: str, stage: Callable[[RunContext], Any]) -> Any:
    ctx.hook.on_stage_start(run=ctx, stage=name)
    ctx.log.info("stage %s: started", name)
    start = time.perf_counter()
    result = stage(ctx)
    ctx.timings[name] = time.perf_counter() - start
    ctx.log.info("stage %s: done in %.1f s", name, ctx.timings[name])
    ctx.hook.on_stage_end(run=ctx, stage=name, result=result)
    return result


def _readable_plan(path: Path, log: logging.Logger) -> bool:
    if not path.is_file():
        return False
    try:
        PruningPlan.load(path)
        return True
    except (ValueError, KeyError, TypeError):  # written when the run died: score again
        log.warning("warning: %s is unreadable; the importance is scored again", path)
        return False


def _warn_if_versions_differ(root: Path, plugins: LoadedPlugins) -> None:
    """Bitwise-exact resumption needs the same torch; say so when the environment changed."""
    try:
        before = json.loads((root / "versions.json").read_text())
    except (OSError, ValueError):
        return
    now = environment(plugins.versions())
    changed = [k for k in ("corecompress", "torch", "numpy") if before.get(k) != now.get(k)]
    if changed:
        listed = ", ".join(f"{k} {before.get(k)} -> {now.get(k)}" for k in changed)
        warnings.warn(f"{root}: resuming with different versions ({listed}); the result may differ from an "
                      "uninterrupted run", UserWarning, stacklevel=3)


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _load_into(spec: Any, model: torch.nn.Module, path: str) -> None:
    loader = getattr(spec, "load_weights", None)
    if loader is not None:
        loader(model, path)
    else:
        load_weights_file(model, path)


def _make_logger(out_dir: Path, quiet: bool = False) -> logging.Logger:
    """``log.txt`` (appended) and stderr — the same lines whether stderr is a terminal (beside the
    progress bar) or a pipe, a file, CI or nohup (where there is no bar); ``quiet``: warnings only.
    Ranks other than 0 write no file: their warnings and errors go to stderr, prefixed with the rank."""
    suffix = f".rank{distributed.rank()}" if distributed.world() > 1 else ""
    log = logging.getLogger(f"corecompress.run.{out_dir}{suffix}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not distributed.is_main():
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(logging.WARNING)
        sh.setFormatter(logging.Formatter(f"[rank {distributed.rank()}] %(message)s"))
        sh.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
        log.addHandler(sh)
        return log
    fh = logging.FileHandler(out_dir / "log.txt")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.WARNING if quiet else logging.INFO)
    sh.setFormatter(logging.Formatter("%(message)s"))
    sh.addFilter(lambda record: not getattr(record, FILE_ONLY, False))
    log.addHandler(sh)
    return log


FILE_ONLY = "file_only"  # a log record's extra: written to log.txt, not to stderr
