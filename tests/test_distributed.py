"""One role trained by several processes (maft.training.distributed), for real: torch's launcher starts two
processes on this CPU, which shard the role with FSDP2 over gloo, the path GPUs take over NCCL
(maft.training.fsdp.allow_fsdp_on_cpu). The weights must match one process accumulating the same mini-batches."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from maft.config import ConfigError, RunConfig, TrainConfig, load_config
from maft.data.agent_data import Example
from maft.store import write_jsonl
from maft.tiny import default_checkpoint
from maft.training.job import TrainJob
from maft.training.scheduler import run_job
from maft.training.sft import finetune, parallelism, sft_config

BASE = str(default_checkpoint())
pytestmark = pytest.mark.slow


def examples(n: int = 16) -> list[Example]:
    """Arithmetic examples of different lengths (so that the processes' token counts differ)."""
    return [
        Example(
            prompt=[{"role": "user", "content": f"What is {i} + {3 * i}?"}],
            completion=[{"role": "assistant", "content": f"{i} + {3 * i} = {4 * i}." * (1 + i % 3) + f" {4 * i}"}],
            problem_id=str(i),
            agent=0,
            kind="generation",
        )
        for i in range(n)
    ]


def weights(path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (path / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(path / name))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize(("method", "checkpointing"), [("full", True), ("lora", True), ("lora", False)])
def test_two_processes_train_what_one_does(tmp_path, method, checkpointing):
    """Two processes with one mini-batch each per step = one process accumulating two: same steps, the same
    mean loss and the same weights within 1e-5, 1% of one AdamW step at this learning rate (FSDP's reduce-scatter
    sums the gradients in another order; the largest difference seen is about 2e-6, the weights move by more
    than 1e-4)."""
    cfg = TrainConfig(
        method=method, batch_size=4, gradient_accumulation_steps=2, epochs=1.0, learning_rate=1e-3, bf16=False
    )
    data = examples()
    write_jsonl(tmp_path / "data.jsonl", data)
    steps: list[tuple[int, int]] = []
    job = TrainJob(
        "agent_0",
        BASE,
        tmp_path / "data.jsonl",
        tmp_path / "two",
        None,
        7,
        "cpu",
        cfg,
        processes=2,
        activation_checkpointing=checkpointing,
    )
    two = run_job(job, on_step=lambda done, total: steps.append((done, total)))
    one = finetune(BASE, data, tmp_path / "one", cfg, seed=7, device="cpu", activation_checkpointing=checkpointing)

    assert (two.examples, two.steps) == (one.examples, one.steps) == (16, 2)
    assert (two.sharded_over, one.sharded_over) == (2, 1)  # FSDP held the two processes' shards
    assert steps == [(1, 2), (2, 2)]  # rank 0's progress reached the caller
    assert two.train_loss == pytest.approx(one.train_loss, rel=1e-5)
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    if method == "full":  # the gathered state dict keeps the tied output layer: a copy of the embeddings
        assert set(a) - set(b) == {"lm_head.weight"}
        assert torch.equal(a.pop("lm_head.weight"), a["model.embed_tokens.weight"])
    assert largest_difference(a, b) <= 1e-5
    if method == "full":
        start = load_file(str(default_checkpoint() / "model.safetensors"))
        assert largest_difference(a, {k: start[k] for k in a}) > 1e-4  # training moved them
        assert (tmp_path / "two" / "config.json").exists() and (tmp_path / "two" / "tokenizer.json").exists()
    else:
        assert json.loads((tmp_path / "two" / "adapter_config.json").read_text())["r"] == cfg.lora_r
        assert max(t.abs().max().item() for k, t in a.items() if "lora_B" in k) > 1e-4  # B starts at zero
    assert not (tmp_path / "two" / "training_args.bin").exists() and not (tmp_path / "two" / ".trainer").exists()


def test_an_epoch_whose_mini_batches_do_not_divide_among_the_processes_trains_what_one_does(tmp_path):
    """18 examples in batches of 4: five mini-batches an epoch, the last of 2, for two processes. accelerate gives
    the process that runs short a repeat of the epoch's first mini-batch (even_batches); its labels are masked, so
    the step sees the examples one process sees, over two epochs (three steps each, the last of one mini-batch)."""
    cfg = TrainConfig(batch_size=4, gradient_accumulation_steps=2, epochs=2.0, learning_rate=1e-3, bf16=False)
    data = examples(18)
    write_jsonl(tmp_path / "data.jsonl", data)
    job = TrainJob("agent_0", BASE, tmp_path / "data.jsonl", tmp_path / "two", None, 7, "cpu", cfg, processes=2)
    two = run_job(job, on_step=lambda done, total: None)
    one = finetune(BASE, data, tmp_path / "one", cfg, seed=7, device="cpu")
    assert (two.examples, two.steps) == (one.examples, one.steps) == (18, 6)
    assert two.train_loss == pytest.approx(one.train_loss, rel=1e-5)
    assert largest_difference(weights(tmp_path / "two"), weights(tmp_path / "one")) <= 1e-5


def test_a_failing_process_fails_the_job_with_its_role(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", examples(4))
    cfg = TrainConfig(batch_size=2, gradient_accumulation_steps=2, epochs=1.0)
    job = TrainJob(
        "critic_1", str(tmp_path / "no-model"), tmp_path / "data.jsonl", tmp_path / "out", None, 0, "cpu", cfg
    )
    with pytest.raises(RuntimeError, match=r"finetuning critic_1 in 2 processes failed \(exit status [1-9]"):
        run_job(TrainJob(**{**job.__dict__, "processes": 2}))


def test_a_role_without_examples_keeps_its_start(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", [])
    cfg = TrainConfig(batch_size=2, gradient_accumulation_steps=2)
    result = run_job(
        TrainJob("agent_1", BASE, tmp_path / "data.jsonl", tmp_path / "out", None, 0, "cpu", cfg, processes=2)
    )
    assert (result.examples, result.steps) == (0, 0)
    assert (tmp_path / "out" / "adapter_config.json").exists()


def test_fsdp_settings(tmp_path):
    """What a GPU launch asks accelerate for (the trainer's arguments cannot be built for several processes
    outside a launch, so the settings are checked as handed over): FSDP2 full sharding per decoder layer,
    activation checkpointing inside FSDP and not in the trainer, a full state dict to save; on a CPU the same
    over gloo."""
    from transformers import TrainingArguments

    gpu = parallelism(2, cpu=False, activation_checkpointing=True)
    assert gpu["fsdp"] == "full_shard auto_wrap" and gpu["activation_checkpointing"] is False
    assert gpu["fsdp_config"] == {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "activation_checkpointing": True,
        "state_dict_type": "FULL_STATE_DICT",
    }
    assert parallelism(2, cpu=False, activation_checkpointing=False)["fsdp_config"]["activation_checkpointing"] is False
    assert set(gpu) <= set(TrainingArguments.__dataclass_fields__)
    assert parallelism(2, cpu=True, activation_checkpointing=True) == gpu | {"ddp_backend": "gloo"}
    # the accumulation per process (half of it here) is checked by the launches above: 2 steps, not 1
    one = sft_config(tmp_path, TrainConfig(), seed=0, device="cpu", all_turns=False, activation_checkpointing=False)
    assert not one.fsdp and not one.activation_checkpointing


def test_processes_per_job_follows_whole_gpus():
    def processes(**execution) -> int:
        config = {"execution": execution, "train": {"gradient_accumulation_steps": 4}}
        return RunConfig.model_validate(config).execution.job_processes

    assert processes() == 1
    assert processes(gpus_per_job=4) == 4
    assert processes(gpus_per_job=0.5) == 1
    assert processes(gpus_per_job=4, processes_per_job=2) == 2
    assert RunConfig().hash() == RunConfig.model_validate({"execution": {"processes_per_job": 1}}).hash()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["train.gradient_accumulation_steps=3"], "set train.gradient_accumulation_steps to a multiple of 2"),
        (["execution.concurrent_training=true"], "execution.concurrent_training trains the adapters in one process"),
        (["train.quantization=4bit"], "QLoRA\\) trains on one GPU"),
    ],
)
def test_impossible_process_plans_are_refused_up_front(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["execution.processes_per_job=2", *settings])


def test_a_run_trains_each_role_in_two_processes(tmp_path):
    """``maft run`` with ``execution.processes_per_job=2``: every role of the iteration is launched in two
    processes, recorded as its own stage, and served in the next debate."""
    from typer.testing import CliRunner

    from maft.cli import app
    from maft.debate.transcript import Turn
    from maft.store import read_jsonl

    root = tmp_path / "run"
    settings = ["debate.agents=2", "debate.rounds=1", "task.n_train=8", "task.n_test=2"]
    settings += ["diversity.enabled=false", "train.gradient_accumulation_steps=2", "train.batch_size=2"]
    settings += ["execution.processes_per_job=2", "execution.device=cpu"]
    args = ["run", "--out", str(root), "--quiet", "--iterations", "1"]
    for s in settings:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for role in ("gen_0", "gen_1"):
        record = json.loads((root / "iter_1" / "agents" / role / "maft_train.json").read_text())
        assert record["steps"] >= 1 and record["train_loss"] is not None
        assert record["pid"] != os.getpid() and record["sharded_over"] == 2  # trained in the launched processes
        assert (root / "iter_1" / "agents" / role / "adapter_config.json").exists()
    turns = read_jsonl(root / "iter_1" / "debate_test.jsonl", Turn)  # the next debate served them
    assert {(t.agent, t.adapter) for t in turns} == {(0, "gen_0"), (1, "gen_1")}
