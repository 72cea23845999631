"""``maft bench train``: one iteration's finetuning, the same workload on each training path.

The workload: R roles (default 6, as the default run's 3 generation + 3 critic agents), each with E synthetic
examples (seeded), one epoch. A generation role's example is an arithmetic task prompt with a completion of
``gen_tokens`` random digits; a critic role's example is the task prompt, a first answer of ``gen_tokens`` digits
and a second-round user turn (other agents' answers), with a completion of ``critic_tokens`` digits (every digit
is one token of the tiny model's tokenizer, which every shape uses). Loss on the completion only
(``train.critic_loss=final``); the rest is :class:`~maft.config.TrainConfig`'s defaults: ``bf16`` as ``bf16`` says
(auto: where the device computes it natively, a CUDA GPU or a CPU with AVX512-BF16/AMX; :mod:`maft.training.precision`).
Activation checkpointing is on (TRL's default, as every number in the README was measured) unless
``activation_checkpointing=False``; a run's default decides it from memory (:mod:`maft.training.memory`).
Paths:

- ``lora-sequential``: the roles' LoRA adapters one after another, each loading the base model, as the loop's
  ``run_local`` does (:func:`maft.training.sft.finetune`'s steps: its TRL trainer, ``train()``, the save);
- ``lora-concurrent``: the roles' adapters together on one base copy
  (:func:`maft.training.concurrent.finetune_together`, ``execution.concurrent_training``);
- ``full-sequential``: every weight of a model per role, one after another. Skipped (said in ``omitted``) where
  the weights, gradients and AdamW states would obviously not fit the device's memory.

Base models: ``tiny`` (the shipped model), or ``llama-1b`` / ``llama-8b``
(:data:`maft.bench.SHAPES`): random weights, written to a temporary directory so that the trainers load it by
path, as they load a real checkpoint.

Clocks: ``setup`` is model loading, dataset preparation and trainer/optimizer set-up; ``train`` is the training
steps alone (forward, backward, optimizer); saving the adapters or checkpoints is neither, but is in ``total``
(setup + train + save), which is what the loop pays (sequential paths pay setup once per role). The concurrent
path's runs split their set-up (``setup_parts``): ``rows`` (TRL's data preparation of every role), ``load`` (the
base model and every role's adapter, on the CPU: :func:`~maft.training.concurrent.load_together`) and ``rest``
(moving the model to the device, activation checkpointing, the optimizers). Importing the training libraries
(transformers' trainer, TRL, PEFT, datasets; seconds in a fresh process) is on no clock: every path imports the
same ones once per process, and which clock paid for them depended on each path's import order (before 2026-11-27
the sequential path imported transformers' trainer before its clock and the concurrent path inside its set-up: 3.6
s in one timing on a 2-core CPU). Rates: examples/s and tokens/s over ``train`` (and over ``total``). Tokens are
the tokens that go through the forward pass and are not padding: the ``input_ids`` TRL prepares for each example,
summed (padding added to batch rows is not counted).

On a GPU (or with ``peak_tflops``) each path gets its model FLOPs utilization: achieved FLOPs / peak dense FLOPs of
the precision it trained in (bf16; fp32 without TF32 for a path in fp32, e.g. full finetuning under ``--bf16 auto``;
``peak_tflops`` for all). Achieved FLOPs count the matrix products of the parameters only (no attention score FLOPs,
no recompute of gradient checkpointing): P is every parameter but an untied input embedding (a lookup, not a
product), T the trainable LoRA parameters of one role. Full finetuning: 6 P per token (forward 2 P, backward 4 P).
LoRA, counted honestly: forward 2 P, backward through the frozen base for the input gradients only 2 P, and the
adapters 6 T (their forward, input and weight gradients): (4 P + 6 T) per token.

Each path runs in a fresh process by default (``isolate``), so that its peak memory is its own (the peak
resident set on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU).

Repeats (``repeats`` K > 1): each path runs K times, the paths interleaved and their order reversed every other
round (A B C, C B A, ...), so that a machine's drift falls on every path alike. A row then shows its median run (by
total seconds; the lower of the middle two for an even K) and keeps every run in ``runs``; the speedups are those
of the median runs, and ``speedup_total_range`` / ``speedup_train_range`` the least and greatest over the rounds
(round i's concurrent run against round i's sequential run). The median runs by total may come from different
rounds, so the training speedup shown can lie outside ``speedup_train_range``. Peak memory is the largest of the
runs. A path that fails in any round is omitted (its reason names the round), and its runs leave ``order``.
"""

from __future__ import annotations

import gc
import math
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from maft import bench
from maft.bench import SHAPES, BenchConfig, BenchError, isolated, machine, prepare, synchronize

#: Paths ``maft bench train`` knows, in the order they run.
PATHS = ("lora-sequential", "lora-concurrent", "full-sequential")
MODELS = ("tiny", *SHAPES)

#: Peak dense bf16 tensor FLOP/s (no sparsity) of known GPUs, matched in order against
#: ``torch.cuda.get_device_name()``; from NVIDIA's datasheets (H100/H200: "H100 Tensor Core GPU" and "H200"
#: datasheets, SXM figures halved from the with-sparsity ones; A100: "A100 Tensor Core GPU" datasheet; L40S, L4:
#: their datasheets).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)
#: Peak fp32 FLOP/s (no TF32: torch's default matmul precision) of the same GPUs, for paths that train in fp32
#: (full finetuning under ``--bf16 auto``); same datasheets.
PEAK_FP32_FLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 67e12),
    ("H100 NVL", 60e12),
    ("H100 PCIe", 51e12),
    ("H100", 67e12),
    ("A100", 19.5e12),
    ("L40S", 91.6e12),
    ("L40", 90.5e12),
    ("L4", 30.3e12),
)


def parse_paths(text: str | Sequence[str]) -> list[str]:
    """Path names from ``"a,b"`` (or a list), checked against :data:`PATHS`."""
    return bench.parse_paths(text, PATHS)


@dataclass
class TrainBenchConfig:
    shape: str = "tiny"  # tiny or a name in maft.bench.SHAPES (random weights)
    roles: int = 6  # the first half (rounded up) generation roles, the rest critic roles
    examples: int = 64  # per role
    gen_tokens: int = 48  # completion tokens of a generation example (and a critic's first answer)
    critic_tokens: int = 128  # completion tokens of a critic example
    batch_size: int = 16  # train.batch_size
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    device: str = "auto"
    seed: int = 0
    peak_tflops: float | None = None  # peak dense FLOP/s for the MFU, in TFLOP/s (default: known GPUs by name)
    isolate: bool = True  # each path in a fresh process (its own peak memory)
    threads: int | None = None  # CPU: torch threads (default: every core this process may use)
    activation_checkpointing: bool = True  # recompute activations in the backward pass (TRL's default)
    repeats: int = 1  # runs of each path, interleaved (module docstring)
    bf16: str = "auto"  # train.bf16: auto, true or false

    def check(self) -> None:
        self.paths = parse_paths(self.paths)
        if self.shape not in MODELS:
            raise BenchError(f"unknown shape {self.shape!r}; accepted: {', '.join(MODELS)}")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            raise BenchError(f"--bf16 {self.bf16!r}: give auto, true or false")
        if min(self.roles, self.examples, self.gen_tokens, self.critic_tokens, self.batch_size, self.repeats) < 1:
            raise BenchError("roles, examples, gen_tokens, critic_tokens, batch_size and repeats must be >= 1")


@dataclass
class Workload:
    """What every path trains: the base model on disk and each role's examples."""

    model_dir: str
    device: str
    roles: dict[str, list]  # role -> its Examples


# -- the workload ----------------------------------------------------------------------------------------
def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choices("0123456789", k=n))


def make_examples(cfg: TrainBenchConfig) -> dict[str, list]:
    """Each role's synthetic examples (module docstring), seeded: ``gen_i`` then ``critic_i`` roles."""
    from maft.data.agent_data import Example
    from maft.tasks import get_task

    task = get_task("arithmetic")
    generation = math.ceil(cfg.roles / 2)
    roles: dict[str, list] = {}
    for i in range(cfg.roles):
        critic = i >= generation
        name = f"critic_{i - generation}" if critic else f"gen_{i}"
        rng = random.Random(f"bench-train:{cfg.seed}:{i}")
        problems = task.splits(0, cfg.examples, seed=cfg.seed * 1000 + i).test
        examples = []
        for problem in problems:
            prompt = [{"role": "user", "content": task.prompt(problem)}]
            if critic:
                prompt += [
                    {"role": "assistant", "content": _digits(rng, cfg.gen_tokens)},
                    {
                        "role": "user",
                        "content": f"Other agents answered {_digits(rng, 4)} and {_digits(rng, 4)}. "
                        "Using their solutions as additional advice, give an updated answer.",
                    },
                ]
            completion = [
                {"role": "assistant", "content": _digits(rng, cfg.critic_tokens if critic else cfg.gen_tokens)}
            ]
            examples.append(
                Example(
                    prompt=prompt,
                    completion=completion,
                    problem_id=problem.id,
                    agent=i,
                    kind="critic+" if critic else "generation",
                )
            )
        roles[name] = examples
    return roles


def train_config(method: str, cfg: TrainBenchConfig, device: str):
    from maft.config import TrainConfig
    from maft.training.precision import resolve_bf16

    bf16 = str(cfg.bf16).lower()
    precision = "auto" if bf16 == "auto" else bf16 == "true"
    train = TrainConfig(method=method, epochs=1, batch_size=cfg.batch_size, bf16=precision)
    return resolve_bf16(train, device)


def role_tokens(model_dir: str, examples: Sequence, tcfg: Any, device: str) -> int:
    """Non-pad tokens through the forward pass for one epoch over ``examples``: the ``input_ids`` TRL prepares."""
    from maft.training.concurrent import prepared_rows
    from maft.training.sft import _tokenizer, sft_config

    args = sft_config(Path(tempfile.gettempdir()) / "maft-bench-train", tcfg, seed=0, device=device, all_turns=False)
    return sum(len(row["input_ids"]) for row in prepared_rows(_tokenizer(model_dir), examples, args, False))


def parameter_counts(model: str, tcfg: Any) -> dict[str, int]:
    """``parameters`` (all), ``flop_parameters`` (P: all but an untied input embedding) and ``lora_parameters``
    (T: one role's adapter) of a checkpoint or a shape, counted on a weightless (meta) copy of the model."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from maft.bench import SHAPE_VOCAB
    from maft.training.sft import lora_config

    if model in SHAPES:
        config = LlamaConfig(**SHAPES[model], vocab_size=SHAPE_VOCAB)
    else:
        config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in base.parameters())
    head, embed = base.get_output_embeddings(), base.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    flop = total - (0 if tied else embed.weight.numel())
    lora = get_peft_model(base, lora_config(tcfg))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return {"parameters": total, "flop_parameters": flop, "lora_parameters": trainable}


def train_flops(method: str, params: int, trainable: int, tokens: int) -> float:
    """Model FLOPs of training ``tokens`` tokens: 6 P per token (full), (4 P + 6 T) per token (LoRA)."""
    if method == "full":
        return 6.0 * params * tokens
    return (4.0 * params + 6.0 * trainable) * tokens


def utilization(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: achieved FLOP/s over the peak (None without a peak)."""
    return flops / seconds / peak if peak else None


def peak_flops(gpu_name: str, bf16: bool = True) -> float | None:
    """Peak dense bf16 (or, ``bf16=False``, fp32) FLOP/s of a GPU by its name, or None when unknown."""
    return bench.by_gpu_name(PEAK_BF16_FLOPS if bf16 else PEAK_FP32_FLOPS, gpu_name)


# -- the paths -------------------------------------------------------------------------------------------
def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _sequential(work: Workload, tcfg: Any, out: Path, checkpointing: bool = True) -> dict[str, Any]:
    """finetune's steps per role, one role after another, with clocks between them."""
    from transformers import PrinterCallback

    from maft.training.sft import sft_trainer

    clocks = {"setup": 0.0, "train": 0.0, "save": 0.0}
    steps = 0
    for seed, (role, examples) in enumerate(work.roles.items()):
        synchronize(work.device)
        began = time.perf_counter()
        trainer = sft_trainer(
            work.model_dir,
            examples,
            out / role / ".trainer",
            tcfg,
            seed=seed,
            device=work.device,
            activation_checkpointing=checkpointing,
        )
        trainer.remove_callback(PrinterCallback)
        synchronize(work.device)
        trained = time.perf_counter()
        steps += trainer.train().global_step
        synchronize(work.device)
        saved = time.perf_counter()
        trainer.model.save_pretrained(str(out / role))
        if tcfg.method == "full":
            trainer.processing_class.save_pretrained(str(out / role))
        clocks["setup"] += trained - began
        clocks["train"] += saved - trained
        clocks["save"] += time.perf_counter() - saved
        del trainer
        _release(work.device)
    return {**clocks, "steps": steps, "note": "one TRL trainer per role, one after another, each loading the model"}


@contextmanager
def _clocked(module: Any, name: str, call: Any):
    """``module.name`` replaced, for the block, by ``call(original, *args, **kwargs)``."""
    original = getattr(module, name)
    setattr(module, name, lambda *a, **k: call(original, *a, **k))
    try:
        yield
    finally:
        setattr(module, name, original)


def _concurrent(work: Workload, tcfg: Any, out: Path, checkpointing: bool = True) -> dict[str, Any]:
    """finetune_together, its first forward marking the end of set-up and its saves timed apart."""
    from maft.training import concurrent

    marks: dict[str, float] = {"save": 0.0, "rows": 0.0, "load": 0.0}

    def timed(mark: str):
        def call(original, *args, **kwargs):
            synchronize(work.device)
            began = time.perf_counter()
            result = original(*args, **kwargs)
            synchronize(work.device)
            marks[mark] += time.perf_counter() - began
            return result

        return call

    def first_forward(original, *args, **kwargs):
        if "train_start" not in marks:
            synchronize(work.device)
            marks["train_start"] = time.perf_counter()
        return original(*args, **kwargs)

    def save(original, *args, **kwargs):
        synchronize(work.device)
        began = time.perf_counter()
        result = original(*args, **kwargs)
        marks["save"] += time.perf_counter() - began
        return result

    runs = [
        concurrent.RoleRun(role, examples, out / role, None, seed)
        for seed, (role, examples) in enumerate(work.roles.items())
    ]
    synchronize(work.device)
    began = time.perf_counter()
    with (
        _clocked(concurrent, "forward_backward", first_forward),
        _clocked(concurrent, "save_adapter", save),
        _clocked(concurrent, "prepared_rows", timed("rows")),
        _clocked(concurrent, "load_together", timed("load")),
    ):
        results = concurrent.finetune_together(
            work.model_dir, runs, tcfg, device=work.device, activation_checkpointing=checkpointing
        )
    synchronize(work.device)
    end = time.perf_counter()
    start = marks.get("train_start", end)
    return {
        "setup": start - began,
        "setup_parts": {  # where the set-up went: TRL's data preparation, the base and adapters, the rest
            "rows": marks["rows"],
            "load": marks["load"],
            "rest": start - began - marks["rows"] - marks["load"],
        },
        "train": end - start - marks["save"],
        "save": marks["save"],
        "steps": sum(r.steps for r in results.values()),
        "note": "the roles' adapters on one base copy, one loop (maft.training.concurrent)",
    }


def _import_training_stack() -> None:
    """Import what every path trains with, so that no path's clock pays a first import."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers.trainer  # noqa: F401
    import trl.trainer.sft_trainer  # noqa: F401


def run_path(path: str, work: Workload, cfg: TrainBenchConfig) -> dict[str, Any]:
    """Run one path here and measure it (its memory peak is this process's unless ``cfg.isolate``)."""
    import torch

    from maft.engines.hf import cpu_threads

    _import_training_stack()  # on no clock (module docstring)
    cuda = work.device.startswith("cuda")
    if cuda:
        torch.ones(1, device=work.device).sum().item()  # the CUDA context, not charged to the first role
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        torch.set_num_threads(cfg.threads or cpu_threads())
    tcfg = train_config(path.split("-")[0], cfg, work.device)
    out = Path(tempfile.mkdtemp(prefix=f"maft-bench-train-{path}-"))
    try:
        trains = _concurrent if path == "lora-concurrent" else _sequential
        result = trains(work, tcfg, out, cfg.activation_checkpointing)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result["bf16"] = bool(tcfg.bf16)  # --bf16 resolved for this path (auto keeps full finetuning in fp32)
    if cuda:
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["memory_scope"] = "GPU, torch.cuda.max_memory_allocated"
    else:
        result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        result["memory_scope"] = (
            "peak RSS of the path's process" if cfg.isolate else "peak RSS of the whole benchmark process so far"
        )
    return result


# -- the benchmark ----------------------------------------------------------------------------------------
def device_memory(device: str) -> int:
    """Bytes of memory the device has (the GPU's total, or this machine's RAM)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[1]
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def too_big(path: str, parameters: int, element_bytes: int, memory: int) -> str | None:
    """Why ``path`` obviously cannot fit ``memory`` bytes, or None: full finetuning holds weights, gradients and
    two AdamW states (4 x parameters x element bytes), LoRA the weights alone, each before any activation."""
    need = parameters * element_bytes * (4 if path.startswith("full") else 1)
    if need > 0.9 * memory:
        return (
            f"skipped: needs at least {need / 2**30:.0f} GiB (weights"
            f"{', gradients and AdamW states' if path.startswith('full') else ''}) of the device's "
            f"{memory / 2**30:.0f} GiB"
        )
    return None


def bench_train(cfg: TrainBenchConfig, workdir: str | Path | None = None, *, echo: Any = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-ready result (config, machine, model, workload, one row per path)."""
    from maft.bench import _device
    from maft.training.sft import _quiet

    cfg.check()
    _quiet()  # no progress bars from the datasets the token counts prepare
    say = echo or (lambda _msg: None)
    own = workdir is None
    work_dir = Path(tempfile.mkdtemp(prefix="maft-bench-train-")) if workdir is None else Path(workdir)
    try:
        device = _device(cfg.device)
        memory = device_memory(device)
        lora_cfg = train_config("lora", cfg, device)
        element_bytes = 2 if lora_cfg.bf16 else 4
        if cfg.shape in SHAPES:  # before the random weights are built
            shape_params = parameter_counts(cfg.shape, lora_cfg)["parameters"]
            if (reason := too_big("lora", shape_params, element_bytes, memory)) is not None:
                raise BenchError(f"--shape {cfg.shape} on {device}: {reason.removeprefix('skipped: ')}")
        say(f"preparing {escape(cfg.shape)} and {cfg.roles} roles x {cfg.examples} examples")
        setup = prepare(BenchConfig(model=cfg.shape, agents=0, prompts=1, device=device, seed=cfg.seed), work_dir)
        work = Workload(model_dir=setup.model_dir, device=device, roles=make_examples(cfg))
        params = parameter_counts(work.model_dir, lora_cfg)
        tokens = {role: role_tokens(work.model_dir, ex, lora_cfg, device) for role, ex in work.roles.items()}
        total_tokens = sum(tokens.values())
        info = machine(device)

        def peak(bf16: bool) -> float | None:  # each path against the peak of the precision it trained in
            if cfg.peak_tflops:
                return cfg.peak_tflops * 1e12
            return peak_flops(info["gpu"], bf16) if "gpu" in info else None

        examples = sum(len(ex) for ex in work.roles.values())
        rows: list[dict[str, Any]] = []
        omitted: dict[str, str] = {}
        runs: dict[str, list[dict[str, Any]]] = {}
        order: list[str] = []
        for path in cfg.paths:
            method_bytes = 2 if train_config(path.split("-")[0], cfg, device).bf16 else 4  # auto: full in fp32
            if (reason := too_big(path, params["parameters"], method_bytes, memory)) is not None:
                omitted[path] = reason
                say(f"[yellow]{escape(path)} {escape(reason)}[/]")
        for round_ in range(cfg.repeats):
            for path in cfg.paths if round_ % 2 == 0 else cfg.paths[::-1]:
                if path in omitted:
                    continue
                say(f"running {escape(path)}" + (f" ({round_ + 1}/{cfg.repeats})" if cfg.repeats > 1 else ""))
                try:
                    result = isolated(run_path, path, work, cfg) if cfg.isolate else run_path(path, work, cfg)
                except Exception as e:  # noqa: BLE001 - a path that cannot run is reported, the others still run
                    where = f" (round {round_ + 1} of {cfg.repeats})" if cfg.repeats > 1 else ""
                    omitted[path] = f"{type(e).__name__}{where}: {e}"
                    runs.pop(path, None)
                    order = [p for p in order if p != path]
                    say(f"[yellow]{escape(path)} omitted: {escape(omitted[path])}[/]")
                    continue
                result["total"] = result["setup"] + result["train"] + result["save"]
                runs.setdefault(path, []).append(result)
                order.append(path)
        for path in [p for p in cfg.paths if p in runs]:
            result = _median_run(runs[path])
            method = path.split("-")[0]
            flops = train_flops(method, params["flop_parameters"], params["lora_parameters"], total_tokens)
            total = result["total"]
            rows.append(
                {
                    "path": path,
                    "method": method,
                    "roles": cfg.roles,
                    "examples": examples,
                    "tokens": total_tokens,
                    "steps": result["steps"],
                    "setup_seconds": result["setup"],
                    "train_seconds": result["train"],
                    "save_seconds": result["save"],
                    "total_seconds": total,
                    "examples_per_s": examples / result["train"],
                    "tokens_per_s": total_tokens / result["train"],
                    "examples_per_s_total": examples / total,
                    "tokens_per_s_total": total_tokens / total,
                    "flops": flops,
                    "tflops_per_s": flops / result["train"] / 1e12,
                    "mfu": utilization(flops, result["train"], peak(result["bf16"])),
                    "peak_memory_mib": max(r["peak_memory_mib"] for r in runs[path]),
                    "memory_scope": result["memory_scope"],
                    "bf16": result["bf16"],
                    "note": result["note"],
                    "runs": [
                        {
                            k: r[k]
                            for k in ("setup", "setup_parts", "train", "save", "total", "peak_memory_mib")
                            if k in r
                        }
                        for r in runs[path]
                    ],
                }
            )
        by_path = {r["path"]: r for r in rows}
        for row in rows:
            sequential = by_path.get(f"{row['method']}-sequential")
            if row["path"].endswith("concurrent") and sequential:
                row["speedup_train"] = sequential["train_seconds"] / row["train_seconds"]
                row["speedup_total"] = sequential["total_seconds"] / row["total_seconds"]
                for clock in ("train", "total"):
                    ratios = [a[clock] / b[clock] for a, b in zip(sequential["runs"], row["runs"], strict=True)]
                    row[f"speedup_{clock}_range"] = [min(ratios), max(ratios)]
            else:
                row["speedup_train"] = row["speedup_total"] = None
                row["speedup_train_range"] = row["speedup_total_range"] = None
        return {
            "config": asdict(cfg),
            "machine": info,
            "peak_flops": peak(True),  # bf16's; a path that trained in fp32 (its row's bf16) used peak_flops_fp32
            "peak_flops_fp32": peak(False),
            "model": {
                "name": cfg.shape,
                "dtype": "bfloat16" if element_bytes == 2 else "float32",  # the LoRA paths'; each row says its own
                **params,
            },
            "workload": {
                "roles": {role: len(ex) for role, ex in work.roles.items()},
                "examples": examples,
                "tokens": total_tokens,
                "tokens_by_role": tokens,
                "gen_tokens": cfg.gen_tokens,
                "critic_tokens": cfg.critic_tokens,
                "batch_size": cfg.batch_size,
                "epochs": 1,
            },
            "paths": rows,
            "omitted": omitted,
            "order": order,
        }
    finally:
        if own:
            shutil.rmtree(work_dir, ignore_errors=True)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median total seconds (the lower of the middle two for an even count)."""
    ranked = sorted(runs, key=lambda r: r["total"])
    return ranked[(len(ranked) - 1) // 2]


def table(result: dict[str, Any]):
    """The result as a rich table."""
    from rich.table import Table

    w = result["workload"]
    k = result["config"].get("repeats", 1)
    runs = f", {'lower ' * (k % 2 == 0)}median of {k} runs each" if k > 1 else ""
    t = Table(
        title=f"finetuning: {len(w['roles'])} roles x {w['examples'] // max(len(w['roles']), 1)} examples, "
        f"{w['tokens']} tokens ({result['model']['name']}, {result['machine']['device']}){runs}"
    )
    cols = ["path", "steps", "setup s", "train s", "total s", "examples/s", "tokens/s", "tokens/s total"]
    cols += ["x sequential", "MFU", "peak MiB"]
    for col in cols:
        t.add_column(col, justify="left" if col == "path" else "right")
    for r in result["paths"]:
        t.add_row(*_cells(r))
    for path in result["omitted"]:
        t.add_row(path, *["-"] * (len(cols) - 1))
    return t


def _cells(r: dict[str, Any]) -> list[str]:
    speedup = "-"
    if r["speedup_train"] is not None:
        spread = r.get("speedup_total_range")
        runs = f", {spread[0]:.2f}-{spread[1]:.2f}" if spread and len(r.get("runs", [])) > 1 else ""
        speedup = f"{r['speedup_train']:.2f} ({r['speedup_total']:.2f} total{runs})"
    return [
        r["path"],
        str(r["steps"]),
        f"{r['setup_seconds']:.2f}",
        f"{r['train_seconds']:.2f}",
        f"{r['total_seconds']:.2f}",
        f"{r['examples_per_s']:.1f}",
        f"{r['tokens_per_s']:.0f}",
        f"{r['tokens_per_s_total']:.0f}",
        speedup,
        "-" if r["mfu"] is None else f"{100 * r['mfu']:.3g}%",
        f"{r['peak_memory_mib']:.0f}",
    ]


def markdown(result: dict[str, Any]) -> str:
    """The result as a markdown table (for docs)."""
    lines = [
        "| path | steps | setup s | train s | total s | examples/s | tokens/s | tokens/s total | x sequential "
        "| MFU | peak MiB | note |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in result["paths"]:
        lines.append("| " + " | ".join([*_cells(r), r["note"]]) + " |")
    for path, reason in result["omitted"].items():
        lines.append("| " + " | ".join([path, *["-"] * 10, reason]) + " |")
    return "\n".join(lines)


__all__ = [
    "PATHS",
    "PEAK_BF16_FLOPS",
    "TrainBenchConfig",
    "bench_train",
    "make_examples",
    "markdown",
    "parse_paths",
    "peak_flops",
    "table",
    "train_flops",
    "utilization",
]
