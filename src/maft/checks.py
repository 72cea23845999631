"""Up-front checks of a run's model and settings: everything that would otherwise fail only after compute
has started (a debate or a finetune in), checked before a run directory is created or a model loads.

- ``model.name``: a local directory must hold a readable ``config.json`` and complete weights (the
  safetensors headers are read, not the weights; every shard a sharded checkpoint's index lists); a name that
  is no local path must be a hub id found in the Hugging Face cache or, with a network, on the hub (asked
  once, without retries). Where this process loads the model, its tokenizer must have a chat template (maft's
  debates and finetuning data are conversations). ``~/...`` is the path it names (``serving.base_model``).
- ``execution.device``: ``auto``, or a device torch knows and this machine has (``cuda`` without a GPU is
  refused).
- ``train.lora_target_modules``: every listed name must match a module of the base model (PEFT's rule: the
  module's name, or its dotted suffix); a string other than ``all-linear`` is a regular expression that
  must match one. The module names come from the model's config on the meta device (no memory).
- ``train.quantization=4bit`` (QLoRA): bitsandbytes installed and a CUDA GPU to train on.
- memory: what one finetuning job needs (:mod:`maft.training.memory`: weights, gradients, optimizer
  states and activations for the model, method, quantization, batch and length), against the free memory of
  the GPU the jobs train on, or the RAM available on a CPU; a plan that cannot fit is refused with the
  changes that would fit.
- ``execution.report_to``: every tracking backend's library installed, and for mlflow a tracking store that
  MLflow opens (:mod:`maft.tracking`).
- the finetuning jobs' place: Ray installed and a ``host:port`` cluster address answering
  (``execution.scheduler=ray``); no more processes per job than this machine has GPUs (local scheduler).
- settings that would be silently ignored: a server's with ``model.engine=hf``, a Ray address with the local
  scheduler.
- problems: a question longer than :data:`MAX_QUESTION_CHARS` characters is refused (it would abort the
  tokenizer in the middle of a debate).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from maft.config import ExecutionConfig, RunConfig
from maft.tasks import Problem
from maft.training.memory import DeviceMemory, ModelCounts, device_memory, meta_model, refusal

#: Longer questions are refused before the run starts.
MAX_QUESTION_CHARS = 100_000


class SetupError(ValueError):
    """A model or setting that cannot work; the message names the problem and the fix."""


def check_model_files(name: str) -> None:
    """``name`` (a local directory or a hub id) has a readable config and, if local, complete weights."""
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if path.is_dir():
        try:
            AutoConfig.from_pretrained(str(path))
        except Exception as e:  # garbage or missing config.json
            raise SetupError(f"model.name {name!r}: its config.json cannot be read ({_first_line(e)})") from None
        _check_weights(path)
        return
    if path.exists() or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise SetupError(f"model.name {name!r} is not a model directory (and not a hub id such as org/model)")
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return  # in the local Hugging Face cache
    except Exception:
        pass
    import huggingface_hub

    try:
        huggingface_hub.model_info(name, timeout=10)
    except Exception as e:
        raise SetupError(
            f"model.name {name!r} is neither a local directory nor a model in the Hugging Face cache, and the hub "
            f"cannot be asked ({_first_line(e)}): give a local path (e.g. ./models/x), download it first, or check "
            "the name"
        ) from None


def _check_weights(path: Path) -> None:
    import json

    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files and not list(path.glob("*.bin")) and not list(path.glob("*.pt")):
        raise SetupError(f"model.name {str(path)!r} holds no weights (no *.safetensors or *.bin): copy them there")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SetupError(f"{index} is unreadable ({_first_line(e)}): copy the model again") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise SetupError(
                f"model weights incomplete: {index.name} lists {', '.join(missing)}, missing from {path}; copy them"
            )
    for f in files:
        try:
            with safe_open(str(f), "pt") as opened:
                opened.keys()
        except Exception as e:
            raise SetupError(
                f"model weights {f} are unreadable or incomplete ({_first_line(e)}): copy them again"
            ) from None


def check_device(device: str) -> None:
    """``auto`` or a torch device that exists here."""
    if device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise SetupError(f"execution.device {device!r} is not a device: use auto, cpu, cuda, cuda:1, mps") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"execution.device {device!r}, but this machine has no CUDA GPU: use auto or cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise SetupError(f"execution.device {device!r}, but this machine has {torch.cuda.device_count()} GPU(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise SetupError(f"execution.device {device!r}, but MPS is not available here: use auto or cpu")


def module_names(model: str) -> list[str]:
    """The dotted names of every module of ``model``, built from its config on the meta device."""
    return [n for n, _ in meta_model(model).named_modules() if n]


def check_lora_targets(targets: Sequence[str] | str, names: Sequence[str]) -> None:
    """Every target matches some module (PEFT's matching rule); ``all-linear`` always does."""
    if targets == "all-linear":
        return
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise SetupError(
                f"train.lora_target_modules {targets!r} is not a regular expression ({e}); for module names give a "
                "list, e.g. [q_proj, v_proj]"
            ) from None
        if not any(pattern.fullmatch(n) for n in names):
            raise SetupError(
                f"train.lora_target_modules {targets!r} (a regular expression: the whole module name must match) "
                f"matches no module of the model; for module names give a list, e.g. [{targets}], or use all-linear"
            )
        return
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise SetupError(
            f"train.lora_target_modules {missing} match no module of the model; its module names include: "
            f"{', '.join(leaves[:40])} (or use all-linear)"
        )


def check_questions(problems: Sequence[Problem]) -> None:
    for p in problems:
        if len(p.question) > MAX_QUESTION_CHARS:
            raise SetupError(
                f"problem {p.id!r} has a question of {len(p.question):,} characters "
                f"(more than {MAX_QUESTION_CHARS:,}): remove it from the task file"
            )


def check_quantization(config: RunConfig) -> None:
    """``train.quantization=4bit`` needs bitsandbytes and a CUDA GPU where the jobs train (not checked for Ray
    jobs on a cluster at ``execution.ray_address``: its workers are not visible from here)."""
    x = config.execution
    if config.train.quantization == "none" or (x.scheduler == "ray" and x.ray_address):
        return
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed")
    if x.device == "cpu" or x.device.startswith("mps") or not torch.cuda.is_available():
        missing.append("the jobs would train on the CPU" if torch.cuda.is_available() else "this machine has no CUDA")
    if missing:
        raise SetupError(
            f"train.quantization={config.train.quantization} needs bitsandbytes and a CUDA GPU "
            f"({' and '.join(missing)}): pip install bitsandbytes on a machine with CUDA, or use "
            "train.quantization=none"
        )


def check_tracking(execution: ExecutionConfig) -> None:
    """Every backend ``execution.report_to`` asks for has its library installed (the message says what to install);
    for mlflow, MLflow opens the tracking store."""
    import importlib.util

    from maft.tracking import PACKAGES, backends

    chosen = backends(execution)
    for backend in chosen:
        module, install = PACKAGES[backend]
        if importlib.util.find_spec(module) is None:
            raise SetupError(f"execution.report_to={backend} needs {module}, which is not installed: {install}")
        if backend == "mlflow":
            _check_mlflow_store()
    if "tensorboard" in chosen and execution.tracking_dir:  # the one backend that writes there
        folder = Path(execution.tracking_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise SetupError(f"execution.tracking_dir {folder} is a file, not a folder")
        if problem := unwritable(folder):
            raise SetupError(f"execution.tracking_dir {folder}: {problem}")


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` is not, and cannot be made, a folder this process writes in (its nearest existing ancestor,
    itself included, is a file or not writable here), or None."""
    nearest = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not nearest.is_dir():
        return f"{nearest} is a file, not a folder"
    if not os.access(nearest, os.W_OK):
        return f"{nearest} is not writable here"
    return None


def _check_mlflow_store() -> None:
    """MLflow opens its tracking store (``MLFLOW_TRACKING_URI``) when a client is made, without contacting a
    server: a store it refuses (a ``./mlruns`` file store since MLflow 3.x, a database without SQLAlchemy)
    fails here rather than after the first debate."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient()
    except Exception as e:  # MLflow's own errors: its message says what to change
        uri = os.environ.get("MLFLOW_TRACKING_URI", "(unset: MLflow's default)")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SetupError(
            f"execution.report_to=mlflow: MLflow cannot open its tracking store MLFLOW_TRACKING_URI={uri}: {first} "
            "(set MLFLOW_TRACKING_URI to a store MLflow accepts, e.g. sqlite:///mlflow.db, which needs "
            "SQLAlchemy: the full mlflow package, not mlflow-skinny; or http://<server>)"
        ) from None


def check_memory(config: RunConfig, model: str | ModelCounts, memory: DeviceMemory | None = None) -> None:
    """One finetuning job of ``config`` on ``model`` (its path or hub id, or its counts) fits in ``memory``
    (None: what the device the jobs train on has free now; unknown: not checked)."""
    memory = memory or device_memory(config)
    if memory is None:
        return
    counts = model if isinstance(model, ModelCounts) else ModelCounts.of(model)
    problem = refusal(config, counts, memory)
    if problem:
        raise SetupError(problem)


def check_model(config: RunConfig, base_model: str) -> None:
    """The device, and the base model's files where this process loads the model (the hf engine, or
    finetuning); for a run that finetunes, the quantization's needs, the LoRA targets and the memory a job
    needs (the model built once on the meta device)."""
    check_device(config.execution.device)
    check_unused_settings(config)
    check_jobs(config)
    if config.model.engine == "hf" or config.iterations > 0:
        check_model_files(base_model)
        check_chat_template(base_model)
    if config.iterations > 0:
        check_quantization(config)
        built = meta_model(base_model)
        if config.train.method == "lora":
            check_lora_targets(config.train.lora_target_modules, [n for n, _ in built.named_modules() if n])
        check_memory(config, ModelCounts.of(built))


def check_unused_settings(config: RunConfig) -> None:
    """Settings that would be silently ignored: a server's (``execution.urls``, ``server``, ...) with the in-process
    engine, a Ray cluster's address with the local scheduler. Checked when a run starts or resumes (not when a
    config loads: a run saved with them still opens, to be resumed with them dropped)."""
    x = config.execution
    if config.model.engine == "hf":
        server_only = [
            key
            for key, given in (
                ("urls", bool(x.urls)),
                ("server", x.server != "external"),
                ("server_python", x.server_python is not None),
                ("server_args", bool(x.server_args)),
                ("server_devices", bool(x.server_devices)),
            )
            if given
        ]
        if server_only:
            raise SetupError(
                f"execution.{', execution.'.join(server_only)} set, but model.engine=hf generates in this process "
                "and uses no server: set model.engine=openai (and model.server_kind) to use one, or drop it"
            )
    if x.ray_address is not None and x.scheduler != "ray":
        raise SetupError(
            "execution.ray_address joins a Ray cluster for execution.scheduler=ray: set that too, or drop the "
            "address (the local scheduler would ignore it)"
        )


def check_jobs(config: RunConfig) -> None:
    """Where the finetuning jobs run can run them: Ray installed and its cluster's address answering
    (``execution.scheduler=ray``), and no more processes per job than this machine has GPUs (local scheduler, on
    GPUs; on a CPU the processes share it)."""
    import importlib.util
    import socket

    x = config.execution
    if config.iterations == 0:
        return
    if x.scheduler == "ray":
        if importlib.util.find_spec("ray") is None:
            raise SetupError("execution.scheduler=ray needs Ray, which is not installed: pip install 'maft[ray]'")
        address = (x.ray_address or "").removeprefix("ray://")
        host, _, port = address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
        if host and port.isdigit():
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as e:
                raise SetupError(
                    f"execution.ray_address {x.ray_address!r} does not answer ({e.strerror or type(e).__name__}): "
                    "start the cluster (ray start --head) or fix the address"
                ) from None
        return
    import torch

    on_gpus = x.device not in ("cpu", "mps") and torch.cuda.is_available()  # device=cpu: processes share the CPU
    if x.job_processes > 1 and on_gpus and x.job_processes > torch.cuda.device_count():
        raise SetupError(
            f"each role would train in {x.job_processes} processes, one per GPU (execution.processes_per_job / "
            f"gpus_per_job), but this machine has {torch.cuda.device_count()} GPU(s): use at most that many, or "
            "execution.scheduler=ray on a cluster"
        )


def check_chat_template(base_model: str) -> None:
    """maft talks to a model in conversations (its debates and its finetuning data): the tokenizer needs a chat
    template. Loads the tokenizer only."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except Exception as e:
        raise SetupError(f"model.name {base_model!r}: its tokenizer cannot be loaded ({_first_line(e)})") from None
    if not tokenizer.chat_template:
        raise SetupError(
            f"model.name {base_model!r} has no chat template, and maft's debates and finetuning data are "
            "conversations: use an instruct/chat model, or add a chat_template to its tokenizer"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
