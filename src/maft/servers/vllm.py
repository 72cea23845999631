"""vLLM: each agent a LoRA adapter loaded into the running server at run time.

The server must run with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (a managed
server is started that way), ``--max-lora-rank`` at least ``train.lora_r``, ``--max-loras`` at least
the number of agents (the adapters in one batch) and ``--max-cpu-loras`` room for two iterations.

``publish`` checks ``/v1/models`` on every endpoint, loads each missing adapter of the iteration
(``POST /v1/load_lora_adapter``) under a name of its own (run, iteration, role), checks them with the
canary, then unloads the run's adapters of other iterations (``POST /v1/unload_lora_adapter``). A
server restarted meanwhile (a managed one given back for training, or a crashed one) simply gets the
adapters again. Full finetuning is not served this way: vLLM serves one base model per server, so
2N fully finetuned agents would need 2N servers; such runs use the ``transformers`` kind or the
in-process engine (refused up front, see config).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from maft.agents import Agents, saved_kind
from maft.servers.base import ServerKind, unload_adapter
from maft.servers.errors import ServerError

if TYPE_CHECKING:
    from maft.engines.openai import OpenAIEngine

#: --max-lora-rank values vLLM accepts.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_flag(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds adapters of rank ``rank``."""
    return next((r for r in LORA_RANKS if r >= rank), rank)


class VLLMServer(ServerKind):
    name: ClassVar[str] = "vllm"
    prompt_logprobs: ClassVar[bool] = True

    def publish(self, engine: OpenAIEngine, agents: Agents) -> Mapping[str, str]:
        import httpx

        names = {role: self.name_for(agents, role) for role in agents.models}
        for path in agents.models.values():
            if saved_kind(path) != "adapter":
                raise ServerError(
                    f"{path} is a full checkpoint; the vllm server kind serves agents as LoRA adapters "
                    "(use train.method=lora, or model.server_kind=transformers for fully finetuned agents)"
                )
        new: dict[str, str] = {}
        for endpoint in engine.endpoints:
            served = set(served_models(endpoint.url, engine.timeout, engine.headers))
            if engine.model_name not in served:
                raise ServerError(
                    f"{endpoint.url} does not serve {engine.model_name!r} (it serves {', '.join(sorted(served))}); "
                    "set execution.served_name to the server's name for the base model"
                )
            for role, name in names.items():
                if name in served:
                    continue
                r = httpx.post(
                    f"{endpoint.url}/load_lora_adapter",
                    json={"lora_name": name, "lora_path": str(agents.models[role].resolve())},
                    timeout=engine.timeout,
                    headers=engine.headers,
                )
                if r.status_code != 200:
                    raise ServerError(f"{endpoint.url} could not load the adapter of {role}: {_explain(r)}")
                new[role] = name
        if new:
            try:
                self.canary(engine, agents, new)
            except ServerError:  # never leave refused weights loaded under a name a resume would trust
                for endpoint in engine.endpoints:
                    for name in new.values():
                        unload_adapter(endpoint.url, name, timeout=engine.timeout, headers=engine.headers)
                raise
        for endpoint in engine.endpoints:  # the run's adapters of other iterations are no longer needed
            for name in served_models(endpoint.url, engine.timeout, engine.headers):
                if name.startswith(f"{self.tag}-i") and name not in names.values():
                    unload_adapter(endpoint.url, name, timeout=engine.timeout, headers=engine.headers)
        return names


def served_models(url: str, timeout: float = 30.0, headers: Mapping[str, str] | None = None) -> list[str]:
    """The model names a server lists at ``<url>/models`` (base models and loaded adapters); ``headers``: its API
    key's (:func:`~maft.engines.openai.auth_headers`)."""
    import httpx

    try:
        r = httpx.get(f"{url}/models", timeout=timeout, headers=headers)
    except httpx.HTTPError as e:
        raise ServerError(f"no answer from {url}/models ({type(e).__name__}); is the server running?") from None
    if r.status_code in (401, 403):
        raise ServerError(
            f"{url}/models answered HTTP {r.status_code} ({r.text[:200]}): the server wants an API key; put it in "
            "the environment variable execution.api_key_env names (OPENAI_API_KEY by default)"
        )
    if r.status_code != 200:
        raise ServerError(f"{url}/models answered HTTP {r.status_code}: {r.text[:200]}")
    return [m["id"] for m in r.json().get("data", [])]


def _explain(response) -> str:
    """vLLM's message for a failed adapter load, with the flag that fixes the usual causes."""
    text = response.text[:500]
    try:
        text = str(response.json()["error"]["message"])[:500]
    except (ValueError, KeyError, TypeError):
        pass
    if response.status_code == 404 and "not found" in text.lower() and "lora" not in text.lower():
        return (
            "the server has no runtime LoRA loading (HTTP 404 on /v1/load_lora_adapter): start vLLM with "
            "--enable-lora and the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
        )
    low = text.lower()
    if "rank" in low:
        return f"{text} (start vLLM with --max-lora-rank at least train.lora_r)"
    if "lora" in low and ("not enabled" in low or "enable" in low):
        return f"{text} (start vLLM with --enable-lora)"
    return f"HTTP {response.status_code}: {text}"
