"""The component registry: every plugin-provided component, by kind and name.

Plugins fill it through the ``register_*`` hooks (see :mod:`corecompress.plugin.hookspecs`); recipes
pick components by name. A name registered by two plugins is a conflict: nothing is silently
overwritten (a torchdistill pitfall), every command still starts, and the name is unusable — asking for it
is one line naming both plugins and how to block either (:meth:`Registry.get`).
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
    needs: frozenset[str] | Callable[[Any], Any] = frozenset()  # names, or a function of the parsed options
    produces: frozenset[str] = frozenset()
    declines_groups: bool = False  # an importance that may leave groups unscored (they stay unpruned)

    def needs_for(self, options: Any) -> frozenset[str]:
        """What this component needs with these parsed options (the one declaration, made at registration)."""
        if not callable(self.needs):
            return self.needs
        where = f"plugin '{self.plugin}': {self.kind} '{self.name}'"
        needs = _names(self.needs(options), where, "needs")
        check_needs(needs, where)
        return needs

    def default_needs(self) -> frozenset[str]:
        """What it needs with its default options (shown by ``corecompress options``)."""
        if not callable(self.needs):
            return self.needs
        try:
            return self.needs_for(self.parse({}, self.kind))
        except RecipeError:  # options without defaults
            return frozenset()

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
    #: names registered by more than one plugin: kind -> name -> every registration (none of them usable)
    conflicts: dict[str, dict[str, list[Component]]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, component: Component) -> None:
        """Register ``component``; a name another plugin registered becomes a conflict (see :meth:`get`)."""
        if component.kind not in self.components:
            raise PluginError(f"plugin '{component.plugin}' registers unknown kind '{component.kind}'")
        kind, name = component.kind, component.name
        if name in self.conflicts[kind]:
            self.conflicts[kind][name].append(component)
        elif name in self.components[kind]:
            self.conflicts[kind][name] = [self.components[kind].pop(name), component]
        else:
            self.components[kind][name] = component

    def remove_plugin(self, plugin: str) -> None:
        """Forget every registration of ``plugin`` (skipped after it failed); a conflict it was part of is
        resolved when one registration is left."""
        for kind in KINDS:
            for name in [n for n, c in self.components[kind].items() if c.plugin == plugin]:
                del self.components[kind][name]
            for name, rivals in list(self.conflicts[kind].items()):
                left = [c for c in rivals if c.plugin != plugin]
                if len(left) > 1:
                    self.conflicts[kind][name] = left
                    continue
                del self.conflicts[kind][name]
                if left:
                    self.components[kind][name] = left[0]

    def conflict_message(self, kind: str, name: str) -> str:
        """One line: who registers ``name`` and exactly how to block either of them."""
        rivals = self.conflicts[kind][name]
        who = " and ".join(f"plugin '{c.plugin}' ({c.distribution or '?'})" for c in rivals)
        last, others = rivals[-1].plugin, "".join(f" (or ={c.plugin})" for c in rivals[:-1])
        return (f"{kind} '{name}' is registered by {who}, so it cannot be used; block one of them: "
                f"CORECOMPRESS_BLOCK_PLUGINS={last}{others} in the environment, or "
                f"'plugins: {{block: [{last}]}}' in the recipe")

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: Any, path: str = "") -> Component:
        """The component ``name`` of ``kind``; a RecipeError listing the known names otherwise, a
        PluginError when two plugins register the name."""
        if not isinstance(name, str):
            raise RecipeError(path, f"expected the name of a {kind} (a string), got {short_repr(name)}")
        if name in self.conflicts.get(kind, {}):
            raise PluginError(f"{path}: {self.conflict_message(kind, name)}" if path else
                              self.conflict_message(kind, name))
        try:
            return self.components[kind][name]
        except KeyError:
            known = self.names(kind)
            raise RecipeError(path, f"unknown {kind} {quoted(name)}" + close_match(name, known)
                              + f" (registered: {', '.join(known) or 'none'})") from None

    def producers_of(self, artifact: str) -> list[str]:
        """The components that declare they produce ``artifact``, as "kind 'name'"."""
        return [f"{c.kind} '{c.name}'" for kind in KINDS for c in self.components[kind].values()
                if artifact in c.produces]

    def by_plugin(self) -> dict[str, list[Component]]:
        """Every registration of each plugin, conflicting ones included (``corecompress plugins``)."""
        out: dict[str, list[Component]] = {}
        for kind in KINDS:
            everything = list(self.components[kind].values()) + [c for cs in self.conflicts[kind].values() for c in cs]
            for comp in sorted(everything, key=lambda c: c.name):
                out.setdefault(comp.plugin, []).append(comp)
        return out


class DeclarationError(PluginError):
    """A component registered with a malformed declaration (name, factory, options, needs, produces):
    that plugin is skipped with a warning, the others load."""


def make_register(registry: Registry, kind: str, plugin: str, distribution: str) -> Callable[..., None]:
    """The ``register`` callback handed to a plugin's ``register_<kind>s`` hook (see
    :class:`corecompress.plugin.protocols.Register`)."""

    def register(name: str, factory: Callable[..., Any], options: type | None = None, *,
                 description: str = "", needs: Any = (), produces: Any = (), declines_groups: bool = False) -> None:
        where = f"plugin '{plugin}': {kind} '{name}'"
        if not isinstance(name, str) or not name:
            raise DeclarationError(f"plugin '{plugin}': a {kind} needs a non-empty string name, got {name!r}")
        if not callable(factory):
            raise DeclarationError(f"{where}: the factory {factory!r} is not callable")
        if options is not None and not dataclasses.is_dataclass(options):
            raise DeclarationError(f"{where}: options must be a dataclass")
        if not isinstance(declines_groups, bool) or (declines_groups and kind != "importance"):
            raise DeclarationError(f"{where}: declines_groups=True is for importances (a bool), got {declines_groups!r}")
        if not callable(needs):
            needs = _names(needs, where, "needs")
            check_needs(needs, where)
        summary = description or next(iter((factory.__doc__ or "").strip().splitlines()), "")
        registry.add(Component(kind=kind, name=name, factory=factory, options=options, plugin=plugin,
                               distribution=distribution, description=summary, needs=needs,
                               produces=_names(produces, where, "produces"), declines_groups=declines_groups))

    return register


def _names(value: Any, where: str, what: str) -> frozenset[str]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise DeclarationError(f"{where}: {what} must be a collection of names, e.g. {what}={{'teacher'}}, got {value!r}")
    return frozenset(value)


def check_needs(needs: frozenset[str], where: str) -> None:
    """A need is a resource (:data:`~corecompress.plugin.protocols.RESOURCES`) or an artifact name
    (``artifact:NAME``); anything else is a plugin error naming the known ones."""
    from corecompress.plugin.protocols import RESOURCES

    for need in sorted(needs):
        if need not in RESOURCES and not (need.startswith(ARTIFACT_PREFIX) and len(need) > len(ARTIFACT_PREFIX)):
            raise DeclarationError(f"{where}: needs unknown {need!r}; a component can need "
                              f"{', '.join(repr(r) for r in RESOURCES)} or 'artifact:NAME' (what another produces)")


#: ``needs`` entries naming an artifact another component produces: ``"artifact:header"``.
ARTIFACT_PREFIX = "artifact:"


def needed_artifacts(needs: frozenset[str]) -> list[str]:
    """The artifact names among ``needs`` (without the prefix)."""
    return sorted(n[len(ARTIFACT_PREFIX):] for n in needs if n.startswith(ARTIFACT_PREFIX))
