"""The memory one finetuning job needs, estimated before any compute from the base model's config (the
model is built on the meta device: no weights are read) and ``train:``; :func:`maft.checks.check_memory`
compares it with the device the jobs will train on and refuses a plan that cannot fit, naming the fixes.

Accounting, in bytes. P: the base model's parameters; T: the trainable LoRA parameters, ``r * (in + out)``
summed over the targeted linear layers (PEFT's matching); d: bytes per value of the dtype the job trains in,
2 with ``train.bf16`` and 4 without (maft loads the model in that dtype; ``auto`` resolved for the device the
jobs train on, or counted as 4 where that is not known). AdamW keeps two moments per
trainable parameter, in that parameter's dtype, and maft keeps no fp32 master copy (both checked against a
real trainer in tests/test_memory.py):

- ``method=full``: weights ``P*d``, gradients ``P*d``, optimizer ``2*P*d``: 16 bytes per parameter in fp32
  (4 + 4 + 8, the textbook figure), 8 with ``bf16`` (2 + 2 + 4: the model itself is bf16; the textbook's
  16 bytes of mixed precision assume fp32 master weights, which maft does not keep).
- ``method=lora``: the frozen base ``P*d``; the adapters 16 bytes per parameter (PEFT keeps them in fp32:
  weights 4, gradients 4, AdamW 8).
- ``method=lora`` with ``quantization=4bit`` (QLoRA): the base's linear layers (not the output layer) at
  0.5 byte per weight (NF4) plus 4/64 (bitsandbytes' fp32 scale per block of 64): 0.5625; the rest
  (embeddings, output layer, norms) in fp32, where ``peft.prepare_model_for_kbit_training`` casts it; the
  adapters 8 bytes per parameter (TRL casts a quantized model's adapters to bf16: 2 + 2 + 4).
- activations, per token of a batch of ``b = train.batch_size`` examples of ``s = train.max_length`` tokens
  (a padded batch is at most that long). A decoder layer keeps ``A = 6h + 2kv + 4i`` values of d bytes:
  its norms' inputs and outputs (4h), the rotated queries and the attention output (2h), keys and values
  (2kv), the MLP's gate, activation, up projection and product (4i); h: the hidden size, kv: the key/value
  width (key-value heads x head size), i: the MLP width; attention by a fused kernel that keeps no s x s
  scores. Without gradient checkpointing the L layers keep ``L*A``; with it only each layer's input, plus
  one layer recomputed at a time: ``L*h + A``. The output layer adds :data:`HEAD_BYTES` ``+ h*d`` bytes per
  token: TRL's fused LM head (``add_fused_lm_head``, in every SFTTrainer and in the concurrent path) computes the
  log-probabilities in tiles of the vocabulary and keeps for the backward pass only the final hidden state, the
  target and two fp32 numbers per token, never the ``b*s*V`` logits (its tiles, a few thousand tokens by at most
  32,768 vocabulary entries, live only during the head's forward and backward). In all: ``b*s*((L*h + A + h)*d +
  16)`` with checkpointing. (A real step's saved tensors, measured: tests/test_memory.py.)
- ``roles``: with ``execution.concurrent_training`` one job trains every LoRA role of the iteration on one
  base: the base once, each role's adapter with its gradients and AdamW states, and, at worst, the
  mini-batches of all the roles in one forward (``roles * b`` examples). With Ray a job trains one group of
  the roles (:func:`maft.training.scheduler.balanced_groups`), which the count of all of them bounds; each
  group is a job of its own, with its own base copy, so groups on one CPU or on fractions of one GPU add up
  as Ray's one-role jobs there do (:func:`shares_a_device`).
- ``shards``: a job trained by several processes on GPUs (``execution.processes_per_job`` or a whole
  ``gpus_per_job`` > 1; :mod:`maft.training.distributed`) shards weights, gradients and optimizer states
  over them with FSDP, so each GPU holds 1/shards of those, and the activations of its own batch of
  ``b`` examples. On a CPU the processes shard the same way but share the machine's RAM, where their shards add
  up to one copy: ``shards=1``, the whole job counted once. That undercounts two things there: each process
  loads the whole model before it shards it (``processes`` copies of the weights at the start), and each keeps
  the activations of its own batch. Gathering one layer's weights for its forward and backward (FSDP's
  all-gather) adds a layer, not counted.

Beside the job, the check counts what the generation engine keeps on the same device (:func:`engine_models`):
with ``model.engine=hf`` and the local scheduler, the base model, and from iteration 2 on the finetuned agents
when they are whole models (``train.method=full``, or merged adapters).

Not counted: the CUDA context and the allocator's fragmentation (a few hundred MB to a few GB), optimizer
temporaries, the attention scores of a backend that materializes them (CPU with padding masks may), and, for bf16
training on a CPU, the fp32 copies of the queries, keys, values and attention output that its fp32 attention
keeps for the backward pass (:func:`maft.training.precision.attention_in_fp32`; about ``(2h + 2kv) * 4`` bytes per
token per layer kept).
The estimate is a floor for what a job holds at its peak, so the check refuses only plans that cannot fit;
the fixes it names leave :data:`HEADROOM` of the free memory spare. The check counts activations with
checkpointing (the least a job can hold).

The same estimate decides ``execution.activation_checkpointing`` left at None (:func:`activation_checkpointing`),
when an iteration's training starts, against what is free then (after a managed server has stepped aside;
with the in-process engine loaded beside the jobs, its memory is already taken): without checkpointing where one
job without it fits with :data:`HEADROOM` to spare, with it where it does not, where the memory is unknown, or
where several jobs or processes share one device's memory (:func:`shares_a_device`). It decides
``execution.concurrent_training`` left at None too (:func:`trains_together`), at the same moment and first: the
roles train together where they can and their one job fits with :data:`HEADROOM` to spare, else one by one;
the up-front check counts None as one by one, the plan it falls back to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from maft.agents import trained_roles
from maft.config import RunConfig, TrainConfig
from maft.training.precision import native_bf16, with_native_bf16

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

#: Bytes per base weight of a linear layer in 4-bit NF4: half a byte, plus one fp32 scale per block of 64.
NF4_BYTES = 0.5 + 4 / 64
#: Per token, what TRL's fused LM head keeps beside the final hidden state: the target (int64) and two fp32 values
#: (the log-partition function and the entropy's slot)
HEAD_BYTES = 8 + 4 + 4
#: A fix is offered only if it leaves this share of the free memory unused (what the estimate does not count).
HEADROOM = 0.1


@dataclass(frozen=True)
class ModelCounts:
    """What the accounting needs from a model: its parameters and shape (from its config, on the meta device)."""

    parameters: int  # every parameter, tied ones once
    quantizable: int  # the weights of its linear layers but the output layer (what 4-bit NF4 quantizes)
    linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of each linear layer but the output layer
    hidden: int
    layers: int
    kv_width: int
    intermediate: int
    vocab: int
    config_dtype: str | None  # the checkpoint's dtype (config.json), if it says
    dropout: float = 0.0  # the base model's own largest dropout probability in training (model_dropout)

    @classmethod
    def of(cls, model: str | Path | PretrainedConfig | PreTrainedModel) -> ModelCounts:
        """Count ``model``: a local directory, a hub id or a transformers config (built on the meta device), or
        a model already built (by :func:`meta_model`)."""
        import torch

        built = model if isinstance(model, torch.nn.Module) else meta_model(model)
        config = built.config
        output = built.get_output_embeddings()
        linears = []
        for name, module in built.named_modules():
            dims = _linear_dims(module)
            if dims and module is not output:
                linears.append((name, *dims))
        text = config.get_text_config()
        hidden = int(text.hidden_size)
        heads = int(text.num_attention_heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
        dtype = getattr(config, "dtype", None)
        return cls(
            parameters=sum(p.numel() for p in built.parameters()),
            quantizable=sum(i * o for _, i, o in linears),
            linears=tuple(linears),
            hidden=hidden,
            layers=int(text.num_hidden_layers),
            kv_width=kv_heads * head_dim,
            intermediate=int(intermediate),
            vocab=int(text.vocab_size),
            config_dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
            dropout=model_dropout(built),
        )

    def lora_parameters(self, r: int, targets: Sequence[str] | str) -> int:
        """T: the adapters' parameters at rank ``r`` on the layers ``targets`` selects (PEFT's rules:
        all-linear = every linear layer but the output layer; a list = names or dotted suffixes; another
        string = a regular expression the whole name must match)."""
        if targets == "all-linear":
            chosen = self.linears
        elif isinstance(targets, str):
            chosen = tuple(x for x in self.linears if re.fullmatch(targets, x[0]))
        else:
            chosen = tuple(x for x in self.linears if any(x[0] == t or x[0].endswith("." + t) for t in targets))
        return sum(r * (i + o) for _, i, o in chosen)


def meta_model(model: str | Path | PretrainedConfig) -> PreTrainedModel:
    """``model`` (a local directory, a hub id or a transformers config) as a causal LM on the meta device: every
    module and parameter shape, no memory, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    config = model if isinstance(model, PretrainedConfig) else AutoConfig.from_pretrained(str(model))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _linear_dims(module) -> tuple[int, int] | None:
    """(in, out) of a linear layer (torch's Linear, or transformers' Conv1D as in GPT-2); None otherwise."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


class MemoryEstimate(BaseModel):
    """What one finetuning job holds at its peak, in bytes (module docstring: the accounting)."""

    plan: str  # e.g. "train.method=lora train.quantization=4bit"
    parameters: int  # the base model's
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    batch: int
    tokens: int  # per example (train.max_length)
    gradient_checkpointing: bool

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def breakdown(self) -> str:
        """One line, e.g. ``weights 16 GB, gradients 16 GB, optimizer 64 GB, activations 9.1 GB at batch 16 x 1024
        tokens``."""
        return (
            f"weights {gb(self.weights)}, gradients {gb(self.gradients)}, optimizer {gb(self.optimizer)}, "
            f"activations {gb(self.activations)} at batch {self.batch} x {self.tokens} tokens"
        )


def estimate(
    train: TrainConfig,
    model: str | Path | PretrainedConfig | PreTrainedModel | ModelCounts,
    *,
    gradient_checkpointing: bool | None = None,
    shards: int = 1,
    roles: int = 1,
) -> MemoryEstimate:
    """The memory one job of ``train`` needs on ``model`` (a model directory, hub id, transformers config, or
    its :class:`ModelCounts`). ``gradient_checkpointing``: None = TRL's default (on: the figure a refusal uses);
    ``shards``: how many GPUs share the states (FSDP; module docstring); ``roles``: LoRA roles trained together
    on the one base (``execution.concurrent_training``), each with its adapter, gradients and optimizer states,
    their mini-batches in one forward."""
    counts = model if isinstance(model, ModelCounts) else ModelCounts.of(model)
    checkpointing = trl_checkpoints() if gradient_checkpointing is None else gradient_checkpointing
    d = 2 if train.bf16 is True else 4  # auto not resolved for a device: counted as fp32, the larger
    P = counts.parameters
    if train.method == "full":
        trainable = P
        weights, gradients, optimizer = P * d, P * d, 2 * P * d
    else:
        trainable = counts.lora_parameters(train.lora_r, train.lora_target_modules)
        if train.quantization == "4bit":
            base = math.ceil(counts.quantizable * NF4_BYTES) + 4 * (P - counts.quantizable)
            adapter = 2  # bf16 (TRL)
        else:
            base, adapter = P * d, 4  # fp32 (PEFT)
        adapters = trainable * adapter * roles
        weights, gradients, optimizer = base + adapters, adapters, 2 * adapters
    h, L = counts.hidden, counts.layers
    layer = 6 * h + 2 * counts.kv_width + 4 * counts.intermediate
    kept = L * h + layer if checkpointing else L * layer
    tokens = train.batch_size * train.max_length * (roles if train.method == "lora" else 1)
    activations = tokens * ((kept + h) * d + HEAD_BYTES)
    shards = max(1, shards)
    plan = f"train.method={train.method}" + (
        f" train.quantization={train.quantization}" * (train.quantization != "none")
    )
    if roles > 1 and train.method == "lora":
        plan += f" with {roles} adapters trained together (execution.concurrent_training)"
    return MemoryEstimate(
        plan=plan,
        parameters=P,
        trainable=trainable,
        weights=math.ceil(weights / shards),
        gradients=math.ceil(gradients / shards),
        optimizer=math.ceil(optimizer / shards),
        activations=activations,
        batch=train.batch_size * (roles if train.method == "lora" else 1),
        tokens=train.max_length,
        gradient_checkpointing=checkpointing,
    )


def trl_checkpoints() -> bool:
    """Whether TRL's SFTConfig turns gradient checkpointing on by default."""
    from trl import SFTConfig

    return bool(SFTConfig.__dataclass_fields__["gradient_checkpointing"].default)


def engine_models(config: RunConfig, counts: ModelCounts) -> int:
    """How many copies of the model the generation engine keeps beside a job: with ``model.engine=hf`` and the
    local scheduler, the engine stays loaded in this process, on the device the jobs train on, with the base
    model, and from iteration 2 on one model per finetuned role when the agents are whole models
    (``train.method=full``, or adapters merged: ``execution.merge_adapters``, by default under 200M
    parameters). None for a server or Ray jobs (elsewhere, or processes of their own)."""
    if config.model.engine != "hf" or config.execution.scheduler != "local":
        return 0
    merged = config.execution.merge_adapters
    whole = config.train.method == "full" or (counts.parameters < 200_000_000 if merged is None else merged)
    if not whole or config.iterations < 2:
        return 1
    agents, rounds = config.debate.agents, config.debate.rounds
    roles = 1 if config.train.shared else agents * (2 if rounds > 1 and config.train.roles == "all" else 1)
    return 1 + roles


def engine_weights(config: RunConfig, counts: ModelCounts) -> int:
    """The bytes of the :func:`engine_models` copies, in ``model.dtype`` (auto: the checkpoint's, fp32 if it
    does not say)."""
    dtype = config.model.dtype if config.model.dtype != "auto" else (counts.config_dtype or "float32")
    return engine_models(config, counts) * counts.parameters * {"bfloat16": 2, "float16": 2}.get(dtype, 4)


@dataclass(frozen=True)
class DeviceMemory:
    """The memory a job can use where it trains: ``free`` bytes, on a ``cuda`` GPU or in the machine's RAM."""

    free: int
    kind: Literal["cuda", "cpu"]
    where: str  # e.g. "this GPU (cuda:0, NVIDIA H100 80GB HBM3) has 79 GB free"
    bf16: bool = False  # whether it computes bf16 natively: what train.bf16=auto trains in there


def device_memory(config: RunConfig) -> DeviceMemory | None:
    """What the jobs can use: the free memory of the GPU they train on (the first one a job sees: a local job
    sees this process's GPUs; a Ray job one of this machine's, so the one with the least free), or the RAM
    available when they train on the CPU (no CUDA, or ``execution.device=cpu``; MPS shares the RAM). None
    where it cannot be known from here: Ray jobs on a cluster at ``execution.ray_address``, or no meminfo."""
    import torch

    x = config.execution
    if x.scheduler == "ray" and x.ray_address:
        return None
    if not x.device.startswith(("cpu", "mps")) and torch.cuda.is_available():
        gpus = range(torch.cuda.device_count()) if x.scheduler == "ray" else [0]
        free, gpu = min((torch.cuda.mem_get_info(i)[0], i) for i in gpus)
        name = torch.cuda.get_device_name(gpu)
        where = f"this GPU (cuda:{gpu}, {name}) has {gb(free)} free"
        return DeviceMemory(free, "cuda", where, native_bf16(f"cuda:{gpu}"))
    free = available_ram()
    if free is None:
        return None
    return DeviceMemory(free, "cpu", f"this machine has {gb(free)} of RAM available", native_bf16("cpu"))


def available_ram() -> int | None:
    """The RAM that can be used without swapping: psutil if installed, else MemAvailable in /proc/meminfo."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def shards(config: RunConfig, kind: str) -> int:
    """How many GPUs share one job's states: its processes on CUDA (FSDP), else 1 (one GPU, or the processes'
    shards in one RAM, which add up to a whole copy)."""
    return config.execution.job_processes if kind == "cuda" else 1


def model_dropout(model) -> float:
    """The largest dropout probability ``model`` applies in training: its dropout modules' (GPT-2's and Phi's
    ``resid_pdrop``, ...) and its config's ``attention_dropout`` (Llama, Qwen and Mistral apply it inside
    attention, without a module; 0 in their released configs)."""
    import torch

    text = model.config.get_text_config()
    ps = [m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    attention = getattr(text, "attention_dropout", 0.0)
    return float(max([*ps, attention if isinstance(attention, int | float) else 0.0]))


def cannot_train_together(config: RunConfig, counts: ModelCounts | None = None) -> str | None:
    """Why ``execution.concurrent_training`` left at None does not train the roles together whatever the memory,
    or None where it may: LoRA on an unquantized base, without dropout in the adapters or (``counts``) in the base
    model (a concatenated batch draws its dropout masks in another order: not the adapters of one by one), one
    process per job, the local scheduler (which would otherwise train the jobs one by one; Ray spreads them over
    its resources instead), and more than one role."""
    t, x = config.train, config.execution
    reasons = {
        "train.method=full: a model per role": t.method != "lora",
        f"train.quantization={t.quantization}": t.quantization != "none",
        f"train.lora_dropout={t.lora_dropout}": t.lora_dropout != 0,
        f"the base model's own dropout ({counts.dropout if counts else 0})": bool(counts and counts.dropout > 0),
        f"{x.job_processes} processes per job": x.job_processes != 1,
        "scheduler=ray runs the jobs in parallel instead": x.scheduler != "local",
        "one role": len(trained_roles(config)) < 2,
    }
    return next((why for why, applies in reasons.items() if applies), None)


def can_train_together(config: RunConfig, counts: ModelCounts | None = None) -> bool:
    """Whether ``execution.concurrent_training`` left at None may train the roles together (memory aside)."""
    return cannot_train_together(config, counts) is None


def trains_together(
    config: RunConfig, counts: ModelCounts, memory: DeviceMemory | None, roles: int | None = None
) -> bool:
    """``execution.concurrent_training`` resolved: as set, or (None) together where :func:`can_train_together`
    and the one job of ``roles`` roles (default: all that the run trains) fits in ``memory`` with
    :data:`HEADROOM` to spare, else one by one. ``memory``: what is free when the iteration's training starts,
    the in-process engine's share already taken (as for :func:`activation_checkpointing`); unknown, one by one
    (the plan the up-front check validated). With ``execution.activation_checkpointing`` left at None, a job
    that fits together only with checkpointing trains together only where one by one would need it too:
    recomputing costs a second forward pass (1.48x on the embedded model), more than training together saves.
    Which it is changes only speed and memory: the adapters are the same up to rounding
    (tests/test_concurrent_training.py)."""
    chosen = config.execution.concurrent_training
    if chosen is not None:
        return chosen
    if not can_train_together(config, counts) or memory is None:
        return False
    together = len(trained_roles(config)) if roles is None else roles
    if together < 2:  # one role left (a resume): nothing to train together
        return False

    def fit(n: int, checkpointing: bool) -> bool:
        return fits(config, counts, memory, roles=n, checkpointing=checkpointing)

    chosen_checkpointing = config.execution.activation_checkpointing
    if chosen_checkpointing is not None:
        return fit(together, chosen_checkpointing)
    return fit(together, False) or (not fit(1, False) and fit(together, True))


def with_concurrency(config: RunConfig, together: bool) -> RunConfig:
    """``config`` with ``execution.concurrent_training`` set to ``together`` (not in the config hash)."""
    execution = config.execution.model_copy(update={"concurrent_training": together})
    return config.model_copy(update={"execution": execution})


def roles_per_job(config: RunConfig) -> int:
    """The LoRA roles one finetuning job trains: all of an iteration's with ``execution.concurrent_training``,
    else one. None (not yet resolved by :func:`trains_together`) counts as one: the plan it falls back to
    where the roles together would not fit, so a check of it refuses only what cannot run either way."""
    return len(trained_roles(config)) if config.execution.concurrent_training else 1


def refusal(config: RunConfig, counts: ModelCounts, memory: DeviceMemory) -> str | None:
    """Why ``config``'s finetuning jobs cannot fit in ``memory``, and the changes that would fit with
    :data:`HEADROOM` to spare (each with what it needs, the engine's share included), or None when they fit.
    Pure: the caller measures ``memory`` (per GPU, for a job sharded over several)."""
    train = with_native_bf16(config.train, memory.bf16)
    config = config.model_copy(update={"train": train})
    room = memory.free * (1 - HEADROOM)
    checkpointing, k = config.execution.activation_checkpointing is not False, shards(config, memory.kind)
    together = roles_per_job(config)

    def needs(changed: TrainConfig, over: int = k) -> int:
        job = estimate(changed, counts, gradient_checkpointing=checkpointing, shards=over, roles=together).total
        return job + engine_weights(config.model_copy(update={"train": changed}), counts)

    need = estimate(train, counts, gradient_checkpointing=checkpointing, shards=k, roles=together)
    engine = engine_weights(config, counts)
    if need.total + engine <= memory.free:
        return None
    copies = engine_models(config, counts)
    held = "the base model" if copies == 1 else f"the base model and {copies - 1} finetuned agents"
    beside = f", and the generation engine (model.engine=hf) keeps {held} ({gb(engine)}) beside it" * (engine > 0)
    per = f"per GPU of a finetuning job sharded over {k}" if k > 1 else "per finetuning job"
    problem = (
        f"{need.plan} on a model of {_count(need.parameters)} parameters needs about {gb(need.total)} {per} "
        f"({need.breakdown()}){beside}, but {memory.where}"
    )
    total = " in all" if engine else ""
    fits: list[str] = []
    if memory.kind == "cuda" and train.quantization == "none":  # FSDP: more GPUs per job, the same plan
        for gpus in (2, 4, 8, 16):
            split = _split(train, gpus)
            if gpus > k and split is not None and (n := needs(split, gpus)) <= room:
                plan = " ".join([f"execution.gpus_per_job={gpus}", _settings(train, split)]).strip()
                fits.append(f"{plan} (FSDP over {gpus} GPUs: about {gb(n)} per GPU{total})")
                break
    for group in _alternatives(train, memory.kind):
        for change in group:  # within a group, the first that fits (the largest batch)
            if (n := needs(change)) <= room:
                fits.append(f"{_settings(train, change)} (about {gb(n)}{total})")
                break
    if fits:
        return f"{problem}: use {', or '.join(fits)}"
    floor = _floor(train, memory.kind)
    n = needs(floor)
    if floor != train and n <= room:
        return f"{problem}: use {_settings(train, floor)} together (about {gb(n)}{total})"
    even = f"; even {_settings(train, floor)} would need about {gb(n)}{total}" if floor != train else ""
    return f"{problem}{even}: use a smaller model or a device with more memory" + (
        " (or model.engine=openai, a server elsewhere)" if engine else ""
    )


def shares_a_device(config: RunConfig, kind: str) -> bool:
    """Whether several finetuning jobs, or several processes of one job, may hold one device's memory at once
    (the estimate is per job and process): Ray jobs on a CPU or on a fraction of a GPU each, or the FSDP processes
    of a job on a CPU (each with its own activations in the one RAM). Local jobs run one at a time; on GPUs FSDP
    gives each process its own."""
    x = config.execution
    gpus = 1 if x.gpus_per_job is None else x.gpus_per_job  # None: a whole GPU per job where there are GPUs
    ray_shares = x.scheduler == "ray" and (kind == "cpu" or gpus < 1)  # trained together too: a task per group
    return ray_shares or (kind == "cpu" and x.job_processes > 1)


def activation_checkpointing(config: RunConfig, counts: ModelCounts, memory: DeviceMemory | None) -> bool:
    """``execution.activation_checkpointing`` resolved: as set, or (None) off only where one job without it fits
    in ``memory`` with :data:`HEADROOM` to spare. ``memory``: what the jobs have free when they start (the
    generation engine, if it stays loaded, already holding its share: measure after it has stepped aside).
    On where the memory is unknown (Ray on a cluster) or shared by several jobs or processes
    (:func:`shares_a_device`). Recomputing changes only speed and memory, not the gradients (up to rounding)."""
    chosen = config.execution.activation_checkpointing
    if chosen is not None:
        return chosen
    if memory is None or shares_a_device(config, memory.kind):
        return True
    return not fits(config, counts, memory, roles=roles_per_job(config), checkpointing=False)


def fits(config: RunConfig, counts: ModelCounts, memory: DeviceMemory, *, roles: int, checkpointing: bool) -> bool:
    """Whether one finetuning job of ``config`` training ``roles`` LoRA roles together, with or without
    activation checkpointing, fits in ``memory`` with :data:`HEADROOM` to spare."""
    k = shards(config, memory.kind)
    train = with_native_bf16(config.train, memory.bf16)
    need = estimate(train, counts, gradient_checkpointing=checkpointing, shards=k, roles=roles).total
    return need <= memory.free * (1 - HEADROOM)


def _alternatives(train: TrainConfig, kind: str) -> list[list[TrainConfig]]:
    """Changes of ``train`` that need less memory: groups of alternatives, the least drastic first in each."""
    groups: list[list[TrainConfig]] = []
    if train.method == "full":
        groups.append([train.model_copy(update={"method": "lora"})])
    if kind == "cuda" and train.quantization == "none":  # QLoRA: CUDA only
        groups.append([train.model_copy(update={"method": "lora", "quantization": "4bit"})])
    if kind == "cuda" and not train.bf16:
        groups.append([train.model_copy(update={"bf16": True})])
    effective = train.batch_size * train.gradient_accumulation_steps
    batches, b = [], train.batch_size
    while b > 1:  # halvings down to 1, the effective batch kept by accumulation
        b //= 2
        batches.append(train.model_copy(update={"batch_size": b, "gradient_accumulation_steps": -(-effective // b)}))
    return [*groups, batches] if batches else groups


def _split(train: TrainConfig, processes: int) -> TrainConfig | None:
    """``train`` with its effective batch spread over ``processes`` (each accumulating a whole number of
    mini-batches: the accumulation a multiple of them), the mini-batch as large as that allows; None when the
    effective batch does not divide."""
    effective = train.batch_size * train.gradient_accumulation_steps
    for steps in range(processes, effective + 1, processes):
        if effective % steps == 0 and steps >= train.gradient_accumulation_steps:
            return train.model_copy(update={"batch_size": effective // steps, "gradient_accumulation_steps": steps})
    return None


def _floor(train: TrainConfig, kind: str) -> TrainConfig:
    """The least memory ``train`` can be brought to by the changes :func:`_alternatives` offers, all at once."""
    effective = train.batch_size * train.gradient_accumulation_steps
    changes: dict[str, object] = {"method": "lora", "batch_size": 1, "gradient_accumulation_steps": effective}
    if kind == "cuda":
        changes.update(quantization="4bit", bf16=True)
    return train.model_copy(update=changes)


def _settings(old: TrainConfig, new: TrainConfig) -> str:
    """The ``train.key=value`` settings that make ``old`` into ``new``."""
    a, b = old.model_dump(), new.model_dump()
    return " ".join(f"train.{k}={_yaml(v)}" for k, v in b.items() if a[k] != v)


def _yaml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def gb(n: float) -> str:
    """Bytes as decimal GB (TB from 1000 GB, MB under 1 GB): ``128 GB``, ``9.1 GB``, ``1.2 TB``."""
    if n >= 1e12:
        return f"{n / 1e12:.1f} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB" if n < 1e10 else f"{n / 1e9:.0f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
