"""A restricted unpickler for pickle files that come from the internet (insightface ``.bin`` pairs).

A plain ``pickle.load`` runs whatever callable the file names (``os.system``, ``builtins.eval`` ...).
Every such callable reaches the unpickler through ``find_class`` (opcodes GLOBAL, STACK_GLOBAL, INST,
OBJ and EXT all call it), so refusing there refuses the payload before anything runs. Lists, tuples,
dicts, bytes, str, bool, int, float and None are built by opcodes that need no ``find_class``.
See the Python docs, "Restricting Globals" (pickle module).
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ForbiddenPickleError", "NUMPY_BYTE_ARRAYS", "restricted_loads"]


class ForbiddenPickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global that is not on the allow-list; nothing was executed."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles encode bytes as ``encode(str, 'latin1')``.

    Only the latin-1 codec is allowed, so a pickle cannot reach other (possibly third-party) codecs.
    """
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise ForbiddenPickleError(f"_codecs.encode is only allowed with the latin-1 codec, not {encoding!r}")
    return text.encode("latin-1", errors)


_SUBSTITUTES: dict[tuple[str, str], Callable[..., Any]] = {("_codecs", "encode"): _latin1_encode}

#: What numpy needs to rebuild plain arrays and scalars (e.g. uint8 arrays of JPEG bytes, bool flags).
#: Object arrays are still built only from allowed objects, since their items go through this unpickler.
NUMPY_BYTE_ARRAYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # latin-1 only, see _latin1_encode
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, allowed: frozenset[tuple[str, str]], encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise ForbiddenPickleError(f"refused global {module}.{name} (not on the allow-list)")
        if (module, name) in _SUBSTITUTES:
            return _SUBSTITUTES[(module, name)]
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError("refused persistent id (not supported)")


def restricted_loads(
    data: bytes,
    allowed: Iterable[tuple[str, str]] = frozenset(),
    *,
    encoding: str = "bytes",
) -> Any:
    """Unpickle ``data`` allowing only builtin containers/scalars and the globals in ``allowed``.

    ``allowed`` holds exact ``(module, name)`` pairs (e.g. :data:`NUMPY_BYTE_ARRAYS`); anything else
    raises :class:`ForbiddenPickleError` before it is called. ``encoding='bytes'`` reads Python 2
    ``str`` objects (how many insightface ``.bin`` files store JPEGs) as ``bytes``.
    Other malformed input raises the usual ``pickle.UnpicklingError`` / ``EOFError``.
    """
    unpickler = _RestrictedUnpickler(io.BytesIO(data), frozenset(allowed), encoding)
    return unpickler.load()
