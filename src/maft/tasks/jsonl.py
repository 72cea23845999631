"""A user task from a local JSONL or parquet file (or a directory with train/test files).

Rows need ``question`` and ``answer``; optional fields: ``id``, ``choices`` (a list of options,
shown as "A. ...", "B. ..." under the question) and ``grader``. The grader is the ``grader``
option, else the rows' ``grader`` field (one value for the whole file), else "numeric". With the
``math`` grader only a ``\\boxed{}`` answer counts (as for MATH); ``numeric`` and ``choice`` fall back to
the text after ``####`` or the last number.
"""

from __future__ import annotations

import os
import string
from typing import get_args

from maft.grading import choice_letter
from maft.tasks.base import GraderKind, Problem
from maft.tasks.loading import DatasetTask, Row, load_local, require_fields, row_id, step_by_step_prompt

GRADERS: tuple[str, ...] = get_args(GraderKind)
CHOICE_FORMAT = "\\boxed{letter}"


class JsonlTask(DatasetTask):
    """Questions and answers from your own file."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike[str] | None = None, grader: GraderKind | None = None) -> None:
        if path is None:
            raise ValueError("jsonl: pass path= with a .jsonl or .parquet file whose rows have question and answer")
        super().__init__(path)
        if grader is None:
            assert self.path is not None
            kinds = {row["grader"] for rows in load_local(self.path, self.name).values() for row in rows if "grader" in row}
            if len(kinds) > 1:
                raise ValueError(f"jsonl: rows of {self.path} use several graders {sorted(kinds)}; pass grader=")
            grader = kinds.pop() if kinds else "numeric"
        if grader not in GRADERS:
            raise ValueError(f"jsonl: unknown grader {grader!r}; expected one of {', '.join(GRADERS)}")
        self.grader = grader
        self.answer_fallback = grader != "math"  # math answers must be boxed, as for the MATH task

    def to_problem(self, row: Row, default_id: str, where: str) -> Problem:
        require_fields(row, ("question", "answer"), self.name, where)
        question, answer = str(row["question"]), str(row["answer"]).strip()
        if row.get("choices"):
            options = "\n".join(f"{letter}. {text}" for letter, text in zip(string.ascii_uppercase, row["choices"]))
            question = f"{question}\n{options}"
        if self.grader == "choice":
            letter = choice_letter(answer)
            if letter is None:
                raise ValueError(f"jsonl: {where} has answer {answer!r}, not an option letter A-E")
            answer = letter
        return Problem(id=row_id(row, default_id), question=question, answer=answer)

    def prompt(self, problem: Problem) -> str:
        if self.grader == "choice":
            return step_by_step_prompt(problem.question, CHOICE_FORMAT)
        return step_by_step_prompt(problem.question)
