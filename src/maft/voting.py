"""Majority vote over equivalence classes of answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel

if TYPE_CHECKING:
    from maft.debate import Turn
    from maft.tasks import Problem, Task


@dataclass(frozen=True)
class Vote:
    """The outcome of a vote. ``answer`` is None when every answer abstained (no label)."""

    answer: str | None
    count: int  # size of the winning class
    voters: int  # answers that did not abstain
    classes: list[list[int]]  # indices of the answers in each equivalence class, in order of first appearance

    @property
    def unanimous(self) -> bool:
        return self.voters > 0 and self.count == self.voters


def majority_vote(answers: Sequence[str | None], equivalent: Callable[[str, str], bool]) -> Vote:
    """Plurality vote: answers are grouped by ``equivalent`` (each joins the first class whose first
    member it equals); abstentions (None) never vote. Tie rule: among the largest classes, the one
    whose first member came first wins, and its first member is the reported answer."""
    classes: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for members in classes:
            if equivalent(answers[members[0]], a):  # type: ignore[arg-type]
                members.append(i)
                break
        else:
            classes.append([i])
    if not classes:
        return Vote(answer=None, count=0, voters=0, classes=[])
    best = max(classes, key=len)  # max() keeps the first of equal-sized classes
    return Vote(answer=answers[best[0]], count=len(best), voters=sum(map(len, classes)), classes=classes)


class ProblemVote(BaseModel):
    """The final round's vote on one problem: its label for the finetuning data (None: no label)."""

    problem_id: str
    label: str | None
    count: int
    voters: int
    agents: int
    classes: list[list[int]]  # agent indices per equivalence class
    correct: bool  # the label against the gold answer: for evaluation only

    @property
    def unanimous(self) -> bool:
        return self.voters == self.agents and self.count == self.voters


def vote_final_round(turns: Sequence[Turn], task: Task, problems: Sequence[Problem]) -> list[ProblemVote]:
    """Majority vote of each problem's final-round answers (only the final round votes)."""
    final = max(t.round for t in turns)
    answers: dict[str, list[Turn]] = {}
    for t in turns:
        if t.round == final:
            answers.setdefault(t.problem_id, []).append(t)
    votes = []
    for p in problems:
        row = sorted(answers[p.id], key=lambda t: t.agent)
        v = majority_vote([t.answer for t in row], task.equivalent)
        votes.append(
            ProblemVote(
                problem_id=p.id,
                label=v.answer,
                count=v.count,
                voters=v.voters,
                agents=len(row),
                classes=[[row[i].agent for i in c] for c in v.classes],
                correct=task.is_correct(v.answer, p),
            )
        )
    return votes
