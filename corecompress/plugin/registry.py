"""The component registry: every plugin-provided component, by kind and name.

Plugins fill it through the ``register_*`` hooks (see :mod:`corecompress.plugin.hookspecs`); recipes
pick components by name. A name registered twice is an error naming both plugins — nothing is
silently overwritten (a torchdistill pitfall).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from corecompress.errors import PluginError, RecipeError
from corecompress.config.options import close_match, parse_options, quoted, short_repr, shown

#: The component kinds, each filled by one registration hook ``register_<kind>s``.
KINDS: tuple[str, ...] = (
    "model", "dataset", "importance", "applier", "schedule", "loss", "target", "evaluator", "reporter",
)


def hook_name(kind: str) -> str:
    """The registration hook that fills ``kind`` (``register_importances`` for "importance")."""
    return f"register_{kind}es" if kind.endswith("s") else f"register_{kind}s"


@dataclass
class Component:
    """One registered component: a factory called with the parsed options instance."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type | None
    plugin: str
    distribution: str = ""
    description: str = ""
    needs: frozenset[str] = frozenset()

    def parse(self, data: dict | None, path: str) -> Any:
        """Validate recipe data for this component; ``name`` is the selector, not an option."""
        if self.options is None:
            extra = [k for k in (data or {}) if k != "name"]
            if extra:
                raise RecipeError(f"{path}.{shown(extra[0])}", f"unknown option; '{self.name}' takes no options")
            return None
        return parse_options(self.options, data, path, ignore=("name",))

    def create(self, options: Any) -> Any:
        return self.factory(options) if self.options is not None else self.factory()


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, component: Component) -> None:
        if component.kind not in self.components:
            raise PluginError(f"plugin '{component.plugin}' registers unknown kind '{component.kind}'")
        existing = self.components[component.kind].get(component.name)
        if existing is not None:
            raise PluginError(
                f"{component.kind} '{component.name}' is registered twice: by plugin '{existing.plugin}'"
                f" ({existing.distribution or '?'}) and by plugin '{component.plugin}'"
                f" ({component.distribution or '?'}); block one of them")
        self.components[component.kind][component.name] = component

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: Any, path: str = "") -> Component:
        """The component ``name`` of ``kind``; a RecipeError listing the known names otherwise."""
        if not isinstance(name, str):
            raise RecipeError(path, f"expected the name of a {kind} (a string), got {short_repr(name)}")
        try:
            return self.components[kind][name]
        except KeyError:
            known = self.names(kind)
            raise RecipeError(path, f"unknown {kind} {quoted(name)}" + close_match(name, known)
                              + f" (registered: {', '.join(known) or 'none'})") from None

    def by_plugin(self) -> dict[str, list[Component]]:
        out: dict[str, list[Component]] = {}
        for kind in KINDS:
            for comp in self.components[kind].values():
                out.setdefault(comp.plugin, []).append(comp)
        return out


def make_register(registry: Registry, kind: str, plugin: str, distribution: str) -> Callable[..., None]:
    """The ``register`` callback handed to a plugin's ``register_<kind>s`` hook."""

    def register(name: str, factory: Callable[..., Any], options: type | None = None, *,
                 description: str = "", needs: tuple[str, ...] | frozenset[str] = ()) -> None:
        if options is not None and not dataclasses.is_dataclass(options):
            raise PluginError(f"plugin '{plugin}': options of {kind} '{name}' must be a dataclass")
        summary = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
        registry.add(Component(kind=kind, name=name, factory=factory, options=options, plugin=plugin,
                               distribution=distribution, description=summary, needs=frozenset(needs)))

    return register
