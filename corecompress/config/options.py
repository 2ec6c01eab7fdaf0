"""Typed option classes: a component's dataclass *is* its recipe schema.

``parse_options(cls, data, path)`` turns a plain mapping (from YAML) into an instance of ``cls``,
checking every key and type and raising :class:`RecipeError` with the key path and, for unknown
keys, the closest known key. Nothing is evaluated: values are data only.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from typing import Any, Literal, Union

from corecompress.errors import RecipeError

_NONE_TYPE = type(None)
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 2, 60, 60
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 4
MAX_SHOWN = 80


def short_repr(value: Any) -> str:
    """``repr`` bounded in size: an error line must stay one short line even for a value built from
    YAML aliases (a "billion laughs" list) or a megabyte string."""
    return _SHORT_REPR.repr(value)


def shown(text: Any) -> str:
    """``text`` as it may appear inside a one-line message: itself when short and printable, else a
    shortened ``repr`` (a key or name with a newline must not split the error line)."""
    text = str(text) if isinstance(text, (str, int, float, bool)) or text is None else short_repr(text)
    if text.isprintable() and len(text) <= MAX_SHOWN:
        return text
    return short_repr(text)


def printable(text: str) -> str:
    """``text`` itself, or its ``repr`` when it holds a line break or another control character
    (file names in one-line messages; never shortened)."""
    return text if text.isprintable() else repr(text)


def quoted(text: Any) -> str:
    """``'text'`` for a plain name, or its shortened ``repr`` (already quoted) for anything odd."""
    plain = shown(text)
    return f"'{plain}'" if plain == text else plain


def close_match(word: Any, candidates: typing.Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest candidate, or "" when none is close."""
    if not isinstance(word, (str, int, float)) or len(str(word)) > 4 * MAX_SHOWN:
        return ""  # only names can be misspelt; str() of a nested value can be huge
    found = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean '{found[0]}'?" if found else ""


def join_path(path: str, key: Any) -> str:
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{shown(key)}" if path else shown(key)


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if origin is dict:
        args = typing.get_args(tp)
        return f"mapping[{_type_name(args[0])}, {_type_name(args[1])}]" if args else "mapping"
    if tp is _NONE_TYPE:
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return the converted value."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise RecipeError(path, f"must be one of {', '.join(repr(a) for a in allowed)}, got {short_repr(value)}"
                              + close_match(value, [str(a) for a in allowed]))
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and _NONE_TYPE in args:
            return None
        errors = []
        for arg in args:
            if arg is _NONE_TYPE:
                continue
            try:
                return _coerce(value, arg, path)
            except RecipeError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise RecipeError(path, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(path, f"expected a list, got {_describe(value)}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, join_path(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise RecipeError(path, f"expected a mapping, got {_describe(value)}")
        args = typing.get_args(tp)
        if not args:
            return dict(value)
        return {_coerce(k, args[0], path): _coerce(v, args[1], join_path(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return parse_options(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(path, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(path, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any number written that way.
        number: Any = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise RecipeError(path, f"expected a number, got {_describe(value)}")
        try:
            number = float(number)
        except OverflowError:  # an integer literal with hundreds of digits
            raise RecipeError(path, f"number too large, got {_describe(value)}") from None
        if math.isnan(number):
            raise RecipeError(path, "expected a number, got nan")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(path, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported option type {tp!r} at {path}")  # a plugin bug, not a user error


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{short_repr(value)} ({type(value).__name__})"


def option_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """The dataclass fields of ``cls`` with their resolved type annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def parse_options(cls: type, data: Any, path: str = "", ignore: typing.Container[str] = ()) -> Any:
    """Build ``cls`` (a dataclass) from a mapping, validating keys and types.

    ``ignore`` names keys that belong to the caller (e.g. ``name`` of a component) and are skipped.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(path, f"expected a mapping, got {_describe(data)}")
    fields = option_fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ignore:
            continue
        if key not in fields:
            raise RecipeError(join_path(path, str(key)), "unknown option" + close_match(key, fields))
        field, tp = fields[key]
        kwargs[key] = _coerce(value, tp, join_path(path, key))
    for name, (field, _tp) in fields.items():
        if name not in kwargs and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise RecipeError(join_path(path, name), "required option is missing")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as exc:  # __post_init__ checks say "<field>: <problem>"
        head, sep, rest = (str(exc).splitlines() or [type(exc).__name__])[0].partition(": ")
        if sep and head in fields:
            raise RecipeError(join_path(path, head), rest) from None
        raise RecipeError(path, head + sep + rest) from None
    return obj


def options_to_dict(obj: Any) -> Any:
    """Plain-data (YAML/JSON-ready) form of an options instance, defaults included."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: options_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [options_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: options_to_dict(v) for k, v in obj.items()}
    return obj


def describe_options(cls: type | None) -> list[dict[str, str]]:
    """Rows (name, type, default, description) for ``corecompress options``.

    The description is the field's ``metadata["help"]``.
    """
    if cls is None:
        return []
    rows = []
    for name, (field, tp) in option_fields(cls).items():
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(options_to_dict(field.default_factory()))
        else:
            default = "(required)"
        rows.append({"name": name, "type": _type_name(tp), "default": default,
                     "help": str(field.metadata.get("help", ""))})
    return rows


def check_range(name: str, value: float, low: float, high: float, *, high_open: bool = False) -> None:
    """Raise ValueError (reported with the key path) when ``value`` is outside [low, high] / [low, high)
    (NaN is outside every range)."""
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name}: must be in [{low}, {high}{bracket}, got {value}")
