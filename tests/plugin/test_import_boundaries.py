"""Import boundaries between the core and the plugins (issue 11, item 3), checked on the source with ``ast``.

(a) nothing but ``corecompress/tools/cli.py`` and ``corecompress/__main__.py`` imports ``corecompress.tools.cli``;
(b) a plugin imports another plugin only through its ``api`` module (``corecompress_x.api``);
(c) nothing in ``corecompress/`` imports a plugin package (``corecompress_*``);
(d) the built-in plugin does not import the test kit ``corecompress.testing``.
Every import statement counts, also one inside a function, and ``importlib.import_module("...")`` /
``__import__("...")`` with a literal name.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
CLI = "corecompress.tools.cli"
CLI_MODULES = frozenset({CLI, "corecompress.__main__"})
BUILTIN = "corecompress_builtin"
TEST_KIT = "corecompress.testing"


def within(name: str, prefix: str) -> bool:
    """``name`` is the module ``prefix`` or something inside it (``a.api.x`` is within ``a.api``, ``a.apis`` not)."""
    return name == prefix or name.startswith(prefix + ".")


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of a ``from ... import`` in ``module`` (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``source`` imports; ``from m import x`` gives ``m.x`` (module or name)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def _plugin_of(name: str) -> str | None:
    top = name.split(".")[0]
    return top if top.startswith("corecompress_") else None


def violations(source: str, module: str, is_package: bool = False, where: str = "") -> list[str]:
    """The boundary rules (module docstring) that ``source``, the code of ``module``, breaks; one line each."""
    where = where or module
    own_plugin = _plugin_of(module)
    in_core = module.split(".")[0] == "corecompress"
    found = []
    for line, name in imported_names(source, module, is_package):
        target = _plugin_of(name)
        if within(name, CLI) and module not in CLI_MODULES:
            found.append(f"{where}:{line}: imports {name}; only the CLI entry points may import {CLI}")
        if in_core and target is not None:
            found.append(f"{where}:{line}: the core imports plugin package {target} ({name})")
        if own_plugin is not None and target is not None and target != own_plugin \
                and not within(name, f"{target}.api"):
            found.append(f"{where}:{line}: imports {name}; another plugin only through {target}.api")
        if own_plugin == BUILTIN and within(name, TEST_KIT):
            found.append(f"{where}:{line}: the built-in plugin imports the test kit ({name})")
    return found


def source_files() -> Iterator[tuple[Path, str, bool]]:
    """(path, module name, is package) of every .py file under corecompress/ and plugins/."""
    for top, base in ((ROOT / "corecompress", ROOT), (PLUGINS, PLUGINS)):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            yield path, ".".join(parts[:-1] if is_package else parts), is_package


def test_the_tree_keeps_the_import_boundaries() -> None:
    files = list(source_files())
    modules = {module for _, module, _ in files}
    assert {"corecompress.tools.cli", "corecompress_builtin", "corecompress_facekit.api",
            "corecompress_distill_baselines.api", "corecompress_faces_pruner.api"} <= modules
    found = [v for path, module, is_package in files
             for v in violations(path.read_text(encoding="utf-8"), module, is_package, str(path.relative_to(ROOT)))]
    assert not found, "import boundaries broken:\n" + "\n".join(found)


# --- the checker itself, on synthetic sources ----------------------------------------------------

@pytest.mark.parametrize("module, source", [
    ("corecompress_adadistill.loss", "from corecompress_facekit.losses import as_embedding"),
    ("corecompress_adadistill.loss", "from corecompress_facekit import losses"),
    ("corecompress_adadistill.loss", "import corecompress_facekit.heads.margin"),
    ("corecompress_adadistill.loss", "import corecompress_facekit"),
    ("corecompress_adadistill.loss", "from corecompress_facekit.apis import x"),
    ("corecompress_adadistill.loss", "def setup():\n    from corecompress_distill_baselines.projector import project\n"),
    ("corecompress_adadistill.loss", "import importlib\nm = importlib.import_module('corecompress_facekit.targets')"),
    ("corecompress.engine.runner", "from corecompress_builtin.api import x"),
    ("corecompress.testing.contracts", "class A:\n    def f(self):\n        import corecompress_builtin.tiny_models\n"),
    ("corecompress.engine.runner", "from corecompress.tools import cli"),
    ("corecompress.tools.export", "from .cli import main"),
    ("corecompress_facekit.plugin", "from corecompress.tools.cli import main"),
    ("corecompress_builtin.models", "from corecompress.testing.models import TinyViT"),
    ("corecompress_builtin.models", "from corecompress import testing"),
])
def test_checker_finds_a_violation(module: str, source: str) -> None:
    assert len(violations(source, module)) == 1, violations(source, module)


@pytest.mark.parametrize("module, source", [
    ("corecompress_adadistill.loss", "from corecompress_facekit.api import as_embedding, margin_logits"),
    ("corecompress_adadistill.loss", "from corecompress_facekit import api"),
    ("corecompress_adadistill.loss", "import corecompress_distill_baselines.api as projector"),
    ("corecompress_adadistill.loss", "from corecompress_adadistill.centres import adaptive_update"),
    ("corecompress_adadistill.loss", "from .centres import adaptive_update"),
    ("corecompress_adadistill.loss", "from corecompress.engine.components import seeded_generator"),
    ("corecompress.tools.cli", "from corecompress.tools.cli import main"),
    ("corecompress.__main__", "from corecompress.tools.cli import main"),
    ("corecompress.testing.contracts", "from corecompress.testing.stand_ins import stand_in_model"),
    ("corecompress_faces_pruner.attributes", "from corecompress.testing.data import synthetic_batches"),
])
def test_checker_accepts_allowed_imports(module: str, source: str) -> None:
    assert violations(source, module) == []


def test_relative_imports_are_resolved() -> None:
    found = dict(imported_names("from . import losses\nfrom ..heads.margin import x\nfrom .models import *",
                                "corecompress_facekit.models.swinface", False))
    assert set(found.values()) == {"corecompress_facekit.models.losses", "corecompress_facekit.heads.margin.x",
                                   "corecompress_facekit.models.models"}
    package = dict(imported_names("from .heads import margin", "corecompress_facekit", True))
    assert set(package.values()) == {"corecompress_facekit.heads.margin"}
