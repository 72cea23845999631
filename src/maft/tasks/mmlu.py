"""MMLU: four-option multiple-choice questions in 57 subjects (Hendrycks et al., 2021).

**Problems.** A row has ``question`` (text), ``choices`` (a list of exactly 4 strings) and
``answer``: the index of the correct choice (an int 0-3, as in ``cais/mmlu``) or its letter
("A"-"D", any case, "(B)" and "B." too). ``subject`` (e.g. "astronomy") is optional unless
filtering by subject; an optional ``id`` is kept (else the id is ``mmlu-<row index>``). The
problem's text is the question followed by its choices, one per line as "A. ...", "B. ...", and its
gold answer is the letter. Every row is checked when the task first loads its problems (before
any model is loaded or any request sent): a wrong-typed field, a choice list that is not 4
strings, or an answer out of range raises a ValueError naming the file and row (row n of a JSONL
file is its n-th non-blank line).

**Sources.** ``path=`` a local ``.jsonl`` or ``.parquet`` file (the ``cais/mmlu`` parquet files
work as they are) or a directory with ``train.{jsonl,parquet}`` and ``test.{jsonl,parquet}``; see
:mod:`maft.tasks.loading`. Without ``path``, the **test split** of ``cais/mmlu`` is loaded from
the hub (config ``all``, 14,042 problems; with ``subjects``, those subjects' configs in
:data:`SUBJECTS` order) and used as one pool: held-out problems are the first ``n_test`` of a
seeded permutation, training problems the next ``n_train``, so "finetune on 500 MMLU problems and
test on 500 different ones" (the paper's setup) draws both from the same distribution without
overlap. MMLU results, the debate papers' included, come from the test split (the original debate
code samples the test CSV files). The other splits do not fit: ``auxiliary_train`` is other data
sets (RACE, ARC, ...) in MMLU's format, not the 57 subjects; ``dev`` (285, 5 per subject) is for
few-shot examples; ``validation`` (1,531) is for tuning. The first hub load of config ``all``
downloads all its splits (about 50 MB, mostly ``auxiliary_train``); the subject configs are small.
With no network the hub load fails at once with
:class:`~maft.tasks.loading.DatasetUnavailableError`, which says to pass ``path=``.

**Options.** ``path`` and ``subjects``: None for all, or a list of subject names (a string may
hold one name or several separated by commas). Names are compared as keys, so "High School
Physics" means ``high_school_physics``. Without ``path`` the names must be MMLU subjects
(:data:`SUBJECTS`); with ``path``, a name that no row of the file has is an error listing the
subjects the file does have.

**Grading.** The ``choice`` grader: the answer is an option letter. The prompt asks for the final
answer as ``\\boxed{letter}``; the extracted answer is the letter (A-D) read from the last
``\\boxed{}`` ("B", "(b)", "B. Mars", "\\text{B}"). There is no fallback
(``answer_fallback = False``): a response without a boxed answer, or whose boxed answer is not a
letter A-D (e.g. "\\boxed{42}" or "\\boxed{E}"), abstains. The generic fallback (the text after
``####``, else the last number) would read numbers from the reasoning as answers, and guessing a
letter from free text is unreliable ("A" is also a word).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from numbers import Integral

from maft.tasks.base import Problem
from maft.tasks.grading import choice_letter, extract_answer
from maft.tasks.jsonl import CHOICE_FORMAT
from maft.tasks.loading import (
    DatasetTask,
    Row,
    load_hub,
    require_fields,
    row_id,
    step_by_step_prompt,
)
from maft.tasks.math import subject_key

#: The hub data set and the split used for both training and held-out problems (see the module docstring).
HUB_DATASET, HUB_SPLIT = "cais/mmlu", "test"
LETTERS = "ABCD"
#: The 57 MMLU subjects: the per-subject configs of ``cais/mmlu`` (alphabetical, as in its ``all`` config).
SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)
#: What a row must hold (in the errors about bad rows).
ROW_FORMAT = "each row needs question (text), choices (a list of 4 strings) and answer (an index 0-3 or a letter A-D)"
_GOLD_LETTER_RE = re.compile(r"\(?([A-Da-d])\)?\.?")


def answer_letter(answer: object) -> str | None:
    """The gold letter of an ``answer`` field: an int index 0-3 or a letter A-D ("b", "(B)", "B."); else None."""
    if isinstance(answer, Integral) and not isinstance(answer, bool):
        return LETTERS[int(answer)] if 0 <= int(answer) < len(LETTERS) else None
    if isinstance(answer, str):
        m = _GOLD_LETTER_RE.fullmatch(answer.strip())
        return m.group(1).upper() if m else None
    return None


def format_question(question: str, choices: Iterable[str]) -> str:
    """The question followed by its choices, one per line: "A. ...", "B. ...", ..."""
    return "\n".join([question, *(f"{letter}. {text}" for letter, text in zip(LETTERS, choices))])


def _subject_keys(subjects: Iterable[str] | str | None) -> frozenset[str] | None:
    if subjects is None:
        return None
    names = subjects.split(",") if isinstance(subjects, str) else list(subjects)
    if not all(isinstance(s, str) for s in names):
        raise ValueError(f"mmlu: subjects must be names (strings), got {subjects!r}")
    keys = frozenset(subject_key(s) for s in names if s.strip())
    if not keys:
        raise ValueError("mmlu: subjects is empty (leave it out, or None, for all subjects)")
    return keys


class MMLUTask(DatasetTask):
    """MMLU, graded by the option letter."""

    name = "mmlu"
    grader = "choice"
    answer_format = CHOICE_FORMAT  # also asked for in the critic messages of rounds > 1
    answer_fallback = False  # only a boxed letter counts (see the module docstring)
    fields = ("question", "choices", "answer")

    def __init__(self, path: str | os.PathLike[str] | None = None, subjects: Iterable[str] | str | None = None) -> None:
        super().__init__(path)
        self.subjects = _subject_keys(subjects)
        if self.subjects is not None and path is None and not self.subjects <= set(SUBJECTS):
            unknown = ", ".join(sorted(self.subjects - set(SUBJECTS)))
            raise ValueError(f"mmlu: unknown subjects {unknown}; MMLU's subjects are: {', '.join(SUBJECTS)}")
        self._seen_subjects: set[str] = set()

    def load_hub(self) -> dict[str, list[Row]]:
        configs = ["all"] if self.subjects is None else [s for s in SUBJECTS if s in self.subjects]
        rows = load_hub(self.name, HUB_DATASET, configs, (*self.fields, "subject"), splits=(HUB_SPLIT,))
        return {"all": rows[HUB_SPLIT]}  # one pool, split with a seeded permutation

    def problems(self) -> dict[str, list[Problem]]:
        if self._problems is None:
            self._seen_subjects = set()
            try:
                problems = super().problems()
                missing = self.subjects - self._seen_subjects if self.subjects is not None else set()
                if missing:
                    source = str(self.path) if self.path is not None else f"the {HUB_DATASET} data set"
                    raise ValueError(
                        f"mmlu: no row of {source} has the subject {', '.join(sorted(missing))}; "
                        f"its subjects are: {', '.join(sorted(self._seen_subjects)) or 'none'}"
                    )
            except BaseException:
                self._problems = None  # a subject check that failed must fail again on the next call
                raise
            return problems
        return self._problems

    def to_problem(self, row: Row, default_id: str, where: str) -> Problem | None:
        require_fields(row, self.fields, self.name, where)
        question, choices, answer, subject = row["question"], row["choices"], row["answer"], row.get("subject")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"mmlu: {where} has question {question!r}, not a non-empty text; {ROW_FORMAT}")
        if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"mmlu: {where} has choices {choices!r}, not a list of strings; {ROW_FORMAT}")
        if len(choices) != len(LETTERS):
            raise ValueError(f"mmlu: {where} has {len(choices)} choices, not {len(LETTERS)}; {ROW_FORMAT}")
        letter = answer_letter(answer)
        if letter is None:
            raise ValueError(f"mmlu: {where} has answer {answer!r}, not an index 0-3 or a letter A-D; {ROW_FORMAT}")
        if subject is not None:
            if not isinstance(subject, str):
                raise ValueError(f"mmlu: {where} has subject {subject!r}, not a text")
            self._seen_subjects.add(subject_key(subject))
        if self.subjects is not None:
            require_fields(row, ("subject",), self.name, where)
            if subject_key(str(subject)) not in self.subjects:
                return None
        meta = {"subject": subject, "choices": list(choices), "stem": question}
        question_text = format_question(question, choices)
        return Problem(id=row_id(row, default_id), question=question_text, answer=letter, meta=meta)

    def prompt(self, problem: Problem) -> str:
        return step_by_step_prompt(problem.question, self.answer_format)

    def extract(self, response: str) -> str | None:
        """The letter A-D of the last ``\\boxed{}`` in ``response``, or None (an abstention)."""
        boxed = extract_answer(response, fallback=False)
        letter = None if boxed is None else choice_letter(boxed)
        return letter if letter is not None and letter in LETTERS else None
