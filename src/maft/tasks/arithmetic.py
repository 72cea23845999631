"""Arithmetic: ``a+b*c+d-e*f`` with integers drawn from 0..30, generated from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from maft.prompts import BOXED_FORMAT
from maft.tasks.base import Problem, Splits, Task

LOW, HIGH = 0, 30


@dataclass(frozen=True)
class Expression:
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int

    @property
    def text(self) -> str:
        return f"{self.a}+{self.b}*{self.c}+{self.d}-{self.e}*{self.f}"

    @property
    def value(self) -> int:
        return self.a + self.b * self.c + self.d - self.e * self.f

    @classmethod
    def sample(cls, rng: random.Random, low: int = LOW, high: int = HIGH) -> Expression:
        return cls(*(rng.randint(low, high) for _ in range(6)))


def arithmetic_prompt(expression: str) -> str:
    """The round-1 question for an arithmetic expression."""
    return (
        f"What is the result of {expression}? "
        f"Make sure to state your final answer in the form {BOXED_FORMAT} at the end of your response."
    )


class ArithmeticTask(Task):
    """The paper's Arithmetic task; problems are unique within and across splits."""

    name = "arithmetic"
    grader = "numeric"

    def __init__(self, low: int = LOW, high: int = HIGH) -> None:
        if low > high:
            raise ValueError(f"arithmetic: low={low} is above high={high}")
        self.low, self.high = low, high

    def splits(self, n_train: int, n_test: int, seed: int = 0) -> Splits:
        rng = random.Random(f"arithmetic:{seed}:{self.low}:{self.high}")
        capacity = (self.high - self.low + 1) ** 6
        if n_train + n_test > capacity:
            raise ValueError(f"arithmetic: {n_train + n_test} problems asked, only {capacity} exist")
        seen: set[Expression] = set()
        pool: list[Expression] = []
        while len(pool) < n_train + n_test:
            expr = Expression.sample(rng, self.low, self.high)
            if expr not in seen:
                seen.add(expr)
                pool.append(expr)
        problems = [
            Problem(id=f"arithmetic-{seed}-{i}", question=e.text, answer=str(e.value)) for i, e in enumerate(pool)
        ]
        # Test comes first so that asking for more training problems never changes the test set.
        return Splits(train=problems[n_test:], test=problems[:n_test])

    def prompt(self, problem: Problem) -> str:
        return arithmetic_prompt(problem.question)
