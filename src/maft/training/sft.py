"""Finetune one agent role on its own data: TRL ``SFTTrainer`` with a PEFT LoRA adapter (default) or
full weights.

Which tokens carry loss (``train.critic_loss``):

- ``final`` (default): every example is a prompt-completion pair (TRL's conversational
  prompt-completion format) and the loss is on the completion only: a generation example's round-1
  response, a critic example's final-round response (its conversation before the final round,
  including its own earlier responses, is context only).
- ``all_turns``: the examples of a role whose data holds multi-turn conversations (a prompt with an
  assistant message: critic data, or a shared model's union of generation and critic data) go to TRL
  as whole conversations (``messages`` = prompt + completion) with ``assistant_only_loss``, so the
  loss is on every assistant turn of the agent's own conversation: the whole debate trajectory
  (x, y_1..y_M), as in the paper and the authors' code. An assistant turn's loss tokens are the ones
  the chat template's ``{% generation %}...{% endgeneration %}`` markers enclose; for the tiny model
  that is ``{content}<|end|>\\n``, exactly a prompt-completion completion, so a single-turn example
  carries loss on the same tokens either way, and a role with single-turn data only (the generation
  agents) trains as with ``final``. TRL puts in the mask whatever the markers enclose, the
  end-of-turn token included when it sits inside them (it only warns when it does not). A base model
  whose chat template has no markers, and that TRL has no training template for (Mistral's), has its
  assistant turns found by rendering instead (:mod:`maft.training.turns`: each turn's content and the
  token that closes it); one whose template cannot be read that way is refused
  (:func:`check_critic_loss`) before anything is loaded. A conversation cut at ``train.max_length``
  keeps its start (``keep_start``), so later turns are the ones lost.

With ``train.quantization=4bit`` (QLoRA) the frozen base under the adapters is loaded in 4-bit NF4 with
bfloat16 compute (bitsandbytes, on CUDA) and prepared with ``peft.prepare_model_for_kbit_training``; the
adapters it saves are ordinary LoRA adapters, served on the unquantized base.

The model attends without the batch's padding mask where that only marks right padding, as TRL's collator
pads (:func:`attend_causally`): no real token attends to a later position, so the mask changes no loss or
gradient, but it makes attention compute the whole score matrix where the causal path skips its upper triangle.

Precision: ``train.bf16`` (``auto``: bf16 where the device computes it natively) is resolved at the start of a
job; in bf16 on a CPU, attention computes in fp32 (:mod:`maft.training.precision`).

Every role ends with a loadable artifact in ``out_dir``: a PEFT adapter (LoRA) or a full checkpoint.
A role with no examples keeps its starting weights (an untouched adapter is saved; with ``method=full`` the
starting checkpoint in its own dtype, whatever ``train.bf16`` says), so that the agent exists in the next debate
and stays what it was.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from maft.agents import saved_kind
from maft.config import TrainConfig
from maft.data.agent_data import Example
from maft.tracking import Tracking, set_trainer_environment, trainer_arguments, trainer_callbacks
from maft.training.precision import attention_in_fp32, bf16_for, device_kind, resolve_bf16

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from trl import SFTConfig, SFTTrainer

#: (steps done, total steps) -> None
StepCallback = Callable[[int, int], None]


class TrainResult(BaseModel):
    examples: int
    steps: int
    train_loss: float | None
    seconds: float
    method: str
    init: str  # "base" or the path trained further
    host: str = ""  # where it ran (a Ray worker's node and process, or this one)
    pid: int = 0
    # trained in one concurrent job with these roles (maft.training.concurrent); ``seconds`` is then this role's
    # share of the job's wall time, so that the roles' seconds add up to it
    trained_with: list[str] = []
    # trained by this many processes, its weights, gradients and optimizer states sharded over them with FSDP
    # (maft.training.distributed); 1: one process
    sharded_over: int = 1
    # trained in bf16 mixed precision (train.bf16, resolved for the device); None: not recorded (older runs)
    bf16: bool | None = None


def multi_turn(example: Example) -> bool:
    """Whether the example's prompt already holds an assistant turn (critic data: the agent's own earlier rounds)."""
    return any(m["role"] == "assistant" for m in example.prompt)


def loss_on_all_turns(examples: Sequence[Example], cfg: TrainConfig) -> bool:
    """Whether these examples train with loss on every assistant turn (module docstring): ``all_turns`` and at
    least one multi-turn example among them."""
    return cfg.critic_loss == "all_turns" and any(multi_turn(e) for e in examples)


def _chat_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    template = tokenizer.chat_template
    return template.get("default") if isinstance(template, dict) else template


def turns_by_rendering(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``all_turns`` finds the assistant turns by rendering (:mod:`maft.training.turns`): the chat template
    has no ``{% generation %}`` markers and TRL has no training version of it. Otherwise TRL's assistant-only loss
    masks them."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = _chat_template(tokenizer)
    if not template or has_generation_markers(template):
        return False
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return True
    return False


def template_problem(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why this tokenizer's conversations cannot have their assistant turns masked, or None when they can: its chat
    template has ``{% generation %}`` markers, or TRL ships a training version of it (Qwen, Llama 3, Phi-3, ...), or
    the turns can be found by rendering (:func:`turns_by_rendering`, :func:`maft.training.turns.rendering_problem`:
    Mistral, Llama 2, ...)."""
    from maft.training.turns import rendering_problem

    if not _chat_template(tokenizer):
        return "has no chat template"
    return rendering_problem(tokenizer) if turns_by_rendering(tokenizer) else None


def _refusal(base_model: str, problem: str) -> ValueError:
    return ValueError(
        f"train.critic_loss=all_turns puts the loss on every assistant turn of a conversation, but {base_model} "
        f"{problem}; use train.critic_loss=final, or a chat template with {{% generation %}}...{{% endgeneration %}} "
        "around each assistant turn"
    )


def check_critic_loss(base_model: str, cfg: TrainConfig, *, rounds: int = 2) -> None:
    """Refuse, before any compute, a run whose critics are to learn from every turn (``critic_loss=all_turns``)
    with a base model whose chat template cannot mark assistant turns. Nothing to check when no critic data is
    trained: ``final``, a single round (``rounds`` of the training debates), or ``train.roles=generation``. Loads
    the tokenizer only."""
    if cfg.critic_loss != "all_turns" or rounds < 2 or (cfg.roles == "generation" and not cfg.shared):
        return
    problem = template_problem(_tokenizer(base_model))
    if problem:
        raise _refusal(base_model, problem)


def _quiet() -> None:
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated.*", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def _tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attend_causally(model) -> None:
    """Let ``model`` (a transformers causal LM) ignore an attention mask that only marks right padding: a forward
    pre-hook on its decoder drops such a mask. Every row's tokens come first and attention is causal, so no
    token attends to a padding position, and the padding positions' own outputs carry no loss (label -100): the
    losses and gradients are those with the mask (tests/test_training.py), while attention takes its causal path
    instead of applying the mask to every block of the score matrix (the tiny model's 16-row critic step on a
    2-core CPU: 0.35-0.37 s instead of 0.39-0.41 s). The batch itself keeps its mask (TRL counts tokens with it);
    a mask of any other form (left padding, holes, a multimodal model's dict of masks) is passed on. Positions
    count from each row's first token either way. (The check costs one device synchronisation per forward.)"""
    model.get_decoder().register_forward_pre_hook(_drop_right_padding_mask, with_kwargs=True)


def _drop_right_padding_mask(module, args, kwargs):
    import torch

    mask = kwargs.get("attention_mask")  # a multimodal wrapper hands its text model a dict of masks: kept
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return None
    return args, {**kwargs, "attention_mask": None}


def _load_trainable(
    base_model: str,
    init_from: Path | None,
    cfg: TrainConfig,
    dtype,
    *,
    checkpointing: bool = True,
    device: str = "auto",
):
    """The model to train and the PEFT config to hand TRL (None when the model already is a PeftModel).
    ``checkpointing``: whether a quantized base is prepared for activation checkpointing (PEFT's default turns it
    on; off, it is left off, as the trainer is told). In bf16 on a CPU, attention computes in fp32
    (:func:`~maft.training.precision.attention_in_fp32`)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if cfg.method == "full":
        model = AutoModelForCausalLM.from_pretrained(str(init_from or base_model), dtype=dtype)
        attend_causally(model)
        _cpu_attention(model, cfg, device)
        return model, None
    quantization = quantization_config(cfg)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, quantization_config=quantization)
    attend_causally(base)
    _cpu_attention(base, cfg, device)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # frozen base, fp32 norms and embeddings; activation checkpointing only where asked for
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=checkpointing)
    if init_from is not None:
        return PeftModel.from_pretrained(base, str(init_from), is_trainable=True), None
    return base, lora_config(cfg)


def _cpu_attention(model, cfg: TrainConfig, device: str) -> None:
    """bf16 on a CPU: attention in fp32 (maft.training.precision)."""
    if cfg.bf16 is True and _on_cpu(device):
        attention_in_fp32(model)


def lora_config(cfg: TrainConfig):
    """PEFT's ``LoraConfig`` for ``train:``'s LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def quantization_config(cfg: TrainConfig):
    """``train.quantization=4bit`` (QLoRA): transformers' bitsandbytes config for a 4-bit NF4 base computing in
    bfloat16 (placed on the current CUDA device); None for an unquantized base."""
    if cfg.quantization == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


def _dtype(cfg: TrainConfig):
    """The dtype the model trains in: ``cfg.bf16`` already resolved for the device (:func:`resolve_bf16`)."""
    import torch

    if cfg.bf16 == "auto":
        raise ValueError("train.bf16=auto must be resolved for the device first (maft.training.precision)")
    return torch.bfloat16 if cfg.bf16 else torch.float32


def sft_trainer(
    base_model: str,
    examples: Sequence[Example],
    scratch: Path,
    cfg: TrainConfig,
    *,
    init_from: Path | None = None,
    seed: int = 0,
    device: str = "auto",
    callbacks: Sequence = (),
    processes: int = 1,
    activation_checkpointing: bool = True,
    tracking: Tracking | None = None,
) -> SFTTrainer:
    """The TRL trainer that :func:`finetune` runs on (non-empty) ``examples``, its dataset prepared: each row of
    ``trainer.train_dataset`` has the ``input_ids`` and the ``labels`` (-100 where no loss) it trains on.
    ``scratch`` is the trainer's own output directory (nothing is saved there)."""
    from datasets import Dataset
    from trl import SFTTrainer

    _quiet()
    cfg = resolve_bf16(cfg, device)
    tokenizer = _tokenizer(base_model)
    all_turns = loss_on_all_turns(examples, cfg)
    if all_turns and (problem := template_problem(tokenizer)):
        raise _refusal(base_model, problem)
    rendered = all_turns and turns_by_rendering(tokenizer)
    rows = sft_rows(examples, all_turns, tokenizer if rendered else None)
    model, lora = _load_trainable(
        base_model, init_from, cfg, _dtype(cfg), checkpointing=activation_checkpointing, device=device
    )
    set_trainer_environment(tracking)  # read by transformers' integration callbacks (maft.tracking)
    if processes > 1 and _on_cpu(device):
        from maft.training.fsdp import allow_fsdp_on_cpu

        allow_fsdp_on_cpu()
    trainer = SFTTrainer(
        model=model,
        args=sft_config(
            scratch,
            cfg,
            seed=seed,
            device=device,
            all_turns=all_turns,
            rendered_turns=rendered,
            processes=processes,
            activation_checkpointing=activation_checkpointing,
            tracking=tracking,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[*callbacks, *trainer_callbacks(tracking)],
    )
    if processes > 1 and not trainer.accelerator.is_fsdp2:
        raise RuntimeError(
            f"accelerate did not turn FSDP on for this role's {processes} processes "
            f"({trainer.accelerator.distributed_type}, accelerate {version('accelerate')}): train each role in "
            "one process (execution.processes_per_job=1, and gpus_per_job at most 1)"
        )
    if trainer.accelerator.num_processes > 1:
        trainer.data_collator = RepeatsMasked(
            trainer.data_collator,
            rows=len(trainer.train_dataset),
            batch_size=trainer.args.per_device_train_batch_size,
            processes=trainer.accelerator.num_processes,
            rank=trainer.accelerator.process_index,
        )
    return trainer


class RepeatsMasked:
    """The collator of one of several processes training a role, with the labels of accelerate's repeated rows
    masked (-100), so that they add nothing to the loss or to its token count.

    accelerate deals an epoch's mini-batches round-robin over the processes and, where the last of them is short
    or their number does not divide among the processes, fills them up with the epoch's first rows again (its
    ``even_batches``: every process must run the same number of steps). One process runs no such rows, so without
    the mask a multi-process role would train on some examples twice in the last step of each epoch. The k-th
    mini-batch a process collates in an epoch is the epoch's mini-batch ``rank + k * processes``, whose rows past
    ``rows - its first row`` are repeats (the trainer collates in order, in the main process:
    ``dataloader_num_workers`` 0)."""

    def __init__(self, collate: Callable, *, rows: int, batch_size: int, processes: int, rank: int) -> None:
        self.collate, self.rows, self.batch_size = collate, rows, batch_size
        self.processes, self.rank = processes, rank
        self.per_epoch = math.ceil(math.ceil(rows / batch_size) / processes)  # mini-batches a process collates
        self.calls = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        k = self.calls % self.per_epoch
        self.calls += 1
        real = min(max(self.rows - (self.rank + k * self.processes) * self.batch_size, 0), len(features))
        if real < len(features):
            labels = batch["labels"].clone()
            labels[real:] = -100
            batch["labels"] = labels
        return batch


def _on_cpu(device: str) -> bool:
    """Whether a job on ``device`` trains on the CPU (``auto``: when CUDA is missing)."""
    return device_kind(device) == "cpu"


def sft_config(
    scratch: Path,
    cfg: TrainConfig,
    *,
    seed: int,
    device: str,
    all_turns: bool,
    rendered_turns: bool = False,
    processes: int = 1,
    activation_checkpointing: bool = True,
    tracking: Tracking | None = None,
) -> SFTConfig:
    """TRL's settings for one role: ``train:``'s optimization, the role's seed for its LoRA init and data order,
    which tokens carry loss (``all_turns``: :func:`loss_on_all_turns`; ``rendered_turns``: its rows come tokenized
    with their assistant masks, :func:`turns_by_rendering`), and how the role's ``processes`` share the work
    (:func:`parallelism`)."""
    from trl import SFTConfig

    cpu = _on_cpu(device)
    return SFTConfig(
        output_dir=str(scratch),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps // processes,  # checked to divide (RunConfig)
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        completion_only_loss=not all_turns,
        assistant_only_loss=all_turns and not rendered_turns,
        bf16=bf16_for(cfg, device),
        use_cpu=cpu,
        **parallelism(processes, cpu=cpu, activation_checkpointing=activation_checkpointing),
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        **trainer_arguments(tracking),  # report_to, run_name, logging_steps (maft.tracking)
        disable_tqdm=True,
    )


def parallelism(processes: int, *, cpu: bool, activation_checkpointing: bool) -> dict:
    """The TrainingArguments that spread one role over ``processes`` processes (:mod:`maft.training.distributed`
    launches them): FSDP (version 2) with full sharding of weights, gradients and optimizer states, each decoder
    layer its own unit, activation checkpointing through FSDP (transformers advises it over the trainer's own,
    which would gather the parameters once more in the backward) and a full state dict gathered for saving, so
    the result is an ordinary Hugging Face checkpoint. The same on a CPU, its collectives over gloo
    (:func:`maft.training.fsdp.allow_fsdp_on_cpu`). One process: the trainer's own gradient checkpointing, as set."""
    if processes <= 1:
        return {"activation_checkpointing": activation_checkpointing}
    return {
        "activation_checkpointing": False,  # FSDP's own instead (fsdp_config)
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "activation_checkpointing": activation_checkpointing,
            "state_dict_type": "FULL_STATE_DICT",
        },
    } | ({"ddp_backend": "gloo"} if cpu else {})


def sft_rows(
    examples: Sequence[Example], all_turns: bool, tokenizer: PreTrainedTokenizerBase | None = None
) -> list[dict]:
    """The rows TRL gets: whole conversations (``messages``) with ``all_turns``, else prompt-completion pairs. With
    a ``tokenizer`` (``all_turns`` under a template without markers, :func:`turns_by_rendering`), each conversation
    tokenized with its assistant masks (:mod:`maft.training.turns`)."""
    from maft.training.turns import NotPrefixPreserving, masked_conversation

    if not all_turns:
        return [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    if tokenizer is None:
        return [{"messages": [*e.prompt, *e.completion]} for e in examples]
    rows = []
    for e in examples:
        try:
            rows.append(masked_conversation(tokenizer, [*e.prompt, *e.completion]))
        except NotPrefixPreserving as error:
            raise ValueError(
                f"train.critic_loss=all_turns: in the example of problem {e.problem_id} (agent {e.agent}), {error}, "
                "so its assistant turns cannot be found; use train.critic_loss=final"
            ) from None
    return rows


def finetune(
    base_model: str,
    examples: Sequence[Example],
    out_dir: Path,
    cfg: TrainConfig,
    *,
    init_from: Path | None = None,
    seed: int = 0,
    device: str = "auto",
    on_step: StepCallback | None = None,
    tracking: Tracking | None = None,
    processes: int = 1,
    activation_checkpointing: bool = True,
) -> TrainResult:
    """Train ``examples`` into ``out_dir`` starting from ``init_from`` (an adapter or checkpoint) or the base.
    ``processes`` > 1: this is one of that many processes training the role together, launched by
    :mod:`maft.training.distributed` (each calls this with the same arguments; :func:`parallelism`)."""
    from peft import get_peft_model
    from transformers import PrinterCallback, TrainerCallback

    _quiet()
    start = time.perf_counter()
    cfg = resolve_bf16(cfg, device)
    if init_from is not None and cfg.method == "lora" and saved_kind(init_from, missing_ok=True) != "adapter":
        raise FileNotFoundError(f"cannot continue LoRA training from {init_from}: no adapter_config.json there")
    init = str(init_from) if init_from else "base"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not examples:
        if cfg.method == "full":  # the starting weights as saved, in their own dtype: not rounded to train.bf16's
            from transformers import AutoModelForCausalLM

            AutoModelForCausalLM.from_pretrained(str(init_from or base_model), dtype="auto").save_pretrained(
                str(out_dir)
            )
            _tokenizer(base_model).save_pretrained(str(out_dir))
        else:
            model, lora = _load_trainable(base_model, init_from, cfg, _dtype(cfg))
            if lora is not None:
                # seeded as a trainer seeds a role's fresh adapter: a later iteration trains on from it
                from transformers import set_seed

                set_seed(seed)
                model = get_peft_model(model, lora)
            model.save_pretrained(str(out_dir))
        return TrainResult(
            examples=0,
            steps=0,
            train_loss=None,
            seconds=time.perf_counter() - start,
            method=cfg.method,
            bf16=bool(cfg.bf16),
            init=init,
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(state.global_step, state.max_steps)

    scratch = out_dir / ".trainer"  # the trainer's own output (nothing is saved there); removed below
    trainer = sft_trainer(
        base_model,
        examples,
        scratch,
        cfg,
        init_from=init_from,
        seed=seed,
        device=device,
        callbacks=[Progress()],
        tracking=tracking,
        processes=processes,
        activation_checkpointing=activation_checkpointing,
    )
    trainer.remove_callback(PrinterCallback)  # progress comes through on_step; the loss is returned
    output = trainer.train()
    loss = float(output.training_loss)
    if processes > 1:
        import torch

        # each process's loss is over its own mini-batches: the role's is their mean; the trainer gathers the
        # sharded weights and the main process writes them
        loss = float(trainer.accelerator.reduce(torch.tensor(loss, device=trainer.accelerator.device), "mean"))
        from maft.training.fsdp import unwrap_checkpointing

        unwrap_checkpointing(trainer.model)
        trainer.save_model(str(out_dir))
        if trainer.accelerator.is_main_process:
            (out_dir / "training_args.bin").unlink(missing_ok=True)
    else:
        trainer.model.save_pretrained(str(out_dir))
        if cfg.method == "full":
            trainer.processing_class.save_pretrained(str(out_dir))
    shutil.rmtree(scratch, ignore_errors=True)
    return TrainResult(
        examples=len(examples),
        steps=output.global_step,
        train_loss=loss,
        seconds=time.perf_counter() - start,
        method=cfg.method,
        bf16=bool(cfg.bf16),
        init=init,
        host=socket.gethostname(),
        pid=os.getpid(),
        sharded_over=processes,  # FSDP (sft_trainer checked)
    )
