"""``maft bench generate``: one debate round's generation, the same workload on each generation path.

The workload: N agents (random LoRA adapters, seeded, r=8, all linear layers) each answer P arithmetic
task prompts (round 1 of a debate: the task prompt alone), generating exactly ``new_tokens`` tokens each
(``ignore_eos``), so every path generates N * P * new_tokens tokens. Paths:

- ``authors``: the authors' pattern, plain transformers: one request at a time (problem by problem, agent
  by agent); each agent's merged model (loaded once, kept in CPU memory) is moved to the device for its
  request and moved back after it (both moves are timed; on a CPU they are no-ops);
- ``hf-merged``: :class:`~maft.engines.hf.HFEngine` batching, agents merged into copies of the model;
- ``hf-mixed``: HFEngine with one base model and unmerged adapters in mixed-adapter batches;
- ``hf-cb``: transformers' continuous batching (``model.generate_batch``). It has no per-request adapter,
  so each agent is a merged copy of the model served by its own ``generate_batch`` call, one after another;
- ``openai``: :class:`~maft.engines.openai.OpenAIEngine` against a running server (``url``). With server
  kind ``vllm`` (or ``sglang``) the agents are loaded as the server's LoRA adapters; otherwise every request
  goes to the base model (said in the path's note).

Only generation is timed (model loading, merging and one small warm-up call per path are not). Each path
runs in a fresh process by default (``isolate``), so that its peak memory is its own: the peak resident
set (``resource.getrusage``) on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU. On a GPU (or with
``bandwidth_gbs``) each path also gets the fraction of the decode roofline it reached: memory bandwidth
divided by the bytes one decode step reads (parameter bytes + the KV cache of the sequences decoded
together), times the number of sequences decoded together.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

#: Paths ``maft bench generate`` knows, in the order they run.
PATHS = ("authors", "hf-merged", "hf-mixed", "hf-cb", "openai")
DEFAULT_PATHS = ("authors", "hf-merged", "hf-mixed", "hf-cb")

#: Named architecture shapes, built with random weights (no download): Llama 3.2 1B and Llama 3.1 8B
#: shapes with a 32000-token vocabulary; prompts are tokenized with the tiny model's tokenizer.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "tie_word_embeddings": True,
    },
    "llama-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": False,
    },
}
SHAPE_VOCAB = 32000

#: Memory bandwidth (GB/s) of known GPUs, matched in order against ``torch.cuda.get_device_name()``.
BANDWIDTH_GBS: tuple[tuple[str, float], ...] = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),  # 40 GB
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("RTX 4090", 1008.0),
)

SERVER_KINDS = ("vllm", "sglang", "transformers", "api")
ADAPTER_SERVERS = ("vllm", "sglang")  # server kinds whose agents are LoRA adapters loaded at run time


class BenchError(ValueError):
    """A benchmark setting that cannot work; the message says what is accepted."""


def parse_paths(text: str | Sequence[str], known: Sequence[str] = PATHS) -> list[str]:
    """Path names from ``"a,b"`` (or a list), checked against ``known`` (default :data:`PATHS`), in its order."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in names if p not in known]
    if unknown or not names:
        raise BenchError(
            f"unknown path{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"accepted: {', '.join(known)}"
        )
    return sorted(set(names), key=list(known).index)


@dataclass
class BenchConfig:
    model: str = "tiny"  # tiny, a local checkpoint, or a name in SHAPES
    agents: int = 3
    prompts: int = 64
    new_tokens: int = 64
    paths: list[str] = field(default_factory=lambda: list(DEFAULT_PATHS))
    device: str = "auto"
    batch_size: int = 64
    temperature: float = 1.0  # the debate's sampling settings
    top_p: float = 0.9
    seed: int = 0
    url: str | None = None  # openai: the server's base URL (…/v1)
    served_name: str | None = None  # openai: the server's name for the base model (default: the model path)
    server_kind: str = "api"  # openai: vllm/sglang load the agents as adapters; else the base model only
    concurrency: int = 64  # openai: requests in flight
    bandwidth_gbs: float | None = None  # memory bandwidth for the roofline (default: known GPUs by name)
    isolate: bool = True  # each path in a fresh process (its own peak memory)
    threads: int | None = None  # CPU: torch threads of the in-process paths (default: every core this process may use)

    def check(self) -> None:
        self.paths = parse_paths(self.paths)
        if min(self.agents, self.prompts, self.new_tokens, self.batch_size, self.concurrency) < 1:
            raise BenchError("agents, prompts, new_tokens, batch_size and concurrency must be >= 1")
        if self.server_kind not in SERVER_KINDS:
            raise BenchError(f"unknown server kind {self.server_kind!r}; accepted: {', '.join(SERVER_KINDS)}")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise BenchError(f"--top-p must be in (0, 1] and --temperature >= 0 (got {self.top_p}, {self.temperature})")
        if "openai" in self.paths and not self.url:
            raise BenchError("the openai path needs --url (the server's base URL, e.g. http://127.0.0.1:8000/v1)")
        from maft.checks import SetupError, check_device

        try:
            check_device(self.device)
        except SetupError as e:
            raise BenchError(f"--device: {e}") from None
        if self.model not in SHAPES and self.model != "tiny" and not (Path(self.model) / "config.json").is_file():
            raise BenchError(
                f"--model {self.model!r} is not 'tiny', a local checkpoint (config.json) "
                f"or a shape ({', '.join(SHAPES)})"
            )


@dataclass
class Setup:
    """What every path shares: the model and adapters on disk, the prompts, the device and dtype."""

    model_dir: str
    adapters: dict[str, str]  # agent name -> PEFT adapter directory
    prompts: list[str]
    prompt_tokens: list[int]
    device: str
    dtype: str  # float32 or bfloat16
    num_parameters: int
    adapter_parameters: int  # of one agent
    kv_bytes_per_token: int
    element_bytes: int


# -- set-up ---------------------------------------------------------------------------------------------
def _device(device: str) -> str:
    from maft.engines.hf import resolve_device

    return str(resolve_device(device))


def shape_config(shape: str, tokenizer: Any) -> Any:
    """The ``LlamaConfig`` of a named shape (:data:`SHAPES`), its special tokens the tokenizer's (the tiny model's,
    whose ids are all below :data:`SHAPE_VOCAB`)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        **SHAPES[shape],
        vocab_size=SHAPE_VOCAB,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def prepare(cfg: BenchConfig, workdir: Path) -> Setup:
    """Write the model (a named shape: random weights) and N seeded random adapters under ``workdir``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    from maft.tasks import get_task
    from maft.tiny import default_checkpoint

    device = _device(cfg.device)
    dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)
    tiny = default_checkpoint()
    if cfg.model in SHAPES:
        model_dir = workdir / "model"
        tok = AutoTokenizer.from_pretrained(tiny)
        config = shape_config(cfg.model, tok)
        torch.manual_seed(cfg.seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    else:
        model_dir = tiny if cfg.model == "tiny" else Path(cfg.model).resolve()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval()
    num_parameters = sum(p.numel() for p in model.parameters())
    adapters: dict[str, str] = {}
    adapter_parameters = 0
    for i in range(cfg.agents):
        torch.manual_seed(cfg.seed * 1000 + i)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        peft_model = get_peft_model(model, lora)
        adapter_parameters = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        path = workdir / "agents" / f"agent_{i}"
        peft_model.save_pretrained(path)
        adapters[f"agent_{i}"] = str(path)
        model = peft_model.unload()
    config = AutoConfig.from_pretrained(model_dir)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    element_bytes = torch.finfo(dtype).bits // 8
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    task = get_task("arithmetic")
    prompts = [task.prompt(p) for p in task.splits(0, cfg.prompts, seed=cfg.seed).test]
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_tokens = [len(_prompt_ids(tok, p)) for p in prompts]
    return Setup(
        model_dir=str(model_dir),
        adapters=adapters,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        device=device,
        dtype=dtype_name,
        num_parameters=num_parameters,
        adapter_parameters=adapter_parameters,
        kv_bytes_per_token=2 * config.num_hidden_layers * kv_heads * head_dim * element_bytes,
        element_bytes=element_bytes,
    )


def _prompt_ids(tok: Any, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def _sampling(cfg: BenchConfig, new_tokens: int | None = None, ignore_eos: bool = True):
    from maft.engines.base import Sampling

    return Sampling(
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=new_tokens or cfg.new_tokens, ignore_eos=ignore_eos
    )


def _requests(setup: Setup, cfg: BenchConfig, agent_names: Sequence[str | None]) -> list:
    """Agent-major: agent a's P prompts, for each agent (how a debate round batches them)."""
    from maft.engines.base import Request

    sampling = _sampling(cfg)
    return [
        Request([{"role": "user", "content": p}], adapter=a, sampling=sampling)
        for a in agent_names
        for p in setup.prompts
    ]


def _merged_models(setup: Setup) -> list:
    """Each agent's adapter merged into its own copy of the model, in CPU memory."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    models = []
    for path in setup.adapters.values():
        base = AutoModelForCausalLM.from_pretrained(setup.model_dir, dtype=getattr(torch, setup.dtype))
        models.append(PeftModel.from_pretrained(base, path).merge_and_unload().eval())
    return models


def _gen_kwargs(cfg: BenchConfig, tok: Any, new_tokens: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if cfg.temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    return kwargs


# -- the paths -------------------------------------------------------------------------------------------
def synchronize(device: str) -> None:
    """Wait for the work queued on a CUDA ``device``, so that a clock read next sees it done (a no-op elsewhere)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _authors(setup: Setup, cfg: BenchConfig) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup.model_dir)
    models = _merged_models(setup)
    ids = [torch.tensor([_prompt_ids(tok, p)]) for p in setup.prompts]
    kwargs = _gen_kwargs(cfg, tok, cfg.new_tokens)

    def one(model: Any, prompt: torch.Tensor, kw: dict) -> int:
        model.to(setup.device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=prompt.to(setup.device), attention_mask=torch.ones_like(prompt).to(setup.device), **kw
            )
        model.to("cpu")
        return int(out.shape[1] - prompt.shape[1])

    one(models[0], ids[0], _gen_kwargs(cfg, tok, 2))  # warm-up
    synchronize(setup.device)
    start = time.perf_counter()
    tokens = sum(one(model, prompt, kwargs) for prompt in ids for model in models)
    synchronize(setup.device)
    return {
        "seconds": time.perf_counter() - start,
        "generated_tokens": tokens,
        "concurrency": 1,
        "note": "one request at a time; each agent's merged model moved to the device for its request",
    }


def _hf(setup: Setup, cfg: BenchConfig, merge: bool) -> dict[str, Any]:
    from maft.engines.hf import HFEngine

    engine = HFEngine(
        setup.model_dir,
        device=setup.device,
        dtype=setup.dtype,
        batch_size=cfg.batch_size,
        merge_adapters=merge,
        threads=cfg.threads,
    )
    for name, path in setup.adapters.items():
        engine.load_agent(name, path)
    names = list(setup.adapters)
    warm = _requests(setup, cfg, names)[:2]
    engine.generate([type(r)(r.messages, r.adapter, _sampling(cfg, 2)) for r in warm], seed=cfg.seed)
    requests = _requests(setup, cfg, names)
    synchronize(setup.device)
    start = time.perf_counter()
    out = engine.generate(requests, seed=cfg.seed)
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    per_batch = min(cfg.batch_size, cfg.prompts if merge else len(requests))
    note = (
        "agents merged into copies of the model; one agent per batch"
        if merge
        else "one base model, unmerged adapters in mixed-adapter batches"
    )
    return {
        "seconds": seconds,
        "generated_tokens": sum(g.completion_tokens for g in out),
        "concurrency": per_batch,
        "note": f"{note}; batch size {cfg.batch_size}",
    }


def _hf_cb(setup: Setup, cfg: BenchConfig) -> dict[str, Any]:
    from transformers import AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(setup.model_dir)
    models = [m.to(setup.device) for m in _merged_models(setup)]
    ids = [_prompt_ids(tok, p) for p in setup.prompts]
    sample = cfg.temperature > 0
    # eos_token_id None: continuous batching disables the end-of-sequence stop (exactly max_new_tokens each)
    gen = GenerationConfig(
        max_new_tokens=cfg.new_tokens,
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
        do_sample=sample,
        **({"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": 0} if sample else {}),
    )
    cb = None
    if not setup.device.startswith("cuda"):  # sized for the workload: the automatic sizing is slow on a CPU
        page = 32
        blocks = len(ids) * math.ceil((max(map(len, ids)) + cfg.new_tokens) / page) + 8
        cb = ContinuousBatchingConfig(page_size=page, num_blocks=blocks, max_batch_tokens=2048, use_cuda_graph=False)
    models[0].generate_batch(
        ids[:2],
        generation_config=GenerationConfig(**{**gen.to_dict(), "max_new_tokens": 2}),
        continuous_batching_config=cb,
        warmup=False,
    )
    synchronize(setup.device)
    start = time.perf_counter()
    tokens, errors = 0, []
    for model in models:
        out = model.generate_batch(
            ids, generation_config=gen, continuous_batching_config=cb, warmup=setup.device.startswith("cuda")
        )
        tokens += sum(len(o.generated_tokens) for o in out.values())
        errors += [o.error for o in out.values() if o.error]
    synchronize(setup.device)
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"generate_batch failed for {len(errors)} requests: {errors[0]}")
    return {
        "seconds": seconds,
        "generated_tokens": tokens,
        "concurrency": len(ids),
        "note": "no per-request adapters in transformers' continuous batching: each agent a merged copy, "
        "one generate_batch call per agent in turn",
    }


def _openai(setup: Setup, cfg: BenchConfig) -> dict[str, Any]:
    import httpx

    from maft.agents import Agents
    from maft.engines.base import Request
    from maft.engines.openai import OpenAIEngine
    from maft.servers import KINDS, run_tag

    kind = cfg.server_kind
    name = cfg.served_name or setup.model_dir
    server = (
        KINDS[kind](tag=f"bench-{run_tag(Path(setup.model_dir).parent / str(time.time_ns()))}")
        if kind in ADAPTER_SERVERS
        else None
    )
    extra: dict[str, Any] = {}
    ignore_eos = kind in ADAPTER_SERVERS
    if kind == "transformers":  # no ignore_eos field there: a generation config, in its JSON field, does it
        extra["generation_config"] = json.dumps(
            dict(
                max_new_tokens=cfg.new_tokens,
                min_new_tokens=cfg.new_tokens,
                do_sample=cfg.temperature > 0,
                **({"top_k": 0} if cfg.temperature > 0 else {}),
            )
        )
    assert cfg.url is not None  # checked by BenchConfig.check for the openai path
    key = os.environ.get("OPENAI_API_KEY") or "EMPTY"  # a server started with an API key (vLLM's --api-key)
    engine = OpenAIEngine(cfg.url, name, api_key=key, server=server, concurrency=cfg.concurrency, extra_body=extra)
    if server is not None:
        roles = {f"gen_{i}": Path(p) for i, p in enumerate(setup.adapters.values())}
        engine.serve(Agents(1, roles))
        agent_names: list[str | None] = list(roles)
        note = f"{kind} server, the agents as its LoRA adapters"
    else:
        agent_names = [None] * cfg.agents
        note = f"{kind} server, base model only (agents not served: no runtime LoRA)"
    note += f"; {cfg.concurrency} requests in flight"
    sampling = _sampling(cfg, ignore_eos=ignore_eos)
    requests = [Request([{"role": "user", "content": p}], a, sampling) for a in agent_names for p in setup.prompts]
    engine.generate(requests[:2], seed=cfg.seed)  # warm-up (full length: a generation config may fix min_new_tokens)
    start = time.perf_counter()
    out = engine.generate(requests, seed=cfg.seed)
    seconds = time.perf_counter() - start
    if server is not None:
        for served in engine.names.values():
            httpx.post(f"{engine.endpoints[0].url}/unload_lora_adapter", json={"lora_name": served}, timeout=30)
    return {
        "seconds": seconds,
        "generated_tokens": sum(g.completion_tokens for g in out),
        "concurrency": min(cfg.concurrency, len(requests)),
        "note": note,
        "memory_scope": "client process only",
    }


def run_path(path: str, setup: Setup, cfg: BenchConfig) -> dict[str, Any]:
    """Run one path here and measure it (its memory peak is this process's unless ``cfg.isolate``)."""
    import torch

    from maft.engines.hf import cpu_threads

    if setup.device == "cpu":
        torch.set_num_threads(cfg.threads or cpu_threads())
    cuda = setup.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(cfg.seed)
    runner = {
        "authors": _authors,
        "hf-merged": lambda s, c: _hf(s, c, True),
        "hf-mixed": lambda s, c: _hf(s, c, False),
        "hf-cb": _hf_cb,
        "openai": _openai,
    }[path]
    result = runner(setup, cfg)
    if cuda and path != "openai":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result.setdefault("memory_scope", "GPU, torch.cuda.max_memory_allocated")
    else:
        result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        result.setdefault(
            "memory_scope",
            "peak RSS of the path's process"
            if cfg.isolate
            else "peak RSS of the whole benchmark process so far (not isolated)",
        )
    return result


def isolated(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) process, so that its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _run_isolated(path: str, setup: Setup, cfg: BenchConfig) -> dict[str, Any]:
    return isolated(run_path, path, setup, cfg)


# -- the benchmark ----------------------------------------------------------------------------------------
def by_gpu_name(table: Sequence[tuple[str, float]], name: str) -> float | None:
    """The first entry of ``table`` whose key is in the GPU's name as whole words (``L4`` is not ``NVIDIA L40``)."""
    return next((v for key, v in table if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", name, re.IGNORECASE)), None)


def gpu_bandwidth_gbs(name: str) -> float | None:
    """Memory bandwidth of a GPU by its name (``torch.cuda.get_device_name()``), or None when unknown."""
    return by_gpu_name(BANDWIDTH_GBS, name)


def machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    from maft.engines.hf import cpu_threads

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": cpu_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def roofline(setup: Setup, cfg: BenchConfig, path: str, concurrency: int, bandwidth_gbs: float) -> float:
    """Decode tokens/s at the memory-bandwidth bound: ``concurrency`` sequences per decode step, each step
    reading the parameters once (for hf-mixed, plus every agent's adapter) and the KV cache of those
    sequences at the mean context length (prompt + half the new tokens)."""
    params = setup.num_parameters + (cfg.agents * setup.adapter_parameters if path == "hf-mixed" else 0)
    context = sum(setup.prompt_tokens) / len(setup.prompt_tokens) + cfg.new_tokens / 2
    step_bytes = params * setup.element_bytes + concurrency * context * setup.kv_bytes_per_token
    return bandwidth_gbs * 1e9 * concurrency / step_bytes


def bench_generate(cfg: BenchConfig, workdir: str | Path | None = None, *, echo: Any = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (config, machine, model, one row per path)."""
    cfg.check()
    say = echo or (lambda _msg: None)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="maft-bench-")) if workdir is None else Path(workdir)
    try:
        say(f"preparing {escape(cfg.model)} with {cfg.agents} random adapters")
        setup = prepare(cfg, work)
        bandwidth = cfg.bandwidth_gbs
        info = machine(setup.device)
        if bandwidth is None and "gpu" in info:
            bandwidth = gpu_bandwidth_gbs(info["gpu"])
        expected = cfg.agents * cfg.prompts * cfg.new_tokens
        rows: list[dict[str, Any]] = []
        omitted: dict[str, str] = {}
        for path in cfg.paths:
            say(f"running {escape(path)}")
            try:
                result = _run_isolated(path, setup, cfg) if cfg.isolate else run_path(path, setup, cfg)
            except Exception as e:  # noqa: BLE001 - a path that cannot run is reported, the others still run
                omitted[path] = f"{type(e).__name__}: {e}"
                say(f"[yellow]{escape(path)} omitted: {escape(omitted[path])}[/]")
                continue
            requests = cfg.agents * cfg.prompts
            row = {
                "path": path,
                "requests": requests,
                "generated_tokens": result["generated_tokens"],
                "expected_tokens": expected,
                "seconds_per_round": result["seconds"],
                "tokens_per_s": result["generated_tokens"] / result["seconds"],
                "requests_per_s": requests / result["seconds"],
                "concurrency": result["concurrency"],
                "peak_memory_mib": result["peak_memory_mib"],
                "memory_scope": result["memory_scope"],
                "note": result["note"],
            }
            if bandwidth:
                row["roofline_tokens_per_s"] = roofline(setup, cfg, path, result["concurrency"], bandwidth)
                row["roofline_fraction"] = row["tokens_per_s"] / row["roofline_tokens_per_s"]
            rows.append(row)
        base = next((r["tokens_per_s"] for r in rows if r["path"] == "authors"), None)
        for row in rows:
            row["ratio_to_authors"] = row["tokens_per_s"] / base if base else None
        return {
            "config": asdict(cfg),
            "machine": info,
            "bandwidth_gbs": bandwidth,
            "model": {
                "name": cfg.model,
                "path": setup.model_dir if not own or cfg.model not in SHAPES else None,
                "parameters": setup.num_parameters,
                "adapter_parameters": setup.adapter_parameters,
                "dtype": setup.dtype,
                "mean_prompt_tokens": sum(setup.prompt_tokens) / len(setup.prompt_tokens),
            },
            "workload": {
                "agents": cfg.agents,
                "prompts": cfg.prompts,
                "new_tokens": cfg.new_tokens,
                "requests": cfg.agents * cfg.prompts,
                "expected_tokens": expected,
                "ignore_eos": True,
            },
            "paths": rows,
            "omitted": omitted,
        }
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def table(result: dict[str, Any]):
    """The result as a rich table."""
    from rich.table import Table

    w = result["workload"]
    t = Table(
        title=f"one debate round: {w['agents']} agents x {w['prompts']} prompts x {w['new_tokens']} new tokens "
        f"({result['model']['name']}, {result['machine']['device']})"
    )
    roof = any("roofline_fraction" in r for r in result["paths"])
    for col in [
        "path",
        "tokens",
        "tokens/s",
        "requests/s",
        "s/round",
        "x authors",
        "peak MiB",
        *(["roofline"] if roof else []),
    ]:
        t.add_column(col, justify="left" if col == "path" else "right")
    for r in result["paths"]:
        ratio = f"{r['ratio_to_authors']:.2f}" if r["ratio_to_authors"] is not None else "-"
        cells = [
            r["path"],
            str(r["generated_tokens"]),
            f"{r['tokens_per_s']:.0f}",
            f"{r['requests_per_s']:.2f}",
            f"{r['seconds_per_round']:.2f}",
            ratio,
            f"{r['peak_memory_mib']:.0f}",
        ]
        if roof:
            cells.append(f"{100 * r['roofline_fraction']:.1f}%" if "roofline_fraction" in r else "-")
        t.add_row(*cells)
    return t


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (for docs)."""
    lines = [
        "| path | tokens | tokens/s | requests/s | s/round | x authors | peak MiB | note |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in result["paths"]:
        ratio = f"{r['ratio_to_authors']:.2f}" if r["ratio_to_authors"] is not None else "-"
        lines.append(
            f"| {r['path']} | {r['generated_tokens']} | {r['tokens_per_s']:.0f} | {r['requests_per_s']:.2f} | "
            f"{r['seconds_per_round']:.2f} | {ratio} | {r['peak_memory_mib']:.0f} | {r['note']} |"
        )
    return "\n".join(lines)


def check_out(out: str | Path, example: str = "bench.json") -> None:
    """Refuse, before a benchmark (or an evaluation) runs, a result path that cannot be written (a folder, an
    unwritable place); ``example``: a file name to suggest."""
    out = Path(out)
    if out.is_dir():
        raise BenchError(f"--out {out} is a folder; name the JSON file to write, e.g. {out / example}")
    if out.exists() and not os.access(out, os.W_OK):
        raise BenchError(f"--out {out} exists and is not writable here")
    from maft.checks import unwritable

    if problem := unwritable(out.parent):
        raise BenchError(f"--out {out}: {problem}")


def write(result: dict[str, Any], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


__all__ = [
    "PATHS",
    "SHAPES",
    "BenchConfig",
    "BenchError",
    "bench_generate",
    "markdown",
    "parse_paths",
    "synchronize",
    "table",
    "write",
]
