"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (recipe, file, arguments): one clear line, no traceback."""


class RecipeError(UserError):
    """A recipe that does not validate; the message starts with the key path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}" if path else message)


class PluginError(UserError):
    """A plugin that is required but broken, blocked or missing, or two plugins that clash."""


class DataFormatError(UserError, ValueError):
    """A data or weights file exists but is malformed, truncated, unsupported or unsafe (one line naming it)."""


class ComponentError(PluginError):
    """A plugin's component broke its contract when called (scores of the wrong shape, a list for a tensor, a
    loss that is not a scalar): one line naming the plugin, the component and expected vs actual."""


class PlanVerificationError(UserError):
    """A pruning plan whose masked and physically pruned models disagree (one line naming the group)."""
