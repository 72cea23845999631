"""Majority vote over equivalence classes of answers, and the rule that says which answer a turn votes with.

Every reader of a debate (the labels of :func:`vote_final_round`, the finetuning data, the metrics)
goes through one :class:`VoteRule`: :meth:`VoteRule.answer` decides the answer a turn counts with
(a response cut off at the token limit abstains under ``truncated="abstain"``) and
:meth:`VoteRule.vote` takes the majority (ties broken at random, seeded by the run seed and the
problem, or by the old fixed rule ``first``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

from maft.types import TieBreak, Truncated

if TYPE_CHECKING:
    from maft.config import RunConfig
    from maft.debate.transcript import Turn
    from maft.tasks import Problem, Task


@dataclass(frozen=True)
class Vote:
    """The outcome of a vote. ``answer`` is None when every answer abstained (no label)."""

    answer: str | None
    count: int  # size of the winning class
    voters: int  # answers that did not abstain
    classes: list[list[int]]  # indices of the answers in each equivalence class, in order of first appearance
    tied: int = 1  # how many classes shared the largest size (1: no tie; 0: nobody voted)


def tie_key(seed: int, problem_id: str) -> str:
    """The seed string of a problem's tie-break: the run seed and the problem id, nothing else (so a
    resumed run draws the same winner, and one problem's draw never depends on another's)."""
    return f"{seed}:tie:{problem_id}"


def majority_vote(
    answers: Sequence[str | None],
    equivalent: Callable[[str, str], bool],
    *,
    tie_break: TieBreak = "first",
    key: str | None = None,
) -> Vote:
    """Plurality vote: answers are grouped by ``equivalent`` (each joins the first class whose first
    member it equals); abstentions never vote: None, and an answer not equivalent to itself (one that
    grades as nothing, such as ``\\text{}`` or ``x=``, which would otherwise be a class of its own and could
    win a tie). The winning class's first member is the reported answer.

    Ties among the largest classes: ``first`` picks the one whose first member came first (the
    lowest index); ``random`` picks one uniformly with ``random.Random(key)`` (``key`` is required:
    see :func:`tie_key`). Abstentions are never among the candidates."""
    if tie_break not in ("random", "first"):
        raise ValueError(f"unknown tie_break {tie_break!r}; expected 'random' or 'first'")
    classes: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None or not equivalent(a, a):
            continue
        for members in classes:
            if equivalent(answers[members[0]], a):  # type: ignore[arg-type]
                members.append(i)
                break
        else:
            classes.append([i])
    if not classes:
        return Vote(answer=None, count=0, voters=0, classes=[], tied=0)
    size = max(map(len, classes))
    largest = [c for c in classes if len(c) == size]  # in order of first appearance
    best = largest[0]
    if len(largest) > 1 and tie_break == "random":
        if key is None:
            raise ValueError(
                "tie_break='random' needs a key (the run seed and the problem id: tie_key(seed, problem_id))"
            )
        best = largest[random.Random(key).randrange(len(largest))]
    return Vote(answer=answers[best[0]], count=size, voters=sum(map(len, classes)), classes=classes, tied=len(largest))


@dataclass(frozen=True)
class VoteRule:
    """How a debate's turns are read: which answer each turn votes with, and how ties break.

    ``truncated``: ``abstain`` (default) makes a response that stopped at max_new_tokens an
    abstention, whatever could be extracted from it; ``keep`` uses its extracted answer.
    ``tie_break``: ``random`` (default, the paper) or ``first`` (lowest agent index); ``seed`` is
    the run seed that, with the problem id, seeds the random tie-break."""

    tie_break: TieBreak = "random"
    truncated: Truncated = "abstain"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tie_break not in ("random", "first"):
            raise ValueError(f"unknown tie_break {self.tie_break!r}; expected 'random' or 'first'")
        if self.truncated not in ("abstain", "keep"):
            raise ValueError(f"unknown truncated rule {self.truncated!r}; expected 'abstain' or 'keep'")

    @classmethod
    def of(cls, config: RunConfig) -> VoteRule:
        """The rule of a run: ``debate.tie_break``, ``debate.truncated`` and the run ``seed``."""
        return cls(tie_break=config.debate.tie_break, truncated=config.debate.truncated, seed=config.seed)

    def answer(self, turn: Turn) -> str | None:
        """The answer ``turn`` votes with (and is graded and labelled with); None is an abstention."""
        if turn.truncated and self.truncated == "abstain":
            return None
        return turn.answer

    def correct(self, turn: Turn) -> bool:
        """Whether the answer ``turn`` votes with is right (an abstention never is)."""
        return turn.correct and self.answer(turn) is not None

    def vote(self, answers: Sequence[str | None], equivalent: Callable[[str, str], bool], problem_id: str) -> Vote:
        return majority_vote(answers, equivalent, tie_break=self.tie_break, key=tie_key(self.seed, problem_id))


class ProblemVote(BaseModel):
    """The final round's vote on one problem: its label for the finetuning data (None: no label)."""

    problem_id: str
    label: str | None
    count: int
    voters: int
    agents: int
    classes: list[list[int]]  # agent indices per equivalence class
    correct: bool  # the label against the gold answer: for evaluation only
    tied: int = 1  # classes that shared the largest size (> 1: the label was a tie-break)

    @property
    def unanimous(self) -> bool:
        return self.voters == self.agents and self.count == self.voters


def vote_final_round(
    turns: Sequence[Turn], task: Task, problems: Sequence[Problem], rule: VoteRule | None = None
) -> list[ProblemVote]:
    """Majority vote of each problem's final-round answers (only the final round votes), read with ``rule``
    (the run's: ``VoteRule.of(config)``; default ``VoteRule()``: random ties seeded with seed 0, truncated
    responses abstain)."""
    rule = rule or VoteRule()
    final = max(t.round for t in turns)
    answers: dict[str, list[Turn]] = {}
    for t in turns:
        if t.round == final:
            answers.setdefault(t.problem_id, []).append(t)
    votes = []
    for p in problems:
        row = sorted(answers[p.id], key=lambda t: t.agent)
        v = rule.vote([rule.answer(t) for t in row], task.equivalent, p.id)
        votes.append(
            ProblemVote(
                problem_id=p.id,
                label=v.answer,
                count=v.count,
                voters=v.voters,
                agents=len(row),
                classes=[[row[i].agent for i in c] for c in v.classes],
                correct=task.is_correct(v.answer, p),
                tied=v.tied,
            )
        )
    return votes
