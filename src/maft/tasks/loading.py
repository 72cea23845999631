"""Task data: local JSONL/parquet files or directories, the Hugging Face hub, and seeded splits.

A task's ``path`` is either

- one file (``.jsonl`` or ``.parquet``): a single pool of problems, split with a seeded
  permutation (test = the first ``n_test``, train = the next ``n_train``), or
- a directory holding ``train.{jsonl,parquet}`` and ``test.{jsonl,parquet}``: train problems
  come from the train file, test problems from the test file (each seeded-shuffled).

Every line of a ``.jsonl`` file must be UTF-8 text holding one JSON object (blank lines are skipped);
anything else is refused with a ValueError naming the file and the line. Rows are checked by the task:
:func:`require_fields` for missing fields, :func:`require_types` for wrong-typed ones (naming the row,
the field and the expected type).

Without a path, a task loads its data set from the hub with ``datasets.load_dataset``. That
fails fast, with :class:`DatasetUnavailableError`, when the hub cannot be reached (or
``HF_HUB_OFFLINE=1`` and no cached copy exists).
"""

from __future__ import annotations

import json
import os
import random
import socket
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from maft.prompts import BOXED_FORMAT
from maft.tasks.base import Problem, Splits, Task

Row = dict[str, Any]
EXTENSIONS = (".jsonl", ".parquet")
HUB_PROBE_TIMEOUT = 5.0


class DatasetUnavailableError(RuntimeError):
    """A task's data set could not be loaded from the hub (pass ``path=`` with a local file)."""


def step_by_step_prompt(question: str, answer_format: str = BOXED_FORMAT) -> str:
    """The round-1 prompt of the GSM8K, MATH and JSONL tasks."""
    return (
        f"{question}\nSolve the problem step by step. Make sure to state your final answer "
        f"in the form {answer_format} at the end of your response."
    )


# ---------------------------------------------------------------------------------------------
# Local files


def read_rows(file: str | Path) -> list[Row]:
    """The rows of a ``.jsonl`` or ``.parquet`` file (each a JSON object / a record)."""
    file = Path(file)
    if file.suffix == ".parquet":
        from datasets import Dataset

        try:
            return Dataset.from_parquet(str(file)).to_list()
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow's errors do not name the file
            raise ValueError(f"{file}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if file.suffix != ".jsonl":
        raise ValueError(f"{file}: unsupported file type; use one of {', '.join(EXTENSIONS)}")
    rows = []
    with file.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}:{number}: not UTF-8 text (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file}:{number}: expected a JSON object with the row's fields, got {json_type(row)}")
            rows.append(row)
    return rows


def json_type(value: Any) -> str:
    """``value``'s JSON type, with an article ("an object", "a list", "null", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Real):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def load_local(path: str | Path, task: str) -> dict[str, list[Row]]:
    """``{"all": rows}`` for a file, ``{"train": rows, "test": rows}`` for a directory."""
    p = Path(path).expanduser()
    if p.is_file():
        return {"all": read_rows(p)}
    if p.is_dir():
        found = {}
        for split in ("train", "test"):
            files = [p / f"{split}{ext}" for ext in EXTENSIONS if (p / f"{split}{ext}").is_file()]
            if not files:
                raise FileNotFoundError(
                    f"{task}: directory {p} has no {split}.jsonl or {split}.parquet (it needs both train and test)"
                )
            found[split] = read_rows(files[0])
        return found
    raise FileNotFoundError(f"{task}: no such file or directory: {p}")


def require_fields(row: Mapping[str, Any], fields: Sequence[str], task: str, where: str) -> None:
    """Raise a ValueError naming the missing fields of ``row``."""
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise ValueError(
            f"{task}: {where} has no field {', '.join(map(repr, missing))}; "
            f"each row needs the fields {', '.join(fields)} (found: {', '.join(row) or 'none'})"
        )


#: Expected kinds of a field's value for :func:`require_types`.
STRING, NUMBER, LIST = "a string", "a number", "a list"


def _is(value: Any, kind: str) -> bool:
    if kind == STRING:
        return isinstance(value, str)
    if kind == NUMBER:
        return isinstance(value, Real) and not isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, (list, tuple))
    raise ValueError(f"unknown kind {kind!r}")


def require_types(row: Mapping[str, Any], kinds: Mapping[str, Sequence[str]], task: str, where: str) -> None:
    """Raise a ValueError naming the first field of ``row`` whose value is none of its ``kinds``
    (e.g. ``{"question": [STRING]}``); absent and null fields are left to :func:`require_fields`."""
    for field, allowed in kinds.items():
        value = row.get(field)
        if value is not None and not any(_is(value, kind) for kind in allowed):
            raise ValueError(f"{task}: {where}: field {field!r} must be {' or '.join(allowed)}, got {json_type(value)}")


# ---------------------------------------------------------------------------------------------
# The hub


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_reachable() -> bool:
    """Whether a TCP connection to the hub opens within :data:`HUB_PROBE_TIMEOUT` seconds."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # can't probe through a proxy; let datasets try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
        socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_TIMEOUT).close()
        return True
    except (OSError, ValueError):
        return False


def load_hub(
    task: str,
    dataset: str,
    configs: Sequence[str | None],
    fields: Sequence[str],
    splits: Sequence[str] = ("train", "test"),
) -> dict[str, list[Row]]:
    """``{split: rows}`` of a hub data set, concatenating ``configs`` in order.

    Fails fast with :class:`DatasetUnavailableError` when the hub cannot be reached; with
    ``HF_HUB_OFFLINE=1`` (set before ``datasets`` is imported) a cached copy is used if present.
    """
    hint = (
        f"Pass path= with a local .jsonl or .parquet file (or a directory with train/test files) "
        f"whose rows have the fields {', '.join(fields)}."
    )
    import datasets

    offline = _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")
    if (offline and not datasets.config.HF_HUB_OFFLINE) or (not offline and not _hub_reachable()):
        reason = "offline mode is on" if offline else "the hub is unreachable"
        raise DatasetUnavailableError(f"{task}: cannot load {dataset!r} from the Hugging Face hub ({reason}). {hint}")
    rows: dict[str, list[Row]] = {split: [] for split in splits}
    try:
        for config in configs:
            for split in splits:
                rows[split].extend(datasets.load_dataset(dataset, config, split=split).to_list())
    except Exception as e:
        raise DatasetUnavailableError(
            f"{task}: cannot load {dataset!r} from the Hugging Face hub ({type(e).__name__}: {e}). {hint}"
        ) from e
    return rows


# ---------------------------------------------------------------------------------------------
# Splits


def split_problems(task: str, source: Mapping[str, Sequence[Problem]], n_train: int, n_test: int, seed: int) -> Splits:
    """Seeded, disjoint splits from ``{"all": pool}`` or ``{"train": ..., "test": ...}``.

    Train problems whose question text is also a test question are skipped.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"{task}: n_train and n_test must be >= 0 (got {n_train}, {n_test})")

    def shuffled(problems: Sequence[Problem], split: str) -> list[Problem]:
        order = list(problems)
        random.Random(f"{task}:{split}:{seed}").shuffle(order)
        return order

    if "all" in source:
        pool = shuffled(source["all"], "all")
        test, rest, where = pool[:n_test], pool[n_test:], "in total"
    else:
        test = shuffled(source["test"], "test")[:n_test]
        rest, where = shuffled(source["train"], "train"), "in the train split"
        if len(test) < n_test:
            raise ValueError(
                f"{task}: {n_test} test problems asked, only {len(source['test'])} exist in the test split"
            )
    test_questions = {p.question for p in test}
    train = [p for p in rest if p.question not in test_questions][:n_train]
    if len(test) < n_test or len(train) < n_train:
        available = len(source["all"]) if "all" in source else len(source["train"])
        raise ValueError(
            f"{task}: {n_train} train + {n_test} test problems asked, only {available} exist {where}"
            + (f" ({len(train)} usable for training after removing test duplicates)" if len(test) == n_test else "")
        )
    return Splits(train=train, test=test)


# ---------------------------------------------------------------------------------------------
# Tasks backed by a data set


class DatasetTask(Task):
    """A task whose problems come from a local file/directory (``path``) or the hub."""

    #: Fields each row must have (named in error messages).
    fields: ClassVar[tuple[str, ...]] = ("question", "answer")

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else Path(path).expanduser()
        if self.path is not None and not self.path.exists():
            raise FileNotFoundError(f"{self.name}: no such file or directory: {self.path}")
        self._problems: dict[str, list[Problem]] | None = None

    def load_hub(self) -> dict[str, list[Row]]:
        """``{"train": rows, "test": rows}`` from the hub; tasks without a hub data set need ``path``."""
        raise ValueError(f"{self.name}: this task has no hub data set; pass path= with a local file")

    @abstractmethod
    def to_problem(self, row: Row, default_id: str, where: str) -> Problem | None:
        """One row as a Problem, or None to skip it (e.g. filtered out)."""

    def problems(self) -> dict[str, list[Problem]]:
        """All problems, as ``{"all": ...}`` or ``{"train": ..., "test": ...}`` (loaded once)."""
        if self._problems is None:
            if self.path is not None:
                raw, source = load_local(self.path, self.name), str(self.path)
            else:
                raw, source = self.load_hub(), "the hub data set"
            loaded: dict[str, list[Problem]] = {}  # kept only once every row has passed (a bad row fails every call)
            ids: set[str] = set()
            for split, rows in raw.items():
                prefix = self.name if split == "all" else f"{self.name}-{split}"
                problems = []
                for i, row in enumerate(rows):
                    where = f"row {i + 1} of {source}" + ("" if split == "all" else f" ({split})")
                    problem = self.to_problem(row, f"{prefix}-{i}", where)
                    if problem is not None:
                        if problem.id in ids:
                            raise ValueError(f"{self.name}: duplicate problem id {problem.id!r} ({where})")
                        ids.add(problem.id)
                        problems.append(problem)
                loaded[split] = problems
            self._problems = loaded
        return self._problems

    def splits(self, n_train: int, n_test: int, seed: int = 0) -> Splits:
        return split_problems(self.name, self.problems(), n_train, n_test, seed)

    def prompt(self, problem: Problem) -> str:
        return step_by_step_prompt(problem.question)


def row_id(row: Row, default_id: str) -> str:
    """The row's own ``id`` if it has one, else ``default_id`` (task name + index in the source)."""
    return str(row["id"]) if row.get("id") is not None else default_id
