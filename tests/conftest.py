"""Shared fixtures. Everything runs offline on CPU with the real tiny model."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def recipe_checkpoint(tmp_path_factory):
    """A checkpoint made by the real recipe on a tiny budget (untrained, but a real loadable model)."""
    from maft.tiny.recipe import ModelShape, RecipeConfig, pretrain

    cfg = RecipeConfig(
        steps=6,
        batch_size=4,
        tokenizer_corpus=300,
        warmup_steps=2,
        model=ModelShape(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    )
    return pretrain(cfg, tmp_path_factory.mktemp("recipe") / "tiny", progress=False)


@pytest.fixture(scope="session")
def engine():
    """The shipped tiny model in the real HF engine."""
    from maft.engines.hf import HFEngine

    return HFEngine(batch_size=64)


@pytest.fixture(scope="session")
def arithmetic():
    from maft.tasks import get_task

    return get_task("arithmetic")


@pytest.fixture(scope="session")
def solved_examples(arithmetic):
    """``solved_examples(n)``: n generation examples of agent 0, arithmetic training problems (problem seed 9)
    with the synthetic solver's correct step-by-step solutions."""
    import random
    import re

    from maft.data.agent_data import Example
    from maft.tasks.arithmetic import Expression
    from maft.tiny.synth import solve

    def make(n: int) -> list[Example]:
        rng = random.Random(0)
        out = []
        for p in arithmetic.splits(n, 1, seed=9).train:
            text, _ = solve(Expression(*map(int, re.findall(r"\d+", p.question))), rng, 0.0, "places")
            out.append(
                Example(
                    prompt=[{"role": "user", "content": arithmetic.prompt(p)}],
                    completion=[{"role": "assistant", "content": text}],
                    problem_id=p.id,
                    agent=0,
                    kind="generation",
                )
            )
        return out

    return make


@pytest.fixture(scope="session")
def random_adapters(tmp_path_factory):
    """Make two real LoRA adapters, gen_0 and critic_0, on the shipped model, with random B matrices of standard
    deviation ``std`` on ``modules`` (each set made once per session): ``random_adapters(std, modules)``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from maft.tiny import default_checkpoint

    made: dict = {}

    def make(std: float, modules: tuple[str, ...]) -> dict:
        if (std, modules) not in made:
            paths = {}
            for name, seed in [("gen_0", 1), ("critic_0", 2)]:
                model = get_peft_model(
                    AutoModelForCausalLM.from_pretrained(default_checkpoint()),
                    LoraConfig(r=4, lora_alpha=8, target_modules=list(modules), init_lora_weights=False),
                )
                torch.manual_seed(seed)
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.data.normal_(0, std)
                paths[name] = tmp_path_factory.mktemp(name)
                model.save_pretrained(paths[name])
            made[std, modules] = paths
        return made[std, modules]

    return make
