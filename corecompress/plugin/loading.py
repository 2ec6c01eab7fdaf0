"""Finding and loading plugins, fault-isolated.

Every plugin (built-in or third-party) is an entry point in the ``corecompress`` group. A plugin
that fails to import, fails pluggy's hook validation or fails while registering is reported in one
warning naming its distribution and is skipped — unless the recipe ``require``s it or strict mode
is on, when it is an error. Environment variables (pytest/llm style):

- ``CORECOMPRESS_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points except those named in
  ``CORECOMPRESS_PLUGINS`` (comma-separated) or required by the recipe;
- ``CORECOMPRESS_BLOCK_PLUGINS=a,b``: never load these;
- ``CORECOMPRESS_STRICT_PLUGINS=1``: any broken plugin is an error;
- ``CORECOMPRESS_SLOW_IMPORT_S`` (default 3): warn when a plugin takes longer than this to import;
- ``CORECOMPRESS_DEBUG_TRACEBACK=1`` (what the CLI's ``--debug`` sets): print the traceback of a plugin
  that failed to import.

Each warning is given once per process, however often the plugins are loaded. A plugin that fails to
import is named with the file and line where it failed. A component name two plugins register is a
conflict (a warning; an error in strict mode): the tool starts, the name is unusable, and asking for it
says how to block either plugin (:meth:`corecompress.plugin.registry.Registry.conflict_message`).
"""
from __future__ import annotations

import importlib.metadata as md
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from corecompress.plugin import hookspecs
from corecompress.errors import PluginError
from corecompress.plugin.registry import KINDS, DeclarationError, Registry, hook_name, make_register

ENTRY_POINT_GROUP = "corecompress"

#: Built-in plugins renamed in 0.2 (names one letter apart picked the wrong plugin): old -> new.
RENAMED_PLUGINS: dict[str, str] = {
    "core": "builtin", "face": "facekit", "faces": "faces_pruner", "baselines": "prune_baselines",
    "kd_baselines": "distill_baselines",
}


def refuse_renamed(names: Iterable[str], where: str) -> None:
    """A built-in plugin's old name in ``require``, a block list or ``CORECOMPRESS_PLUGINS``: one line naming the new one."""
    for name in names:
        if name in RENAMED_PLUGINS:
            raise PluginError(f"{where}: plugin '{name}' is now called '{RENAMED_PLUGINS[name]}'; use that name")


class PluginWarning(UserWarning):
    """A plugin was skipped or is slow; the tool goes on without it."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    module: str
    status: str = "loaded"          # loaded | failed | blocked
    error: str = ""
    import_seconds: float = 0.0


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    registry: Registry
    plugins: dict[str, PluginInfo] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def versions(self) -> dict[str, str]:
        return {p.name: f"{p.distribution} {p.version}" for p in self.plugins.values() if p.status == "loaded"}


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, "").split(",") if v.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


_WARNED: set[str] = set()  # the warnings this process gave already: each is given once


def warn_once(text: str, stacklevel: int = 3) -> None:
    """A :class:`PluginWarning`, unless this process gave the same one before."""
    if text in _WARNED:
        return
    _WARNED.add(text)
    warnings.warn(text, PluginWarning, stacklevel=stacklevel)


def debug_tracebacks() -> bool:
    """``CORECOMPRESS_DEBUG_TRACEBACK`` (set by ``corecompress --debug``): show tracebacks of failures."""
    return _env_flag("CORECOMPRESS_DEBUG_TRACEBACK")


def failure_place(exc: BaseException, module: str) -> str:
    """Where an import failed, as "FILE, line N": the deepest frame of the plugin's own package (else
    the deepest frame with a file; a SyntaxError's own place)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}, line {exc.lineno}"
    top = module.split(":")[0].split(".")[0]
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    own = [f for f in frames if _frame_in(f.filename, top)]
    chosen = (own or frames)[-1:] if frames else []
    return f"{chosen[0].filename}, line {chosen[0].lineno}" if chosen else "unknown place"


def _frame_in(filename: str, package: str) -> bool:
    parts = filename.replace("\\", "/").split("/")
    return package in parts[:-1] or parts[-1] == f"{package}.py"


def _import_failure(info: PluginInfo, exc: BaseException) -> tuple[str, str, str]:
    """(status detail, error line, what the warning adds) of a plugin that failed to import; with
    ``--debug`` its traceback is printed, once per process."""
    place = failure_place(exc, info.module)
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if debug_tracebacks() and f"traceback {place}" not in _WARNED:
        _WARNED.add(f"traceback {place}")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    hint = "" if debug_tracebacks() else " (--debug or CORECOMPRESS_DEBUG_TRACEBACK=1 shows the traceback)"
    return (f"import failed ({reason}; {place})",
            f"plugin '{info.name}' failed to import: {reason} ({place}; distribution '{info.distribution}')",
            f"; it is skipped{hint}")


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(*, require: Iterable[str] = (), block: Iterable[str] = (), strict: bool | None = None,
                 autoload: bool | None = None, extra: Iterable[tuple[str, Any]] = ()) -> LoadedPlugins:
    """Load entry-point plugins (and ``extra`` (name, module) pairs) and build the registry.

    ``require`` names plugins (entry-point names or distribution names) that must load.
    """
    required = set(require)
    refuse_renamed(required, "require")
    refuse_renamed(block, "plugins.block")
    refuse_renamed(_env_list("CORECOMPRESS_BLOCK_PLUGINS"), "CORECOMPRESS_BLOCK_PLUGINS")
    refuse_renamed(_env_list("CORECOMPRESS_PLUGINS"), "CORECOMPRESS_PLUGINS")
    blocked = set(block) | set(_env_list("CORECOMPRESS_BLOCK_PLUGINS"))
    strict = _env_flag("CORECOMPRESS_STRICT_PLUGINS") if strict is None else strict
    if autoload is None:
        autoload = not _env_flag("CORECOMPRESS_DISABLE_PLUGIN_AUTOLOAD")
    allowed = set(_env_list("CORECOMPRESS_PLUGINS")) | required
    slow_s = float(os.environ.get("CORECOMPRESS_SLOW_IMPORT_S", "3"))

    import torch  # noqa: F401 - the shared base of every plugin; not counted against a plugin's import time

    pm = new_manager()
    loaded = LoadedPlugins(manager=pm, registry=Registry())

    def fail(info: PluginInfo, message: str, text: str = "", skipped: str = "") -> None:
        """``text`` is the error; the warning adds ``skipped``."""
        info.status, info.error = "failed", message
        text = text or f"plugin '{info.name}' from distribution '{info.distribution}' was skipped: {message}"
        if strict or info.name in required or info.distribution in required:
            raise PluginError(text)
        warn_once(text + skipped)

    candidates: list[tuple[PluginInfo, Any]] = []
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        info = PluginInfo(ep.name, dist, version, ep.value)
        if ep.name in blocked or dist in blocked:
            if ep.name in required or dist in required:
                raise PluginError(f"plugin '{ep.name}' is required by the recipe but blocked")
            info.status = "blocked"
            loaded.plugins[ep.name] = info
            continue
        if not autoload and ep.name not in allowed and dist not in allowed:
            continue
        start = time.perf_counter()
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the tool down
            loaded.plugins[ep.name] = info
            fail(info, *_import_failure(info, exc))
            continue
        info.import_seconds = time.perf_counter() - start
        if info.import_seconds > slow_s:
            warn_once(f"plugin '{ep.name}' from distribution '{dist}' took {info.import_seconds:.1f} s to import;"
                      " heavy imports belong inside functions")
        loaded.plugins[ep.name] = info
        candidates.append((info, module))
    for name, module in extra:
        info = PluginInfo(name, "(in-process)", "", getattr(module, "__name__", str(module)))
        loaded.plugins[name] = info
        candidates.append((info, module))

    for info, module in candidates:
        try:
            pm.register(module, name=info.name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            fail(info, f"invalid hooks ({exc})")
    while True:  # a misspelt hook is an error of that plugin only
        try:
            pm.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            bad = pm.get_name(exc.plugin)
            info = loaded.plugins.get(bad) if bad else None
            if info is None:
                raise PluginError(f"a plugin implements an unknown hook: {exc}") from None
            pm.unregister(name=bad)
            fail(info, f"unknown hook ({exc})")

    _run_registration(loaded, required, strict)
    _report_conflicts(loaded.registry, strict)
    missing = [r for r in required if not any(
        (p.name == r or p.distribution == r) and p.status == "loaded" for p in loaded.plugins.values())]
    if missing:
        raise PluginError(f"required plugin '{missing[0]}' is not installed"
                          f" (installed: {', '.join(sorted(loaded.plugins)) or 'none'})")
    return loaded


def _run_registration(loaded: LoadedPlugins, required: set[str], strict: bool) -> None:
    """Call each plugin's register_* hooks one plugin at a time, so components know their plugin."""
    pm = loaded.manager
    for kind in KINDS:
        caller = getattr(pm.hook, hook_name(kind))
        for impl in caller.get_hookimpls():
            info = loaded.plugins[impl.plugin_name]
            if info.status != "loaded":
                continue
            register = make_register(loaded.registry, kind, info.name, info.distribution)
            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001 - a broken plugin is skipped, not fatal
                if isinstance(exc, PluginError) and not isinstance(exc, DeclarationError):
                    raise  # e.g. an unknown kind
                info.status = "failed"
                info.error = str(exc) if isinstance(exc, DeclarationError) else \
                    f"{hook_name(kind)} raised {type(exc).__name__}: {exc}"
                loaded.registry.remove_plugin(info.name)
                pm.unregister(name=info.name)
                text = f"plugin '{info.name}' from distribution '{info.distribution}' was skipped: {info.error}"
                if strict or info.name in required or info.distribution in required:
                    raise PluginError(text) from None
                warn_once(text)


def _report_conflicts(registry: Registry, strict: bool) -> None:
    """One warning per name two plugins register (an error in strict mode)."""
    for kind in KINDS:
        for name in sorted(registry.conflicts[kind]):
            if strict:
                raise PluginError(registry.conflict_message(kind, name))
            warn_once(registry.conflict_message(kind, name))
