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
