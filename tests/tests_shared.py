"""Locating ../shared/data for tests that need real files (skip with a clear message when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CORECOMPRESS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data missing: {path} (set CORECOMPRESS_SHARED_DATA)")
    return path


# Runs the real CLI in a child process with one extra in-process plugin that sleeps after every
# optimizer step, so a test can see a checkpoint appear and interrupt the child mid-training.
SLOW_CLI = """
import sys, time
import corecompress.plugins as plugins
from corecompress.hookspecs import hookimpl

class SlowSteps:
    @hookimpl
    def after_optimizer_step(self, run, step, model):
        time.sleep(float(sys.argv[1]))

_load = plugins.load_plugins
def load_plugins(**kwargs):
    kwargs["extra"] = list(kwargs.get("extra", ())) + [("slow_steps", SlowSteps())]
    return _load(**kwargs)
plugins.load_plugins = load_plugins
from corecompress.cli import main
sys.exit(main(sys.argv[2:]))
"""
