"""Results of the GPU check: rows per section, one aligned plain-text table, a JSON file rewritten
after every section (so a run that dies half-way still leaves what it measured)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OOM = "OOM"


@dataclass
class Row:
    """One measured figure. ``value`` is a number, or "OOM" where the device ran out of memory."""

    item: str
    metric: str
    value: float | str
    unit: str = ""
    ratio: float | None = None  # vs the section's reference (dense, ArcFace, the hand loop)
    mfu_pct: float | None = None
    limit: str | None = None  # e.g. "<= 1e-05"
    passed: bool | None = None

    def detail(self) -> str:
        parts = []
        if self.ratio is not None:
            parts.append(f"x{self.ratio:.3f}")
        if self.mfu_pct is not None:
            parts.append(f"MFU {self.mfu_pct:.1f} %")
        if self.limit is not None:
            parts.append(f"limit {self.limit}: {'pass' if self.passed else 'FAIL'}")
        return ", ".join(parts)


@dataclass
class Section:
    key: str
    title: str
    status: str = "not run"  # "ok", "OOM" or "error: ..."
    seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
        return f"{value:.3e}"
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.4g}"


def table(sections: list[Section]) -> str:
    """One aligned table of every row, then each section's status, seconds and notes."""
    header = ("section", "item", "metric", "value", "unit", "detail")
    lines = [header] + [(s.key, r.item, r.metric, _number(r.value), r.unit, r.detail())
                        for s in sections for r in s.rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    for s in sections:
        out.append(f"({s.key}) {s.title}: {s.status}, {s.seconds:.1f} s")
        out.extend(f"    note: {note}" for note in s.notes)
    return "\n".join(out)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: Path, machine: dict[str, Any], settings: dict[str, Any], sections: list[Section]) -> None:
    """Write everything so far to ``path`` (a temporary file renamed over it: never half-written)."""
    data = {"machine": machine, "settings": settings,
            "sections": {s.key: {**asdict(s), "rows": [{k: _finite_or_none(v) for k, v in asdict(r).items()}
                                                       for r in s.rows]} for s in sections}}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
