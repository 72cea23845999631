"""Single-agent evaluation: k samples per problem, single-sample and majority-of-k accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from maft.debate.voting import majority_vote, tie_key
from maft.engines import Engine, Request, Sampling
from maft.evaluation.metrics import Accuracy, accuracy
from maft.tasks import Problem, Task


class SampleRecord(BaseModel):
    problem_id: str
    sample: int
    response: str
    answer: str | None
    correct: bool


class EvalResult(BaseModel):
    task: str
    samples: int
    temperature: float
    top_p: float
    single: Accuracy  # mean over samples of per-problem accuracy
    majority: Accuracy  # majority vote of the k samples
    pass_at_k: Accuracy
    abstention_rate: float
    generated_tokens: int
    records: list[SampleRecord]


def evaluate(
    engine: Engine,
    task: Task,
    problems: Sequence[Problem],
    *,
    samples: int = 1,
    sampling: Sampling = Sampling(),
    adapter: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Ask every problem ``samples`` times (independently) and grade the answers."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    requests = [
        Request(messages=[{"role": "user", "content": task.prompt(p)}], adapter=adapter, sampling=sampling)
        for p in problems
        for _ in range(samples)
    ]
    generations = engine.generate(requests, seed=seed, progress=progress)
    records, single, majority, any_correct = [], [], [], []
    for i, p in enumerate(problems):
        gens = generations[i * samples : (i + 1) * samples]
        answers = [None if g.truncated else task.extract(g.text) for g in gens]  # a cut-off response abstains
        correct = [task.is_correct(a, p) for a in answers]
        records += [
            SampleRecord(problem_id=p.id, sample=j, response=g.text, answer=a, correct=c)
            for j, (g, a, c) in enumerate(zip(gens, answers, correct))
        ]
        single.append(sum(correct) / samples)
        vote = majority_vote(answers, task.equivalent, tie_break="random", key=tie_key(seed, p.id))
        majority.append(float(task.is_correct(vote.answer, p)))
        any_correct.append(float(any(correct)))
    return EvalResult(
        task=task.name,
        samples=samples,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        single=accuracy(single),
        majority=accuracy(majority),
        pass_at_k=accuracy(any_correct),
        abstention_rate=sum(r.answer is None for r in records) / len(records),
        generated_tokens=sum(g.completion_tokens for g in generations),
        records=records,
    )
