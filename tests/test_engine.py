import pytest
import torch
from transformers import AutoModelForCausalLM

from maft.engines import Request, Sampling
from maft.engines.hf import HFEngine
from maft.tiny import default_checkpoint

GREEDY = Sampling(temperature=0, max_new_tokens=96)


def ask(task, problem, adapter=None, sampling=GREEDY):
    return Request([{"role": "user", "content": task.prompt(problem)}], adapter=adapter, sampling=sampling)


@pytest.fixture(scope="module")
def adapters(random_adapters):
    """Two real LoRA adapters with different random weights on the shipped model."""
    return random_adapters(0.3, ("q_proj", "v_proj", "up_proj"))


def test_batch_preserves_order_and_equals_one_at_a_time(engine, arithmetic):
    problems = arithmetic.splits(0, 6, seed=3).test
    requests = [ask(arithmetic, p) for p in problems]
    batched = [g.text for g in engine.generate(requests)]
    alone = [engine.generate([r])[0].text for r in requests]
    assert batched == alone
    assert all(g.prompt_tokens > 0 and g.completion_tokens > 0 for g in engine.generate(requests[:2]))


def test_sampling_is_seeded_and_diverse(engine, arithmetic):
    problem = arithmetic.splits(0, 1, seed=5).test[0]
    requests = [ask(arithmetic, problem, sampling=Sampling(max_new_tokens=96))] * 16
    first = [g.text for g in engine.generate(requests, seed=11)]
    assert first == [g.text for g in engine.generate(requests, seed=11)]
    assert first != [g.text for g in engine.generate(requests, seed=12)]
    assert len(set(first)) > 1  # independent samples differ


def test_mixed_adapter_batch_equals_separate_calls(adapters, arithmetic):
    engine = HFEngine(batch_size=8)
    for name, path in adapters.items():
        engine.load_adapter(name, path)
    problems = arithmetic.splits(0, 3, seed=4).test
    requests = [ask(arithmetic, p, adapter) for p in problems for adapter in [None, "gen_0", "critic_0"]]
    mixed = [g.text for g in engine.generate(requests)]
    separate = [engine.generate([r])[0].text for r in requests]
    assert mixed == separate
    by_adapter = {a: [t for t, r in zip(mixed, requests) if r.adapter == a] for a in [None, "gen_0", "critic_0"]}
    assert by_adapter[None] != by_adapter["gen_0"] != by_adapter["critic_0"]  # adapters really act
    with pytest.raises(KeyError, match="unknown adapter 'critic_9'"):
        engine.generate([ask(arithmetic, problems[0], "critic_9")])


def test_load_adapter_rejects_a_missing_adapter(tmp_path):
    engine = HFEngine()
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        engine.load_adapter("gen_0", tmp_path)


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}])
def test_sampling_validation(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)


def test_model_without_chat_template_is_refused(recipe_checkpoint, tmp_path):
    import json
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(recipe_checkpoint, copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template"):
        HFEngine(copy)


def test_a_generation_ends_at_any_end_of_turn_token_of_the_models_generation_config(engine, arithmetic, tmp_path):
    """Llama 3, Phi-3 and Gemma end a turn with a token listed in generation_config.eos_token_id, not the
    tokenizer's eos: the engine stops there (as vLLM does), and the answer is not reported truncated."""
    import shutil

    request = ask(arithmetic, arithmetic.splits(0, 1, seed=2).test[0])
    whole = engine.generate([request])[0]
    ids = engine.tokenizer(whole.text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 4 and whole.completion_tokens > 4
    stop = ids[3]  # the greedy answer's fourth token now ends a turn (its first occurrence is at 3 or before)
    copy = tmp_path / "eot"
    shutil.copytree(default_checkpoint(), copy)
    model = AutoModelForCausalLM.from_pretrained(copy)
    model.generation_config.eos_token_id = [engine.tokenizer.eos_token_id, stop]
    model.generation_config.save_pretrained(copy)
    ended = HFEngine(copy, merge_adapters=True)
    out = ended.generate([request])[0]
    first = ids.index(stop)
    assert out.completion_tokens == first + 1 and not out.truncated
    assert whole.text.startswith(out.text.removesuffix(engine.tokenizer.decode([stop])).strip())
    assert ended.end_ids == [engine.tokenizer.eos_token_id, stop]


def test_merged_agent_generates_what_the_unmerged_adapter_does(adapters, arithmetic):
    merged, unmerged = HFEngine(merge_adapters=True), HFEngine(merge_adapters=False)
    for engine in (merged, unmerged):
        engine.load_agent("gen_0", adapters["gen_0"])
    assert "gen_0" in merged.full_models and "gen_0" not in merged.adapters
    assert "gen_0" in unmerged.adapters and not unmerged.full_models
    problems = arithmetic.splits(0, 6, seed=4).test
    requests = [ask(arithmetic, p, adapter) for p in problems for adapter in [None, "gen_0"]]
    assert [g.text for g in merged.generate(requests)] == [g.text for g in unmerged.generate(requests)]


def test_small_models_merge_adapters_by_default(engine):
    assert engine.num_parameters < 1_000_000 and engine.merge_adapters


def test_batch_size_defaults_by_model_size(monkeypatch):
    import maft.engines.hf as hf

    assert HFEngine().batch_size == hf.SMALL_MODEL_BATCH == 512 and HFEngine(batch_size=8).batch_size == 8
    monkeypatch.setattr(hf, "MERGE_BELOW", 1000)  # the tiny model counted as a large one
    assert HFEngine().batch_size == hf.BATCH == 128


def test_scoring_batches_stay_at_128_rows_under_a_wider_generation_batch(arithmetic):
    engine = HFEngine(batch_size=512)
    rows = []
    original = engine._score_batch
    engine._score_batch = lambda batch, *args: rows.append(len(batch)) or original(batch, *args)
    requests = [ask(arithmetic, p) for p in arithmetic.splits(0, 130, seed=3).test]
    engine.score(requests, ["\\boxed{1}"] * len(requests))
    assert rows == [128, 2]


def test_reloading_an_agent_under_its_name_replaces_it(adapters, arithmetic):
    """Each iteration loads the new agents under the same role names; nothing of the old one may stay."""
    problems = arithmetic.splits(0, 4, seed=6).test
    requests = [ask(arithmetic, p, "gen_0") for p in problems]
    for merge in (False, True):
        fresh = HFEngine(merge_adapters=merge)
        fresh.load_agent("gen_0", adapters["critic_0"])
        reused = HFEngine(merge_adapters=merge)
        reused.load_agent("gen_0", adapters["gen_0"])
        first = [g.text for g in reused.generate(requests)]
        reused.load_agent("gen_0", adapters["critic_0"])
        assert [g.text for g in reused.generate(requests)] == [g.text for g in fresh.generate(requests)] != first


def _manual_logprob(model, engine, messages, completion):
    """Sum of the completion tokens' log-probabilities from one unpadded forward pass."""
    prompt = engine.prompt_ids(messages)
    target = engine.tokenizer(completion, add_special_tokens=False)["input_ids"] + [engine.tokenizer.eos_token_id]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return float(sum(logprobs[len(prompt) - 1 + j, t] for j, t in enumerate(target))), len(target)


def test_score_equals_an_unpadded_forward_pass_and_ignores_batching(engine, arithmetic):
    problems = arithmetic.splits(0, 5, seed=8).test
    requests = [ask(arithmetic, p) for p in problems]
    texts = [g.text for g in engine.generate(requests, seed=2)]
    completions = [texts[0], texts[1][:7], "\\boxed{12}", texts[3], texts[4] + " and more words here"]
    batched = engine.score(requests, completions)
    for r, c, s in zip(requests, completions, batched):
        logprob, tokens = _manual_logprob(engine.model, engine, r.messages, c)
        assert s.tokens == tokens and s.logprob == pytest.approx(logprob, abs=1e-3)
        assert engine.score([r], [c])[0].logprob == pytest.approx(s.logprob, abs=1e-3)
    assert all(s.logprob < 0 and s.nll_per_token > 0 for s in batched)
    # the model's own sample is more likely than the same sample with extra words appended, per token
    assert batched[4].nll_per_token > batched[0].nll_per_token
    with pytest.raises(ValueError, match="2 requests but 1 completions"):
        engine.score(requests[:2], completions[:1])


def test_score_uses_each_requests_agent_merged_or_not(adapters, arithmetic):
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(default_checkpoint()).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(default_checkpoint()), str(adapters["gen_0"])
    ).eval()
    problems = arithmetic.splits(0, 3, seed=9).test
    requests = [ask(arithmetic, p, a) for p in problems for a in (None, "gen_0")]
    completion = "Let me compute. \\boxed{5}"
    for merge in (False, True):
        engine = HFEngine(merge_adapters=merge, batch_size=4)
        engine.load_agent("gen_0", adapters["gen_0"])
        scores = engine.score(requests, [completion] * len(requests))  # one mixed batch: base and agent
        for r, s in zip(requests, scores):
            expected, _ = _manual_logprob(tuned if r.adapter else base, engine, r.messages, completion)
            assert s.logprob == pytest.approx(expected, abs=1e-3), (merge, r.adapter)
        assert scores[0].logprob != pytest.approx(scores[1].logprob, abs=1e-3)  # the agent really differs
    with pytest.raises(KeyError, match="unknown adapter"):
        engine.score([ask(arithmetic, problems[0], "critic_7")], ["x"])


# -- batch-invariant sampling ---------------------------------------------------------------------------------------
def _sampling_requests(arithmetic, sampling, n=20, adapters=(None,)):
    """Distinct arithmetic questions (for each adapter), plus exact duplicates of the first few."""
    problems = arithmetic.splits(0, n, seed=21).test
    requests = [ask(arithmetic, p, a, sampling) for p in problems for a in adapters]
    return requests + requests[:3] + requests[:1]  # the first request four times, the next two twice


def _texts_by_request(requests, texts):
    """Each distinct request's texts (its copies' texts, sorted): a comparison by request, not position."""
    from maft.engines.base import _canonical

    out: dict[str, list[str]] = {}
    for r, text in zip(requests, texts):
        out.setdefault(_canonical(r), []).append(text)
    return {k: sorted(v) for k, v in out.items()}


def test_request_seeds_follow_the_request_not_its_position():
    import json
    import os
    import random
    import subprocess
    import sys

    from maft.engines.base import request_seeds, request_seeds32

    msgs = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    requests = [Request(m) for m in msgs] + [Request(msgs[0])] * 2 + [Request(msgs[0], adapter="gen_0")]
    requests += [Request(msgs[1], sampling=Sampling(temperature=0.7)), Request([{"role": "user", "content": "é ✓"}])]
    seeds = request_seeds(requests, 5)
    assert len(set(seeds)) == len(seeds)  # copies differ (occurrence 0, 1, 2); adapter and sampling count
    assert all(0 <= s < 2**63 for s in seeds)
    assert seeds == request_seeds(requests, 5)
    assert not set(seeds) & set(request_seeds(requests, 6))  # another call seed, other seeds
    # distinct requests keep their seed in any order and in any company; the k-th copy keeps the k-th seed
    perm = list(range(len(requests)))
    random.Random(0).shuffle(perm)
    shuffled = request_seeds([requests[i] for i in perm], 5)
    for j, i in enumerate(perm):
        if i not in (0, 6, 7):  # the three copies of request 0
            assert shuffled[j] == seeds[i]
    assert sorted(shuffled[j] for j, i in enumerate(perm) if i in (0, 6, 7)) == sorted(seeds[i] for i in (0, 6, 7))
    assert request_seeds(requests[3:5], 5) == seeds[3:5]
    assert request_seeds([requests[0]] * 3, 5) == [seeds[0], seeds[6], seeds[7]]  # copy k: occurrence k
    assert request_seeds([Request(msgs[0], sampling=Sampling(temperature=1))], 5) == seeds[:1]  # 1 == 1.0
    # stable across processes (no hash randomisation): a fresh interpreter computes the same seeds
    code = (
        "import json,sys; from maft.engines.base import Request, Sampling, request_seeds;"
        "m=[[{'role':'user','content':f'question {i}'}] for i in range(6)];"
        "r=[Request(x) for x in m]+[Request(m[0])]*2+[Request(m[0],adapter='gen_0')];"
        "r+=[Request(m[1],sampling=Sampling(temperature=0.7)),Request([{'role':'user','content':'é ✓'}])];"
        "print(json.dumps(request_seeds(r,5)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(fresh) == seeds
    small = request_seeds32(requests, 5)
    assert all(0 <= s < 2**31 for s in small) and len(set(small)) == len(small)
    assert small == [s % 2**31 for s in seeds]


def _splitmix_uniform(seed: int, step: int, token: int) -> float:
    """uniform_noise's value, from a plain-Python splitmix64 (Python integers, explicit modulo 2^64)."""
    m = 2**64 - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    key = mix((seed + mix(((step + 1) * 0x9E3779B97F4A7C15) & m)) & m)
    bits = mix((key + (token + 1) * 0x9E3779B97F4A7C15) & m)
    return ((bits >> 11) + 0.5) / 2**53


def test_uniform_noise_is_splitmix64_and_a_pure_function():
    from maft.engines.hf import uniform_noise

    seeds = torch.tensor([0, 1, 12345, 2**62 + 7, 2**63 - 1])
    tokens = torch.arange(50)
    u = uniform_noise(seeds[:, None], 3, tokens[None, :])
    assert u.shape == (5, 50) and u.dtype == torch.float64 and 0 < u.min() and u.max() < 1
    for i, s in enumerate(seeds.tolist()):
        for t in (0, 1, 17, 49):
            assert u[i, t].item() == _splitmix_uniform(s, 3, t)
    assert torch.equal(uniform_noise(seeds[[3, 1], None], 3, tokens[None, :]), u[[3, 1]])  # rows are independent
    assert torch.equal(uniform_noise(seeds[[4, 0, 4]], 3, torch.tensor([7, 2, 9])), u[[4, 0, 4], [7, 2, 9]])
    assert not torch.equal(uniform_noise(seeds[:, None], 4, tokens[None, :]), u)
    assert abs(u.mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_gumbel_max_sampler_adds_the_noise_of_seed_step_and_token(top_p):
    """Dense (every token) or sparse (a small nucleus), the sampler adds exactly gumbel_noise(seed, step, token)."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from maft.engines.hf import GumbelMaxSampler, gumbel_noise

    torch.manual_seed(0)
    scores = torch.randn(3, 40) * 4
    sampler = GumbelMaxSampler([5, 2**62, 9], prompt_width=6, temperature=0.8, top_p=top_p)
    out = sampler(torch.zeros(3, 9, dtype=torch.long), scores.clone())
    warped = TemperatureLogitsWarper(0.8)(None, scores)
    if top_p < 1:
        warped = TopPLogitsWarper(top_p)(None, warped)
    kept = torch.isfinite(warped)
    assert top_p == 1 or kept.sum() < 30  # the sparse path really ran
    expected = warped + gumbel_noise(torch.tensor([5, 2**62, 9])[:, None], 3, torch.arange(40)[None, :]).float()
    assert torch.equal(torch.isfinite(out), kept) and torch.equal(out[kept], expected[kept])


def test_the_nucleus_is_transformers_top_p_whether_found_among_the_candidates_or_by_sorting():
    """On 3,000 rows of random logits over the embedded model's vocabulary size, from flat to peaked, the nucleus is
    the one TopPLogitsWarper keeps; flat rows (whose most likely candidates hold less than top_p) sort all their
    tokens, peaked ones do not."""
    from transformers import TopPLogitsWarper

    from maft.engines.hf import NUCLEUS_CANDIDATES, nucleus

    torch.manual_seed(0)
    scores = torch.randn(3000, 418) * torch.rand(3000, 1) * 6
    for top_p in (0.3, 0.9, 0.95):
        expected = torch.isfinite(TopPLogitsWarper(top_p)(None, scores.clone()))
        assert torch.equal(nucleus(scores, top_p), expected), top_p
        candidates = scores.softmax(-1).topk(NUCLEUS_CANDIDATES).values.sum(-1)
        assert (candidates < top_p).sum() > 100 and (candidates >= top_p).sum() > 100  # both paths ran


def _draws(logits, temperature, top_p, n_seeds=8000, steps=5):
    """Tokens the sampler picks for ``logits`` over n_seeds x steps (seed, step) pairs, and their frequencies."""
    from maft.engines.hf import GumbelMaxSampler

    sampler = GumbelMaxSampler(range(10**6, 10**6 + n_seeds), prompt_width=4, temperature=temperature, top_p=top_p)
    scores = logits.repeat(n_seeds, 1)
    picks = torch.cat(
        [sampler(torch.zeros(n_seeds, 4 + k, dtype=torch.long), scores.clone()).argmax(-1) for k in range(steps)]
    )
    return torch.bincount(picks, minlength=len(logits)).double() / len(picks)


def test_gumbel_max_sampler_draws_from_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    for temperature in (1.0, 0.7, 1.5):
        expected = torch.softmax(logits.double() / temperature, -1)
        freq = _draws(logits, temperature, 1.0)  # 40,000 draws: a frequency's standard error <= 0.0025
        assert (freq - expected).abs().max() < 0.012, (temperature, freq, expected)
    # the tolerance rejects broken samplers: argmax, uniform, or one that ignores the temperature
    freq = _draws(logits, 0.7, 1.0)
    for wrong in (
        torch.nn.functional.one_hot(torch.tensor(0), 6).double(),
        torch.full((6,), 1 / 6, dtype=torch.float64),
        torch.softmax(logits.double(), -1),
    ):
        assert (freq - wrong).abs().max() > 0.05


def test_gumbel_max_sampler_never_leaves_the_nucleus():
    logits = torch.tensor([1.0, 3.0, 0.0, 2.5, -1.0, 2.0])
    probs = torch.softmax(logits.double(), -1)  # sorted: 3.0 (.46), 2.5 (.28), 2.0 (.17), 1.0 (.06), ...
    freq = _draws(logits, 1.0, 0.8)
    nucleus = [1, 3, 5]  # the fewest most likely tokens whose probabilities reach 0.8
    assert probs[nucleus].sum() >= 0.8 > probs[[1, 3]].sum()
    outside = [t for t in range(6) if t not in nucleus]
    assert freq[outside].sum() == 0
    expected = probs[nucleus] / probs[nucleus].sum()
    assert (freq[nucleus] - expected).abs().max() < 0.012


@pytest.mark.parametrize("top_p,batch_sizes", [(0.9, (1, 7)), (1.0, (7,))])
def test_sampled_texts_do_not_depend_on_batch_size_or_order(arithmetic, top_p, batch_sizes):
    import random

    sampling = Sampling(temperature=1.0, top_p=top_p, max_new_tokens=24)
    requests = _sampling_requests(arithmetic, sampling)
    assert len(requests) == 24
    engine = HFEngine(batch_size=128)
    texts = [g.text for g in engine.generate(requests, seed=4)]
    for batch_size in batch_sizes:  # batch_size is read per call: one engine serves every size
        engine.batch_size = batch_size
        assert [g.text for g in engine.generate(requests, seed=4)] == texts, batch_size
    order = list(range(len(requests)))
    random.Random(1).shuffle(order)
    shuffled = [requests[i] for i in order]
    again = [g.text for g in engine.generate(shuffled, seed=4)]
    assert _texts_by_request(shuffled, again) == _texts_by_request(requests, texts)
    # a request alone gets the text it got among the others (the first copy of a duplicate: occurrence 0)
    assert engine.generate([requests[5]], seed=4)[0].text == texts[5]
    assert engine.generate([requests[0]], seed=4)[0].text == texts[0]
    assert len({texts[0], texts[20], texts[23]}) > 1  # copies in one call draw different samples
    # ignore_eos still generates exactly max_new_tokens when sampling
    exact = Sampling(temperature=1.0, top_p=top_p, max_new_tokens=12, ignore_eos=True)
    problem = arithmetic.splits(0, 1, seed=2).test[0]
    assert engine.generate([ask(arithmetic, problem, sampling=exact)])[0].completion_tokens == 12


def test_copies_of_a_request_sample_different_texts(engine, arithmetic):
    problem = arithmetic.splits(0, 1, seed=5).test[0]
    copies = [ask(arithmetic, problem, sampling=Sampling(temperature=1.0, top_p=0.9, max_new_tokens=32))] * 5
    texts = [g.text for g in engine.generate(copies, seed=2)]
    assert len(set(texts)) > 1
    assert texts[:3] == [g.text for g in engine.generate(copies[:3], seed=2)]  # copy k keeps its text
    assert texts != [g.text for g in engine.generate(copies, seed=3)]  # another call seed, other samples


def test_sampled_mixed_adapter_batches_do_not_depend_on_batch_size_or_order(adapters, arithmetic):
    """Unmerged adapters: rows for different adapters share a batch (PEFT's adapter_names)."""
    import random

    engine = HFEngine(batch_size=16, merge_adapters=False)
    for name, path in adapters.items():
        engine.load_agent(name, path)
    sampling = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=24)
    requests = _sampling_requests(arithmetic, sampling, n=4, adapters=(None, "gen_0", "critic_0"))
    texts = [g.text for g in engine.generate(requests, seed=8)]
    engine.batch_size = 3
    assert [g.text for g in engine.generate(requests, seed=8)] == texts
    order = list(range(len(requests)))
    random.Random(2).shuffle(order)
    shuffled = [requests[i] for i in order]
    again = [g.text for g in engine.generate(shuffled, seed=8)]
    assert _texts_by_request(shuffled, again) == _texts_by_request(requests, texts)
