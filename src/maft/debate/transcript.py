"""A debate's transcript: one :class:`Turn` per (problem, agent, round), and the ways to index it.

Everything that reads a debate (votes, finetuning data, metrics, diversity, the report) reads these
records, so they sit below all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer

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
    # (debate.summarizer: model; 0 otherwise): compute spent on this turn besides the response. Written only when
    # there are some, so a transcript without model summaries is byte for byte what maft wrote before the field
    # existed (a regenerated debate of an older run is then recognized as the same outputs)
    summary_tokens: int = 0

    @model_serializer(mode="wrap")
    def _without_zero_summary(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and not data.get("summary_tokens"):
            data.pop("summary_tokens", None)
        return data


def rounds_of(turns: Sequence[Turn]) -> int:
    return max((t.round for t in turns), default=0)


def by_problem(turns: Sequence[Turn]) -> dict[str, dict[tuple[int, int], Turn]]:
    """problem id -> {(agent, round): turn}."""
    out: dict[str, dict[tuple[int, int], Turn]] = {}
    for t in turns:
        out.setdefault(t.problem_id, {})[(t.agent, t.round)] = t
    return out
