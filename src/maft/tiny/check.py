"""The numbers that describe a tiny checkpoint: sampled, greedy, majority-of-3 and round-2 debate accuracy.

They come from one ordinary debate (3 base-model agents x 2 rounds, the ``answers`` summary: each agent
sees the other two round-1 answers) read by :func:`maft.evaluation.metrics.debate_metrics`, plus one greedy answer
per problem: the same code path as a run's iteration 0, so the check describes what a run will see.
"""

from __future__ import annotations

from pydantic import BaseModel

from maft.debate.protocol import debate
from maft.debate.voting import VoteRule
from maft.engines import Engine, Sampling
from maft.evaluation.metrics import Accuracy, debate_metrics
from maft.evaluation.single_agent import evaluate
from maft.tasks import Problem, Task


class TinyCheck(BaseModel):
    n: int
    single: Accuracy  # one sample at T=1, top_p=0.9: an agent's round-1 answer (mean over the 3 agents)
    greedy: Accuracy
    majority_of_3: Accuracy  # the majority vote of the 3 round-1 answers
    debate_round2_agent: Accuracy  # an agent's round-2 answer, after seeing the other two round-1 answers
    debate_round2_majority: Accuracy
    abstention_rate: float  # over both rounds


def check(engine: Engine, task: Task, problems: list[Problem], seed: int = 0, progress: bool = False) -> TinyCheck:
    """Three agents answer (round 1); each then sees the others' answers digest and answers again (round 2)."""
    rule = VoteRule(seed=seed)  # a run's default: a truncated response abstains, in the digest too
    turns = debate(
        engine,
        task,
        problems,
        agents=3,
        rounds=2,
        sampling=Sampling(),
        seed=seed,
        progress=progress,
        answer_of=rule.answer,
    )
    metrics = debate_metrics(turns, task, problems, rule)
    greedy = evaluate(engine, task, problems, samples=1, sampling=Sampling(temperature=0), seed=seed, progress=progress)
    return TinyCheck(
        n=len(problems),
        single=metrics.round_agent[0],
        greedy=greedy.single,
        majority_of_3=metrics.round_majority[0],
        debate_round2_agent=metrics.round_agent[1],
        debate_round2_majority=metrics.round_majority[1],
        abstention_rate=metrics.abstention_rate,
    )
