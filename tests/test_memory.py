"""The memory estimate of a finetuning job (maft.training.memory) and the checks built on it: a plan that cannot
fit is refused before any compute with the fixes that would fit; QLoRA (train.quantization=4bit) is validated and
refused where bitsandbytes cannot run. Model shapes are built on the meta device: no weights, no downloads."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

from maft.bench import SHAPES
from maft.checks import SetupError, check_memory, check_quantization
from maft.config import ConfigError, RunConfig, TrainConfig, load_config
from maft.data.agent_data import Example
from maft.loop import prepare
from maft.tiny import default_checkpoint
from maft.training.memory import (
    NF4_BYTES,
    DeviceMemory,
    ModelCounts,
    activation_checkpointing,
    can_train_together,
    cannot_train_together,
    device_memory,
    estimate,
    refusal,
    roles_per_job,
    trains_together,
    with_concurrency,
)
from maft.training.sft import quantization_config, sft_trainer

GB = 10**9
#: Llama 3 8B: bench.py's shape with its real vocabulary, a bf16 checkpoint.
LLAMA_8B = LlamaConfig(**SHAPES["llama-8b"], vocab_size=128256, dtype="bfloat16")
#: Llama 3 70B's shape: more than a terabyte to finetune fully, on any machine.
LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "dtype": "bfloat16",
}
BNB_CUDA = importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()


@pytest.fixture(scope="module")
def llama8b() -> ModelCounts:
    return ModelCounts.of(LLAMA_8B)


def test_llama_8b_counts_are_the_published_ones(llama8b):
    assert llama8b.parameters == 8_030_261_248  # Llama 3 8B
    assert llama8b.quantizable == 8_030_261_248 - 2 * 128256 * 4096 - (2 * 32 + 1) * 4096  # no embeddings, norms
    assert llama8b.lora_parameters(8, "all-linear") == 20_971_520  # PEFT's count for r=8 on every linear layer
    assert llama8b.config_dtype == "bfloat16"


def test_full_finetuning_is_16_bytes_per_parameter_in_fp32_and_8_in_bf16(llama8b):
    P = llama8b.parameters
    fp32 = estimate(TrainConfig(method="full", bf16=False), llama8b)
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (4 * P, 4 * P, 8 * P)  # 128 GB of states
    assert fp32.weights + fp32.gradients + fp32.optimizer == 16 * P
    bf16 = estimate(TrainConfig(method="full", bf16=True), llama8b)
    assert bf16.weights + bf16.gradients + bf16.optimizer == 8 * P  # no fp32 master copy (see the real trainer)
    # activations: b*s*((L*h + A + h)*d + 16) with checkpointing, A = 6h + 2kv + 4i; no b*s*V logits (TRL's fused head)
    A = 6 * 4096 + 2 * 1024 + 4 * 14336
    assert fp32.gradient_checkpointing  # TRL's default: the figure a refusal uses
    assert fp32.activations == 16 * 1024 * ((32 * 4096 + A + 4096) * 4 + 16)
    assert 16 * P < fp32.total < 16 * P + 20 * GB
    print(f"\nfull fp32: {fp32.total / GB:.0f} GB ({fp32.breakdown()})")


def test_lora_and_qlora_keep_the_base_frozen_and_train_adapters(llama8b):
    P, T = llama8b.parameters, 20_971_520
    lora = estimate(TrainConfig(bf16=True), llama8b)
    assert lora.trainable == T
    assert (lora.weights, lora.gradients, lora.optimizer) == (2 * P + 4 * T, 4 * T, 8 * T)  # fp32 adapters
    qlora = estimate(TrainConfig(bf16=True, quantization="4bit"), llama8b)
    base = math.ceil(llama8b.quantizable * NF4_BYTES) + 4 * (P - llama8b.quantizable)  # NF4 + fp32 rest
    assert (qlora.weights, qlora.gradients, qlora.optimizer) == (base + 2 * T, 2 * T, 4 * T)  # bf16 adapters
    assert 7 * GB < qlora.weights < 9 * GB < 16 * GB < lora.weights  # an 8B base fits one 24 GB GPU in 4 bits
    assert qlora.activations == lora.activations
    print(f"\nlora bf16: {lora.total / GB:.0f} GB; qlora: {qlora.total / GB:.0f} GB ({qlora.breakdown()})")


def test_activations_grow_with_the_batch_and_shrink_with_checkpointing(llama8b):
    one = estimate(TrainConfig(batch_size=1), llama8b)
    assert estimate(TrainConfig(batch_size=8), llama8b).activations == 8 * one.activations
    assert estimate(TrainConfig(batch_size=1), llama8b, gradient_checkpointing=False).activations > one.activations
    sharded = estimate(TrainConfig(method="full"), llama8b, shards=4)
    assert sharded.optimizer * 4 == estimate(TrainConfig(method="full"), llama8b).optimizer


def test_lora_targets_are_matched_as_peft_matches_them():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    counts = ModelCounts.of(str(default_checkpoint()))
    for targets in ("all-linear", ["q_proj", "v_proj"], ["self_attn.o_proj"], r".*\.mlp\.(gate|up)_proj"):
        model = AutoModelForCausalLM.from_pretrained(str(default_checkpoint()))
        peft = get_peft_model(model, LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
        trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
        assert counts.lora_parameters(4, targets) == trainable, targets


def _examples(n: int = 4) -> list[Example]:
    return [
        Example(
            prompt=[{"role": "user", "content": f"{i} + {i} ="}],
            completion=[{"role": "assistant", "content": str(2 * i)}],
            problem_id=str(i),
            agent=0,
            kind="generation",
        )
        for i in range(n)
    ]


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [{"method": "full", "bf16": False}, {"method": "full", "bf16": True}, {"bf16": False}, {"bf16": True}],
)
def test_the_accounting_is_what_a_real_trainer_holds(settings, tmp_path):
    """Weights, gradients (one per trainable value) and AdamW's states of the tiny model after a real TRL step."""
    cfg = TrainConfig(epochs=1, batch_size=4, **settings)
    trainer = sft_trainer(str(default_checkpoint()), _examples(), tmp_path, cfg, device="cpu")
    trainer.train()
    need = estimate(cfg, str(default_checkpoint()))
    model = trainer.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    states = [v for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert _nbytes(model.parameters()) == need.weights
    assert _nbytes(trainable) == need.gradients
    assert _nbytes(states) == need.optimizer
    assert sum(p.numel() for p in trainable) == need.trainable
    assert trainer.args.gradient_checkpointing is need.gradient_checkpointing


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_the_activations_are_a_floor_of_what_a_real_step_keeps_whatever_the_vocabulary(bf16, tmp_path):
    """The tensors one TRL training step saves for its backward pass (no checkpointing), counted by storage and
    not the weights, on a small Llama with a 32,000-token vocabulary: TRL's fused LM head keeps no logits, so the
    estimate per token must not grow with the vocabulary (it did: 392 KB per token against about 9 KB kept), and
    it stays a floor (at least 90% of what fp32 keeps; bf16 on a CPU also keeps fp32 attention copies)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    shape = LlamaConfig(
        vocab_size=32_000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(shape).save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(default_checkpoint()).save_pretrained(tmp_path / "model")
    cfg = TrainConfig(epochs=1, batch_size=4, bf16=bf16)
    trainer = sft_trainer(
        str(tmp_path / "model"), _examples(), tmp_path, cfg, device="cpu", activation_checkpointing=False
    )
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    weights = {p.data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        if tensor.data_ptr() not in weights:
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainer.compute_loss(model, batch)
    loss.backward()
    rows, length = batch["input_ids"].shape
    need = estimate(
        cfg.model_copy(update={"batch_size": rows, "max_length": length}),
        str(tmp_path / "model"),
        gradient_checkpointing=False,
    )
    measured = sum(kept.values())
    assert need.activations <= measured, (need.activations, measured)
    if not bf16:
        assert need.activations >= 0.9 * measured, (need.activations, measured)


def _fixes(message: str) -> list[list[str]]:
    """The settings of each fix a refusal offers (``use A (about ...), or B (about ...)``)."""
    offered = message.split(": use ", 1)[1]
    return [part.split() for part in re.findall(r"((?:train\.\S+=\S+ ?)+) \(about", offered)]


def test_an_impossible_plan_is_refused_with_the_fixes_that_fit(llama8b):
    gpu = DeviceMemory(80 * GB, "cuda", "this GPU (cuda:0) has 80 GB free")
    config = load_config(None, ["train.method=full"])
    with pytest.raises(SetupError) as refused:
        check_memory(config, llama8b, gpu)
    message = str(refused.value)
    print("\n" + message)
    assert message.startswith("train.method=full on a model of 8.0B parameters needs about 143 GB per finetuning job")
    assert "(weights 32 GB, gradients 32 GB, optimizer 64 GB, activations 14 GB at batch 16 x 1024 tokens)" in message
    # the engine (model.engine=hf) beside the jobs: from iteration 2, the 6 fully finetuned agents too (bf16)
    assert "the generation engine (model.engine=hf) keeps the base model and 6 finetuned agents (112 GB)" in message
    assert (
        "this GPU (cuda:0) has 80 GB free: use train.method=lora (about 63 GB in all), or train.method=lora "
        "train.quantization=4bit (about 39 GB in all)"
    ) in message
    # with more memory, more fixes fit; each one offered does fit
    config = load_config(None, ["train.method=full", "iterations=1"])  # the engine holds the base model only
    for free, expected in [(60, 1), (80, 2), (125, 3)]:  # 10% spare (HEADROOM)
        gpu = DeviceMemory(free * GB, "cuda", f"this GPU has {free} GB free")
        with pytest.raises(SetupError) as refused:
            check_memory(config, llama8b, gpu)
        fixes = _fixes(str(refused.value))
        assert len(fixes) == expected, str(refused.value)
        for fix in fixes:
            check_memory(load_config(None, ["train.method=full", "iterations=1", *fix]), llama8b, gpu)
    assert any(fix == ["train.method=lora"] for fix in fixes) and ["train.bf16=true"] in fixes
    # where the activations are what does not fit (long sequences, a wide batch): a smaller batch, accumulated
    long = ["train.batch_size=64", "train.max_length=4096", "iterations=1"]
    gpu = DeviceMemory(80 * GB, "cuda", "this GPU has 80 GB free")
    with pytest.raises(SetupError, match="activations 230 GB at batch 64 x 4096 tokens") as refused:
        check_memory(load_config(None, long), llama8b, gpu)
    fixes = _fixes(str(refused.value))
    assert ["train.batch_size=4", "train.gradient_accumulation_steps=16"] in fixes  # the same effective batch
    for fix in fixes:
        check_memory(load_config(None, [*long, *fix]), llama8b, gpu)


def test_on_the_cpu_no_gpu_fix_is_offered_and_nothing_fitting_says_so(llama8b):
    ram = DeviceMemory(64 * GB, "cpu", "this machine has 64 GB of RAM available")
    with pytest.raises(SetupError) as refused:
        check_memory(load_config(None, ["train.method=full", "train.bf16=false"]), llama8b, ram)
    message = str(refused.value)
    assert "quantization" not in message and "bf16" not in message
    assert "use train.method=lora train.batch_size=1 train.gradient_accumulation_steps=16 together" in message
    small = DeviceMemory(8 * GB, "cpu", "this machine has 8 GB of RAM available")
    with pytest.raises(SetupError, match=r"even train.method=lora .* would need about 49 GB in all: use a smaller"):
        check_memory(load_config(None, ["train.method=full", "train.bf16=false"]), llama8b, small)


def test_the_embedded_model_s_default_run_fits_here():
    memory = device_memory(RunConfig())
    assert memory is not None and memory.free > 0
    check_memory(RunConfig(), str(default_checkpoint()))  # about 0.2 GB
    assert estimate(RunConfig().train, str(default_checkpoint())).total < GB


def test_activation_checkpointing_is_automatic_only_where_memory_needs_it(llama8b):
    """None (the default) recomputes activations only where a job would not fit without them; set, it is obeyed."""
    config = load_config(None, ["iterations=1"])  # LoRA, one job at a time
    without = estimate(config.train, llama8b, gradient_checkpointing=False).total
    with_it = estimate(config.train, llama8b, gradient_checkpointing=True).total
    assert with_it < without  # activations of 16 x 1024 tokens: what recomputing saves

    def gpu(need: int) -> DeviceMemory:  # free memory (measured with the engine's share taken) leaving 10% spare
        return DeviceMemory(math.ceil(need / 0.9) + 1, "cuda", "a GPU")

    assert activation_checkpointing(config, llama8b, gpu(without)) is False  # fits without: not recomputed
    assert activation_checkpointing(config, llama8b, gpu(with_it)) is True  # fits only with it
    assert activation_checkpointing(config, llama8b, None) is True  # unknown memory (a Ray cluster): on
    for chosen in (True, False):
        set_ = load_config(None, ["iterations=1", f"execution.activation_checkpointing={str(chosen).lower()}"])
        assert activation_checkpointing(set_, llama8b, gpu(with_it)) is chosen
        assert activation_checkpointing(set_, llama8b, gpu(without)) is chosen
    # several jobs or processes on one device's memory: the per-job estimate says nothing of their sum, so on
    ram = DeviceMemory(math.ceil(without / 0.9) + 1, "cpu", "RAM")
    assert activation_checkpointing(config, llama8b, ram) is False
    for shared in (
        ["execution.processes_per_job=2", "train.gradient_accumulation_steps=2"],
        ["execution.scheduler=ray"],
    ):
        assert activation_checkpointing(load_config(None, ["iterations=1", *shared]), llama8b, ram) is True
    fraction = load_config(None, ["iterations=1", "execution.scheduler=ray", "execution.gpus_per_job=0.5"])
    assert activation_checkpointing(fraction, llama8b, gpu(without)) is True
    whole = load_config(None, ["iterations=1", "execution.scheduler=ray", "execution.gpus_per_job=1"])
    assert activation_checkpointing(whole, llama8b, gpu(without)) is False
    # the embedded model on this machine's RAM: off
    tiny = ModelCounts.of(str(default_checkpoint()))
    assert activation_checkpointing(RunConfig(), tiny, device_memory(RunConfig())) is False


def test_a_huge_batch_is_refused_through_the_cli_before_a_run_directory_exists(tmp_path):
    root = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maft.cli",
            "run",
            "--out",
            str(root),
            "--set",
            "train.batch_size=100000",
            "--set",
            "train.bf16=false",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "train.method=lora on a model of 483,360 parameters needs about 932 GB per finetuning job" in output
    assert re.search(r"use train.batch_size=\d+\s+train.gradient_accumulation_steps=\d+", output), output
    assert "Traceback" not in output and not root.exists()


def test_prepare_refuses_full_finetuning_of_a_70b_shape(tmp_path):
    model = tmp_path / "llama-70b"  # a config, a tokenizer and an empty weights file: the memory check refuses it
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_70B))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(default_checkpoint() / name, model / name)
    save_file({}, str(model / "model.safetensors"))
    with pytest.raises(SetupError, match=r"train.method=full on a model of 70.6B parameters needs about 1.\d TB"):
        prepare(load_config(None, [f"model.name={model}", "train.method=full", "train.bf16=false"]))


def test_qlora_needs_lora_and_changes_the_hash():
    with pytest.raises(ConfigError, match="train.quantization=4bit .* needs train.method=lora"):
        load_config(None, ["train.method=full", "train.quantization=4bit"])
    qlora = load_config(None, ["train.quantization=4bit"])
    assert qlora.hash() != RunConfig().hash()


@pytest.mark.skipif(BNB_CUDA, reason="bitsandbytes and CUDA are here: 4-bit can run")
def test_qlora_is_refused_where_bitsandbytes_cannot_run():
    config = load_config(None, ["train.quantization=4bit"])
    message = "train.quantization=4bit needs bitsandbytes and a CUDA GPU .*: pip install bitsandbytes on a machine"
    with pytest.raises(SetupError, match=message + r" with CUDA, or use train.quantization=none"):
        check_quantization(config)
    with pytest.raises(SetupError, match=message):
        prepare(config)
    prepare(load_config(None, ["train.quantization=4bit", "iterations=0"]))  # no finetuning: not checked


def test_the_4bit_config_is_qlora_s():
    assert quantization_config(TrainConfig()) is None
    bnb = quantization_config(TrainConfig(quantization="4bit"))
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_compute_dtype == torch.bfloat16


def test_a_full_finetune_too_big_for_one_gpu_is_offered_fsdp_over_several(llama8b):
    """The paper's setting: a full finetune of an 8B model, which no single 80 GB GPU holds, fits sharded over
    GPUs (FSDP): the refusal offers the fewest GPUs that hold it, with the effective batch spread over them, and
    that plan passes the check."""
    gpu = DeviceMemory(80 * GB, "cuda", "this GPU has 80 GB free")
    plan = ["train.method=full", "train.bf16=false", "model.engine=openai", "iterations=1"]  # batch 16, 142 GB
    plan += ["model.server_kind=transformers"]
    plan += ["execution.urls=[http://127.0.0.1:1/v1]"]
    with pytest.raises(SetupError) as refused:
        check_memory(load_config(None, plan), llama8b, gpu)
    message = str(refused.value)
    fsdp = re.search(
        r"use execution\.gpus_per_job=(\d+) ((?:train\.\S+=\S+ ?)*)\(FSDP over \1 GPUs: about ([\d.]+) GB", message
    )
    assert fsdp, message
    gpus, fix, per_gpu = int(fsdp[1]), fsdp[2].split(), float(fsdp[3])
    assert gpus == 2 and fix == ["train.batch_size=8", "train.gradient_accumulation_steps=2"]
    assert per_gpu <= 80 * 0.9
    sharded = load_config(None, [*plan, f"execution.gpus_per_job={gpus}", *fix])
    assert sharded.execution.job_processes == 2
    check_memory(sharded, llama8b, gpu)  # fits
    with pytest.raises(SetupError, match="per GPU of a finetuning job sharded over 2"):  # but not on a small GPU
        check_memory(sharded, llama8b, DeviceMemory(24 * GB, "cuda", "this GPU has 24 GB free"))
    cpu = DeviceMemory(64 * GB, "cpu", "this machine has 64 GB of RAM available")  # shards add up in one RAM
    with pytest.raises(SetupError) as refused:
        check_memory(sharded, llama8b, cpu)
    assert "gpus_per_job" not in str(refused.value) and "per finetuning job" in str(refused.value)


def test_adapters_trained_together_are_counted_together(llama8b):
    """execution.concurrent_training: one job holds the base once, but every role's adapter, gradients and
    optimizer states, and (at worst) all the roles' mini-batches in one forward."""
    cfg = load_config(None, [])
    one = estimate(cfg.train, llama8b)
    six = estimate(cfg.train, llama8b, roles=6)
    base = llama8b.parameters * 4  # fp32
    assert six.weights - base == 6 * (one.weights - base)
    assert (six.gradients, six.optimizer, six.activations) == (
        6 * one.gradients,
        6 * one.optimizer,
        6 * one.activations,
    )
    assert six.batch == 6 * one.batch and "6 adapters trained together" in six.plan
    gpu = DeviceMemory(80 * GB, "cuda", "this GPU has 80 GB free")
    plan = ["model.engine=openai", "execution.urls=[http://127.0.0.1:1/v1]", "train.bf16=true", "train.max_length=4096"]
    check_memory(load_config(None, plan), llama8b, gpu)  # one adapter at a time fits (about 45 GB)
    with pytest.raises(SetupError, match="with 6 adapters trained together"):
        check_memory(load_config(None, [*plan, "execution.concurrent_training=true"]), llama8b, gpu)


def test_concurrent_training_left_at_none_trains_together_only_where_it_can_and_fits(llama8b):
    """execution.concurrent_training None: together on the local scheduler for LoRA on an unquantized base without
    dropout, where the one job of the roles fits; one by one where it would not (checked, not refused), where the
    memory is unknown, or where it cannot run (no error, unlike true); as set otherwise."""
    plan = ["model.engine=openai", "execution.urls=[http://127.0.0.1:1/v1]", "train.bf16=true", "train.batch_size=8"]
    auto = load_config(None, plan)
    assert auto.execution.concurrent_training is None and can_train_together(auto)

    def need(roles: int, checkpointing: bool) -> int:
        return estimate(auto.train, llama8b, gradient_checkpointing=checkpointing, roles=roles).total

    def gpu(need: int) -> DeviceMemory:  # free memory leaving the 10% spare
        return DeviceMemory(math.ceil(need / 0.9) + 1, "cuda", "a GPU")

    assert trains_together(auto, llama8b, gpu(need(6, False))) is True
    assert trains_together(auto, llama8b, DeviceMemory(math.floor(need(6, False) / 0.9) - 1, "cuda", "")) is False
    assert trains_together(auto, llama8b, gpu(need(1, False))) is False
    check_memory(auto, llama8b, gpu(need(1, True)))  # what it falls back to fits: no refusal
    assert trains_together(auto, llama8b, None) is False  # memory unknown: the plan the up-front check validated
    # checkpointing left at None: together with it only where one by one needs it too (2 roles left on resume)
    assert need(2, True) < need(1, False) < need(2, False)
    assert trains_together(auto, llama8b, gpu(need(2, True)), roles=2) is True  # one by one would recompute too
    assert trains_together(auto, llama8b, gpu(need(1, False)), roles=2) is False  # one by one needs no recompute
    assert trains_together(auto, llama8b, gpu(need(6, False)), roles=1) is False  # one role left: alone
    recompute = load_config(None, [*plan, "execution.activation_checkpointing=true"])
    assert trains_together(recompute, llama8b, gpu(need(1, False)), roles=2) is True
    # the in-process engine's weights are already out of the memory measured when training starts: not again
    hf = load_config(None, ["train.bf16=true", "train.batch_size=8"])
    assert trains_together(hf, llama8b, gpu(need(6, False))) is True
    for cannot, why in (
        (["train.lora_dropout=0.05"], "train.lora_dropout=0.05"),
        (["train.method=full", "model.server_kind=transformers"], "train.method=full"),
        (["execution.scheduler=ray"], "scheduler=ray"),  # Ray spreads the jobs over its GPUs instead
        (["execution.processes_per_job=2", "train.gradient_accumulation_steps=2"], "2 processes per job"),
        (["train.shared=true"], "one role"),
    ):
        config = load_config(None, [*plan, *cannot])  # no error: None never asks for what cannot run
        assert why in cannot_train_together(config)
        assert trains_together(config, llama8b, gpu(need(6, False))) is False
    # a base model that applies dropout in training (its masks would be drawn in another order together)
    assert llama8b.dropout == 0 and ModelCounts.of(str(default_checkpoint())).dropout == 0
    llama = LlamaConfig(**{**LLAMA_8B.to_dict(), "attention_dropout": 0.1})
    for shape in (llama, _gpt2({"n_layer": 2, "n_embd": 64, "n_head": 4})):
        dropping = ModelCounts.of(shape)
        assert dropping.dropout == pytest.approx(0.1)  # GPT-2's default resid_pdrop, embd_pdrop, attn_pdrop
        assert "the base model's own dropout (0.1" in cannot_train_together(auto, dropping)
        assert trains_together(auto, dropping, gpu(need(6, False))) is False
    for chosen in (True, False):
        config = load_config(None, [*plan, f"execution.concurrent_training={str(chosen).lower()}"])
        assert trains_together(config, llama8b, gpu(need(1, False))) is chosen
        assert roles_per_job(config) == (6 if chosen else 1)
    assert roles_per_job(auto) == 1 and roles_per_job(with_concurrency(auto, True)) == 6
    # the embedded default run on this machine: together
    tiny = ModelCounts.of(str(default_checkpoint()))
    assert trains_together(RunConfig(), tiny, device_memory(RunConfig())) is True


def _gpt2(shape: dict):
    from transformers import GPT2Config

    return GPT2Config(**shape)


def test_auto_precision_counts_as_fp32_until_the_device_is_known(llama8b):
    """train.bf16=auto resolves where a job trains (a refusal resolves it for the device it checks); an estimate
    without a device counts the larger, fp32."""
    assert estimate(TrainConfig(), llama8b).total == estimate(TrainConfig(bf16=False), llama8b).total
    assert estimate(TrainConfig(), llama8b).total > estimate(TrainConfig(bf16=True), llama8b).total


def test_auto_precision_follows_the_device_the_memory_describes(llama8b):
    """A refusal resolves train.bf16=auto with what the checked device computes natively (DeviceMemory.bf16),
    not with the machine running the check."""
    config = load_config(None, ["model.engine=openai", "execution.urls=[http://127.0.0.1:1/v1]"])

    def ram(bf16: bool) -> DeviceMemory:
        return DeviceMemory(20 * GB, "cpu", "this machine has 20 GB of RAM available", bf16)

    fp32, bf16 = refusal(config, llama8b, ram(False)), refusal(config, llama8b, ram(True))
    assert fp32 is not None and "(weights 32 GB," in fp32 and "would need about 33 GB" in fp32
    assert bf16 is not None and "(weights 16 GB," in bf16 and "use train.batch_size=2" in bf16
    assert "bf16" not in fp32 + bf16  # the precision is the device's, never offered as a fix on a CPU
