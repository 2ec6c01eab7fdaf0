"""Loading a recipe together with the plugins it asks for (used by every command and by resume)."""
from __future__ import annotations

from typing import Any


def load_for_recipe(path: str, strict: bool | None = None) -> tuple[dict, Any, Any]:
    """Read a recipe, load the plugins it asks for, validate it: (raw, plugins, recipe)."""
    from corecompress.config.options import parse_options
    from corecompress.plugin.loading import load_plugins
    from corecompress.config.recipe import PluginsSection, read_recipe, validate_recipe

    raw = read_recipe(path)
    section = parse_options(PluginsSection, raw.get("plugins"), "plugins")
    require = raw.get("require") or []
    if not isinstance(require, list) or not all(isinstance(r, str) for r in require):
        from corecompress.errors import RecipeError
        raise RecipeError("require", "expected a list of plugin names")
    plugins = load_plugins(require=require, block=section.block,
                           strict=True if (strict or section.strict) else None, autoload=section.autoload)
    return raw, plugins, validate_recipe(raw, plugins.registry)
