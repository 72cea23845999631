"""The numbers that describe a tiny checkpoint: sampled, greedy, majority-of-3 and round-2 debate accuracy."""

from __future__ import annotations

from pydantic import BaseModel

from maft import prompts
from maft.engines import Engine, Request, Sampling
from maft.evaluate import evaluate
from maft.metrics import Accuracy, accuracy
from maft.tasks import Problem, Task
from maft.voting import majority_vote, tie_key


class TinyCheck(BaseModel):
    n: int
    single: Accuracy  # one sample at T=1, top_p=0.9 (mean over the 3 samples)
    greedy: Accuracy
    majority_of_3: Accuracy
    debate_round2_agent: Accuracy  # an agent's round-2 answer, after seeing the other two round-1 answers
    debate_round2_majority: Accuracy
    abstention_rate: float


def check(engine: Engine, task: Task, problems: list[Problem], seed: int = 0, progress: bool = False) -> TinyCheck:
    """Three agents answer (round 1); each then sees the others' answers digest and answers again (round 2)."""
    sampled = evaluate(engine, task, problems, samples=3, sampling=Sampling(), seed=seed, progress=progress)
    greedy = evaluate(engine, task, problems, samples=1, sampling=Sampling(temperature=0), seed=seed, progress=progress)
    requests = []
    for i, p in enumerate(problems):
        round1 = sampled.records[3 * i : 3 * i + 3]
        for n, own in enumerate(round1):
            others = [r.answer for j, r in enumerate(round1) if j != n]
            messages = [
                {"role": "user", "content": task.prompt(p)},
                {"role": "assistant", "content": own.response},
                {"role": "user", "content": prompts.critic_message(summary=prompts.answers_digest(others))},
            ]
            requests.append(Request(messages=messages))
    round2 = engine.generate(requests, seed=seed + 1, progress=progress)
    agent, majority = [], []
    for i, p in enumerate(problems):
        answers = [task.extract(g.text) for g in round2[3 * i : 3 * i + 3]]
        agent.append(sum(task.is_correct(a, p) for a in answers) / 3)
        vote = majority_vote(answers, task.equivalent, tie_break="random", key=tie_key(seed, p.id))
        majority.append(float(task.is_correct(vote.answer, p)))
    return TinyCheck(
        n=len(problems),
        single=sampled.single,
        greedy=greedy.single,
        majority_of_3=sampled.majority,
        debate_round2_agent=accuracy(agent),
        debate_round2_majority=accuracy(majority),
        abstention_rate=sampled.abstention_rate,
    )
