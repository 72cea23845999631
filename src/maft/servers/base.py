"""How a run's agents get onto an OpenAI-compatible server: one strategy per server kind.

A :class:`ServerKind` turns the :class:`~maft.agents.Agents` of an iteration into server model names
(``publish``), so that a request for role r goes to ``model=<name of r>``. Names are never reused: one
name per run directory, iteration, role and saved weights (:func:`~maft.agents.fingerprint`: a role retrained
on resume, or a new run written where an old one was, gets a new name), so no server cache can answer with
stale weights, and a name a server already holds is the same weights. After publishing,
a canary asks each new agent and the base model, on every endpoint, the same fixed question greedily: an agent whose
answer and log-probability equal the base model's never arrived (a known silent failure of adapter
serving), and the run stops with a clear error instead of training on the base model's answers.

Managed servers (see :mod:`maft.servers.managed`) are started by the kind on first use and stopped
by ``release`` while the agents are finetuned, where the server and training share a GPU; one found dead
before a request (a crash) is started again and the engine publishes its agents there again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from maft.agents import Agents, fingerprint
from maft.servers.errors import ServerError

if TYPE_CHECKING:
    from maft.engines.openai import OpenAIEngine
    from maft.servers.managed import ManagedServers

CANARY = [{"role": "user", "content": "What is 12+7*3-5? Show your steps and end with the answer in \\boxed{}."}]


def _steps(path: Path) -> int | None:
    """The training steps recorded with a saved agent (None: no record, e.g. an adapter made elsewhere)."""
    record = Path(path) / "maft_train.json"
    try:
        return int(json.loads(record.read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unload_adapter(base: str, name: str, *, timeout: float, headers: Mapping[str, str]) -> None:
    """Ask the server at ``base`` (vLLM: its ``/v1`` URL; SGLang: its root) to drop the adapter ``name``. The answer
    is not checked: a name the server no longer holds costs nothing."""
    import httpx

    httpx.post(f"{base}/unload_lora_adapter", json={"lora_name": name}, timeout=timeout, headers=headers)


def run_tag(root: Path) -> str:
    """A short tag that names one run directory in server model names."""
    return "maft-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]


class ServerKind:
    """The base model only, no agents (a hosted API): subclasses put agents on their server."""

    name: ClassVar[str] = "api"
    prompt_logprobs: ClassVar[bool] = False  # can score given completions (diversity's likelihoods)

    def __init__(
        self, *, tag: str = "maft", managed: ManagedServers | None = None, say: Callable[[str], None] = print
    ) -> None:
        self.tag = tag
        self.managed = managed
        self.say = say

    def ensure(self, engine: OpenAIEngine) -> bool:
        """Start the managed server(s) if they are not running, and point the engine at them; whether they were
        (re)started (a started server holds no agents: the engine publishes them again)."""
        if self.managed is None:
            return False
        started = not self.managed.running
        engine.set_urls(self.managed.start())
        return started

    def release(self, engine: OpenAIEngine) -> None:
        """Stop managed servers that hold an accelerator the finetuning needs."""
        if self.managed is not None and self.managed.stop_for_training:
            self.managed.stop("the agents are finetuned on the same GPU")

    def publish(self, engine: OpenAIEngine, agents: Agents) -> Mapping[str, str]:
        """Make ``agents`` answerable; returns role -> the server's model name for it."""
        raise ServerError(
            "this server kind (api) serves one hosted model without adapters: finetuned agents cannot be served; "
            "use model.server_kind=vllm (or transformers) with a server you control"
        )

    def name_for(self, agents: Agents, role: str) -> str:
        return f"{self.tag}-i{agents.iteration}-{role}-{fingerprint(agents.models[role])}"

    def canary(self, engine: OpenAIEngine, agents: Agents, names: Mapping[str, str]) -> None:
        """Every agent in ``names`` (role -> served name, roles of ``agents``) that took a training step must
        answer the canary differently from the base model (a role with no data may equal it). With the greedy
        answer's log-probability (vLLM) an equal answer is conclusive and stops the run; a server that gives
        text only (transformers serve) cannot tell weights that never arrived from weights that barely moved
        the greedy text, so an equal text is reported, not refused."""
        names = {role: name for role, name in names.items() if _steps(agents.models[role]) != 0}
        if not names:
            return
        same: set[str] = set()
        for url in [e.url for e in engine.endpoints]:  # each endpoint loaded the adapters on its own
            base = self._canary_answer(engine, engine.model_name, url)
            same |= {role for role, name in names.items() if self._canary_answer(engine, name, url) == base}
        if not same:
            return
        served = ", ".join(names[r] for r in sorted(same))
        if base[1] is None:
            self.say(
                f"canary: {', '.join(sorted(same))} answer the canary as the base model does ({served}); "
                "this server gives no log-probabilities to tell whether the weights arrived"
            )
            return
        raise ServerError(
            f"the server answers as the base model for {', '.join(sorted(same))}: the finetuned weights did not "
            f"arrive ({self.name} served {served}); check the server's log"
        )

    def _canary_answer(self, engine: OpenAIEngine, name: str, url: str) -> tuple[str, float | None]:
        import httpx

        r = httpx.post(
            f"{url}/chat/completions",
            json={"model": name, "messages": CANARY, "max_tokens": 16, "temperature": 0, "logprobs": True},
            timeout=engine.timeout,
            headers=engine.headers,
        )
        if r.status_code != 200:
            raise ServerError(f"canary request for {name!r} failed (HTTP {r.status_code}): {r.text[:300]}")
        choice = r.json()["choices"][0]
        content = (choice.get("logprobs") or {}).get("content") or []
        logprob = (
            round(sum(t["logprob"] for t in content), 4) if content and content[0].get("logprob") is not None else None
        )
        return choice["message"]["content"], logprob
