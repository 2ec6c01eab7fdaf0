"""When a timing is not to be trusted: the spread of its repeats (no torch import, for reports)."""
from __future__ import annotations

import statistics
from typing import Sequence

#: A timing whose repeats vary more than this (coefficient of variation, a fraction) is marked noisy.
NOISY_CV = 0.3
#: The suffix of the metric holding another metric's CV: ``images_per_s_b1_cv`` for ``images_per_s_b1``.
CV_SUFFIX = "_cv"


def spread(times: Sequence[float]) -> float:
    """The coefficient of variation of ``times``: sample standard deviation / mean (0 for one value)."""
    mean = statistics.fmean(times)
    return statistics.stdev(times) / mean if len(times) > 1 and mean > 0 else 0.0


def noisy_label(cv: float | None, threshold: float = NOISY_CV) -> str:
    """``"noisy: CV 85 %"`` when ``cv`` exceeds ``threshold``, else ``""``."""
    return f"noisy: CV {100 * cv:.0f} %" if cv is not None and cv > threshold else ""
