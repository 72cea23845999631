"""The run directory: atomic writes, and a manifest of finished stages keyed by the config hash.

A stage's outputs are written under temporary names and renamed into place; only then is the stage
recorded in ``manifest.json`` (itself replaced atomically). A crash at any point therefore leaves
either a finished stage (kept on resume) or no trace of it (redone on resume).

- A new run directory is built as a temporary sibling (``.tmp-<name>``) and renamed into place once
  versions.json, config.yaml and manifest.json are in it: a kill during creation leaves no half-made run
  (the next ``--out`` with the same name clears the sibling). An existing empty directory is filled in
  place, manifest.json last; what a kill leaves there is accepted (and cleared) by the next ``--out``, and
  ``--resume`` says the creation was interrupted.
- One process per run: opening takes the run's lock (``.lock``) before reading anything else.
- Each finished stage records its outputs (path, size, and the sha256 of files up to :data:`HASH_LIMIT`).
  By convention stage ``iter_<l>/<name>`` writes ``iter_<l>/<name>.jsonl``, ``<name>.json`` or the folder
  ``<name>/``, and ``iter_<l>/train/<role>`` writes the folder ``iter_<l>/agents/<role>/``. Resuming checks
  them: a stage whose output is missing or changed is marked ``redo`` (and said so) and runs again. If the
  redone stage's outputs differ from the recorded ones, the stages recorded after it (those that may have
  read them) are marked ``redo`` too; the held-out stages (:data:`HELD_OUT`) are read only by the later
  stages of their own iteration, and the training roles of one iteration do not read each other.
- Temporary folders made by :func:`temporary_dir` and not yet published are removed when the process
  exits (also after Ctrl-C), or earlier by :func:`discard_temporaries`; ``open`` removes those a killed
  process left.
- Files that cannot be read or written raise ``OSError`` naming the file; a malformed manifest or
  config.yaml raises :class:`RunDirError` with a one-line message naming the file.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from maft.config import ConfigError, RunConfig, config_diff, read_yaml

M = TypeVar("M", bound=BaseModel)
TMP = ".tmp-"
#: What a run writes when it finishes, from its stages' outputs (withdrawn when a stage must be redone).
FINAL_RESULTS = ("metrics.json", "summary.md", "report")
HASH_LIMIT = 64 << 20  # larger outputs (full checkpoints) are checked by size only
HELD_OUT = ("debate_test", "diversity", "metrics")  # no later iteration reads these (society.py)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, config changed, not a run)."""


# -- atomic files and folders -----------------------------------------------------------------------
def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _name_the_file(error: OSError, tmp: Path, path: Path) -> OSError:
    """Name ``path`` in an OSError about its temporary (or about no file: ENOSPC while writing or flushing)."""
    if error.filename is None or str(error.filename) == str(tmp):
        error.filename = str(path)
    return error


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` that replaces ``path`` when the block succeeds; on failure
    (a full disk, Ctrl-C) the temporary is removed and ``path`` is left as it was. The temporary is this
    process's own (its pid in the name): two processes writing one file (the base debates two comparisons
    share in ``.shared/``) never write into each other's temporary, and the last rename wins whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP}{os.getpid()}-{path.name}")
    try:
        yield tmp
        _fsync_replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _name_the_file(e, tmp, path) from e
        raise


def discard_dead_temporaries(folder: Path) -> None:
    """Remove the temporary files in ``folder`` that :func:`atomic_file` left in processes no longer running (a
    folder several processes write, outside any run's lock: a comparison's ``.shared/``)."""
    for tmp in folder.glob(TMP + "*"):
        pid = tmp.name.removeprefix(TMP).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file + rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: Path, records: Iterable[BaseModel | dict]) -> None:
    lines = (r.model_dump_json() if isinstance(r, BaseModel) else json.dumps(r) for r in records)
    write_text(path, "".join(line + "\n" for line in lines))


def read_jsonl(path: Path, model: type[M]) -> list[M]:
    with open(path, encoding="utf-8") as f:
        return [model.model_validate_json(line) for line in f if line.strip()]


#: Temporary folders of this process not yet published (removed at exit, see :func:`discard_temporaries`).
_PENDING: set[Path] = set()


def discard_temporaries() -> None:
    """Remove the temporary folders this process made and did not publish (an interrupted finetune's)."""
    for tmp in list(_PENDING):
        shutil.rmtree(tmp, ignore_errors=True)
        _PENDING.discard(tmp)


atexit.register(discard_temporaries)


def temporary_dir(path: Path) -> Path:
    """A fresh, empty temporary directory next to ``path`` (see :func:`publish_dir`); removed at exit
    unless published."""
    tmp = path.with_name(TMP + path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _PENDING.add(tmp.absolute())
    return tmp


def publish_dir(tmp: Path, path: Path) -> None:
    """Move a finished temporary directory into place as ``path`` (replacing it)."""
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _PENDING.discard(tmp.absolute())


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block succeeds (replacing it)."""
    tmp = temporary_dir(path)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _PENDING.discard(tmp.absolute())
        raise
    publish_dir(tmp, path)


# -- stage outputs ----------------------------------------------------------------------------------
def stage_outputs(root: Path, stage: str) -> list[Path]:
    """The files or folders stage ``stage`` writes, by the naming convention (see the module docstring)."""
    head, _, name = stage.partition("/")
    if not name:
        return []
    if name.startswith("train/"):
        return [root / head / "agents" / name.split("/", 1)[1]]
    return [root / head / f"{name}.jsonl", root / head / f"{name}.json", root / head / name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(root: Path, paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """``{path relative to root: {"size", "sha256"}}`` for every file of ``paths`` (folders recursively);
    files over :data:`HASH_LIMIT` get their size only."""
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path] if path.is_file() else []
        for f in files:
            size = f.stat().st_size
            entry: dict[str, Any] = {"size": size}
            if size <= HASH_LIMIT:
                entry["sha256"] = _sha256(f)
            out[f.relative_to(root).as_posix()] = entry
    return out


def _output_problem(root: Path, outputs: dict[str, dict[str, Any]]) -> str | None:
    """Why recorded outputs no longer match the files (None when they all do)."""
    for rel, want in outputs.items():
        path = root / rel
        if not path.is_file():
            return f"its output {rel} is missing"
        size = path.stat().st_size
        if size != want.get("size"):
            return f"its output {rel} changed size ({want.get('size')} -> {size} bytes)"
        if "sha256" in want and _sha256(path) != want["sha256"]:
            return f"its output {rel} changed content"
    return None


# -- the manifest -----------------------------------------------------------------------------------
def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest in ``path``, checked: an object with ``config_hash`` and ``stages`` (name -> entry)."""
    data = path.read_bytes()
    problem = None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"it is not UTF-8 text (byte {e.start})"
    except json.JSONDecodeError as e:
        problem = "it is empty" if not data.strip() else f"it is not valid JSON ({e.msg} at line {e.lineno})"
    else:
        if not isinstance(manifest, dict):
            problem = f"it holds {_json_type(manifest)}, not an object"
        elif not isinstance(manifest.get("config_hash"), str):
            problem = "it has no config_hash"
        elif not isinstance(manifest.get("stages"), dict):
            problem = "it has no stages" if "stages" not in manifest else "its stages are not an object"
        else:
            for name, entry in manifest["stages"].items():
                if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), (int, float)):
                    problem = f"its entry for stage {name!r} has no seconds"
                elif not isinstance(entry.get("outputs", {}), dict):
                    problem = f"its entry for stage {name!r} has malformed outputs"
                if problem:
                    break
    if problem:
        raise RunDirError(f"{path} is not a valid maft manifest: {problem}; the run cannot be resumed")
    return manifest


#: Run directories this process has locked (run dir -> open lock file).
_LOCKS: dict[Path, Any] = {}


def _lock(root: Path) -> Any:
    """An open, exclusively locked ``root/.lock`` (RunDirError when another process holds it). One process per
    run directory: a second ``maft run`` on it would clobber the first's work. The lock is held until this
    process exits (reopening the run in the same process is fine: see ``_LOCKS``)."""
    import fcntl

    try:
        lock = open(root / ".lock", "a")
    except OSError as e:
        raise RunDirError(f"cannot lock {root / '.lock'}: {e.strerror} (is the run directory read-only?)") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise LockHeld(f"another maft process is using {root}; wait for it or stop it first") from None
    return lock


class LockHeld(RunDirError):
    """Another process holds the run directory's lock."""


def _say(message: str) -> None:
    print(message)


def interrupted_creation(root: Path) -> bool:
    """Whether ``root`` holds only what a killed run creation leaves: no manifest.json; nothing but .lock,
    versions.json, temporaries and a config.yaml that is a valid run config."""
    if (root / "manifest.json").exists():
        return False
    names = {p.name for p in root.iterdir()}
    if not names or any(n not in {".lock", "versions.json", "config.yaml"} and not n.startswith(TMP) for n in names):
        return False
    if "config.yaml" in names:
        try:
            RunConfig.saved(read_yaml(root / "config.yaml"))
        except (ConfigError, ValidationError):
            return False
    return True


class RunStore:
    """``runs/<name>/``: config.yaml, manifest.json, and one folder per iteration."""

    def __init__(self, root: Path, config: RunConfig, *, say: Callable[[str], None] = _say) -> None:
        self.root = root.resolve()  # absolute: Ray workers and resumed runs may start elsewhere
        self.config = config
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = {"config_hash": config.hash(), "stages": {}}
        self.changed: list[str] = []  # execution settings changed on resume
        self.say = say  # one-line notes: stages redone because their outputs went missing or changed

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, config: RunConfig, *, say: Callable[[str], None] = _say) -> RunStore:
        """A new run in ``root``, which must not hold a run already. A missing ``root`` is built as a temporary
        sibling and renamed into place. An existing empty ``root`` (its parent may be read-only) is filled in
        place, manifest.json last; what a kill leaves there (:func:`interrupted_creation`) is cleared by the
        next ``create``."""
        root = Path(root)
        if (root / "manifest.json").exists():
            raise RunDirError(
                f"{root} already holds a run; continue it with `maft run --resume {root}`, or pick another --out"
            )
        if root.exists() and not (root.is_dir() and (not any(root.iterdir()) or interrupted_creation(root))):
            raise RunDirError(f"{root} exists and is not empty; pick another --out")
        store = cls(root, config, say=say)
        if root.exists():
            lock = _lock(store.root)
            try:
                leftovers = sorted(p.name for p in store.root.iterdir() if p.name != ".lock")
                if leftovers:
                    say(f"{root}: clearing what an interrupted run creation left ({', '.join(leftovers)})")
                store._clean_temporaries()
                store._write_new(store.root)
            except BaseException as e:
                lock.close()
                if isinstance(e, OSError):
                    raise RunDirError(f"cannot create the run in {root}: {e.strerror} ({e.filename})") from None
                raise
            _LOCKS[store.root] = lock
            return store
        tmp, lock = store.root.with_name(TMP + store.root.name), None
        busy = RunDirError(f"another maft process is creating {root}; wait for it or stop it first")
        if tmp.exists():  # a creation under way (its lock held: refused, left untouched), or a killed one's leftover
            try:
                _lock(tmp).close()
            except LockHeld:
                raise busy from None
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)  # atomic: of two processes here at once, one makes it, the other is refused
        except FileExistsError:
            raise busy from None
        except OSError as e:
            raise RunDirError(f"cannot create the run directory {root}: {e.strerror} ({e.filename})") from None
        _PENDING.add(tmp.absolute())
        try:
            lock = _lock(tmp)  # the lock is on the file, and moves with the folder
            store._write_new(tmp)
            os.replace(tmp, store.root)
            _PENDING.discard(tmp.absolute())
        except BaseException as e:
            _PENDING.discard(tmp.absolute())
            if lock is None:  # never ours to remove: another process may have taken it over before our lock
                if isinstance(e, LockHeld) or not tmp.is_dir():
                    raise busy from None
                raise
            lock.close()
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise RunDirError(f"cannot create the run directory {root}: {e.strerror} ({e.filename})") from None
            raise
        _LOCKS[store.root] = lock
        return store

    def _write_new(self, folder: Path) -> None:
        write_text(folder / "versions.json", json.dumps(versions(), indent=2) + "\n")
        write_text(folder / "config.yaml", self.config.to_yaml())
        write_json(folder / "manifest.json", self.manifest)  # last: it makes the folder a run

    @classmethod
    def saved_config(cls, root: Path) -> RunConfig:
        """The config a run in ``root`` was started with."""
        if not (root / "manifest.json").is_file():
            if root.is_dir() and interrupted_creation(root):
                raise RunDirError(f"the creation of the run {root} was interrupted; start it again with --out {root}")
            raise RunDirError(f"{root} is not a maft run directory (no manifest.json)")
        if not (root / "config.yaml").is_file():
            raise RunDirError(f"{root} has a manifest but no config.yaml; it cannot be resumed")
        try:
            return RunConfig.saved(read_yaml(root / "config.yaml", "run config"))
        except ConfigError as e:
            raise RunDirError(f"{e}; the run cannot be resumed") from None
        except ValidationError as e:
            raise RunDirError(f"{root}/config.yaml is not a valid run config (edited by hand?):\n{e}") from None

    @classmethod
    def open(cls, root: Path, config: RunConfig | None = None, *, say: Callable[[str], None] = _say) -> RunStore:
        """An existing run. ``config`` (if given) must compute the same as the run's own: resuming never
        changes results. The ``execution`` section (e.g. the generation batch size) may change;
        the new values are listed in ``store.changed`` (and saved by :meth:`save_config`). Stages whose recorded
        outputs are missing or changed are marked to be redone, each said in one line through ``say``."""
        root = Path(root)
        if not (root / "manifest.json").is_file():
            cls.saved_config(root)  # raises: not a run, or an interrupted creation
        resolved = root.resolve()
        held = resolved in _LOCKS
        lock = _LOCKS.get(resolved) or _lock(resolved)  # before anything is read: a running process may be writing
        try:
            store = cls._open_locked(root, config, say)
        except BaseException:
            if not held:
                lock.close()
            raise
        _LOCKS[store.root] = lock
        store._clean_temporaries()
        store._check_outputs()
        return store

    @classmethod
    def _open_locked(cls, root: Path, config: RunConfig | None, say: Callable[[str], None]) -> RunStore:
        saved = cls.saved_config(root)
        manifest = read_manifest(root / "manifest.json")
        if manifest["config_hash"] != saved.hash():
            raise RunDirError(
                f"{root}/config.yaml no longer matches the run's manifest: it was edited after the run started, "
                "or this maft version has other config defaults than the one that started it"
            )
        if config is not None and config.hash() != saved.hash():
            changes = "\n  ".join(config_diff(saved, config))
            raise RunDirError(
                f"refusing to resume {root} with a different config; the run was started with other values:\n"
                f"  {changes}\nStart a new run (another --out) to use the new values."
            )
        store = cls(root, config if config is not None else saved, say=say)
        store.manifest = manifest
        store.changed = config_diff(saved, store.config)
        return store

    def save_config(self) -> None:
        """Write the execution settings changed on resume (``changed``) to config.yaml, once the run has accepted
        them (:class:`~maft.loop.Society`, after its checks): a value refused there (a device this machine lacks,
        a server that does not answer) is never saved over the run's working one."""
        if self.changed:
            write_text(self.root / "config.yaml", self.config.to_yaml())

    def _clean_temporaries(self) -> None:
        for tmp in self.root.rglob(TMP + "*"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

    def _check_outputs(self) -> None:
        """Mark the finished stages whose recorded outputs are missing or changed to be redone. The run is then
        not finished: its whole-run results (``metrics.json``, ``summary.md``, ``report/``), written when it
        last finished, are withdrawn, so that no report shows them as final; the resumed run writes them again."""
        marked = False
        for name, entry in self.manifest["stages"].items():
            if "redo" in entry or not entry.get("outputs"):
                continue
            problem = _output_problem(self.root, entry["outputs"])
            if problem:
                entry["redo"] = problem
                marked = True
                self.say(f"{name}: {problem}; the stage will be redone")
        if marked:
            self.save_manifest()
            withdrawn = [p for p in FINAL_RESULTS if (self.root / p).exists()]
            for name in withdrawn:
                path = self.root / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if withdrawn:
                self.say(f"{', '.join(withdrawn)} withdrawn until the run finishes again")

    # -- stages -----------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        entry = self.manifest["stages"].get(stage)
        return entry is not None and "redo" not in entry

    def finish(self, stage: str, seconds: float, outputs: Iterable[Path] | None = None, **info: Any) -> None:
        """Record ``stage`` as finished (after its outputs are in place). ``outputs``: the files or folders
        it wrote (default: by the naming convention, :func:`stage_outputs`)."""
        stages = self.manifest["stages"]
        paths = stage_outputs(self.root, stage) if outputs is None else outputs
        recorded = fingerprint(self.root, paths)
        old = stages.get(stage)
        stages[stage] = {  # a redone stage keeps its place: the order is the order the stages ran in
            "seconds": round(seconds, 3),
            "finished_at": time.time(),
            **info,
            "outputs": recorded,
        }
        if old is not None and "redo" in old and old.get("outputs"):
            self._redone(stage, same=old["outputs"] == recorded)
        self.save_manifest()

    def _redone(self, stage: str, same: bool) -> None:
        """After redoing ``stage``: with other outputs than before, the stages that may have read them are
        marked to be redone too."""
        names = list(self.manifest["stages"])
        later = names[names.index(stage) + 1 :]
        head, _, name = stage.partition("/")
        if name.startswith("train/"):  # the roles of one iteration train independently
            later = [k for k in later if not k.startswith(f"{head}/train/")]
        if name in HELD_OUT:
            later = [k for k in later if k.startswith(f"{head}/")]
        later = [k for k in later if "redo" not in self.manifest["stages"][k]]
        if not later:
            return
        if same:
            self.say(f"{stage}: redone with the same outputs as before; the later stages are kept")
            return
        for k in later:
            self.manifest["stages"][k]["redo"] = f"{stage} was redone with other outputs"
        self.say(
            f"{stage}: redone with other outputs than before; the stages that read them are redone too: "
            + ", ".join(later)
        )

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
        out["maft_git_revision"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.TimeoutExpired):
        out["maft_git_revision"] = None
    return out
