"""A user task from a local JSONL or parquet file (or a directory with train/test files).

Rows need ``question`` (a string) and ``answer`` (a string or a number), neither empty; optional fields:
``id`` (a string or a number), ``choices`` (a list of options, shown as "A. ...", "B. ..." under the
question) and ``grader`` (a string). A row with a wrong-typed field is refused before any compute, naming
the file, the row, the field and the expected type.

The grader is the ``grader`` option, else the rows' ``grader`` field (one value for the whole file), else
"numeric". With the ``math`` grader only a ``\\boxed{}`` answer counts (as for MATH); ``numeric`` and
``choice`` fall back to the text after ``####`` or the last number.
"""

from __future__ import annotations

import os
import string
from typing import get_args

from maft.tasks.base import GraderKind, Problem
from maft.tasks.grading import choice_letter
from maft.tasks.loading import (
    LIST,
    NUMBER,
    STRING,
    DatasetTask,
    Row,
    load_local,
    require_fields,
    require_types,
    row_id,
    step_by_step_prompt,
)

GRADERS: tuple[str, ...] = get_args(GraderKind)
KINDS = {  # each field's allowed JSON types
    "question": [STRING],
    "answer": [STRING, NUMBER],
    "id": [STRING, NUMBER],
    "choices": [LIST],
    "grader": [STRING],
}
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
            kinds = set()
            for split, rows in load_local(self.path, self.name).items():
                for i, row in enumerate(rows):
                    where = f"row {i + 1} of {self.path}" + ("" if split == "all" else f" ({split})")
                    require_types(row, {"grader": KINDS["grader"]}, self.name, where)
                    if row.get("grader") is not None:
                        kinds.add(row["grader"])
            if len(kinds) > 1:
                raise ValueError(f"jsonl: rows of {self.path} use several graders {sorted(kinds)}; pass grader=")
            grader = kinds.pop() if kinds else "numeric"
        if grader not in GRADERS:
            raise ValueError(f"jsonl: unknown grader {grader!r}; expected one of {', '.join(GRADERS)}")
        self.grader = grader
        self.answer_fallback = grader != "math"  # math answers must be boxed, as for the MATH task
        if grader == "choice":  # also asked for in the critic messages of rounds > 1
            self.answer_format = CHOICE_FORMAT

    def to_problem(self, row: Row, default_id: str, where: str) -> Problem:
        require_fields(row, ("question", "answer"), self.name, where)
        require_types(row, KINDS, self.name, where)
        question, answer = row["question"], str(row["answer"]).strip()
        for field, value in (("question", question.strip()), ("answer", answer)):
            if not value:
                raise ValueError(f"{self.name}: {where}: field {field!r} is empty")
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
        return step_by_step_prompt(problem.question, self.answer_format)
