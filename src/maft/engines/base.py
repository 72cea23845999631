"""The engine interface: requests (a conversation, an agent's adapter, sampling settings) in, texts out.

Seeding (:func:`request_seeds`): every request of a call gets a seed of its own, a hash of the call's seed,
the request (messages, adapter, sampling settings) and its occurrence number among identical requests of
the call (the first copy 0, the next 1, ...). A request's seed therefore does not depend on its position,
on the other requests of the call or on how an engine batches or orders them, while identical requests
(several agents asked the same question) still draw different samples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from maft.agents import AdapterFor, Agents

Message = dict[str, str]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; ``temperature=0`` means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 256
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks); servers: see OpenAIEngine

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Request:
    """One generation: continue ``messages`` as the assistant, with ``adapter`` (None: the base model).

    ``continued``: a later call will send the same agent this conversation with its response and more turns (a
    debate round answered by the agent that answers the next one), so an engine may keep what it computed for it
    (the in-process engine's prefix cache, :mod:`maft.engines.prefix_cache`). A hint: it changes no text and no
    seed."""

    messages: Sequence[Message]
    adapter: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    continued: bool = False


def _canonical(request: Request) -> str:
    """The request as canonical JSON (sorted keys; numbers normalised so that 1 and 1.0 agree)."""
    s = request.sampling
    return json.dumps(
        {
            "messages": [dict(m) for m in request.messages],
            "adapter": request.adapter,
            "sampling": {
                "temperature": float(s.temperature),
                "top_p": float(s.top_p),
                "max_new_tokens": int(s.max_new_tokens),
                "ignore_eos": bool(s.ignore_eos),
            },
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )


def request_seeds(requests: Sequence[Request], seed: int) -> list[int]:
    """Each request's own seed in a call seeded ``seed``: 63 bits of SHA-256 over the call seed, the
    request's content and its occurrence number among identical requests of the call.

    Permuting the requests, adding others or batching them differently leaves every request's seed as it
    is; the k-th copy of a request always gets the same seed, and copies get different ones. Stable across
    processes, machines and Python versions (no ``hash()``)."""
    seen: dict[str, int] = {}
    out = []
    for r in requests:
        key = _canonical(r)
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        text = json.dumps([int(seed), occurrence, key], ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        out.append(int.from_bytes(digest[:8], "big") >> 1)
    return out


def request_seeds32(requests: Sequence[Request], seed: int) -> list[int]:
    """:func:`request_seeds` cut to 31 bits: non-negative, fits a signed 32-bit integer (a server's ``seed``)."""
    return [s & 0x7FFF_FFFF for s in request_seeds(requests, seed)]


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool = False  # stopped at max_new_tokens before the end of its turn


@dataclass(frozen=True)
class Score:
    """The log-likelihood of a given completion (its tokens and the end-of-turn token) under a model."""

    logprob: float
    tokens: int

    @property
    def nll_per_token(self) -> float:
        return -self.logprob / self.tokens


class Engine(Protocol):
    """Anything that turns requests into generations, in order."""

    def generate(self, requests: Sequence[Request], *, seed: int = 0, progress: bool | str = False) -> list[Generation]:
        """Texts for ``requests``, in order; ``progress`` (True, or a label for the bar) shows a progress bar."""
        ...


class ServesAgents(Protocol):
    """An engine that can put a run's agents (adapters or checkpoints) where its requests reach them."""

    def serve(self, agents: Agents) -> AdapterFor:
        """Make ``agents`` answerable; returns who answers each (agent, round) (None: the base model)."""
        ...

    def release(self) -> None:
        """Give the accelerator back while finetuning runs (a no-op where the engine keeps nothing there)."""
        ...


class AgentEngine(Engine, ServesAgents, Protocol):
    """What a run's debates need: an engine that can serve the run's agents and generate for them."""


class Scorer(Protocol):
    """An engine that can also score given completions (needed for likelihood-based diversity)."""

    def score(
        self, requests: Sequence[Request], completions: Sequence[str], *, progress: bool | str = False
    ) -> list[Score]:
        """The log-likelihood of ``completions[i]`` as the assistant's reply to ``requests[i].messages``
        under ``requests[i].adapter`` (sampling settings are ignored)."""
        ...
