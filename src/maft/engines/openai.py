"""Generation through OpenAI-compatible servers (vLLM, SGLang, ``transformers serve``, hosted APIs).

All requests of a call are in flight together (``asyncio`` on the ``openai`` package's ``AsyncOpenAI``)
under one concurrency bound; results come back in request order. Each request is a chat completion:
the server applies the model's chat template. Sampling maps to ``temperature`` (0 = greedy), ``top_p``
and ``max_tokens``; every request carries its own ``seed``, :func:`~maft.engines.base.request_seeds32`: a
hash of the call's seed, the request's content (messages, adapter, sampling settings) and its occurrence
number among identical requests of the call, cut to a signed 32-bit integer. It does not depend on the
request's position, on the other requests of the call, on the endpoint that serves it or on the order in
which requests complete. So where the server seeds each request on its own (vLLM), a request's text does
not depend on which others share the call or on the concurrency (up to the floating point of the
server's batches), and identical requests (several agents asked the same question) still draw different
samples. The in-process engine derives its seeds the same way, but its sampler is its own: the two
engines' sampled texts differ. Token counts come from the server's ``usage``; a response that stopped at
``max_tokens`` (``finish_reason == "length"``) is marked truncated.

Several endpoints (one server per GPU or node) share the load: each request goes to the endpoint with
the fewest requests outstanding. Connection errors, timeouts, 429 and 5xx are retried with exponential
backoff (a ``Retry-After`` header is honoured), a connection error on another endpoint where there is
one; any other 4xx stops the call with the server's message. Each request has an explicit timeout.

Agents are served by a :class:`~maft.servers.ServerKind` strategy (``serve``), which names the server
model each role's requests go to; a request's ``adapter`` is the role (None: the base model).
``generate`` is synchronous for its callers and works when an event loop is already running (it then
runs its own loop in a worker thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rich.progress import Progress

from maft.engines.base import Generation, Request, Score, request_seeds32

if TYPE_CHECKING:
    from maft.agents import AdapterFor, Agents

T = TypeVar("T")


class Stoppable(Protocol):
    def stop(self, reason: str) -> None: ...


class ServerStrategy(Protocol):
    """How a run's agents get onto the server(s): one implementation per server kind in
    :mod:`maft.servers` (which builds on this engine; the engine needs only this much of it)."""

    @property
    def prompt_logprobs(self) -> bool:
        """Whether the server can score given completions (diversity's likelihoods)."""
        ...

    @property
    def managed(self) -> Stoppable | None:
        """Servers maft started, stopped when the engine closes."""
        ...

    def ensure(self, engine: OpenAIEngine) -> bool: ...

    def release(self, engine: OpenAIEngine) -> None: ...

    def publish(self, engine: OpenAIEngine, agents: Agents) -> Mapping[str, str]: ...


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries an API key (vLLM's ``--api-key``, SGLang's, a hosted API's) on the requests maft
    sends beside the OpenAI client's: model lists, adapter loading, the canary. None or ``EMPTY``: no key."""
    return {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "EMPTY" else {}


class EngineError(RuntimeError):
    """A server refused a request (a 4xx other than 429), or kept failing after every retry."""


@dataclass
class Endpoint:
    url: str
    outstanding: int = 0
    requests: int = 0
    failures: int = 0


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, inside a running event loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


class OpenAIEngine:
    """Chat completions on one or more OpenAI-compatible endpoints, for the base model and its agents."""

    def __init__(
        self,
        urls: str | Sequence[str],
        model: str,
        *,
        api_key: str = "EMPTY",
        concurrency: int = 64,
        timeout: float = 600.0,
        max_retries: int = 6,
        backoff: float = 0.5,
        server: ServerStrategy | None = None,
        tokenizer: Any = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        """``model``: the server's name for the base model. ``server``: how agents are put on the server
        (None: the base model only). ``tokenizer`` (or a name to load one): needed only for ``score``."""
        urls = [urls] if isinstance(urls, str) else list(urls)
        if not urls and (server is None or server.managed is None):
            raise ValueError("OpenAIEngine needs at least one server URL (or a managed server)")
        if concurrency < 1 or timeout <= 0 or max_retries < 0:
            raise ValueError("concurrency must be >= 1, timeout > 0 and max_retries >= 0")
        self.endpoints = [Endpoint(u.rstrip("/")) for u in urls]
        self.model_name = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.server = server
        self.extra_body = dict(extra_body or {})
        self._tokenizer = tokenizer
        self.headers = auth_headers(api_key)  # for the requests outside the OpenAI client
        self.names: dict[str, str] = {}  # role -> the server's model name for it
        self._agents: Agents | None = None  # the agents served last (published again on a restarted server)
        self.retries: Counter[str] = Counter()  # why requests were retried, over the engine's life

    def set_urls(self, urls: Sequence[str]) -> None:
        """Point the engine at other endpoints (a managed server restarted on new ports)."""
        if [e.url for e in self.endpoints] != [u.rstrip("/") for u in urls]:
            self.endpoints = [Endpoint(u.rstrip("/")) for u in urls]

    def _ensure(self, *, publish: bool = True) -> None:
        """Start a managed server that is not running; one (re)started holds none of the agents served last, which
        are published there again (with ``publish``)."""
        if self.server is None or not self.server.ensure(self):
            return
        if publish and self._agents is not None and self._agents.models:
            self.names = dict(self.server.publish(self, self._agents))

    # -- agents -----------------------------------------------------------------------------------
    def serve(self, agents: Agents) -> AdapterFor:
        """Put ``agents`` on the server(s) (see :mod:`maft.servers`); returns who answers each (agent, round)."""
        self._ensure(publish=False)
        self._agents = agents
        if agents.models:
            if self.server is None:
                raise EngineError("this engine serves the base model only; it has no server kind to load agents")
            self.names = dict(self.server.publish(self, agents))
        else:
            self.names = {}
        return agents.answerer

    def served_name(self, adapter: str | None) -> str:
        if adapter is None:
            return self.model_name
        if adapter not in self.names:
            raise KeyError(f"unknown adapter {adapter!r}; served: {sorted(self.names) or 'none'}")
        return self.names[adapter]

    def release(self) -> None:
        """Give the accelerator back while finetuning runs (managed servers stop; see maft.servers)."""
        if self.server is not None:
            self.server.release(self)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], *, seed: int = 0, progress: bool | str = False) -> list[Generation]:
        """Texts for ``requests``, in order; each is sampled with its own seed, ``request_seeds32(requests,
        seed)`` (from the request's content and its occurrence among identical ones, not its position)."""
        self._ensure()
        names = [self.served_name(r.adapter) for r in requests]
        seeds = request_seeds32(requests, seed)
        calls = [self._chat_call(r, name, s) for r, name, s in zip(requests, names, seeds)]
        return run_sync(lambda: self._all(calls, progress, "generate"))

    def _chat_call(self, request: Request, name: str, seed: int) -> Callable[[Any], Awaitable[Generation]]:
        s = request.sampling
        body = {
            "model": name,
            "messages": [dict(m) for m in request.messages],
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "seed": seed,
        }
        if not s.greedy:
            body["top_p"] = s.top_p
        extra = dict(self.extra_body)
        if s.ignore_eos:  # vLLM's (and SGLang's) fields; sent only when set: `transformers serve` rejects them (422)
            extra.update(ignore_eos=True, min_tokens=s.max_new_tokens)

        async def call(client: Any) -> Generation:
            response = await client.chat.completions.create(**body, extra_body=extra or None)
            choice = response.choices[0]
            usage = response.usage
            return Generation(
                text=(choice.message.content or "").strip(),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                truncated=choice.finish_reason == "length",
            )

        return call

    # -- scoring ----------------------------------------------------------------------------------
    @property
    def can_score(self) -> bool:
        """Whether the server returns prompt log-probabilities (vLLM's ``prompt_logprobs``)."""
        return self.server is not None and self.server.prompt_logprobs

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None or isinstance(self._tokenizer, str):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer or self.model_name)
        return self._tokenizer

    def score(
        self, requests: Sequence[Request], completions: Sequence[str], *, progress: bool | str = False
    ) -> list[Score]:
        """Log-likelihood of each completion (then the end-of-turn token) under the request's agent, from
        the server's prompt log-probabilities of the chat-templated conversation plus the completion."""
        if not self.can_score:
            raise EngineError("this server kind returns no prompt log-probabilities; scoring needs vLLM")
        if len(requests) != len(completions):
            raise ValueError(f"{len(requests)} requests but {len(completions)} completions")
        self._ensure()
        tok = self.tokenizer
        calls = []
        for r, text in zip(requests, completions):
            prompt = tok.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False)
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            calls.append(self._score_call(self.served_name(r.adapter), p, c))
        return run_sync(lambda: self._all(calls, progress, "score"))

    def _score_call(self, name: str, prompt: list[int], completion: list[int]) -> Callable[[Any], Awaitable[Score]]:
        ids = prompt + completion

        async def call(client: Any) -> Score:
            response = await client.completions.create(
                model=name, prompt=ids, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 0}
            )
            rows = getattr(response.choices[0], "prompt_logprobs", None)
            if rows is None:
                rows = (response.choices[0].model_extra or {}).get("prompt_logprobs")
            if rows is None or len(rows) != len(ids):
                raise EngineError("the server returned no prompt log-probabilities (is it vLLM?)")
            total = 0.0
            for position in range(len(prompt), len(ids)):
                entry = rows[position][str(ids[position])]
                total += entry["logprob"] if isinstance(entry, dict) else entry.logprob
            return Score(logprob=total, tokens=len(completion))

        return call

    # -- the request loop -------------------------------------------------------------------------
    async def _all(self, calls: Sequence[Callable[[Any], Awaitable[T]]], progress: bool | str, what: str) -> list[T]:
        from openai import AsyncOpenAI

        clients = {
            e.url: AsyncOpenAI(base_url=e.url, api_key=self.api_key, timeout=self.timeout, max_retries=0)
            for e in self.endpoints
        }
        limit = asyncio.Semaphore(self.concurrency)
        try:
            with Progress(transient=True, disable=not progress) as bar:
                task = bar.add_task(progress if isinstance(progress, str) else what, total=len(calls))

                async def one(call: Callable[[Any], Awaitable[T]]) -> T:
                    async with limit:
                        result = await self._with_retries(call, clients)
                    bar.update(task, advance=1)
                    return result

                return list(await asyncio.gather(*(one(c) for c in calls)))
        finally:
            for client in clients.values():
                await client.close()

    def _pick(self, avoid: str | None) -> Endpoint:
        """The endpoint with the fewest outstanding requests (not ``avoid`` when there is another)."""
        candidates = [e for e in self.endpoints if e.url != avoid] or self.endpoints
        return min(candidates, key=lambda e: (e.outstanding, e.requests))

    async def _with_retries(self, call: Callable[[Any], Awaitable[T]], clients: dict[str, Any]) -> T:
        import openai

        avoid: str | None = None
        for attempt in range(self.max_retries + 1):
            endpoint = self._pick(avoid)
            endpoint.outstanding += 1
            endpoint.requests += 1
            try:
                return await call(clients[endpoint.url])
            except (
                openai.APIConnectionError,
                openai.APITimeoutError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as e:
                kind = type(e).__name__
                error: Exception = e
            except openai.APIStatusError as e:
                if e.status_code >= 500:  # 5xx without a class of its own
                    kind, error = f"HTTP {e.status_code}", e
                else:
                    raise EngineError(
                        f"{endpoint.url} refused a request (HTTP {e.status_code}): {_message(e)}"
                    ) from None
            finally:
                endpoint.outstanding -= 1
            endpoint.failures += 1
            self.retries[kind] += 1
            if attempt == self.max_retries:
                raise EngineError(
                    f"a request failed {attempt + 1} times ({kind}: {_message(error)}); "
                    f"endpoints: {', '.join(e.url for e in self.endpoints)}"
                ) from None
            avoid = endpoint.url if isinstance(error, (openai.APIConnectionError, openai.APITimeoutError)) else None
            await asyncio.sleep(self._delay(attempt, error))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, error: Exception) -> float:
        """Exponential backoff with jitter, or the server's Retry-After (capped at 60 s)."""
        response = getattr(error, "response", None)
        after = response.headers.get("retry-after") if response is not None else None
        if after:
            try:
                return min(float(after), 60.0)
            except ValueError:
                pass
        return min(self.backoff * 2**attempt, 30.0) * (0.5 + random.random() / 2)

    def endpoint_counts(self) -> dict[str, dict[str, int]]:
        """Requests sent to and failed at each endpoint since the last call (a stage's record)."""
        counts = {e.url: {"requests": e.requests, "failures": e.failures} for e in self.endpoints}
        for e in self.endpoints:
            e.requests = e.failures = 0
        return counts

    def close(self) -> None:
        """Stop managed servers (external ones keep running)."""
        if self.server is not None and self.server.managed is not None:
            self.server.managed.stop("the run is done")


def _message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(error)


def wait_until_ready(
    url: str, *, timeout: float = 300.0, alive: Callable[[], bool] | None = None, api_key: str | None = None
) -> list[str]:
    """Poll ``<url>/models`` until the server answers; returns the model names it serves.
    ``alive`` (optional) says whether the server's process still runs (stop waiting when it died)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise EngineError(f"the server for {url} exited before it answered ({last or 'no answer'})")
        try:
            r = httpx.get(f"{url.rstrip('/')}/models", timeout=5, headers=auth_headers(api_key))
            if r.status_code == 200:
                return [m["id"] for m in r.json().get("data", [])]
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(1.0)
    raise EngineError(f"no answer from {url}/models within {timeout:.0f} s ({last})")
