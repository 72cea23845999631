"""QLoRA at a real model's size, through maft's own finetune: ``train.quantization=4bit`` against bf16 LoRA on one
GPU, on random weights of a named shape (``maft.bench.SHAPES``: llama-1b, llama-8b) or on the embedded tiny model.

    python scripts/qlora_check.py llama-8b 4bit /tmp/qlora     # then: ... llama-8b none /tmp/qlora

It writes the random base once under the work directory, finetunes LoRA on 64 short arithmetic examples (batch 8,
256 tokens, activation checkpointing on) and prints: the finetune's time (the load separately), how many linear
layers were 4-bit, the weights' footprint, the peak GPU memory against maft's estimate
(:func:`maft.training.memory.estimate`), and the loss of 16 of the examples on the unquantized bf16 base before
and with the saved adapter, as the engines serve it. A measurement for the README, not a test: it needs CUDA
(and bitsandbytes for 4bit); ``DEV=cpu`` runs the bf16-free path on a CPU for a smoke check.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from maft.bench import shape_config
from maft.config import TrainConfig
from maft.data.agent_data import Example
from maft.tiny import default_checkpoint
from maft.training.memory import ModelCounts, estimate, gb
from maft.training.sft import finetune


def examples(n: int) -> list[Example]:
    ask = "Make sure to state your final answer in the form \\boxed{answer}."
    return [
        Example(
            prompt=[{"role": "user", "content": f"What is {i} + {3 * i}? {ask}"}],
            completion=[
                {
                    "role": "assistant",
                    "content": f"{i} + {3 * i} = {4 * i}. " * (1 + i % 3) + f"The answer is \\boxed{{{4 * i}}}.",
                }
            ],
            problem_id=str(i),
            agent=0,
            kind="generation",
        )
        for i in range(n)
    ]


def random_base(shape: str, work: Path, device: str) -> Path:
    """The shape with random bf16 weights, written once under ``work`` (built on ``device``: fast on a GPU)."""
    base = work / f"base-{shape}"
    if (base / "config.json").exists():
        return base
    tok = AutoTokenizer.from_pretrained(default_checkpoint())
    config = shape_config(shape, tok)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return base


def main(shape: str, quantization: str, work: Path) -> None:
    device = os.environ.get("DEV", "cuda")
    data = examples(int(os.environ.get("N", "64")))
    base = Path(default_checkpoint()) if shape == "tiny" else random_base(shape, work, device)
    cfg = TrainConfig(
        method="lora",
        quantization=quantization,
        bf16=device == "cuda",
        batch_size=8,
        gradient_accumulation_steps=1,
        epochs=1.0,
        learning_rate=2e-4,
        max_length=256,
    )
    seen: dict[str, float] = {}
    load = AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls, *args, **kwargs):  # what finetune loaded: how long, how many 4-bit layers, how large
        start = time.perf_counter()
        model = load(cls, *args, **kwargs)
        seen["load_s"] = time.perf_counter() - start
        seen["linear4bit"] = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        seen["weights_gb"] = model.get_memory_footprint() / 1e9
        return model

    AutoModelForCausalLM.from_pretrained = classmethod(spy)  # type: ignore[method-assign,assignment]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = work / f"adapter-{shape}-{quantization}"
    result = finetune(str(base), data, out, cfg, seed=3, device=device, activation_checkpointing=True)
    seconds = time.perf_counter() - start
    AutoModelForCausalLM.from_pretrained = classmethod(load)  # type: ignore[method-assign,assignment]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    need = estimate(cfg, ModelCounts.of(str(base)), gradient_checkpointing=True)
    print(
        f"{shape} {quantization}: {result.steps} steps in {result.seconds:.1f} s; finetune {seconds:.1f} s "
        f"(load {seen.get('load_s', 0):.1f} s) | Linear4bit layers {seen.get('linear4bit', 0):.0f} | weights "
        f"{seen.get('weights_gb', 0):.2f} GB | peak allocated {gb(peak)} | maft's estimate {gb(need.total)} "
        f"({need.breakdown()})",
        flush=True,
    )

    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(base)
    texts = [tok.apply_chat_template(e.prompt + e.completion, tokenize=False) for e in data[:16]]
    batch = tok(texts, return_tensors="pt", padding=True).to(device)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device).eval()
    with torch.no_grad():
        before = model(**batch, labels=labels).loss.item()
        after = PeftModel.from_pretrained(model, str(out)).eval()(**batch, labels=labels).loss.item()
    verdict = "lower" if after < before else "NOT lower"
    print(
        f"{shape} {quantization}: loss of 16 examples on the bf16 base {before:.4f}, "
        f"with the adapter {after:.4f} ({verdict})"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
