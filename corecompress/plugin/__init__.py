"""The plugin layer: hook specifications, component protocols, the registry, and loading plugins."""
from corecompress.plugin.hookspecs import hookimpl, hookspec

__all__ = ["hookimpl", "hookspec"]
