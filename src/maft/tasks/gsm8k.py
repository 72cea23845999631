"""GSM8K: grade-school math word problems; the gold answer is the number after ``####``.

Without ``path``, loads ``openai/gsm8k`` (config ``main``, splits train/test) from the hub.
Local rows need ``question`` and ``answer`` (a GSM8K solution ending in ``#### 42``, or just the
final number); an optional ``id`` is kept.
"""

from __future__ import annotations

from maft.tasks.base import Problem
from maft.tasks.grading import normalize, to_number
from maft.tasks.loading import DatasetTask, Row, load_hub, require_fields, row_id


def gsm8k_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after the last ``####``, without commas."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "").removesuffix(".").strip()


class GSM8KTask(DatasetTask):
    """GSM8K (Cobbe et al., 2021), graded numerically."""

    name = "gsm8k"
    grader = "numeric"
    fields = ("question", "answer")

    def load_hub(self) -> dict[str, list[Row]]:
        return load_hub(self.name, "openai/gsm8k", ["main"], self.fields)

    def to_problem(self, row: Row, default_id: str, where: str) -> Problem:
        require_fields(row, self.fields, self.name, where)
        solution = str(row["answer"])
        answer = gsm8k_answer(solution)
        if not answer:
            raise ValueError(f"{self.name}: {where} has an empty final answer: {solution!r}")
        if "####" not in solution and to_number(normalize(answer, "numeric")) is None:
            raise ValueError(
                f"{self.name}: {where}: the answer {solution[:80]!r} is neither a GSM8K solution ending in "
                "'#### <number>' nor a number; rewrite it so, or use task jsonl with its own grader"
            )
        return Problem(id=row_id(row, default_id), question=row["question"], answer=answer, meta={"solution": solution})
