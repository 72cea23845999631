"""SGLang: each agent a LoRA adapter loaded at run time, addressed as ``model="<base>:<adapter>"``.

SGLang's runtime endpoints sit at the server root, not under ``/v1``: ``POST /load_lora_adapter``
and ``POST /unload_lora_adapter`` with ``{"lora_name", "lora_path"}``; start the server with
``--enable-lora``, ``--max-lora-rank`` >= ``train.lora_r``, ``--lora-target-modules all`` and
``--max-loras-per-batch`` >= the number of agents. Unlike vLLM, ``/v1/models`` does not list loaded
adapters, so this strategy remembers what it loaded on each endpoint (a managed server restarted on new ports
starts empty); a name the server already holds (it refuses to load it again: "already exists"), from before
a resume or from ``maft transfer``, is the same run's same weights (names carry the weights' fingerprint) and
is used as it is, after the canary. SGLang does not run on this project's CPU-only machines: this kind is
tested against a stand-in of that HTTP surface only (tests/test_sglang.py: in the test process, and as a
managed server that crashes and restarts), never a real server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from maft.agents import Agents, saved_kind
from maft.servers.base import ServerKind, unload_adapter
from maft.servers.errors import ServerError

if TYPE_CHECKING:
    from maft.engines.openai import OpenAIEngine


class SGLangServer(ServerKind):
    name: ClassVar[str] = "sglang"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.loaded: dict[str, set[str]] = {}  # endpoint -> adapter names this run loaded there

    def ensure(self, engine: OpenAIEngine) -> bool:
        started = super().ensure(engine)
        if started:  # a (re)started server holds none of the adapters, even on a port it had before
            self.loaded.clear()
        return started

    def publish(self, engine: OpenAIEngine, agents: Agents) -> Mapping[str, str]:
        import httpx

        adapters = {role: self.name_for(agents, role) for role in agents.models}
        new: dict[str, str] = {}
        for endpoint in engine.endpoints:
            root = endpoint.url.removesuffix("/v1")
            loaded = self.loaded.setdefault(endpoint.url, set())
            for role, name in adapters.items():
                if name in loaded:
                    continue
                if saved_kind(agents.models[role]) != "adapter":
                    raise ServerError(
                        f"{agents.models[role]} is a full checkpoint; the sglang kind serves LoRA adapters"
                    )
                r = httpx.post(
                    f"{root}/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(agents.models[role].resolve())},
                    timeout=engine.timeout,
                    headers=engine.headers,
                )
                if r.status_code != 200 and "already exists" not in r.text:
                    raise ServerError(
                        f"{root} could not load the adapter of {role} (HTTP {r.status_code}: {r.text[:300]}); "
                        "start SGLang with --enable-lora and --max-lora-rank at least train.lora_r"
                    )
                loaded.add(name)
                new[role] = f"{engine.model_name}:{name}"
            for name in sorted(loaded - set(adapters.values())):
                unload_adapter(root, name, timeout=engine.timeout, headers=engine.headers)
                loaded.discard(name)
        if new:
            self.canary(engine, agents, new)
        return {role: f"{engine.model_name}:{name}" for role, name in adapters.items()}
