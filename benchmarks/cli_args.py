"""Argument types shared by the benchmark scripts: a bad value is an argparse error, not a traceback.

Every function here is (or returns) an ``argparse`` ``type=`` callable that converts the text of one
argument or raises ``argparse.ArgumentTypeError`` with a message saying what is allowed, so argparse
prints one ``usage:`` line and one ``error: argument --x: ...`` line and exits with status 2.

The scripts run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path`` and they
import it as ``from cli_args import ...``. Nothing heavy is imported at module level (``repeats``
imports ``corecompress.tools.measure`` only when it is called), so a script that avoids torch still can.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["count", "repeats", "number", "fraction", "float_list", "name_list", "letters", "directory",
           "data_folder", "add_timing_options"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def count(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    """An integer ``minimum <= n`` (and ``<= maximum`` when given)."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    parse.__name__ = f"count({minimum})"
    return parse


def repeats(text: str) -> int:
    """Timed repeats for ``corecompress.tools.measure``: an integer ``>= measure.MIN_REPEATS``."""
    from corecompress.tools.measure import MIN_REPEATS

    value = _int(text)
    if value < MIN_REPEATS:
        raise argparse.ArgumentTypeError(
            f"must be >= {MIN_REPEATS} (speed is the median of at least {MIN_REPEATS} timed runs), got {value}")
    return value


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    left = "-inf" if low is None else f"{low:g}"
    right = "inf" if high is None else f"{high:g}"
    return f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"


def _inside(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """A finite float in the interval from ``low`` to ``high`` (closed ends unless ``*_open``)."""
    interval = _interval(low, high, low_open, high_open)

    def parse(text: str) -> float:
        value = _float(text)
        if not _inside(value, low, high, low_open, high_open):
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {value:g}")
        return value

    parse.__name__ = f"number{interval}"
    return parse


fraction = number(0.0, 1.0, low_open=True)
fraction.__doc__ = "A float in (0, 1]."
fraction.__name__ = "fraction"


def float_list(low: float | None = None, high: float | None = None, *, low_open: bool = False,
               high_open: bool = False) -> Callable[[str], list[float]]:
    """A non-empty comma-separated list of floats, each in the interval from ``low`` to ``high``."""
    interval = _interval(low, high, low_open, high_open)

    def parse(text: str) -> list[float]:
        items = [item.strip() for item in text.split(",")]
        if not any(items) or not all(items):
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers in {interval}, got {text!r}")
        values = [_float(item) for item in items]
        outside = [f"{v:g}" for v in values if not _inside(v, low, high, low_open, high_open)]
        if outside:
            raise argparse.ArgumentTypeError(f"every value must be in {interval}; not: {', '.join(outside)}")
        return values

    parse.__name__ = f"float_list{interval}"
    return parse


def name_list(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """A non-empty comma-separated list of names, each one of ``allowed``."""
    choices = sorted(set(allowed))

    def parse(text: str) -> list[str]:
        names = [item.strip() for item in text.split(",")]
        if not all(names):
            raise argparse.ArgumentTypeError(f"expected comma-separated names from {', '.join(choices)}; got {text!r}")
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)} (choose from {', '.join(choices)})")
        return names

    parse.__name__ = "name_list"
    return parse


def letters(allowed: str) -> Callable[[str], list[str]]:
    """Letters from ``allowed`` (e.g. ``"abc"``), at least one, returned once each in the order given."""

    def parse(text: str) -> list[str]:
        unknown = sorted({c for c in text if c not in allowed})
        if not text or unknown:
            what = f"not {''.join(unknown)!r}" if unknown else "got none"
            raise argparse.ArgumentTypeError(f"expected letters from {allowed!r}, {what}")
        return list(dict.fromkeys(text))

    parse.__name__ = "letters"
    return parse


def directory(text: str) -> Path:
    """An existing directory."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is {'not a directory' if path.exists() else 'missing'}")
    return path


def data_folder(*required: str) -> Callable[[str], Path]:
    """An existing directory holding every entry of ``required`` (paths relative to it)."""

    def parse(text: str) -> Path:
        path = directory(text)
        missing = [entry for entry in required if not (path / entry).exists()]
        if missing:
            raise argparse.ArgumentTypeError(f"{path} lacks {', '.join(missing)}")
        return path

    parse.__name__ = "data_folder"
    return parse


def add_timing_options(parser: argparse.ArgumentParser, threads: int = 1, batch: int = 32) -> None:
    """``--threads``, ``--batch`` and ``--repeats`` of an interleaved throughput measurement."""
    parser.add_argument("--threads", type=count(1), default=threads)
    parser.add_argument("--batch", type=count(1), default=batch)
    parser.add_argument("--repeats", type=repeats, default=10)
