"""Training precision (maft.training.precision): train.bf16=auto resolved per device, and attention kept in fp32
for bf16 training on a CPU, with the model's masks intact."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from maft.config import TrainConfig, load_config
from maft.tiny import default_checkpoint
from maft.training.precision import FP32_SDPA, attention_in_fp32, bf16_for, native_bf16, resolve_bf16


def test_auto_is_the_default_and_resolves_to_what_the_device_computes_natively():
    assert TrainConfig().bf16 == "auto" and load_config(None, []).train.bf16 == "auto"
    assert load_config(None, ["train.bf16=false"]).train.bf16 is False
    assert resolve_bf16(TrainConfig(), "cpu").bf16 is native_bf16("cpu")
    assert bf16_for(TrainConfig(), "cpu") is native_bf16("cpu")
    assert bf16_for(TrainConfig(bf16=False), "cpu") is False and bf16_for(TrainConfig(bf16=True), "cpu") is True
    assert native_bf16("mps") is False
    # full finetuning keeps fp32 weights under auto: maft keeps no fp32 master copy (maft.training.precision)
    assert bf16_for(TrainConfig(method="full"), "cpu") is False
    assert resolve_bf16(TrainConfig(method="full"), "cpu").bf16 is False
    assert bf16_for(TrainConfig(method="full", bf16=True), "cpu") is True
    if not torch.cuda.is_available():
        assert native_bf16("auto") is native_bf16("cpu")  # auto: where the trainer runs, the CPU here


def test_an_unresolved_auto_is_never_taken_for_a_dtype():
    from maft.training.sft import _dtype

    with pytest.raises(ValueError, match="resolved"):
        _dtype(TrainConfig())
    assert _dtype(TrainConfig(bf16=False)) is torch.float32 and _dtype(TrainConfig(bf16=True)) is torch.bfloat16


def test_fp32_attention_keeps_the_padding_masks():
    """In bf16 with attention in fp32, each row of a left- and right-padded batch gets the logits it gets alone,
    within bf16 rounding of the fp32 model's, as with bf16 attention (a mask lost shifts the left-padded row's
    logits by their whole scale, about 15)."""
    torch.manual_seed(0)
    rows = [torch.randint(3, 400, (n,)).tolist() for n in (9, 5, 7)]
    ids = torch.zeros((3, 9), dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = torch.tensor(rows[0]), 1
    ids[1, :5], mask[1, :5] = torch.tensor(rows[1]), 1  # right padding
    ids[2, 2:], mask[2, 2:] = torch.tensor(rows[2]), 1  # left padding

    def logits(model, batch, attention_mask=None):
        with torch.no_grad():
            return model(input_ids=batch, attention_mask=attention_mask).logits.float()

    fp32 = AutoModelForCausalLM.from_pretrained(str(default_checkpoint()), dtype=torch.float32)
    bf16 = AutoModelForCausalLM.from_pretrained(str(default_checkpoint()), dtype=torch.bfloat16)
    reference = logits(fp32, ids, mask)
    plain = logits(bf16, ids, mask)
    assert attention_in_fp32(bf16) and bf16.config._attn_implementation == FP32_SDPA
    assert not attention_in_fp32(bf16)  # only SDPA is switched (now it is the fp32 one)
    switched = logits(bf16, ids, mask)
    real = mask.bool()
    assert (switched - reference)[real].abs().max() < 0.5  # bf16 rounding of logits of about 15
    assert (plain - reference)[real].abs().max() < 0.5
    for row, (tokens, where) in enumerate(zip(rows, [slice(0, 9), slice(0, 5), slice(2, 9)], strict=True)):
        alone = logits(bf16, torch.tensor([tokens]))[0]
        torch.testing.assert_close(switched[row, where], alone, atol=0.1, rtol=0.02)


@pytest.mark.slow
@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16: auto trains in fp32 here")
def test_both_training_paths_train_in_bf16_with_fp32_attention_on_this_cpu(solved_examples, tmp_path):
    """auto on a CPU with native bf16: the one-by-one trainer and the concurrent job load the base in bf16 and
    switch its attention to fp32; bf16=false keeps fp32 and transformers' SDPA."""
    from maft.training.concurrent import RoleRun, finetune_together, load_together
    from maft.training.sft import sft_trainer

    examples = solved_examples(8)
    base = str(default_checkpoint())
    cfg = TrainConfig(epochs=1, batch_size=4)
    one = sft_trainer(base, examples, tmp_path / "one", cfg, device="cpu")
    model = one.model.get_base_model()
    assert one.args.bf16 and model.dtype == torch.bfloat16 and model.config._attn_implementation == FP32_SDPA
    together = load_together(base, [RoleRun("gen_0", examples, tmp_path / "two")], resolve_bf16(cfg, "cpu"), "cpu")
    assert together.get_base_model().config._attn_implementation == FP32_SDPA
    fp32 = sft_trainer(base, examples, tmp_path / "three", TrainConfig(bf16=False), device="cpu")
    assert not fp32.args.bf16 and fp32.model.get_base_model().config._attn_implementation == "sdpa"
    result = finetune_together(base, [RoleRun("gen_0", examples, tmp_path / "four")], cfg, device="cpu")["gen_0"]
    assert result.bf16 is True and result.steps == 2


def test_the_loop_says_what_auto_chose_and_warns_where_earlier_roles_trained_otherwise(tmp_path):
    """Said once, even with every execution setting fixed; a resumed run whose earlier roles recorded the other
    precision (maft_train.json, e.g. trained on another machine) gets a warning, since the config keeps auto."""
    import io
    import json

    from rich.console import Console

    from maft.loop import Society
    from maft.store import RunStore

    overrides = ["execution.concurrent_training=true", "execution.activation_checkpointing=false"]
    store = RunStore.create(tmp_path / "run", load_config(None, overrides))
    out = io.StringIO()
    society = Society(store, console=Console(file=out, width=200), progress=False)
    society._training_plan()
    society._training_plan()
    now = bf16_for(store.config.train, "auto")
    said = out.getvalue()
    assert said.count("(train.bf16 auto)") == 1 and ("bf16 mixed precision" in said) is now
    assert "differ in precision" not in said
    agent = store.root / "iter_1" / "agents" / "gen_0"
    agent.mkdir(parents=True)
    (agent / "maft_train.json").write_text(json.dumps({"bf16": not now}))
    again = io.StringIO()
    Society(RunStore.open(store.root), console=Console(file=again, width=200), progress=False)._training_plan()
    assert "differ in precision" in again.getvalue()
