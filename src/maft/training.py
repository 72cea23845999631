"""Finetune one agent role on its own data: TRL ``SFTTrainer`` on prompt-completion examples
(loss on the completion only), with a PEFT LoRA adapter (default) or full weights.

Every role ends with a loadable artifact in ``out_dir``: a PEFT adapter (LoRA) or a full checkpoint.
A role with no examples keeps its starting weights (an untouched adapter is saved), so that the
agent exists in the next debate and stays what it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from maft.config import TrainConfig
from maft.finetune_data import Example

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


def is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


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


def _load_trainable(base_model: str, init_from: Path | None, cfg: TrainConfig, dtype):
    """The model to train and the PEFT config to hand TRL (None when the model already is a PeftModel)."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    if cfg.method == "full":
        return AutoModelForCausalLM.from_pretrained(str(init_from or base_model), dtype=dtype), None
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if init_from is not None:
        return PeftModel.from_pretrained(base, str(init_from), is_trainable=True), None
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return base, lora


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
) -> TrainResult:
    """Train ``examples`` into ``out_dir`` starting from ``init_from`` (an adapter or checkpoint) or the base."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    _quiet()
    start = time.perf_counter()
    if init_from is not None and cfg.method == "lora" and not is_adapter(init_from):
        raise FileNotFoundError(f"cannot continue LoRA training from {init_from}: no adapter_config.json there")
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, lora = _load_trainable(base_model, init_from, cfg, dtype)
    init = str(init_from) if init_from else "base"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not examples:
        if lora is not None:
            model = get_peft_model(model, lora)
        model.save_pretrained(str(out_dir))
        if cfg.method == "full":
            tokenizer.save_pretrained(str(out_dir))
        return TrainResult(
            examples=0, steps=0, train_loss=None, seconds=time.perf_counter() - start, method=cfg.method, init=init,
            host=socket.gethostname(), pid=os.getpid(),
        )

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step:
                on_step(state.global_step, state.max_steps)

    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    scratch = out_dir / ".trainer"  # the trainer's own output (nothing is saved there); removed below
    args = SFTConfig(
        output_dir=str(scratch),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        completion_only_loss=True,
        bf16=cfg.bf16,
        use_cpu=use_cpu,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"prompt": e.prompt, "completion": e.completion} for e in examples])
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora, callbacks=[Progress()]
    )
    trainer.remove_callback(PrinterCallback)  # progress comes through on_step; the loss is returned
    output = trainer.train()
    trainer.model.save_pretrained(str(out_dir))
    if cfg.method == "full":
        tokenizer.save_pretrained(str(out_dir))
    shutil.rmtree(scratch, ignore_errors=True)
    return TrainResult(
        examples=len(examples),
        steps=output.global_step,
        train_loss=float(output.training_loss),
        seconds=time.perf_counter() - start,
        method=cfg.method,
        init=init,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
