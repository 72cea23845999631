"""MATH: competition mathematics (Hendrycks et al., 2021) with ``\\boxed{}`` answers.

Without ``path``, loads ``EleutherAI/hendrycks_math`` from the hub (the original 7,500 train and
5,000 test problems, one config per subject, concatenated in :data:`SUBJECTS` order). Local rows
need ``problem`` and ``solution`` (the gold answer is the last ``\\boxed{}`` of the solution;
rows without one are skipped), and ``level`` ("Level 3" or 3) and ``type`` (the subject, e.g.
"Counting & Probability") when filtering by them; an optional ``id`` is kept.

Options: ``levels`` (default 1-3, as in the paper's code; None for all) and ``subjects`` (None for
all; names as in ``type`` or as hub configs, e.g. "counting_and_probability").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from maft.tasks.base import Problem
from maft.tasks.grading import last_boxed
from maft.tasks.loading import DatasetTask, Row, load_hub, require_fields, row_id

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
DEFAULT_LEVELS = (1, 2, 3)


def subject_key(subject: str) -> str:
    """ "Counting & Probability" -> "counting_and_probability"."""
    return re.sub(r"[^a-z0-9]+", "_", subject.lower().replace("&", " and ")).strip("_")


def parse_level(level: object) -> int | None:
    """3, "3" or "Level 3" -> 3; None for unknown levels such as "Level ?"."""
    m = re.search(r"\d+", str(level))
    return int(m.group(0)) if m else None


class MathTask(DatasetTask):
    """MATH, graded by symbolic equivalence (math_verify)."""

    name = "math"
    grader = "math"
    answer_fallback = False  # a response without a boxed answer abstains (the authors' grader)
    fields = ("problem", "solution")

    def __init__(
        self,
        path: str | None = None,
        levels: Iterable[int] | int | None = DEFAULT_LEVELS,
        subjects: Iterable[str] | str | None = None,
    ) -> None:
        super().__init__(path)
        levels = [levels] if isinstance(levels, int) else levels
        subjects = [subjects] if isinstance(subjects, str) else subjects
        self.levels = None if levels is None else frozenset(int(level) for level in levels)
        self.subjects = None if subjects is None else frozenset(subject_key(s) for s in subjects)
        if self.levels is not None and not self.levels:
            raise ValueError("math: levels is empty (use None for all levels)")
        if self.subjects is not None and path is None and not self.subjects <= set(SUBJECTS):
            unknown = ", ".join(sorted(self.subjects - set(SUBJECTS)))
            raise ValueError(f"math: unknown subjects {unknown}; known: {', '.join(SUBJECTS)}")

    def load_hub(self) -> dict[str, list[Row]]:
        configs = [s for s in SUBJECTS if self.subjects is None or s in self.subjects]
        return load_hub(self.name, "EleutherAI/hendrycks_math", configs, (*self.fields, "level", "type"))

    def to_problem(self, row: Row, default_id: str, where: str) -> Problem | None:
        require_fields(row, self.fields, self.name, where)
        level = parse_level(row.get("level"))
        subject = str(row.get("type") or "")
        if self.levels is not None:
            require_fields(row, ("level",), self.name, where)
            if level not in self.levels:
                return None
        if self.subjects is not None:
            require_fields(row, ("type",), self.name, where)
            if subject_key(subject) not in self.subjects:
                return None
        answer = last_boxed(str(row["solution"]))
        if answer is None:
            return None
        meta = {"solution": row["solution"], "level": level, "type": subject}
        return Problem(id=row_id(row, default_id), question=row["problem"], answer=answer, meta=meta)
