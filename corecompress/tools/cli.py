"""The ``corecompress`` command.

Exit codes: 0 success; 2 a user mistake (one line ``error: ...``); 1 a failure that is not the
user's input — an operating-system error such as a full disk (checkpoints already written stay
usable), or an ONNX file that does not match PyTorch (one line ``error: ...``);
130 interrupted by Ctrl-C (training writes a checkpoint first; ``run --resume DIR`` continues);
141 (128 + SIGPIPE, as a shell reports it) when the reader of the output went away
(``corecompress plugins | head -1``): the command ends quietly, printing nothing more.

``--debug`` (before the command) prints the traceback of a plugin that fails to import and of an
operating-system error (the same as ``CORECOMPRESS_DEBUG_TRACEBACK=1``).

``torchrun --nproc_per_node=N -m corecompress run RECIPE`` runs data-parallel (docs/distributed.md):
``run`` joins the process group first; rank 0 prints the results; a failure on rank 0 is printed by
rank 0 alone, a failure of another rank with a ``[rank r]`` prefix. Every rank exits with the codes
above; torchrun itself then exits with 1 when any rank failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from corecompress import __version__
from corecompress.config.loading import load_for_recipe
from corecompress.errors import UserError
from corecompress.tools.placement_args import add_placement_options

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
ONNX_TOLERANCE = 1e-4
def _one_line_warnings() -> None:
    def fmt(message: Any, category: type, filename: str, lineno: int, line: str | None = None) -> str:
        return f"warning: {message}\n"

    warnings.formatwarning = fmt  # type: ignore[assignment]


def cmd_run(args: argparse.Namespace) -> int:
    from corecompress.engine import distributed
    from corecompress.engine.rundir import default_run_dir
    from corecompress.engine.runner import RunAlreadyComplete, resume_run, run_recipe

    if distributed.requested():  # under torchrun: join the process group (validation below runs on every rank)
        distributed.init_from_env(_device_hint(args))
    main = distributed.is_main()
    if args.resume:
        if args.recipe or args.out or args.force:
            raise UserError("--resume RUN_DIR takes no recipe, --out or --force: the run directory has them")
        out = Path(args.resume)
        try:
            ctx = _interruptible(lambda: resume_run(out, strict=args.strict, quiet=args.quiet, device=args.device,
                                                      precision=args.precision),
                                 out)
        except RunAlreadyComplete as exc:
            if main:
                print(f"note: {exc}")
            return 0
    else:
        if not args.recipe:
            raise UserError("run: name a recipe file, or --resume RUN_DIR")
        raw, plugins, recipe = load_for_recipe(args.recipe, args.strict)
        if (recipe.matrix or recipe.seeds) and main:
            print("note: this recipe has a matrix/seeds; 'run' executes the base recipe once"
                  " ('corecompress compare' runs every cell)", file=sys.stderr)
        # the default name has the time in it: rank 0's is the one every rank uses
        out = distributed.broadcast_object(Path(args.out) if args.out else default_run_dir("runs", recipe.name))
        ctx = _interruptible(lambda: run_recipe(recipe, plugins, out, force=args.force, raw_recipe=raw,
                                                quiet=args.quiet, device=args.device,
                                                precision=args.precision), out)
    if main:
        print(f"run complete: {ctx.out_dir}")
        print(f"report: {ctx.out_dir / 'report.md'}")
    return 0


def _device_hint(args: argparse.Namespace) -> str:
    """The device setting a torchrun run will use (``--device``, else the recipe's), read before
    the process group is formed, since it chooses the backend; "auto" when the recipe cannot be read
    yet (its own error follows when it is loaded)."""
    if args.device:
        return str(args.device)
    try:
        if args.resume:
            raw = json.loads((Path(args.resume) / "recipe.resolved.json").read_text())
        elif args.recipe:
            from corecompress.config.recipe import read_recipe

            raw = read_recipe(args.recipe)
        else:
            return "auto"
    except (UserError, OSError, ValueError):
        return "auto"
    setting = raw.get("device", "auto") if isinstance(raw, dict) else "auto"
    return setting if isinstance(setting, str) else "auto"


def _interruptible(call: Any, out: Path) -> Any:
    try:
        return call()
    except KeyboardInterrupt as exc:
        if _rank() == 0:
            detail = f" ({exc})" if str(exc) else ""
            resume = "torchrun ... -m corecompress" if _launched_distributed() else "corecompress"
            print(f"interrupted{detail}; continue with: {resume} run --resume {out}", file=sys.stderr)
        raise _Interrupted() from None


class _Interrupted(Exception):
    """Ctrl-C, already reported."""


def cmd_export(args: argparse.Namespace) -> int:
    from corecompress.tools.export import export_model

    path, error = export_model(args.run_dir, args.format, args.out, device=args.device,
                                precision=args.precision)
    print(f"exported: {path}")
    if args.format == "onnx":
        if error is None:
            print("onnx check: not run (onnxruntime is not installed)")
        else:
            print(f"onnx check: max relative error {error:.2e} against PyTorch (onnxruntime)")
            if error > ONNX_TOLERANCE:  # not the user's mistake: an operator was not exported faithfully
                print(f"error: {path}: the ONNX model differs from PyTorch (relative error {error:.2e} > "
                      f"{ONNX_TOLERANCE:g})", file=sys.stderr)
                return EXIT_FAILURE
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from corecompress.config.recipe import expand_matrix

    raw, _plugins, recipe = load_for_recipe(args.recipe, args.strict)
    cells = len(expand_matrix(raw)) if recipe.matrix else 1
    runs = cells * max(1, len(recipe.seeds))
    print(f"{args.recipe}: valid (recipe '{recipe.name}', {cells} matrix cell(s), {runs} run(s))")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from corecompress.plugin.loading import load_plugins

    loaded = load_plugins()
    registry = loaded.registry
    by_plugin = registry.by_plugin()
    rows = []
    for name, info in sorted(loaded.plugins.items()):
        comps = [{"kind": c.kind, "name": c.name} | ({"conflict": registry.conflict_message(c.kind, c.name)}
                                                     if c.name in registry.conflicts[c.kind] else {})
                 for c in by_plugin.get(name, [])]
        hooks = sorted(h.name for h in loaded.manager.get_hookcallers(loaded.manager.get_plugin(name)) or []) \
            if loaded.manager.get_plugin(name) is not None else []
        rows.append({"name": name, "distribution": info.distribution, "version": info.version,
                     "module": info.module, "status": info.status, "error": info.error,
                     "hooks": hooks, "components": comps})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        status = "" if row["status"] == "loaded" else f"  [{row['status']}: {row['error']}]" if row["error"] else f"  [{row['status']}]"
        print(f"{row['name']}  ({row['distribution']} {row['version']}){status}")
        for comp in row["components"]:
            print(f"    {comp['kind']}/{comp['name']}" + ("  [conflict: unusable]" if "conflict" in comp else ""))
    for kind in sorted(registry.conflicts):
        for name in sorted(registry.conflicts[kind]):
            print(f"conflict: {registry.conflict_message(kind, name)}")
    return 0


def cmd_options(args: argparse.Namespace) -> int:
    from corecompress.config.options import describe_options
    from corecompress.plugin.loading import load_plugins
    from corecompress.plugin.registry import KINDS

    if args.kind not in KINDS:
        from corecompress.config.options import close_match
        raise UserError(f"unknown kind '{args.kind}'{close_match(args.kind, KINDS)} (kinds: {', '.join(KINDS)})")
    comp = load_plugins().registry.get(args.kind, args.name, f"{args.kind}")
    print(f"{comp.kind}/{comp.name}  (plugin {comp.plugin}, {comp.distribution})")
    if comp.description:
        print(f"  {comp.description}")
    needs = comp.default_needs()
    if needs:
        print(f"  needs: {', '.join(sorted(needs))}" + (" (with the default options)" if callable(comp.needs) else ""))
    if comp.produces:
        print(f"  produces: {', '.join(sorted(comp.produces))}")
    rows = describe_options(comp.options)
    if not rows:
        print("  (no options)")
    for row in rows:
        print(f"  {row['name']}: {row['type']} = {row['default']}" + (f"  — {row['help']}" if row["help"] else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corecompress", description="Compress face-analysis models with recipes.")
    parser.add_argument("--version", action="version", version=f"corecompress {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print tracebacks of plugins that fail to import and of operating-system errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a recipe, or continue an interrupted run (--resume)")
    p.add_argument("recipe", nargs="?")
    p.add_argument("--out", help="run directory (default runs/<name>-<time>)")
    p.add_argument("--force", action="store_true", help="replace an earlier run in --out (only a corecompress run directory or an empty folder)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its last checkpoints")
    p.add_argument("--strict", action="store_true", help="a broken plugin is an error")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (warnings and errors only)")
    add_placement_options(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("export", help="write a finished run's model as safetensors or ONNX")
    p.add_argument("run_dir", help="run directory (or its architecture.json / exported .safetensors)")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors")
    p.add_argument("--out", help="file to write (default: model.<ext> in the run directory)")
    add_placement_options(p, device_default="cpu",
                          device_help="where the model is loaded and the ONNX file checked against PyTorch: auto, "
                                      "cpu, cuda or cuda:N (default: cpu)",
                          precision_help="number format of the written weights: fp32 (default; auto is fp32 too), "
                                         "bf16 or fp16 (safetensors only)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("validate", help="check a recipe without running it")
    p.add_argument("recipe")
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("plugins", help="list plugins and the components they register")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("options", help="show a component's options")
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(func=cmd_options)
    from corecompress.tools.compare import add_compare_parser

    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _one_line_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on bad arguments, one usage line
    debug_before = os.environ.get("CORECOMPRESS_DEBUG_TRACEBACK")
    if args.debug:
        os.environ["CORECOMPRESS_DEBUG_TRACEBACK"] = "1"
    try:
        return _main(args)
    finally:
        if args.debug and debug_before is None:
            os.environ.pop("CORECOMPRESS_DEBUG_TRACEBACK", None)


def _main(args: argparse.Namespace) -> int:
    try:
        for value in vars(args).values():
            if isinstance(value, str) and "\x00" in value:
                raise UserError("an argument contains a NUL character; file names cannot")
        if _launched_distributed() and args.func is not cmd_run:  # each process would write the same files
            raise UserError(f"'{args.command}' does not run distributed; start it without torchrun "
                            "(only 'run' does)")
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is met here, not at the interpreter's exit
        return code
    except UserError as exc:
        _print_error(str(exc), exc)
        return EXIT_USAGE
    except _Interrupted:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        if _rank() == 0:
            print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``| head``): nothing more to say to it
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:  # not the user's recipe: disk full, permissions, a vanished file system
        if os.environ.get("CORECOMPRESS_DEBUG_TRACEBACK"):
            import traceback
            traceback.print_exc()
        _print_error(_os_error_line(exc), exc)
        return EXIT_FAILURE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured in tests)
        pass


def _launched_distributed() -> bool:
    """Started by torchrun with several processes (read from the environment: no torch import)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return True  # malformed: ``run`` reports it


def _rank() -> int:
    """This process's rank in a joined process group; 0 otherwise (torch is not imported for it)."""
    if "corecompress.engine.distributed" not in sys.modules:
        return 0
    from corecompress.engine import distributed

    return distributed.rank()


def _print_error(line: str, exc: BaseException) -> None:
    """``error: LINE`` — on ranks other than 0 prefixed with the rank, and not at all for a failure
    of rank 0's that every rank re-raised (rank 0 prints it)."""
    rank = _rank()
    line = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)  # always one line (\x1e, \u2028 ...)
    if rank == 0:
        print(f"error: {line}", file=sys.stderr)
    elif not getattr(exc, "from_main_rank", False):
        print(f"error: [rank {rank}] {line}", file=sys.stderr)


def _os_error_line(exc: OSError) -> str:
    from corecompress.engine.checkpoint import CheckpointWriteError

    if isinstance(exc, CheckpointWriteError):
        return str(exc)
    where = f"{exc.filename}: " if exc.filename else ""
    text = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{where}{text}"
