import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from maft.engines import Request, Sampling
from maft.engines.hf import HFEngine
from maft.tiny import default_checkpoint

GREEDY = Sampling(temperature=0, max_new_tokens=96)


def ask(task, problem, adapter=None, sampling=GREEDY):
    return Request([{"role": "user", "content": task.prompt(problem)}], adapter=adapter, sampling=sampling)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two real LoRA adapters with different random weights on the shipped model."""
    paths = {}
    for name, seed in [("gen_0", 1), ("critic_0", 2)]:
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(default_checkpoint()),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False),
        )
        torch.manual_seed(seed)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.3)
        paths[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(paths[name])
    return paths


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
    import shutil
    import json

    copy = tmp_path / "plain"
    shutil.copytree(recipe_checkpoint, copy)
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template"):
        HFEngine(copy)


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
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_checkpoint()), str(adapters["gen_0"])).eval()
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
