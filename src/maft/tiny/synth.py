"""Synthetic conversations that teach the tiny model to behave like a sampled LLM in a debate.

The data simulates a society of agents on arithmetic problems, in the exact message formats maft
produces (``maft.prompts`` and the arithmetic task's prompt):

* **Round 1.** An agent writes the chain ``b*c=.., e*f=.., a+..=.., ..+d=.., ..-..=..`` and
  ``\\boxed{result}``. The final subtraction ``x-y`` is written by place value
  (``subtraction="places"``, the default): ``960-437: 960-400=560, 560-30=530, 530-7=523``, and when
  the result is negative the larger number is taken apart instead:
  ``156-725=-(725-156): 725-100=625, 625-50=575, 575-6=569``, answer -569. Each sub-step changes a
  digit or two, which a tiny model learns; a 3-digit subtraction in one step (``subtraction="direct"``,
  ``156-725=-569``) was the first checkpoint's main error (6% right when the result is negative, 65%
  otherwise). ``"flip"`` writes ``x-y=-(y-x)=-r`` in one step.
* **Rounds m > 1 (critic).** The agent sees its own previous answer and the other agents' answers
  (as the ``answers`` digest, or their full solutions for ``concat``). When its answer is backed by
  the others (``critic_recheck``: ``minority``, the default: its answer is a most common one and
  shared by at least one other agent; ``disagreement``: every answer equals it) it confirms; otherwise
  it recomputes more carefully (``critic_slip_rate``). It confirms in one short sentence that repeats
  the answer (``critic_confirm="brief"``, the default: ``My answer agrees with the others. The answer is
  \\boxed{523}.``), or by copying its whole previous solution (``"copy"``, the first checkpoints' recipe,
  whose critics slipped a digit while copying a long chain and so broke right answers once finetuned
  agents mostly agreed). So seeing other agents' answers helps, as debate does for real LLMs.
* **Summaries.** The ``model`` summarizer request is answered with the answers digest.

``slip_rate`` is what the model learns as probability mass; sampling with top_p=0.9 removes about
0.1 of that mass from the tail, so the observed per-step slip rate is roughly (slip_rate - 0.1) / 0.9.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from maft import prompts
from maft.tasks.arithmetic import Expression, arithmetic_prompt

SubtractionForm = Literal["direct", "flip", "places"]
Kind = Literal["round1", "debate", "debate_concat", "summarize"]
KINDS: tuple[Kind, ...] = ("round1", "debate", "debate_concat", "summarize")
MIN_DEBATE_SHARE = 0.25  # with less, the critic round made the feasibility model worse


class SynthConfig(BaseModel):
    """How the synthetic society behaves, and the mix of conversation kinds."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is refused, not ignored

    slip_rate: float = Field(0.2, ge=0, le=1, description="per-step slip probability in round 1")
    critic_slip_rate: float = Field(
        0.16, ge=0, le=1, description="per-step slip probability when recomputing in a debate round"
    )
    mix: dict[str, float] = Field(
        default_factory=lambda: {"round1": 0.55, "debate": 0.33, "debate_concat": 0.05, "summarize": 0.07},
        description="share of conversations of each kind (debate kinds must total at least 0.25)",
    )
    others_weights: list[float] = Field(
        default_factory=lambda: [0.2, 0.5, 0.15, 0.15],
        description="probability of 1, 2, 3, 4 other agents in a debate",
    )
    subtraction: SubtractionForm = Field(
        "places",
        description="how the final x-y is written: in one step (direct), x-y=-(y-x)=-r when negative (flip), "
        "or flipped when negative and taken apart by place value (places)",
    )
    max_concat_others: int = Field(2, ge=1, description="at most this many full solutions in a concat message")
    p_third_round: float = Field(0.1, ge=0, le=1, description="share of debates that train a round-3 answer")
    critic_confirm: Literal["brief", "copy"] = Field(
        "brief", description="how a backed critic confirms: one sentence with the answer, or its whole solution again"
    )
    critic_recheck: Literal["minority", "disagreement"] = Field(
        "minority",
        description="when a critic recomputes: its answer is not a most common one shared with another agent "
        "(minority), or any answer differs (disagreement)",
    )

    def model_post_init(self, _: object) -> None:
        unknown = set(self.mix) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown conversation kinds in mix: {sorted(unknown)}; known: {KINDS}")
        total = sum(self.mix.values())
        if total <= 0:
            raise ValueError("mix must have a positive total")
        debate = (self.mix.get("debate", 0) + self.mix.get("debate_concat", 0)) / total
        if debate < MIN_DEBATE_SHARE:
            raise ValueError(
                f"debate conversations are {debate:.0%} of the mix; at least {MIN_DEBATE_SHARE:.0%} is needed"
            )


@dataclass(frozen=True)
class Conversation:
    """A conversation whose last assistant message is the training target."""

    kind: Kind
    messages: list[dict[str, str]]  # ends with the assistant target
    correct: bool  # whether the target's answer is the true value (for analysis only)


def _slip(value: int, rng: random.Random) -> int:
    """``value`` with its last digit replaced by a different random digit."""
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    last = magnitude % 10
    new_last = rng.choice([d for d in range(10) if d != last])
    return sign * (magnitude - last + new_last)


def _places(y: int) -> list[int]:
    """The nonzero place values of ``y >= 0``, largest first: 437 -> [400, 30, 7]."""
    return [int(d) * 10**i for i, d in reversed(list(enumerate(reversed(str(y))))) if d != "0"]


def solve(
    expr: Expression, rng: random.Random, slip_rate: float, subtraction: SubtractionForm = "places"
) -> tuple[str, int]:
    """A chain-of-thought solution with independent per-step slips; returns (text, final answer).

    The five logical steps (two products, two sums, the difference) slip independently; a slip in a
    place-value subtraction hits one of its sub-steps, and the later sub-steps carry the wrong value on.
    """
    steps: list[str] = []

    def step(x: int, op: str, y: int) -> int:
        exact = x * y if op == "*" else x + y
        result = _slip(exact, rng) if rng.random() < slip_rate else exact
        steps.append(f"{x}{op}{y}={result}")
        return result

    def subtract(x: int, y: int) -> int:
        slipped = rng.random() < slip_rate
        flip = x < y and subtraction != "direct"
        big, small = (y, x) if flip else (x, y)
        head = f"{x}-{y}=-({y}-{x})" if flip else f"{x}-{y}"
        parts = _places(small) if subtraction == "places" else []
        if len(parts) < 2:  # one step
            exact = big - small
            result = _slip(exact, rng) if slipped else exact
            steps.append(f"{head}={'-' if flip else ''}{result}")
            return -result if flip else result
        where = rng.randrange(len(parts)) if slipped else -1
        value, sub = big, []
        for i, part in enumerate(parts):
            new = value - part
            new = _slip(new, rng) if i == where else new
            sub.append(f"{value}-{part}={new}")
            value = new
        steps.append(f"{head}: {', '.join(sub)}")
        return -value if flip else value

    p1 = step(expr.b, "*", expr.c)
    p2 = step(expr.e, "*", expr.f)
    s1 = step(expr.a, "+", p1)
    s2 = step(s1, "+", expr.d)
    result = subtract(s2, p2)
    return f"{', '.join(steps)}. The answer is \\boxed{{{result}}}.", result


class SimulatedDebate:
    """Simulates agents debating one problem, producing each agent's conversation."""

    def __init__(self, cfg: SynthConfig, rng: random.Random) -> None:
        self.cfg, self.rng = cfg, rng

    def debate(self, expr: Expression, n_agents: int, rounds: int, concat: bool) -> list[list[dict[str, str]]]:
        """Every agent's full conversation after ``rounds`` rounds (the last message is an answer)."""
        question = arithmetic_prompt(expr.text)
        convs, answers = [], []
        for _ in range(n_agents):
            text, answer = solve(expr, self.rng, self.cfg.slip_rate, self.cfg.subtraction)
            convs.append([{"role": "user", "content": question}, {"role": "assistant", "content": text}])
            answers.append(answer)
        for _ in range(rounds - 1):
            texts = [c[-1]["content"] for c in convs]
            new_answers = []
            for n in range(n_agents):
                others = [i for i in range(n_agents) if i != n]
                if concat:
                    message = prompts.critic_message(responses=[texts[i] for i in others])
                else:
                    message = prompts.critic_message(summary=prompts.answers_digest([str(answers[i]) for i in others]))
                if self._backed(answers, n):
                    text, answer = self._confirm(texts[n], answers[n]), answers[n]
                else:
                    text, answer = solve(
                        expr, self.rng, self.cfg.critic_slip_rate, self.cfg.subtraction
                    )  # disagreement: recheck
                convs[n] = convs[n] + [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
                new_answers.append(answer)
            answers = new_answers
        return convs

    def _backed(self, answers: list[int], n: int) -> bool:
        """Whether agent ``n``'s answer stands (``critic_recheck``, module docstring)."""
        if self.cfg.critic_recheck == "disagreement":
            return all(a == answers[n] for a in answers)
        count = answers.count(answers[n])
        return count >= 2 and count == max(answers.count(a) for a in answers)

    def _confirm(self, text: str, answer: int) -> str:
        """A backed critic's response (``critic_confirm``)."""
        if self.cfg.critic_confirm == "copy":
            return text
        return f"My answer agrees with the others. The answer is \\boxed{{{answer}}}."

    def example(self, kind: Kind) -> Conversation:
        expr = Expression.sample(self.rng)
        if kind == "round1":
            conv = self.debate(expr, n_agents=1, rounds=1, concat=False)[0]
            return Conversation(kind, conv, _answer_of(conv) == expr.value)
        if kind == "summarize":
            n = self._n_others(concat=False)
            texts = [solve(expr, self.rng, self.cfg.slip_rate, self.cfg.subtraction) for _ in range(n)]
            request = prompts.summarizer_request([t for t, _ in texts])
            digest = prompts.answers_digest([str(a) for _, a in texts])
            return Conversation(
                kind, [{"role": "user", "content": request}, {"role": "assistant", "content": digest}], True
            )
        concat = kind == "debate_concat"
        rounds = 3 if self.rng.random() < self.cfg.p_third_round else 2
        conv = self.debate(expr, n_agents=self._n_others(concat) + 1, rounds=rounds, concat=concat)[0]
        return Conversation(kind, conv, _answer_of(conv) == expr.value)

    def _n_others(self, concat: bool) -> int:
        weights = self.cfg.others_weights[: self.cfg.max_concat_others] if concat else self.cfg.others_weights
        return self.rng.choices(range(1, len(weights) + 1), weights=weights)[0]

    def kind(self) -> Kind:
        kinds = list(self.cfg.mix)
        return cast(Kind, self.rng.choices(kinds, weights=[self.cfg.mix[k] for k in kinds])[0])


def _answer_of(conv: list[dict[str, str]]) -> int:
    text = conv[-1]["content"]
    return int(text[text.rindex("{") + 1 : text.rindex("}")])
