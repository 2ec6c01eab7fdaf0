"""Run directories and atomic file writes. Nothing a user already has is overwritten unasked."""
from __future__ import annotations

import fnmatch
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from corecompress.errors import UserError

STATUS_FILE = "status.json"


def default_run_dir(base: str | Path, name: str) -> Path:
    return Path(base) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


#: What a run writes at the top of its directory (shell patterns; artifacts are NAME.safetensors);
#: ``--force`` replaces only such folders.
RUN_ENTRIES: tuple[str, ...] = (
    STATUS_FILE, "recipe.resolved.json", "versions.json", "plan.json", "plan.round*.json", "metrics.json",
    "report.md", "report.png", "cost_table.json", "*.safetensors", "architecture.json", "model.onnx", "log.txt",
    "checkpoints", "traceback.txt", ".*.tmp",
)
#: Files only a run directory has: both present = a corecompress run.
RUN_MARKERS: tuple[str, ...] = (STATUS_FILE, "recipe.resolved.json")


def check_replaceable(path: Path, markers: tuple[str, ...], entries: tuple[str, ...], what: str) -> None:
    """Refuse (one-line UserError) to replace ``path`` unless it is empty or a corecompress ``what``
    directory holding nothing but what such a directory holds: ``--force`` never deletes a user's files."""
    if path.is_symlink():
        raise UserError(f"{path}: is a symbolic link; --force replaces only a real {what} directory "
                        "(give the directory itself, or another --out)")
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory; choose another --out")
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return
    foreign = [n for n in names if not any(fnmatch.fnmatchcase(n, pattern) for pattern in entries)]
    if foreign or not all((path / m).exists() for m in markers):
        shown_names = foreign or names
        listed = ", ".join(shown_names[:3]) + (", ..." if len(shown_names) > 3 else "")
        raise UserError(f"{path}: holds files that are not a corecompress {what} ({listed}); "
                        "--force replaces only an earlier run; choose another --out")


class Replacement:
    """An earlier run (or comparison) directory moved aside while its replacement starts: ``keep_new``
    deletes the old one once the new one is under way; ``restore`` puts it back when the new one
    failed to start. Nothing of the old one is lost until the new one has started."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.aside: Path | None = None
        if self.path.is_dir() and any(self.path.iterdir()):
            self.aside = self.path.with_name(f".{self.path.name}.replaced-{os.getpid()}")
            os.rename(self.path, self.aside)

    def keep_new(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def restore(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.rename(self.aside, self.path)
            self.aside = None


def create_run_dir(path: Path, force: bool = False) -> tuple[Path, Replacement | None]:
    """Create ``path``: (the path, the :class:`Replacement` of an earlier run when ``force`` moved
    one aside). An existing non-empty directory is an error unless ``force`` and it is a run."""
    if force:
        check_replaceable(path, RUN_MARKERS, RUN_ENTRIES, "run")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a directory")
    replacement = None
    if path.exists() and any(path.iterdir()):
        if not force:
            raise UserError(f"{path}: run directory already exists; choose another --out or pass --force to replace it")
        replacement = Replacement(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / STATUS_FILE, {"state": "running", "started": time.time()})
    except BaseException:
        if replacement is not None:
            replacement.restore()
        raise
    return path, replacement


def read_status(path: Path) -> dict[str, Any]:
    """The run directory's ``status.json`` (empty when missing or unreadable)."""
    try:
        data = json.loads((path / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunLock:
    """An exclusive advisory lock (``flock``) on a run directory while a process writes into it, so a
    resume cannot race the run it continues. The kernel drops it when the process dies (even SIGKILL).
    Where ``fcntl`` is missing (Windows) it does nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock ``path`` if it is an existing directory (releasing an earlier lock of this object)."""
        self.release()
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        if not self.path.is_dir():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError(f"{self.path}: in use by another corecompress process") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())


def git_revision(start: Path | None = None) -> str | None:
    """The git commit of the corecompress checkout (with '+dirty'), or None outside a checkout."""
    where = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(plugin_versions: dict[str, str]) -> dict[str, Any]:
    """Versions of everything that shaped the result (written as versions.json)."""
    import numpy
    import torch

    import corecompress

    try:
        import timm
        timm_version = timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        timm_version = None
    return {"corecompress": corecompress.__version__, "torch": torch.__version__, "timm": timm_version,
            "numpy": numpy.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "git_revision": git_revision(), "plugins": plugin_versions}
