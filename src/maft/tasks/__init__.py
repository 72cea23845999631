"""Tasks and their registry.

>>> from maft.tasks import get_task
>>> task = get_task("math", path="math.jsonl", levels=[1, 2, 3])
>>> splits = task.splits(n_train=500, n_test=500, seed=0)
"""

from __future__ import annotations

from typing import Any, TypeVar

from maft.tasks.arithmetic import ArithmeticTask
from maft.tasks.base import GraderKind, Problem, Splits, Task
from maft.tasks.gsm8k import GSM8KTask
from maft.tasks.jsonl import JsonlTask
from maft.tasks.loading import DatasetUnavailableError
from maft.tasks.math import MathTask
from maft.tasks.mmlu import MMLUTask

__all__ = [
    "TASKS",
    "ArithmeticTask",
    "DatasetUnavailableError",
    "GSM8KTask",
    "GraderKind",
    "JsonlTask",
    "MMLUTask",
    "MathTask",
    "Problem",
    "Splits",
    "Task",
    "get_task",
    "register_task",
    "task_names",
]

T = TypeVar("T", bound=type[Task])

#: Task name -> Task class.
TASKS: dict[str, type[Task]] = {}


def register_task(cls: T) -> T:
    """Register a Task class under its ``name`` (usable as a class decorator)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} has no task name (set the class attribute name)")
    if name in TASKS and TASKS[name] is not cls:
        raise ValueError(f"task {name!r} is already registered ({TASKS[name].__qualname__})")
    TASKS[name] = cls
    return cls


def task_names() -> list[str]:
    """The registered task names, sorted."""
    return sorted(TASKS)


def get_task(name: str, **options: Any) -> Task:
    """A new instance of the task ``name``, constructed with ``options`` (e.g. ``path=``)."""
    try:
        cls = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None
    import inspect

    try:  # only a mismatch with the signature is a bad option; a TypeError inside the task is its own error
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        accepted = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        raise ValueError(
            f"task {name!r}: bad options {sorted(options)} ({e}); it accepts: {', '.join(accepted) or 'none'}"
        ) from None
    options = _typed_options(name, cls, options)
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}") from None


def _typed_options(name: str, cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Each option checked against the type its task's constructor declares (``low=1.5`` for an integer,
    ``levels=[a]``), so that the error names the option rather than whatever the task's code trips over; a value
    of another type that converts exactly (``"3"`` for an integer) is passed converted."""
    import typing
    from collections.abc import Iterator

    from pydantic import TypeAdapter, ValidationError

    hints = typing.get_type_hints(cls.__init__)
    typed = dict(options)
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            checked = TypeAdapter(hints[key]).validate_python(value)
            if isinstance(checked, Iterator):  # an Iterable[...] is checked item by item as it is read
                list(checked)
            else:
                typed[key] = checked
        except ValidationError as e:
            problem = e.errors()[0]
            where = "".join(f"[{p}]" for p in problem["loc"] if isinstance(p, int))
            raise ValueError(f"task {name!r}: option {key}{where}={value!r}: {problem['msg']}") from None
    return typed


for _cls in (ArithmeticTask, GSM8KTask, MathTask, MMLUTask, JsonlTask):
    register_task(_cls)
