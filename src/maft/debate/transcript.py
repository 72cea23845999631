"""A debate's transcript: one :class:`Turn` per (problem, agent, round), and the ways to index it.

Everything that reads a debate (votes, finetuning data, metrics, diversity, the report) reads these
records, so they sit below all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from maft.engines.base import Message


class Turn(BaseModel):
    """One agent's response in one round of the debate on one problem."""

    problem_id: str
    agent: int
    round: int  # 1-based
    adapter: str | None
    messages: list[Message]  # the conversation the agent was given (ends with a user message)
    response: str
    answer: str | None  # extracted; None is an abstention
    correct: bool  # graded against the gold answer: for evaluation only, never for training data
    completion_tokens: int
    truncated: bool = False  # the response stopped at max_new_tokens
    # tokens the base model generated for the summary of the others' answers that ``messages`` ends with
    # (debate.summarizer: model; 0 otherwise): compute spent on this turn besides the response
    summary_tokens: int = 0


def rounds_of(turns: Sequence[Turn]) -> int:
    return max((t.round for t in turns), default=0)


def by_problem(turns: Sequence[Turn]) -> dict[str, dict[tuple[int, int], Turn]]:
    """problem id -> {(agent, round): turn}."""
    out: dict[str, dict[tuple[int, int], Turn]] = {}
    for t in turns:
        out.setdefault(t.problem_id, {})[(t.agent, t.round)] = t
    return out
