"""Accuracy with standard error, and the metrics of a debate on held-out problems."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from maft.debate.transcript import Turn
    from maft.debate.voting import VoteRule
    from maft.tasks import Problem, Task


class Accuracy(BaseModel):
    """Mean accuracy over ``n`` problems with its standard error sqrt(var/n), as in the paper."""

    mean: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.se:.1f}"


def accuracy(scores: Sequence[float]) -> Accuracy:
    """``scores`` holds one value in [0, 1] per problem (0/1, or the mean over several samples)."""
    n = len(scores)
    if n == 0:
        raise ValueError("accuracy of zero problems is undefined")
    mean = sum(scores) / n
    var = sum((s - mean) ** 2 for s in scores) / n
    return Accuracy(mean=mean, se=math.sqrt(var / n), n=n)


def agreement(answers: Sequence[Sequence[str | None]], task: Task) -> tuple[float, float]:
    """(pairwise, unanimous) over problems, given each problem's answers, one per agent: the mean share of
    agent pairs whose answers are equivalent (an abstention agrees with nothing; one agent: 1), and the
    share of problems where every pair is."""
    pairwise, unanimous = [], []
    for row in answers:
        same = [
            row[a] is not None and row[b] is not None and task.equivalent(row[a], row[b])
            for a in range(len(row))
            for b in range(a + 1, len(row))
        ]
        pairwise.append(sum(same) / len(same) if same else 1.0)
        unanimous.append(float(all(same)))
    return sum(pairwise) / len(pairwise), sum(unanimous) / len(unanimous)


class DebateMetrics(BaseModel):
    """How a debate did on held-out problems (graded against the gold answers)."""

    problems: int
    majority: Accuracy  # the final round's majority vote: the society's answer
    round_agent: list[Accuracy]  # per round: mean accuracy of one agent
    round_majority: list[Accuracy]  # per round: majority vote of that round
    agent_round: list[list[Accuracy]]  # [agent][round]
    unanimous: float  # final round: all agents gave equivalent answers
    pairwise_agreement: float  # final round: fraction of agent pairs with equivalent answers
    abstention_rate: float  # answers that abstained (under debate.truncated=abstain, truncated responses too)
    generated_tokens: int
    truncated: list[float] = Field(default_factory=list)  # per round: share of responses cut off at max_new_tokens


def truncation_shares(turns: Sequence[Turn]) -> list[float]:
    """Per round (1, 2, ...): the share of that round's responses that stopped at max_new_tokens."""
    rounds = max((t.round for t in turns), default=0)
    out = []
    for m in range(1, rounds + 1):
        row = [t for t in turns if t.round == m]
        out.append(sum(t.truncated for t in row) / len(row) if row else 0.0)
    return out


def debate_metrics(
    turns: Sequence[Turn], task: Task, problems: Sequence[Problem], rule: VoteRule | None = None
) -> DebateMetrics:
    """Per-round, per-agent and majority accuracy with standard errors, and agreement, of a debate.

    ``rule`` (default ``VoteRule()``: random ties, truncated responses abstain, seed 0) decides the
    answer each turn counts with and breaks ties, as for the training labels: pass the run's
    (``VoteRule.of(config)``)."""
    from maft.debate.transcript import by_problem
    from maft.debate.voting import VoteRule

    rule = rule or VoteRule()
    gold = {p.id: p for p in problems}
    rounds = max(t.round for t in turns)
    agents = max(t.agent for t in turns) + 1
    grid = by_problem(turns)
    ids = [p.id for p in problems]

    def round_scores(m: int) -> tuple[list[float], list[float]]:
        agent, majority = [], []
        for pid in ids:
            row = [grid[pid][(n, m)] for n in range(agents)]
            agent.append(sum(rule.correct(t) for t in row) / agents)
            majority.append(_majority_correct(row, gold[pid], task, rule))
        return agent, majority

    per_round = [round_scores(m) for m in range(1, rounds + 1)]
    pairwise, unanimous = agreement([[rule.answer(grid[pid][(n, rounds)]) for n in range(agents)] for pid in ids], task)
    return DebateMetrics(
        problems=len(ids),
        majority=accuracy(per_round[-1][1]),
        round_agent=[accuracy(a) for a, _ in per_round],
        round_majority=[accuracy(v) for _, v in per_round],
        agent_round=[
            [accuracy([float(rule.correct(grid[pid][(n, m)])) for pid in ids]) for m in range(1, rounds + 1)]
            for n in range(agents)
        ],
        unanimous=unanimous,
        pairwise_agreement=pairwise,
        abstention_rate=sum(rule.answer(t) is None for t in turns) / len(turns),
        generated_tokens=sum(t.completion_tokens + t.summary_tokens for t in turns),
        truncated=truncation_shares(turns),
    )


def _majority_correct(row: Sequence[Turn], problem: Problem, task: Task, rule: VoteRule) -> float:
    """1.0 if the majority vote of one round's turns on ``problem`` (one per agent) is right, else 0.0."""
    vote = rule.vote([rule.answer(t) for t in row], task.equivalent, problem.id)
    return float(task.is_correct(vote.answer, problem))


def majority_scores(
    turns: Sequence[Turn], task: Task, problems: Sequence[Problem], rule: VoteRule | None = None
) -> list[float]:
    """Per problem, in the order of ``problems``: 1.0 if the final round's majority vote is right, else 0.0 (the
    scores whose mean is :func:`debate_metrics`' ``majority``; ``rule`` as there)."""
    from maft.debate.transcript import by_problem
    from maft.debate.voting import VoteRule

    rule = rule or VoteRule()
    rounds = max(t.round for t in turns)
    agents = max(t.agent for t in turns) + 1
    grid = by_problem(turns)
    return [_majority_correct([grid[p.id][(n, rounds)] for n in range(agents)], p, task, rule) for p in problems]


class Compute(BaseModel):
    """What one iteration cost: tokens generated, examples finetuned on, wall time."""

    train_generated_tokens: int = 0  # the training debate (iteration >= 1)
    test_generated_tokens: int = 0  # the held-out debate
    train_examples: int = 0  # summed over the finetuned models (an example seen for 2 epochs counts once)
    train_seconds: float = 0.0  # finetuning only
    seconds: float = 0.0  # every stage of the iteration

    @property
    def generated_tokens(self) -> int:
        return self.train_generated_tokens + self.test_generated_tokens


class Diversity(BaseModel):
    """How different the agents' responses to the held-out problems are: round 1 (each generation agent
    answering alone), the final round (the critics) and each agent's distance from the base model.

    Definitions (README, "Diversity"; y: round-1 responses, z: final-round responses in their own conversations,
    per token, end-of-sequence token included), over problems and ordered pairs of agents a != b:
      answer_agreement         share of pairs whose round-1 answers are equivalent (abstentions never agree)
      consensus                share of problems where all agents' round-1 answers are equivalent
      embedding_dissimilarity  mean 1 - cos(e(y_a), e(y_b)), e = the sentence embedding of ``encoder``
      encoder                  the sentence encoder used (diversity.encoder; None without embeddings)
      cross_nll                mean NLL of generation agent b's response under generation agent a
      self_nll                 mean NLL of an agent's round-1 response under its own model
      kl                       mean of [NLL_a(y_b) - NLL_b(y_b)]: a Monte Carlo estimate of KL(p_b || p_a)
      critic_round             the final round M the critic measures use (None with a single round)
      critic_cross_nll         mean NLL of critic b's final response under critic a, in b's conversation
      critic_self_nll          mean NLL of a critic's final response under its own model
      critic_kl                mean of [NLL_a(z_b) - NLL_b(z_b)], as kl, for the critics
      kl_from_base             mean over roles of kl_from_base_by_role
      kl_from_base_by_role     per role (gen_n on y_n, critic_n on z_n): mean of [NLL_base - NLL_role] of
                               its own responses, a Monte Carlo estimate of KL(p_role || p_base); 0 at
                               iteration 0 and for a role that is the base model
    A measure that was not computed is None (e.g. embeddings without the optional extra, likelihoods on a
    server without prompt log-probabilities, critic measures with a single round).
    """

    round: int = 1
    agents: int
    problems: int
    answer_agreement: float
    consensus: float
    embedding_dissimilarity: float | None = None
    encoder: str | None = None
    cross_nll: float | None = None
    self_nll: float | None = None
    kl: float | None = None
    critic_round: int | None = None
    critic_cross_nll: float | None = None
    critic_self_nll: float | None = None
    critic_kl: float | None = None
    kl_from_base: float | None = None
    kl_from_base_by_role: dict[str, float] | None = None


class TrainStats(BaseModel):
    """What iteration l learned from: the training debate's labels and each role's data and loss."""

    problems: int
    labelled: int  # problems whose final round had at least one answer
    unanimous: float
    label_precision: Accuracy  # labels equal to the gold answer, over labelled problems (diagnostic only)
    data: dict[str, dict[str, int]]  # per agent: generation / critic / critic_minus / critic_plus_*
    losses: dict[str, float | None]  # per role


class IterationMetrics(BaseModel):
    iteration: int
    test: DebateMetrics
    train: TrainStats | None = None  # None for iteration 0 (the base model)
    seconds: dict[str, float]  # per stage
    compute: Compute = Field(default_factory=Compute)
    diversity: Diversity | None = None  # None with a single agent, or when diversity.enabled is off
