"""Multiagent debate: N agents x M rounds over all problems, one engine call per round.

Round 1: agent n answers the task prompt alone (as generation agent n). Round m > 1: agent n's
conversation continues with a critic message showing the other agents' round m-1 responses (their
answers, the raw responses, or a summary of them by the base model) and agent n answers again (as
critic agent n). Every response becomes one :class:`Turn` record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from maft import prompts
from maft.agents import AdapterFor, Agents
from maft.config import RunConfig
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule
from maft.engines import AgentEngine, Engine, Message, Request, Sampling
from maft.tasks import Problem, Task
from maft.types import Summarizer


def base_model(agent: int, round: int) -> str | None:
    return None


def _others(turns: Sequence[Turn], agent: int) -> list[Turn]:
    return [t for t in turns if t.agent != agent]


def debate(
    engine: Engine,
    task: Task,
    problems: Sequence[Problem],
    *,
    agents: int = 3,
    rounds: int = 2,
    summarizer: Summarizer = "answers",
    sampling: Sampling = Sampling(),
    adapter_for: AdapterFor = base_model,
    seed: int = 0,
    progress: bool | str = False,
    answer_of: Callable[[Turn], str | None] | None = None,
) -> list[Turn]:
    """Run the debate; returns every turn, ordered by round, then problem, then agent.

    ``progress``: True, or a label (e.g. the stage's name), shows a progress bar per engine call.
    ``answer_of``: the answer a turn shows in the ``answers`` summary (the run's
    :meth:`maft.debate.voting.VoteRule.answer`, so that a truncated response shows as "no answer" when it
    abstains from the vote; default: the extracted answer)."""
    if agents < 1 or rounds < 1:
        raise ValueError(f"a debate needs agents >= 1 and rounds >= 1, got {agents} x {rounds}")
    conversations: list[list[list[Message]]] = [
        [[{"role": "user", "content": task.prompt(p)}] for _ in range(agents)] for p in problems
    ]
    turns: list[Turn] = []
    previous: list[list[Turn]] = []  # [problem][agent] turns of round m-1
    summary_tokens: list[list[int]] = []  # [problem][agent] tokens generated for round m's summaries
    for m in range(1, rounds + 1):
        if m > 1:
            critiques, summary_tokens = _critic_messages(
                engine,
                task,
                previous,
                agents,
                summarizer,
                sampling,
                seed * 1000 + 2 * m,
                _label(progress, f"summaries {m - 1}"),
                answer_of or (lambda t: t.answer),
            )
            for i in range(len(problems)):
                for n in range(agents):
                    conversations[i][n] = [
                        *conversations[i][n],
                        {"role": "assistant", "content": previous[i][n].response},
                        {"role": "user", "content": critiques[i][n]},
                    ]
        # an agent that also answers the next round continues its own conversation there (a hint for engines)
        continued = [m < rounds and adapter_for(n, m + 1) == adapter_for(n, m) for n in range(agents)]
        requests = [
            Request(messages=conversations[i][n], adapter=adapter_for(n, m), sampling=sampling, continued=continued[n])
            for i in range(len(problems))
            for n in range(agents)
        ]
        generations = engine.generate(
            requests, seed=seed * 1000 + 2 * m + 1, progress=_label(progress, f"round {m}/{rounds}")
        )
        current: list[list[Turn]] = []
        for i, p in enumerate(problems):
            row = []
            for n in range(agents):
                g = generations[i * agents + n]
                answer = task.extract(g.text)
                row.append(
                    Turn(
                        problem_id=p.id,
                        agent=n,
                        round=m,
                        adapter=requests[i * agents + n].adapter,
                        messages=list(conversations[i][n]),
                        response=g.text,
                        answer=answer,
                        correct=task.is_correct(answer, p),
                        completion_tokens=g.completion_tokens,
                        truncated=g.truncated,
                        summary_tokens=summary_tokens[i][n] if summary_tokens else 0,
                    )
                )
            current.append(row)
            turns += row
        previous = current
    return turns


def _label(progress: bool | str, what: str) -> bool | str:
    if not progress:
        return False
    return f"{progress} {what}" if isinstance(progress, str) else what


def _critic_messages(
    engine: Engine,
    task: Task,
    previous: list[list[Turn]],
    agents: int,
    summarizer: Summarizer,
    sampling: Sampling,
    seed: int,
    progress: bool | str,
    answer_of: Callable[[Turn], str | None],
) -> tuple[list[list[str]], list[list[int]]]:
    """[problem][agent] -> the message that shows agent n the others' round m-1 responses: their raw
    responses (concat), their answers (answers), or the base model's summary of their responses (model); and
    [problem][agent] -> the tokens generated for that summary (0 without a model)."""
    nothing = [[0] * agents for _ in previous]
    if summarizer == "concat":
        shown = [
            [
                prompts.critic_message(
                    responses=[t.response for t in _others(row, n)], answer_format=task.answer_format
                )
                for n in range(agents)
            ]
            for row in previous
        ]
        return shown, nothing
    if summarizer == "answers":
        summaries = [
            [prompts.answers_digest([answer_of(t) for t in _others(row, n)]) for n in range(agents)] for row in previous
        ]
        tokens = nothing
    else:  # model: one summary request per (problem, agent), all in one engine call
        requests = [
            Request(
                messages=[
                    {"role": "user", "content": prompts.summarizer_request([t.response for t in _others(row, n)])}
                ],
                adapter=None,
                sampling=sampling,
            )
            for row in previous
            for n in range(agents)
        ]
        generated = engine.generate(requests, seed=seed, progress=progress)
        rows = [generated[i * agents : (i + 1) * agents] for i in range(len(previous))]
        summaries = [[g.text for g in row] for row in rows]
        tokens = [[g.completion_tokens for g in row] for row in rows]
    shown = [[prompts.critic_message(summary=s, answer_format=task.answer_format) for s in row] for row in summaries]
    return shown, tokens


def sampling(config: RunConfig) -> Sampling:
    """The run's sampling settings for every debate request."""
    d = config.debate
    return Sampling(temperature=d.temperature, top_p=d.top_p, max_new_tokens=d.max_new_tokens)


def base_debate_key(config: RunConfig, problems: Sequence[Problem], *, seed: int, held_out: bool) -> str:
    """What a debate of the base model computes, as a key: the model, the task, the debate settings (shape,
    sampling, summarizer, vote rule's truncation), the problems and the seed; nothing of training, data or
    execution. Two runs (e.g. two methods of ``maft compare`` at one run seed) whose base-model debates have the
    same key generate the same turns (sampling is seeded per request), so one can reuse the other's."""
    import hashlib
    import json

    blob = {
        "model": config.model.model_dump(mode="json"),
        "task": [config.task.name, config.task.options],
        "debate": config.debate.model_dump(mode="json"),
        "shape": list(config.debate.shape(held_out)),
        "problems": [[p.id, p.question, p.answer] for p in problems],
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]


def run_debate(
    engine: AgentEngine,
    config: RunConfig,
    task: Task,
    problems: Sequence[Problem],
    agents: Agents,
    *,
    seed: int,
    progress: bool | str,
    held_out: bool = True,
) -> list[Turn]:
    """``agents`` debate ``problems`` with the run's debate settings (the loop's and transfer's debates);
    a ``held_out`` debate has the shape ``debate.test_agents`` x ``debate.test_rounds``."""
    d = config.debate
    n, m = d.shape(held_out)
    return debate(
        engine,
        task,
        problems,
        agents=n,
        rounds=m,
        summarizer=d.summarizer,
        sampling=sampling(config),
        adapter_for=engine.serve(agents),
        seed=seed,
        progress=progress,
        answer_of=VoteRule.of(config).answer,
    )
