"""maft's recipe for the embedded default model: a tiny Llama pretrained from scratch on synthetic debates.

``pretrain(RecipeConfig(...), out_dir)`` trains the tokenizer, builds a ``LlamaForCausalLM`` from a
config, trains it on conversations from ``maft.tiny.synth`` (loss on the final assistant message only)
and saves a standard Hugging Face checkpoint (config, safetensors, tokenizer with chat template) that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load like any chat model.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from maft.tiny.synth import SimulatedDebate, SynthConfig
from maft.tiny.tokenizer import SPECIAL_TOKENS, train_tokenizer


class ModelShape(BaseModel):
    model_config = ConfigDict(extra="forbid")  # "hiden_size" is refused, not trained past at the default

    hidden_size: int = 96
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 1024


class RecipeConfig(BaseModel):
    """Everything that determines the pretrained checkpoint."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key ("step: 5") is refused, not trained past

    steps: int = Field(7000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    vocab_size: int = 512
    tokenizer_corpus: int = Field(4000, description="conversations the BPE is trained on")
    threads: int | None = Field(None, description="torch threads (default: all cores)")
    save_every: int | None = Field(None, description="also save a checkpoint every this many steps")
    init_from: str | None = Field(None, description="continue from this checkpoint (its tokenizer and weights)")
    model: ModelShape = Field(default_factory=ModelShape)
    synth: SynthConfig = Field(default_factory=SynthConfig)


def _render(tok: PreTrainedTokenizerFast, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (everything before the last message) and of the completion."""
    prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    completion = messages[-1]["content"] + tok.eos_token
    ids = tok([prompt, completion], add_special_tokens=False)["input_ids"]
    return ids[0], ids[1]


def batches(
    society: SimulatedDebate, tok: PreTrainedTokenizerFast, batch_size: int, bucket: int = 4
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless batches; each holds one conversation kind, and ``bucket`` batches at a time are cut from
    length-sorted examples so that padding stays small. Loss is on completions only."""
    while True:
        kind = society.kind()
        rows = sorted(
            (_render(tok, society.example(kind).messages) for _ in range(batch_size * bucket)),
            key=lambda r: len(r[0]) + len(r[1]),
        )
        chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        society.rng.shuffle(chunks)
        for chunk in chunks:
            yield _collate(chunk, tok.pad_token_id)


def _collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):  # right padding for training
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(p + c)
        labels[i, len(p) : n] = torch.tensor(c)
        mask[i, :n] = 1
    return input_ids, mask, labels


def build_model(cfg: RecipeConfig, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    shape = cfg.model
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def save_checkpoint(
    model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, out_dir: Path, cfg: RecipeConfig, stats: dict
) -> None:
    """Write a loadable HF checkpoint plus the recipe that made it (``maft_recipe.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=0.9,
        top_k=0,
        max_new_tokens=160,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    (out_dir / "maft_recipe.json").write_text(json.dumps({"recipe": cfg.model_dump(), "stats": stats}, indent=2) + "\n")


def pretrain(cfg: RecipeConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Run the recipe and save the checkpoint to ``out_dir``; returns ``out_dir``."""
    out_dir = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = random.Random(cfg.seed)
    society = SimulatedDebate(cfg.synth, rng)
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_log.jsonl").unlink(missing_ok=True)

    if cfg.init_from:
        tok = AutoTokenizer.from_pretrained(cfg.init_from)
        model = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
    else:
        corpus = []
        for _ in range(cfg.tokenizer_corpus):
            messages = society.example(society.kind()).messages
            corpus.append("\n".join(m["content"] for m in messages))
        tok = train_tokenizer(corpus, vocab_size=cfg.vocab_size)
        model = build_model(cfg, tok)
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer lacks maft's special tokens {missing}")
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.warmup_steps, cfg.steps, min_lr_rate=cfg.min_lr_ratio
    )
    torch.manual_seed(cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log: list[dict] = []
    ema = None
    columns = [
        TextColumn("pretrain"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("pretrain", total=cfg.steps, loss="-")
        stream = batches(society, tok, cfg.batch_size)
        for step in range(1, cfg.steps + 1):
            input_ids, mask, labels = next(stream)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            bar.update(task, advance=1, loss=f"{ema:.4f}")
            if step % 100 == 0 or step == cfg.steps:
                log.append(
                    {
                        "step": step,
                        "loss": round(ema, 5),
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                with open(out_dir / "train_log.jsonl", "a") as f:
                    f.write(json.dumps(log[-1]) + "\n")
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save_checkpoint(
                    model, tok, out_dir / f"step-{step}", cfg, {"step": step, "params": n_params, "log": log}
                )
    stats = {
        "params": n_params,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": round(ema or math.nan, 5),
        "examples": cfg.steps * cfg.batch_size,
        "torch": torch.__version__,
        "log": log,
    }
    previous = Path(cfg.init_from or "") / "maft_recipe.json"
    if cfg.init_from and previous.is_file():
        stats["continued_from"] = json.loads(previous.read_text())
    save_checkpoint(model, tok, out_dir, cfg, stats)
    return out_dir
