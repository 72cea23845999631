"""OpenAI-compatible servers: how agents get onto them (one strategy per kind), and servers maft manages."""

from maft.servers.base import ServerKind, run_tag
from maft.servers.errors import ServerError
from maft.servers.hf_serve import TransformersServer
from maft.servers.sglang import SGLangServer
from maft.servers.vllm import VLLMServer

#: model.server_kind -> its strategy (``api``: a hosted model without adapters).
KINDS: dict[str, type[ServerKind]] = {
    "vllm": VLLMServer,
    "sglang": SGLangServer,
    "transformers": TransformersServer,
    "api": ServerKind,
}

__all__ = ["KINDS", "SGLangServer", "ServerError", "ServerKind", "TransformersServer", "VLLMServer", "run_tag"]
