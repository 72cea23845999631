"""STaR's rationalization step (Zelikman et al. 2022), for the ``star`` baseline (``data.rationalize``).

After the training debate, every round-1 response whose answer is not the gold answer (an abstention
included) is asked again, by the same agent, with the gold answer given as a hint
(:func:`maft.prompts.rationalization_hint`). The new responses are returned as round-1 :class:`Turn`
records whose ``messages`` hold the hinted question; :func:`maft.data.agent_data.rationalized_examples`
keeps those that reach the gold answer, under the original question without the hint.

This uses ground truth, as STaR does; no maft method calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

from maft import prompts
from maft.agents import AdapterFor
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule
from maft.engines import Engine, Request, Sampling
from maft.tasks import Problem, Task


def rationalize(
    engine: Engine,
    task: Task,
    problems: Sequence[Problem],
    turns: Sequence[Turn],
    *,
    adapter_for: AdapterFor,
    sampling: Sampling,
    seed: int,
    rule: VoteRule | None = None,
    progress: bool | str = False,
) -> list[Turn]:
    """The hinted responses to the round-1 ``turns`` that missed their problem's gold answer
    (problem order, then agent order)."""
    rule = rule or VoteRule()
    by_id = {p.id: p for p in problems}
    order = {p.id: i for i, p in enumerate(problems)}
    missed = sorted(
        (t for t in turns if t.round == 1 and not task.equivalent(rule.answer(t), by_id[t.problem_id].answer)),
        key=lambda t: (order[t.problem_id], t.agent),
    )
    requests = [
        Request(
            messages=[
                {
                    "role": "user",
                    "content": prompts.rationalization_hint(
                        task.prompt(by_id[t.problem_id]), by_id[t.problem_id].answer
                    ),
                }
            ],
            adapter=adapter_for(t.agent, 1),
            sampling=sampling,
        )
        for t in missed
    ]
    generations = engine.generate(requests, seed=seed, progress=progress) if requests else []
    out = []
    for t, r, g in zip(missed, requests, generations):
        answer = task.extract(g.text)
        p = by_id[t.problem_id]
        out.append(
            Turn(
                problem_id=t.problem_id,
                agent=t.agent,
                round=1,
                adapter=r.adapter,
                messages=r.messages,
                response=g.text,
                answer=answer,
                correct=task.is_correct(answer, p),
                completion_tokens=g.completion_tokens,
                truncated=g.truncated,
            )
        )
    return out
