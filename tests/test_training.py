"""One role's finetuning through real TRL SFT: LoRA (fresh or continued), full weights, and no data."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from maft.config import TrainConfig
from maft.engines import Request, Sampling
from maft.engines.hf import HFEngine
from maft.tiny import default_checkpoint
from maft.training.sft import finetune

pytestmark = pytest.mark.slow
FAST = TrainConfig(epochs=1, batch_size=8)


@pytest.fixture(scope="module")
def examples(solved_examples):
    return solved_examples(16)


def lora_b(path):
    return {k: v for k, v in load_file(str(path / "adapter_model.safetensors")).items() if "lora_B" in k}


@pytest.fixture(scope="module")
def trained(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "gen_0"
    return out, finetune(str(default_checkpoint()), examples, out, FAST, seed=1)


def test_lora_training_saves_a_trained_adapter(trained):
    out, result = trained
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert result.examples == 16 and result.steps == 2 and result.init == "base"
    assert result.train_loss is not None and 0 < result.train_loss < 5
    assert any(v.abs().sum() > 0 for v in lora_b(out).values())  # B starts at zero; training moved it


def test_training_continues_from_a_previous_adapter(trained, examples, tmp_path):
    previous, _ = trained
    result = finetune(str(default_checkpoint()), examples[:8], tmp_path / "next", FAST, init_from=previous, seed=2)
    assert result.init == str(previous) and result.steps == 1
    before, after = lora_b(previous), lora_b(tmp_path / "next")
    assert before.keys() == after.keys()
    assert any(not before[k].equal(after[k]) for k in before)


def test_no_examples_keeps_the_starting_weights(tmp_path, arithmetic):
    result = finetune(str(default_checkpoint()), [], tmp_path / "empty", FAST)
    assert result.examples == 0 and result.steps == 0 and result.train_loss is None
    assert all(v.abs().sum() == 0 for v in lora_b(tmp_path / "empty").values())
    engine = HFEngine(merge_adapters=False)
    engine.load_agent("gen_0", tmp_path / "empty")
    problems = arithmetic.splits(0, 4, seed=2).test
    greedy = Sampling(temperature=0, max_new_tokens=96)
    ask = [Request([{"role": "user", "content": arithmetic.prompt(p)}], sampling=greedy) for p in problems]
    as_agent = [Request(r.messages, adapter="gen_0", sampling=greedy) for r in ask]
    assert [g.text for g in engine.generate(ask)] == [g.text for g in engine.generate(as_agent)]


def test_a_fresh_adapter_without_examples_is_seeded_by_its_role(tmp_path):
    """Its lora_A (random; lora_B is zero) is what the next iteration trains on from (train.init=previous): it must
    follow the role's seed, not whatever the global generator's state was (a resumed run, or another order)."""
    import torch

    def lora_a(out):
        return {k: v for k, v in load_file(str(out / "adapter_model.safetensors")).items() if "lora_A" in k}

    for state, name in [(1, "a"), (2, "b")]:
        torch.manual_seed(state)
        finetune(str(default_checkpoint()), [], tmp_path / name, FAST, seed=7)
    finetune(str(default_checkpoint()), [], tmp_path / "other", FAST, seed=8)
    a, b, other = lora_a(tmp_path / "a"), lora_a(tmp_path / "b"), lora_a(tmp_path / "other")
    assert a and a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    assert any(not a[k].equal(other[k]) for k in a)


def test_a_full_role_without_examples_saves_its_starting_weights_exactly(tmp_path):
    """Not rounded to the training dtype: the shipped fp32 weights come back bit for bit under train.bf16=true."""
    cfg = FAST.model_copy(update={"method": "full", "bf16": True})
    result = finetune(str(default_checkpoint()), [], tmp_path / "empty", cfg)
    assert result.examples == 0 and result.method == "full"
    base = load_file(str(default_checkpoint() / "model.safetensors"))
    saved = load_file(str(tmp_path / "empty" / "model.safetensors"))
    assert saved.keys() == base.keys()
    assert all(saved[k].dtype == base[k].dtype and saved[k].equal(base[k]) for k in base)
    assert (tmp_path / "empty" / "tokenizer.json").is_file()


def test_lora_cannot_continue_from_a_full_checkpoint(examples, tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        finetune(str(default_checkpoint()), examples, tmp_path / "x", FAST, init_from=default_checkpoint())


def test_full_finetuning_saves_a_checkpoint_the_engine_serves(examples, tmp_path, arithmetic):
    out = tmp_path / "critic_0"
    result = finetune(str(default_checkpoint()), examples, out, FAST.model_copy(update={"method": "full"}), seed=1)
    assert result.method == "full" and result.steps == 2
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    base = load_file(str(default_checkpoint() / "model.safetensors"))
    tuned = load_file(str(out / "model.safetensors"))
    assert any(not base[k].equal(tuned[k]) for k in base if k in tuned)
    engine = HFEngine()
    engine.load_agent("critic_0", out)
    assert "critic_0" in engine.full_models
    problem = arithmetic.splits(0, 1, seed=2).test[0]
    reply = engine.generate([Request([{"role": "user", "content": arithmetic.prompt(problem)}], adapter="critic_0")])
    assert reply[0].completion_tokens > 0


def test_a_right_padding_mask_is_dropped_with_the_same_loss_and_gradients():
    import torch
    from transformers import AutoModelForCausalLM

    from maft.training.sft import attend_causally

    torch.manual_seed(0)
    lengths = [12, 7, 3, 12]
    ids = torch.zeros((4, 12), dtype=torch.long)  # right padding, as TRL's collator pads
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n], mask[row, :n] = torch.randint(3, 400, (n,)), 1
    labels = ids.masked_fill(mask == 0, -100)

    def run(causal: bool, attention_mask):
        model = AutoModelForCausalLM.from_pretrained(str(default_checkpoint()), dtype=torch.float32)
        if causal:
            attend_causally(model)
        seen = []
        model.get_decoder().register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
        )
        loss = model(input_ids=ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        return loss, {n: p.grad for n, p in model.named_parameters()}, seen[0]

    masked, masked_grads, passed = run(False, mask)
    assert passed is mask
    causal, causal_grads, dropped = run(True, mask)
    assert dropped is None  # attention ran without a mask
    assert torch.allclose(causal, masked, atol=1e-6)
    for name, grad in masked_grads.items():
        torch.testing.assert_close(causal_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)

    left = mask.flip(1)  # left padding (or any other form): the mask is the model's to apply, and stays
    _, _, kept = run(True, left)
    assert kept is left


def test_both_training_paths_drop_the_right_padding_mask(examples, tmp_path):
    from maft.training.concurrent import RoleRun, load_together
    from maft.training.sft import _drop_right_padding_mask, sft_trainer

    def hooked(model) -> bool:
        return _drop_right_padding_mask in model.get_base_model().get_decoder()._forward_pre_hooks.values()

    one = sft_trainer(str(default_checkpoint()), examples, tmp_path / "one", FAST, device="cpu")
    assert hooked(one.model)  # the trainer's PeftModel still reaches the hook on its decoder
    together = load_together(str(default_checkpoint()), [RoleRun("gen_0", examples, tmp_path / "two")], FAST)
    assert hooked(together)
