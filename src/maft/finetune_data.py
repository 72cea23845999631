"""Per-agent finetuning data from a debate and its votes (SPEC section 2).

For agent n and a problem with majority label y (the final round's vote):

- generation data D^G_n: (round-1 prompt, agent n's round-1 response) when that answer equals y;
- critic data D^C_n: (the conversation up to the final-round prompt, agent n's final-round response)
  when the final answer equals y, split by agent n's round-1 answer into
  D^C-_n (round 1 was not y: the debate corrected it) and D^C+_n (round 1 was already y).
  D^C_n = all of D^C-_n + a seeded random fraction w of D^C+_n (``floor(w * |D^C+_n| + 0.5)`` examples,
  halves rounded up).

Only agent n's own responses enter its datasets, and the gold answer is never looked at.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from maft.debate import Turn, by_problem, rounds_of
from maft.engines import Message
from maft.tasks import Task
from maft.voting import ProblemVote

Kind = Literal["generation", "critic-", "critic+"]


class Example(BaseModel):
    """One prompt-completion example (TRL's conversational prompt-completion format)."""

    prompt: list[Message]
    completion: list[Message]
    problem_id: str
    agent: int
    kind: Kind


class AgentData(BaseModel):
    """The two datasets of one agent, with the sizes of the sets they were drawn from."""

    agent: int
    generation: list[Example]
    critic: list[Example]
    critic_minus: int  # |D^C-_n| (all of it is in ``critic``)
    critic_plus: int  # |D^C+_n| before taking the fraction w

    def counts(self) -> dict[str, int]:
        return {
            "generation": len(self.generation),
            "critic": len(self.critic),
            "critic_minus": self.critic_minus,
            "critic_plus_total": self.critic_plus,
            "critic_plus_used": len(self.critic) - self.critic_minus,
        }


def _example(turn: Turn, kind: Kind) -> Example:
    return Example(
        prompt=turn.messages,
        completion=[{"role": "assistant", "content": turn.response}],
        problem_id=turn.problem_id,
        agent=turn.agent,
        kind=kind,
    )


def build_agent_data(
    turns: Sequence[Turn],
    votes: Sequence[ProblemVote],
    task: Task,
    *,
    agents: int,
    critic_plus_fraction: float,
    seed: int = 0,
) -> list[AgentData]:
    """D^G_n and D^C_n for every agent n (a single-round debate has no critic data)."""
    if not 0 <= critic_plus_fraction <= 1:
        raise ValueError(f"critic_plus_fraction (w) must be in [0, 1], got {critic_plus_fraction}")
    final = rounds_of(turns)
    table = by_problem(turns)
    labels = {v.problem_id: v.label for v in votes}
    out = []
    for n in range(agents):
        generation: list[Example] = []
        minus: list[Example] = []
        plus: list[Example] = []
        for problem_id, label in labels.items():
            if label is None:  # every answer abstained: no label, no data
                continue
            first, last = table[problem_id][(n, 1)], table[problem_id][(n, final)]
            first_agrees = task.equivalent(first.answer, label)
            if first_agrees:
                generation.append(_example(first, "generation"))
            if final > 1 and task.equivalent(last.answer, label):
                (plus if first_agrees else minus).append(_example(last, "critic+" if first_agrees else "critic-"))
        rng = random.Random(f"{seed}:critic+:{n}")
        chosen = rng.sample(plus, math.floor(critic_plus_fraction * len(plus) + 0.5))
        chosen_ids = {id(e) for e in chosen}
        critic = minus + [e for e in plus if id(e) in chosen_ids]  # keep problem order within each set
        out.append(AgentData(agent=n, generation=generation, critic=critic, critic_minus=len(minus), critic_plus=len(plus)))
    return out
