"""Prefix caching in the in-process engine (``maft.engines.prefix_cache``): a later round of a debate reuses the
keys and values its model computed for the round before, and generates exactly what it generates without them."""

from __future__ import annotations

import torch

from maft.debate.protocol import debate
from maft.engines import Request, Sampling
from maft.engines.hf import HFEngine
from maft.engines.prefix_cache import Kept, PrefixStore

SAMPLED = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=40)  # some rows end, some are cut at 40 tokens


def texts(turns):
    return [(t.round, t.problem_id, t.agent, t.response) for t in turns]


def test_later_rounds_reuse_the_rounds_before_and_generate_the_same_texts(arithmetic):
    """Three rounds with model summaries (a summarizing call between rounds), batches of 16 rows, so a row's
    prefix was kept from another batch, at another position and padding."""
    problems = arithmetic.splits(0, 8, seed=7).test
    runs = {}
    for gb in (0.0, 2.0):
        engine = HFEngine(batch_size=16, prefix_cache_gb=gb)
        turns = debate(engine, arithmetic, problems, agents=3, rounds=3, summarizer="model", sampling=SAMPLED, seed=5)
        runs[gb] = (engine, turns)
    (off, without), (on, with_) = runs[0.0], runs[2.0]
    assert off.prefixes is None and on.prefixes is not None
    assert texts(with_) == texts(without)
    assert len({t.response for t in with_}) > 10  # sampled, not one answer copied
    store = on.prefixes
    # rounds 2 and 3 reuse most of their prompts (the conversation so far); round 1 and the summaries reuse nothing
    assert store.reused > store.computed / 2, (store.reused, store.computed)
    assert store.bytes == 0  # each kept row left once its conversation continued; the last round keeps none
    # a budget for about a dozen rows (each about 3 KB a token): the others are not kept, the texts are the same
    small = HFEngine(batch_size=16, prefix_cache_gb=12 * 250_000 / 2**30)
    again = debate(small, arithmetic, problems, agents=3, rounds=3, summarizer="model", sampling=SAMPLED, seed=5)
    assert texts(again) == texts(without)
    assert small.prefixes is not None and 0 < small.prefixes.kept < store.kept / 2, (small.prefixes.kept, store.kept)


def test_an_agent_never_reuses_another_models_keys_and_loading_clears_them(random_adapters, arithmetic):
    """Unmerged adapters in mixed batches: agents keep their adapter across rounds (reuse), or switch from gen_0 in
    round 1 to critic_0 after it, as finetuned MAFT agents do (nothing to reuse, so nothing is kept); both
    generate what an engine without the cache does. Loading an agent empties the store."""
    adapters = random_adapters(0.3, ("q_proj", "v_proj", "up_proj"))
    problems = arithmetic.splits(0, 6, seed=8).test
    schemes = {
        "kept": lambda n, m: ["gen_0", "critic_0", None][n],
        "switched": lambda n, m: "gen_0" if m == 1 else "critic_0",
    }
    for name, adapter_for in schemes.items():
        outputs = []
        for gb in (0.0, 2.0):
            engine = HFEngine(batch_size=8, merge_adapters=False, prefix_cache_gb=gb)
            for role, path in adapters.items():
                engine.load_adapter(role, path)
            turns = debate(engine, arithmetic, problems, rounds=2, sampling=SAMPLED, adapter_for=adapter_for, seed=2)
            outputs.append(texts(turns))
        assert outputs[0] == outputs[1], name
        store = engine.prefixes
        assert store is not None
        # a round-1 request is marked continued only where its agent answers round 2 too; others are not kept
        assert (store.kept > 0) == (store.reused > 0) == (name == "kept"), (name, store.kept, store.reused)
        assert store.bytes == 0  # what was kept was reused, and left
    # loading an agent, or stepping aside for training, gives kept keys and values back
    continued = [
        Request([{"role": "user", "content": arithmetic.prompt(problems[0])}], continued=True, sampling=SAMPLED)
    ]
    for give_back in (lambda: engine.load_adapter("gen_0", adapters["critic_0"]), engine.release):
        engine.generate(continued)
        assert store.bytes > 0
        give_back()
        assert store.bytes == 0 and not store.calls


def _row(ids: list[int], prompt_length: int, cached: int, tag: float) -> Kept:
    """A kept row whose key at position p is ``tag + p`` (one layer, one head, head size 2)."""
    keys = (tag + torch.arange(cached, dtype=torch.float32))[None, :, None].expand(1, cached, 2).clone()
    return Kept(ids=ids, keys=[keys], values=[-keys], prompt_length=prompt_length)


def test_the_longest_shared_prefix_of_the_same_model_is_reused_right_aligned():
    store = PrefixStore(budget=1 << 20)
    store.begin(1)
    first, second = (
        _row([1, 2, 3, 4, 5, 6, 7, 8], prompt_length=3, cached=7, tag=100.0),
        _row([1, 2, 3, 4, 9, 9, 9, 9], prompt_length=3, cached=8, tag=200.0),
    )
    store.keep(1, "a", first)
    store.keep(1, "a", second)
    store.keep(1, "b", _row([1, 2, 3, 4, 5, 6, 7, 8, 9], prompt_length=3, cached=9, tag=300.0))
    store.keep(1, "a", _row([5, 5, 5, 5], prompt_length=2, cached=4, tag=400.0))
    # the longest shared prefix, capped by what is cached and by the prompt less its last position
    assert store.longest("a", [1, 2, 3, 4, 5, 6, 0]) == (first, 6)
    assert store.longest("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 9]) == (first, 7)  # 7 of 8 cached
    assert store.longest("a", [1, 2, 3, 4, 9, 9]) == (second, 5)  # the other row; not the last
    assert store.longest("a", [1, 2, 0]) == (None, 0)  # its kept prompt (3 tokens) is not a prefix
    assert store.longest("b", [5, 5, 5, 5, 5])[0] is None  # another model's row is never used
    # a batch of two prompts left-padded to 8: row 0 (8 tokens) could reuse 6 positions, row 1 (7 tokens) reuses 4
    # and has 3 to compute; both compute 3, so the cache has 5 columns: row 0 reuses 5 of its 6, row 1 its 4
    # right-aligned after one column of padding
    before = store.bytes
    keys, values, columns = store.prefill(["a", "a"], [[1, 2, 3, 4, 5, 6, 0, 0], [5, 5, 5, 5, 1, 1, 1]], 8, 12)
    assert columns == 5 and keys[0].shape == (2, 1, 12, 2) and values[0].shape == (2, 1, 12, 2)
    assert torch.equal(values[0][:, :, :5], -keys[0][:, :, :5])
    assert keys[0][0, 0, :5, 0].tolist() == [100, 101, 102, 103, 104]
    assert keys[0][1, 0, :5, 0].tolist() == [0, 400, 401, 402, 403]
    assert (store.reused, store.computed) == (9, 6)
    # the two reused rows left the store (a conversation continues once); the others stay
    assert store.bytes == before - 7 * 16 - 4 * 16
    assert store.longest("a", [5, 5, 5, 5, 1])[0] is None and store.longest("a", [1, 2, 3, 4, 9, 9])[1] == 5
    assert store.prefill(["a", "a"], [[1, 2, 3, 4, 9, 9, 0], [7, 7, 7, 7, 7, 7, 7]], 7, 7) is None  # no gain


def test_the_store_keeps_what_fits_and_the_rows_of_two_calls_before_the_current():
    row_bytes = _row([1, 2, 3], 1, 3, 0.0).bytes
    store = PrefixStore(budget=3 * row_bytes)
    for call in (1, 2, 3):
        store.begin(call)
        store.keep(call, "a", _row([call, 2, 3], 1, 3, 0.0))
    store.keep(3, "a", _row([9, 2, 3], 1, 3, 0.0))  # over budget: not kept, and nothing is dropped for it
    assert list(store.calls) == [1, 2, 3] and store.bytes == 3 * row_bytes
    store.begin(4)  # keeps calls 2 and 3
    assert list(store.calls) == [2, 3] and store.bytes == 2 * row_bytes
    assert store.longest("a", [1, 2, 3, 4])[0] is None and store.longest("a", [2, 2, 3, 4])[1] == 3
