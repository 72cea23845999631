"""The in-process engine's decoding against transformers' own: the growing key/value cache and the segmented
decoding (ended rows leave the batch) must give transformers' tokens exactly."""

import json
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig
from transformers.cache_utils import DynamicLayer

from maft.engines import Request, Sampling
from maft.engines.base import request_seeds
from maft.engines.hf import BASE, GumbelMaxSampler, HFEngine
from maft.engines.kv_cache import GrowingCache, GrowingLayer, growing_cache_for
from maft.tiny import default_checkpoint


def _same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _kv(batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 2, n, 4), torch.randn(batch, 2, n, 4)


@pytest.mark.parametrize("max_length", [None, 200])
def test_growing_layer_holds_what_a_dynamic_layer_holds(max_length):
    torch.manual_seed(0)
    grow, ref = GrowingLayer(max_length=max_length), DynamicLayer()
    for n in [7, 1, 1, 80, 1]:  # a prompt, steps, then past the first buffer (7 + 64 headroom): it grows
        kv = _kv(3, n)
        _same(grow.update(*kv), ref.update(*kv))
    assert grow.get_seq_length() == ref.get_seq_length() == 90
    assert grow._keys is not None and grow._keys.shape[-2] >= 90 and grow._owns_view()
    grow.crop(-5)  # a view of the buffer: the next step writes in place over the cropped positions
    ref.crop(-5)
    assert grow._owns_view()
    kv = _kv(3, 1)
    _same(grow.update(*kv), ref.update(*kv))
    buffer = grow._keys.data_ptr()
    for layer in (grow, ref):
        layer.batch_select_indices(torch.tensor([2, 0]))  # rows moved within the buffer, in any order
    _same((grow.keys, grow.values), (ref.keys, ref.values))
    assert grow._owns_view() and grow._keys.data_ptr() == buffer
    kv = _kv(2, 1)
    _same(grow.update(*kv), ref.update(*kv))
    assert grow._keys.data_ptr() == buffer  # the step after a selection writes in place
    for layer in (grow, ref):
        layer.batch_repeat_interleave(2)
    kv = _kv(4, 3)
    _same(grow.update(*kv), ref.update(*kv))
    assert grow.keys.shape == (4, 2, 90, 4)
    if max_length is not None:
        assert grow._keys.shape[-2] <= max_length


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


def _requests(arithmetic, sampling: Sampling, n: int, names: list[str | None]) -> list[Request]:
    problems = arithmetic.splits(0, n, seed=6).test
    return [
        Request([{"role": "user", "content": arithmetic.prompt(p)}], adapter=names[i % len(names)], sampling=sampling)
        for i, p in enumerate(problems)
    ]


def _assert_transformers_tokens(engine: HFEngine, requests: list[Request], seed: int = 3) -> list:
    got = engine.generate(requests, seed=seed)
    expected = _transformers_generate(engine, requests, seed=seed)
    assert [g.text for g in got] == [engine.tokenizer.decode(t, skip_special_tokens=True).strip() for t in expected]
    assert [g.completion_tokens for g in got] == [len(t) for t in expected]
    eos = engine.tokenizer.eos_token_id
    max_new = requests[0].sampling.max_new_tokens
    assert [g.truncated for g in got] == [t[-1] != eos and len(t) == max_new for t in expected]
    return got


@pytest.fixture(scope="module")
def adapters(random_adapters):
    """Two real LoRA adapters with different random weights on the shipped model (milder than test_engine's:
    their rows still end, at many lengths)."""
    return random_adapters(0.1, ("q_proj", "v_proj"))


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
    got = _assert_transformers_tokens(engine, _requests(arithmetic, Sampling(temperature, 0.9, 192), 8, names))
    ends = {g.completion_tokens for g in got if not g.truncated}
    assert len(ends) > 2  # rows really ended in different segments
    # a last segment shorter than the others, rows cut off by max_new_tokens among rows that ended
    got = _assert_transformers_tokens(engine, _requests(arithmetic, Sampling(temperature, 0.9, 88), 8, names))
    assert any(g.truncated for g in got) and not all(g.truncated for g in got)


def test_segmented_decoding_keeps_a_sliding_window_models_own_cache(arithmetic, tmp_path):
    """The shipped weights as a Mistral with a 64-token window: transformers' sliding-window cache (not ours)
    carries the segments, rows leave it, and the tokens are still one generate call's."""
    shutil.copytree(default_checkpoint(), tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=64)
    (tmp_path / "config.json").write_text(json.dumps(config))
    engine = HFEngine(tmp_path, batch_size=64)
    assert type(engine.model).__name__ == "MistralForCausalLM"
    assert growing_cache_for(engine.model) is None
    engine.SEGMENT = 5
    # marked continued: the prefix store keeps only rows of our own cache, so it keeps none of these
    requests = [replace(r, continued=True) for r in _requests(arithmetic, Sampling(1.0, 0.9, 96), 8, [None])]
    got = _assert_transformers_tokens(engine, requests)
    assert engine.prefixes is not None and engine.prefixes.bytes == 0
    assert any(not g.truncated for g in got) and len({g.completion_tokens for g in got}) > 1  # rows left early
    everything = HFEngine(batch_size=64)  # the window matters: the same weights attending to everything differ
    assert [g.text for g in got] != [g.text for g in everything.generate(requests, seed=3)]


def test_a_model_that_makes_its_own_cache_decodes_in_one_call(engine, arithmetic):
    """generate refuses a cache passed beside a generation config's cache_implementation (Gemma's 'hybrid'),
    returns none with use_cache off, and restarts min_new_tokens at every call: such a model gets neither
    the growing cache nor segments, and the same tokens (min_new_tokens=2 changes none of these)."""
    requests = _requests(arithmetic, Sampling(temperature=1.0, top_p=0.9, max_new_tokens=48), 4, [None])
    config = engine.model.generation_config
    try:
        engine.SEGMENT = 4
        expected = [g.text for g in engine.generate(requests, seed=1)]
        for setting, value in [("cache_implementation", "static"), ("use_cache", False), ("min_new_tokens", 2)]:
            default = getattr(config, setting)
            setattr(config, setting, value)
            try:
                assert growing_cache_for(engine.model) is None
                assert [g.text for g in engine.generate(requests, seed=1)] == expected, setting
            finally:
                setattr(config, setting, default)
    finally:
        engine.__dict__.pop("SEGMENT", None)
