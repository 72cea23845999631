"""A scripted engine: every response is written by the test, so the debate protocol can be checked exactly.

Like lm-evaluation-harness's dummy model, :class:`ScriptedEngine` runs no model. A *script* answers
each request: it is called with a :class:`Call` (the request, decoded: which agent it is for, in which
round, on which conversation) and returns the response, either a text (a complete, non-truncated
generation) or a :class:`~maft.engines.Generation` (to say ``truncated=True``). The engine implements
``generate``, ``serve``, ``release``, ``close`` and ``score``, so it stands wherever a real engine does.

Who is asking. A debate request carries only a conversation and an adapter; at iteration 0 every agent
is the base model (adapter None) and round 1's conversations are identical, so the agent is not in the
request. :meth:`ScriptedEngine.serve` therefore names every (agent, round) uniquely::

    adapter_for(n, m) = "<who>|agent=<n>|round=<m>"

``who`` being the role that answers (``agents.answerer(n, m)``: ``gen_0``, ``critic_1``, ``single``) or
``base`` for the base model. The engine decodes such a name back into ``Call.agent``, ``Call.round`` and
``Call.adapter`` (the role; None for the base model), and refuses a served request whose conversation
does not hold ``round`` user messages (a debate that sent the wrong conversation). A request without a
served name (a ``model`` summary, or a debate run without ``serve``) has ``agent=None``, ``adapter``
as requested, and ``round`` = its number of user messages. Turns record the served name as their
``adapter``; nothing downstream of the debate reads it.

Scripts. :func:`table` builds one from a grid in the shape of the hand-written debates of the tests,
``{problem_id: [[reply of agent 0, agent 1, ...] for round 1, 2, ...]}``; the problem of a request is
the one whose task prompt opens its conversation. A reply is an answer (a response ending in
``\\boxed{answer}``, tagged with problem, agent and round: :func:`response`), None (an abstention: a
response with no answer in it at all, :data:`ABSTAIN`), or a :class:`Reply` (its own text, or
truncated: :func:`truncated`). Any other callable ``(Call) -> str | Generation`` is a script too.

Records. Every ``generate`` call is kept in ``engine.calls`` (its :class:`Call` list, in request
order), so a test can assert what each critic was shown; ``engine.served`` holds every ``serve``'s
agents, ``engine.releases`` counts ``release`` calls. A closed engine refuses to generate.

Tokens are whitespace-separated words: a generation's ``prompt_tokens`` are the words of its messages,
its ``completion_tokens`` the words of its text. ``score`` is scripted too: ``scorer(call, completion)``
-> log-likelihood (default: -1 per word of the completion and -1 for the end of turn), over
``words + 1`` tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from maft.agents import role_for
from maft.engines.base import Generation, Request, Score

if TYPE_CHECKING:
    from maft.agents import AdapterFor, Agents
    from maft.tasks import Problem, Task

#: The served name of the base model answering as some (agent, round).
BASE = "base"

#: An abstention's text: no ``\\boxed{}`` and no number, so that no task's fallback finds an answer in it.
ABSTAIN = "I am not sure how to solve this."

_SERVED = re.compile(r"^(?P<who>.+)\|agent=(?P<agent>\d+)\|round=(?P<round>\d+)$")


def served_name(who: str | None, agent: int, round: int) -> str:
    """The adapter name under which ``who`` (a role; None: the base model) answers as (agent, round)."""
    return f"{who or BASE}|agent={agent}|round={round}"


@dataclass(frozen=True)
class Call:
    """One request as the script sees it."""

    request: Request
    call: int  # which ``generate`` (or ``score``) call of the engine, from 0
    index: int  # its position in that call
    seed: int  # the call's seed
    agent: int | None  # the debate agent it is for (None: not a served (agent, round), e.g. a model summary)
    round: int  # 1-based: the number of user messages in its conversation
    adapter: str | None  # who answers: the role the debate asked for (None: the base model)

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.request.messages)

    @property
    def prompt(self) -> str:
        """The conversation's first message (a debate's task prompt)."""
        return self.request.messages[0]["content"] if self.request.messages else ""

    @property
    def role(self) -> str | None:
        """The protocol role of (agent, round): ``gen_n`` in round 1, ``critic_n`` later (None: no agent)."""
        return None if self.agent is None else role_for(self.agent, self.round)


Script = Callable[[Call], str | Generation]
ScoreScript = Callable[[Call, str], float]


def _words(text: str) -> int:
    return len(text.split())


class ScriptedEngine:
    """An engine whose responses come from ``script`` (module docstring)."""

    can_score = True

    def __init__(self, script: Script, *, scorer: ScoreScript | None = None) -> None:
        self.script = script
        self.scorer = scorer
        self.calls: list[list[Call]] = []
        self.scored: list[list[Call]] = []
        self.served: list[Agents] = []
        self.releases = 0
        self.closed = False

    # -- the engine protocols ------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], *, seed: int = 0, progress: bool | str = False) -> list[Generation]:
        """The script's response to each request, in order; the call is recorded in ``calls``."""
        if self.closed:
            raise RuntimeError("this ScriptedEngine is closed")
        calls = self._decode(requests, len(self.calls), seed)
        self.calls.append(calls)
        out = []
        for c in calls:
            reply = self.script(c)
            if isinstance(reply, str):
                prompt = sum(_words(m["content"]) for m in c.request.messages)
                reply = Generation(text=reply, prompt_tokens=prompt, completion_tokens=_words(reply))
            elif not isinstance(reply, Generation):
                raise TypeError(f"a script returns a str or a Generation, got {type(reply).__name__} for {c}")
            out.append(reply)
        return out

    def serve(self, agents: Agents) -> AdapterFor:
        """A unique name per (agent, round), carrying the role that answers (module docstring)."""
        self.served.append(agents)
        return lambda agent, round: served_name(agents.answerer(agent, round), agent, round)

    def release(self) -> None:
        self.releases += 1

    def close(self) -> None:
        self.closed = True

    def score(
        self, requests: Sequence[Request], completions: Sequence[str], *, progress: bool | str = False
    ) -> list[Score]:
        """A scripted log-likelihood of each completion (module docstring)."""
        if len(requests) != len(completions):
            raise ValueError(f"{len(requests)} requests but {len(completions)} completions")
        calls = self._decode(requests, len(self.scored), 0)
        self.scored.append(calls)
        out = []
        for c, text in zip(calls, completions):
            tokens = _words(text) + 1
            out.append(Score(logprob=self.scorer(c, text) if self.scorer else -float(tokens), tokens=tokens))
        return out

    # -- records ---------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[Call]:
        """Every generation request received, in order, over all calls."""
        return [c for call in self.calls for c in call]

    def _decode(self, requests: Sequence[Request], call: int, seed: int) -> list[Call]:
        out = []
        for i, r in enumerate(requests):
            users = sum(m["role"] == "user" for m in r.messages)
            agent, adapter = None, r.adapter
            served = _SERVED.match(r.adapter) if r.adapter is not None else None
            if served:
                agent, round = int(served["agent"]), int(served["round"])
                if round != users:
                    raise ValueError(
                        f"request {i} of call {call} is served as agent {agent} in round {round}, "
                        f"but its conversation has {users} user message(s)"
                    )
                adapter = None if served["who"] == BASE else served["who"]
            out.append(Call(request=r, call=call, index=i, seed=seed, agent=agent, round=users, adapter=adapter))
        return out


# -- scripts ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A scripted response: ``answer`` (None: an abstention) in :func:`response`'s text, or ``text`` as
    given; ``truncated`` marks it cut off at max_new_tokens."""

    answer: str | None = None
    text: str | None = None
    truncated: bool = False


def truncated(answer: str | None) -> Reply:
    """A response that stopped at max_new_tokens, though its text holds ``\\boxed{answer}``."""
    return Reply(answer=answer, truncated=True)


def response(problem_id: str, agent: int, round: int, answer: str | None) -> str:
    """The text :func:`table` answers with: tagged with its problem, agent and round, ending in
    ``\\boxed{answer}`` (an abstention is :data:`ABSTAIN`, the same for all: it must hold no number)."""
    if answer is None:
        return ABSTAIN
    return f"[{problem_id} agent {agent} round {round}] Working it out step by step, the answer is \\boxed{{{answer}}}."


Cell = str | Reply | None


def table(
    task: Task,
    problems: Sequence[Problem],
    grid: Mapping[str, Sequence[Sequence[Cell]]],
    *,
    other: Script | None = None,
) -> Script:
    """A script answering agent n in round m of problem p with ``grid[p.id][m - 1][n]`` (module docstring);
    ``other`` answers requests that are not a served (agent, round) (e.g. ``model`` summaries).

    Every generated text is checked to extract to its cell's answer under ``task``, so that a grid
    means what it says."""
    ids: dict[str, str] = {}
    for p in problems:
        prompt = task.prompt(p)
        if prompt in ids:
            raise ValueError(f"problems {ids[prompt]!r} and {p.id!r} have the same prompt")
        ids[prompt] = p.id
    missing = [p.id for p in problems if p.id not in grid]
    if missing:
        raise ValueError(f"the grid has no rows for problems {missing}")

    def script(call: Call) -> str | Generation:
        if call.agent is None:
            if other is None:
                raise LookupError(
                    f"request {call.index} of call {call.call} is not a served (agent, round): "
                    "debate with adapter_for=engine.serve(agents), or give table(..., other=)"
                )
            return other(call)
        try:
            problem_id = ids[call.prompt]
        except KeyError:
            raise LookupError(f"no problem has the prompt {call.prompt!r}") from None
        rounds = grid[problem_id]
        if call.round > len(rounds) or call.agent >= len(rounds[call.round - 1]):
            raise LookupError(f"the grid has no reply for {problem_id!r}, agent {call.agent}, round {call.round}")
        cell = rounds[call.round - 1][call.agent]
        reply = cell if isinstance(cell, Reply) else Reply(answer=cell)
        text = reply.text if reply.text is not None else response(problem_id, call.agent, call.round, reply.answer)
        if reply.text is None:
            got = task.extract(text)
            if (got is None) != (reply.answer is None) or (got is not None and not task.equivalent(got, reply.answer)):
                raise ValueError(f"{text!r} extracts to {got!r} under {task.name!r}, not {reply.answer!r}")
        if not reply.truncated:
            return text
        prompt = sum(_words(m["content"]) for m in call.request.messages)
        return Generation(text=text, prompt_tokens=prompt, completion_tokens=_words(text), truncated=True)

    return script
