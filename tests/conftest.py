"""Shared fixtures: paths, and a CLI runner that captures exit code and output in-process."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CORECOMPRESS_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)  # small ops; avoids oversubscription when tests spawn processes

# the example plugin's own tests need it installed: tests/plugin/test_example_plugin.py installs it into a
# scratch site and runs them there, as its author would
collect_ignore_glob = ["example_plugin/*"]


@pytest.fixture(autouse=True, scope="session")
def _session_cache_root(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN202
    """Caches the tests write (teacher embeddings, RecordIO indexes) go to a session folder, never ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CORECOMPRESS_CACHE", str(tmp_path_factory.mktemp("corecompress-cache")))
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run only when asked: ``-m slow`` (any -m naming it) or CORECOMPRESS_SLOW=1."""
    if "slow" in (config.getoption("-m") or "") or os.environ.get("CORECOMPRESS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or CORECOMPRESS_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def cli(capsys):  # noqa: ANN001, ANN201
    """Run ``corecompress ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from corecompress.tools.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
