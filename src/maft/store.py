"""The run directory: atomic writes, and a manifest of finished stages keyed by the config hash.

A stage's outputs are written under temporary names and renamed into place; only then is the stage
recorded in ``manifest.json`` (itself replaced atomically). A crash at any point therefore leaves
either a finished stage (kept on resume) or no trace of it (redone on resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from maft.config import RunConfig, config_diff

M = TypeVar("M", bound=BaseModel)
TMP = ".tmp-"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, config changed, not a run)."""


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(TMP + path.name)
    tmp.write_text(text)
    _fsync_replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: Iterable[BaseModel | dict]) -> None:
    lines = (r.model_dump_json() if isinstance(r, BaseModel) else json.dumps(r) for r in records)
    write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: Path, model: type[M]) -> list[M]:
    with open(path) as f:
        return [model.model_validate_json(line) for line in f if line.strip()]


def temporary_dir(path: Path) -> Path:
    """A fresh, empty temporary directory next to ``path`` (see :func:`publish_dir`)."""
    tmp = path.with_name(TMP + path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, path: Path) -> None:
    """Move a finished temporary directory into place as ``path`` (replacing it)."""
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds (replacing it)."""
    tmp = temporary_dir(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, path)


#: Run directories this process has locked (run dir -> open lock file).
_LOCKS: dict[Path, Any] = {}


class RunStore:
    """``runs/<name>/``: config.yaml, manifest.json, and one folder per iteration."""

    def __init__(self, root: Path, config: RunConfig) -> None:
        self.root = root.resolve()  # absolute: Ray workers and resumed runs may start elsewhere
        self.config = config
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = {"config_hash": config.hash(), "stages": {}}
        self.changed: list[str] = []  # execution settings changed on resume

    def _acquire(self) -> None:
        """One process per run directory: a second ``maft run`` on it would clobber the first's work.
        The lock is held until this process exits (reopening the run in the same process is fine)."""
        import fcntl

        if self.root in _LOCKS:
            return
        lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RunDirError(f"another maft process is using {self.root}; wait for it or stop it first") from None
        _LOCKS[self.root] = lock

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: RunConfig) -> RunStore:
        """A new run in ``root``, which must not hold a run already."""
        if (root / "manifest.json").exists():
            raise RunDirError(f"{root} already holds a run; continue it with `maft run --resume {root}`, or pick another --out")
        if root.exists() and any(root.iterdir()):
            raise RunDirError(f"{root} exists and is not empty; pick another --out")
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, config)
        store._acquire()
        write_text(root / "config.yaml", config.to_yaml())
        write_json(root / "versions.json", versions())
        store.save_manifest()
        return store

    @classmethod
    def saved_config(cls, root: Path) -> RunConfig:
        """The config a run in ``root`` was started with."""
        if not (root / "manifest.json").is_file():
            raise RunDirError(f"{root} is not a maft run directory (no manifest.json)")
        if not (root / "config.yaml").is_file():
            raise RunDirError(f"{root} has a manifest but no config.yaml; it cannot be resumed")
        try:
            return RunConfig.model_validate(_load_yaml(root / "config.yaml"))
        except ValidationError as e:
            raise RunDirError(f"{root}/config.yaml is not a valid run config (edited by hand?):\n{e}") from None

    @classmethod
    def open(cls, root: Path, config: RunConfig | None = None) -> RunStore:
        """An existing run. ``config`` (if given) must compute the same as the run's own: resuming never
        changes results. Execution settings (``config.EXECUTION_KEYS``, e.g. the batch size) may change;
        the new values are saved to config.yaml and listed in ``store.changed``."""
        saved = cls.saved_config(root)
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("config_hash") != saved.hash():
            raise RunDirError(
                f"{root}/config.yaml no longer matches the run's manifest: it was edited after the run started, "
                "or this maft version has other config defaults than the one that started it"
            )
        if config is not None and config.hash() != saved.hash():
            changes = "\n  ".join(config_diff(saved, config))
            raise RunDirError(
                f"refusing to resume {root} with a different config; the run was started with other values:\n  {changes}\n"
                "Start a new run (another --out) to use the new values."
            )
        store = cls(root, config if config is not None else saved)
        store._acquire()
        store.manifest = manifest
        store.changed = config_diff(saved, store.config)
        if store.changed:
            write_text(store.root / "config.yaml", store.config.to_yaml())
        store._clean_temporaries()
        return store

    def _clean_temporaries(self) -> None:
        for tmp in self.root.rglob(TMP + "*"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    # -- stages -----------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        return stage in self.manifest["stages"]

    def finish(self, stage: str, seconds: float, **info: Any) -> None:
        """Record ``stage`` as finished (after its outputs are in place)."""
        self.manifest["stages"][stage] = {"seconds": round(seconds, 3), "finished_at": time.time(), **info}
        self.save_manifest()

    def seconds(self, stage: str) -> float | None:
        entry = self.manifest["stages"].get(stage)
        return entry["seconds"] if entry else None

    def save_manifest(self) -> None:
        write_json(self.manifest_path, self.manifest)

    # -- paths ------------------------------------------------------------------------------------
    def iter_dir(self, iteration: int) -> Path:
        return self.root / f"iter_{iteration}"


def versions() -> dict[str, str | None]:
    """Python, the libraries that shape results, and maft's git revision (when run from a checkout)."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("maft", "torch", "transformers", "peft", "trl", "datasets", "math-verify"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    try:
        out["maft_git_revision"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        out["maft_git_revision"] = None
    return out


def _load_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())
