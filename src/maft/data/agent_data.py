"""Per-agent finetuning data from a debate and its votes (SPEC section 2).

For agent n and a problem with majority label y (the final round's vote):

- generation data D^G_n: (round-1 prompt, agent n's round-1 response) when that answer equals y;
- critic data D^C_n: (the conversation up to the final-round prompt, agent n's final-round response)
  when the final answer equals y, split by agent n's round-1 answer into
  D^C-_n (round 1 was not y: the debate corrected it) and D^C+_n (round 1 was already y).
  D^C_n = all of D^C-_n + k examples of D^C+_n, drawn at random (seeded) and kept in problem order,
  where k depends on the mix rule (``data.critic_mix``):

  - ``fraction`` (maft's default): k = floor(f |D^C+_n| + 0.5), f = ``critic_plus_fraction``;
  - ``share`` (the paper's D^C_n = w D^C-_n + (1-w) D^C+_n, w = ``critic_share`` in (0, 1], the share
    of D^C- in D^C_n): k = min(floor(|D^C-_n| (1-w)/w + 0.5), |D^C+_n|); w = 1 adds no D^C+, and an
    agent with no D^C- gets no critic data at all (its share of an empty mix is undefined);
  - ``authors`` (the authors' code): one coin flip (p = 0.5) per D^C- example, k = min(heads, |D^C+_n|),
    i.e. Binomial(|D^C-_n|, 1/2) capped by |D^C+_n| (about two thirds D^C-).

  Halves round up. Which answer a turn counts with (a truncated response abstains by default) is
  the run's :class:`~maft.debate.voting.VoteRule`, the same as for the vote.

Only agent n's own responses enter its datasets, and the gold answer is never looked at.

Two other data sets serve the baselines:

- :func:`majority_pairs` (the paper's section 2.2, single-agent finetuning): every agent's final-round
  response whose answer equals y, as a plain (question, response) pair: the prompt is the task prompt
  alone, whatever the round, so one model learns to answer the question directly.
- :func:`rationalized_examples` (STaR's rationalization): a response given with the gold answer as a
  hint (:func:`maft.prompts.rationalization_hint`) that reaches the gold answer, as an example under
  the original question without the hint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal, get_args

from pydantic import BaseModel

from maft.debate.transcript import Turn, by_problem, rounds_of
from maft.debate.voting import ProblemVote, VoteRule
from maft.engines import Message
from maft.tasks import Task
from maft.types import CriticMix

Kind = Literal["generation", "critic-", "critic+", "majority", "rationalized"]
CRITIC_MIXES: tuple[str, ...] = get_args(CriticMix)


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
    critic_plus: int  # |D^C+_n| before the mix rule draws from it

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


def critic_plus_count(
    mix: CriticMix,
    minus: int,
    plus: int,
    *,
    fraction: float = 0.5,
    share: float = 2 / 3,
    rng: random.Random | None = None,
) -> int:
    """How many D^C+ examples join all ``minus`` D^C- examples, from ``plus`` available, under rule ``mix``
    (module docstring). ``authors`` flips its coins with ``rng``."""
    if mix == "fraction":
        if not 0 <= fraction <= 1:
            raise ValueError(f"critic_plus_fraction must be in [0, 1], got {fraction}")
        return math.floor(fraction * plus + 0.5)
    if mix == "share":
        if not 0 < share <= 1:
            raise ValueError(f"critic_share (w, the share of D^C- in the critic data) must be in (0, 1], got {share}")
        return min(math.floor(minus * (1 - share) / share + 0.5 + 1e-9), plus)  # 1e-9: 1.5 stays a half in floats
    if mix == "authors":
        rng = rng or random.Random(0)
        return min(sum(rng.random() < 0.5 for _ in range(minus)), plus)
    raise ValueError(f"unknown critic_mix {mix!r}; expected one of {', '.join(CRITIC_MIXES)}")


def build_agent_data(
    turns: Sequence[Turn],
    votes: Sequence[ProblemVote],
    task: Task,
    *,
    agents: int,
    critic_mix: CriticMix = "fraction",
    critic_plus_fraction: float = 0.5,
    critic_share: float = 2 / 3,
    seed: int = 0,
    rule: VoteRule | None = None,
) -> list[AgentData]:
    """D^G_n and D^C_n for every agent n (a single-round debate has no critic data).

    ``rule`` decides the answer each turn counts with, as in the vote: pass the run's
    (``VoteRule.of(config)``; default ``VoteRule()``)."""
    rule = rule or VoteRule()
    critic_plus_count(critic_mix, 0, 0, fraction=critic_plus_fraction, share=critic_share)  # bad values fail first
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
            first_agrees = task.equivalent(rule.answer(first), label)
            if first_agrees:
                generation.append(_example(first, "generation"))
            if final > 1 and task.equivalent(rule.answer(last), label):
                (plus if first_agrees else minus).append(_example(last, "critic+" if first_agrees else "critic-"))
        rng = random.Random(f"{seed}:critic+:{n}")
        k = critic_plus_count(
            critic_mix, len(minus), len(plus), fraction=critic_plus_fraction, share=critic_share, rng=rng
        )
        chosen = rng.sample(plus, k)
        chosen_ids = {id(e) for e in chosen}
        critic = minus + [e for e in plus if id(e) in chosen_ids]  # keep problem order within each set
        out.append(
            AgentData(agent=n, generation=generation, critic=critic, critic_minus=len(minus), critic_plus=len(plus))
        )
    return out


def majority_pairs(
    turns: Sequence[Turn], votes: Sequence[ProblemVote], task: Task, rule: VoteRule | None = None
) -> list[Example]:
    """(question, response) for every final-round response, from any agent, whose answer equals its
    problem's label (problem order, then agent order)."""
    rule = rule or VoteRule()
    final = rounds_of(turns)
    table = by_problem(turns)
    out = []
    for v in votes:
        if v.label is None:
            continue
        row = table[v.problem_id]
        for n in sorted(a for a, m in row if m == final):
            turn = row[(n, final)]
            if task.equivalent(rule.answer(turn), v.label):
                example = _example(turn, "majority")
                example.prompt = [row[(n, 1)].messages[0]]  # the question alone
                out.append(example)
    return out


def rationalized_examples(
    hinted: Sequence[Turn],
    questions: dict[str, Message],
    labels: dict[str, str | None],
    task: Task,
    rule: VoteRule | None = None,
) -> list[Example]:
    """The ``hinted`` responses (asked with the gold answer as a hint) that reach their problem's label,
    each under ``questions[problem_id]`` (the original task prompt, without the hint)."""
    rule = rule or VoteRule()
    out = []
    for turn in hinted:
        label = labels.get(turn.problem_id)
        if label is not None and task.equivalent(rule.answer(turn), label):
            example = _example(turn, "rationalized")
            example.prompt = [questions[turn.problem_id]]
            out.append(example)
    return out
