"""The Task interface: load problems, build the round-1 prompt, extract and compare answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from maft.prompts import BOXED_FORMAT
from maft.tasks import grading
from maft.types import GraderKind


@dataclass(frozen=True)
class Problem:
    """One problem. ``answer`` is the gold final answer (used for evaluation only, never for training)."""

    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Splits:
    """Disjoint train and test problems."""

    train: list[Problem]
    test: list[Problem]

    def __post_init__(self) -> None:
        overlap = {p.question for p in self.train} & {p.question for p in self.test}
        if overlap:
            raise ValueError(f"{len(overlap)} problems are in both train and test, e.g. {sorted(overlap)[0]!r}")


class Task(ABC):
    """A task: where problems come from, how to ask them, and how to grade answers."""

    name: ClassVar[str]
    grader: GraderKind = "numeric"
    answer_format: str = BOXED_FORMAT
    #: Without a ``\boxed{}`` answer, read the text after ``####`` or else the last number (True), or
    #: abstain (False: MATH, whose graders need a boxed answer). See :func:`maft.tasks.grading.extract_answer`.
    answer_fallback: bool = True

    @abstractmethod
    def splits(self, n_train: int, n_test: int, seed: int = 0) -> Splits:
        """``n_train`` and ``n_test`` problems, seeded, never overlapping."""

    @abstractmethod
    def prompt(self, problem: Problem) -> str:
        """The round-1 user message for ``problem``."""

    def extract(self, response: str) -> str | None:
        """The final answer in ``response``, or None (an abstention)."""
        return grading.extract_answer(response, fallback=self.answer_fallback)

    def equivalent(self, a: str | None, b: str | None) -> bool:
        """Whether two extracted answers are the same answer under this task's grader."""
        return grading.equivalent(a, b, kind=self.grader)

    def is_correct(self, answer: str | None, problem: Problem) -> bool:
        return self.equivalent(answer, problem.answer)
