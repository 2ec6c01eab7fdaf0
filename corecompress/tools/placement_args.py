"""``--device`` and ``--precision``, shared by the commands that compute (``run``, ``compare``, ``export``)."""
from __future__ import annotations

import argparse

DEVICE_HELP = ("auto, cpu, cuda or cuda:N: overrides the recipe's 'device:' (with --resume: the run continues "
               "on this device)")
PRECISION_HELP = ("auto, fp32, bf16 or fp16: overrides the recipe's 'precision:' (auto = bf16 on a GPU that has it, "
                  "else fp32)")


def add_placement_options(p: argparse.ArgumentParser, device_help: str = DEVICE_HELP,
                          precision_help: str = PRECISION_HELP, device_default: str | None = None) -> None:
    """``--device`` and ``--precision``: where and in which number format a command computes
    (``run``, ``compare`` and ``export`` share them; None = the recipe's setting)."""
    p.add_argument("--device", default=device_default, help=device_help)
    p.add_argument("--precision", help=precision_help)
