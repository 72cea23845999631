"""The in-process engine's decoding against transformers' own: the growing key/value cache and the segmented
decoding (ended rows leave the batch) must give transformers' tokens exactly."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig
from transformers.cache_utils import DynamicLayer

from maft.engines import Request, Sampling
from maft.engines.base import request_seeds
from maft.engines.hf import BASE, GumbelMaxSampler, HFEngine
from maft.engines.kv_cache import GrowingCache, GrowingLayer, growing_cache_for


def test_growing_layer_holds_what_a_dynamic_layer_holds():
    torch.manual_seed(0)
    grow, ref = GrowingLayer(max_length=40), DynamicLayer()
    for n in [7, 1, 1, 30]:  # a prompt, two steps, then past the first buffer (headroom 64 is capped at 40)
        kv = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        for a, b in zip(grow.update(*kv), ref.update(*kv)):
            assert torch.equal(a, b)
    assert grow.get_seq_length() == ref.get_seq_length() == 39
    index = torch.tensor([0, 2])
    grow.batch_select_indices(index)
    ref.batch_select_indices(index)
    grow.crop(-2)
    ref.crop(-2)
    kv = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    for a, b in zip(grow.update(*kv), ref.update(*kv)):
        assert torch.equal(a, b)
    assert grow.keys.shape == (2, 2, 38, 4)


def _tiny(config_class, **extra):
    config = config_class(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, **extra
    )
    return AutoModelForCausalLM.from_config(config)


def test_growing_cache_only_where_every_layer_attends_to_everything():
    assert isinstance(growing_cache_for(_tiny(LlamaConfig)), GrowingCache)
    assert growing_cache_for(_tiny(MistralConfig, sliding_window=8)) is None  # its window lives in its cache
    assert isinstance(growing_cache_for(_tiny(MistralConfig, sliding_window=None)), GrowingCache)


def _transformers_generate(engine: HFEngine, requests: list[Request], seed: int) -> list[list[int]]:
    """Each request's tokens from one plain ``generate`` call over the whole batch (its own DynamicCache,
    every row kept to the end), cut after the first end-of-sequence token."""
    tok = engine.tokenizer
    enc = tok.pad({"input_ids": [engine.prompt_ids(r.messages) for r in requests]}, return_tensors="pt")
    sampling = requests[0].sampling
    kwargs: dict = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if not sampling.greedy:
        width = enc["input_ids"].shape[1]
        sampler = GumbelMaxSampler(request_seeds(requests, seed), width, sampling.temperature, sampling.top_p)
        kwargs["logits_processor"] = [sampler]
    if engine.adapters:
        kwargs["adapter_names"] = [r.adapter or BASE for r in requests]
    out = engine.model.generate(
        **enc,
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **kwargs,
    )
    rows = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return rows


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("with_adapters", [False, True])
def test_segmented_decoding_gives_transformers_tokens(adapters, arithmetic, temperature, with_adapters):
    engine = HFEngine(batch_size=64, merge_adapters=False)
    names: list[str | None] = [None]
    if with_adapters:
        for name, path in adapters.items():
            engine.load_agent(name, path)
        names = [None, *adapters]
    engine.SEGMENT = 5  # many segments: rows end, and leave, at many points
    sampling = Sampling(temperature=temperature, top_p=0.9, max_new_tokens=192)
    problems = arithmetic.splits(0, 8, seed=6).test
    requests = [
        Request([{"role": "user", "content": arithmetic.prompt(p)}], adapter=names[i % len(names)], sampling=sampling)
        for i, p in enumerate(problems)
    ]
    got = engine.generate(requests, seed=3)
    expected = _transformers_generate(engine, requests, seed=3)
    assert [g.text for g in got] == [engine.tokenizer.decode(t, skip_special_tokens=True).strip() for t in expected]
    assert [g.completion_tokens for g in got] == [len(t) for t in expected]
    ends = {g.completion_tokens for g in got if not g.truncated}
    assert len(ends) > 2  # rows really ended in different segments


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two real LoRA adapters with different random weights on the shipped model."""
    from peft import LoraConfig, get_peft_model

    from maft.tiny import default_checkpoint

    paths = {}
    for name, seed in [("gen_0", 1), ("critic_0", 2)]:
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(default_checkpoint()),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        torch.manual_seed(seed)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.1)
        paths[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(paths[name])
    return paths


def test_a_model_that_makes_its_own_cache_decodes_in_one_call(engine, arithmetic):
    """generate refuses a cache passed beside a generation config's cache_implementation (Gemma's 'hybrid'):
    such a model gets neither the growing cache nor segments, and the same tokens."""
    sampling = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=48)
    requests = [
        Request([{"role": "user", "content": arithmetic.prompt(p)}], sampling=sampling)
        for p in arithmetic.splits(0, 4, seed=2).test
    ]
    engine.SEGMENT = 4
    expected = [g.text for g in engine.generate(requests, seed=1)]
    engine.model.generation_config.cache_implementation = "static"
    try:
        assert growing_cache_for(engine.model) is None
        assert [g.text for g in engine.generate(requests, seed=1)] == expected
    finally:
        engine.model.generation_config.cache_implementation = None
        del engine.SEGMENT
