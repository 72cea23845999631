"""Concurrent training (``execution.concurrent_training``): the roles' adapters trained together on one base copy
are the adapters trained one by one by the real TRL path (``finetune``), within float tolerance: the same rows,
mini-batch sequence, LoRA init, loss and optimizer per role; per-role gradients of a mixed forward equal those of
PEFT's own single-adapter forward; a role with fewer steps drops out (and is reported) first; the loop records
each role as its own stage."""

from __future__ import annotations

import contextlib
import functools
import json
import random
import re

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from maft.agents import roles
from maft.config import ExecutionConfig, RunConfig, TrainConfig, load_config
from maft.data.agent_data import Example
from maft.loop import Society
from maft.store import RunStore, write_jsonl
from maft.tasks.arithmetic import Expression
from maft.tiny import default_checkpoint
from maft.tiny.synth import solve
from maft.training.concurrent import (
    RoleRun,
    Router,
    batch_schedule,
    finetune_together,
    forward_backward,
    load_together,
    merge_groups,
    prepared_rows,
    role_parameters,
)
from maft.training.scheduler import (
    TrainJob,
    add_failure_notes,
    balanced_groups,
    raise_failures,
    ray_slots,
    run_ray,
)
from maft.training.sft import TrainResult, _tokenizer, finetune, lora_config, sft_config, sft_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these tiny steps are bandwidth-bound, and on a busy 2-core machine two threads made them
    10x slower. The equivalences do not depend on it (both sides of each comparison run in this process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Two mini-batches per optimizer step, one and a half epochs: steps of 2 and 1 mini-batches, a partial last epoch.
#: fp32 (not train.bf16=auto, bf16 on a CPU that has it): the paths must agree to fp32 rounding
CFG = TrainConfig(batch_size=2, gradient_accumulation_steps=2, epochs=1.5, critic_loss="all_turns", bf16=False)

#: float32 on CPU. The mixed forward computes a row in a larger batch than training alone does (other matrix-multiply
#: blocking): the gradients agree to ~1e-7 relative. AdamW normalizes each weight's step to about the learning rate
#: whatever the gradient's size, so a weight whose gradient is nearly zero (rounding noise) can take a step of a
#: visible fraction of it: up to 8e-6 seen here (lr 2e-3). A wrong mini-batch, seed, loss normalization or optimizer
#: state moves every weight by about the learning rate per step, 40x this tolerance.
WEIGHT_ATOL = CFG.learning_rate / 40
GRAD_ATOL, GRAD_RTOL = 1e-6, 1e-4
BASE = str(default_checkpoint())


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def data(arithmetic):
    """gen_0 (10 examples: 5 steps), gen_1 (4: 2 steps) and a critic (7 multi-turn examples, loss on every
    assistant turn: 3 steps)."""
    rng = random.Random(0)
    problems = arithmetic.splits(21, 1, seed=5).train

    def text(p):
        return solve(Expression(*map(int, re.findall(r"\d+", p.question))), rng, 0.0, "places")[0]

    def gen(p, agent):
        q = [user(arithmetic.prompt(p))]
        return Example(prompt=q, completion=[assistant(text(p))], problem_id=p.id, agent=agent, kind="generation")

    def critic(p):
        prompt = [user(arithmetic.prompt(p)), assistant(text(p)), user("The other agents' answers are: 7, 9. Again?")]
        return Example(prompt=prompt, completion=[assistant(text(p))], problem_id=p.id, agent=0, kind="critic-")

    return {
        "gen_0": [gen(p, 0) for p in problems[:10]],
        "gen_1": [gen(p, 1) for p in problems[10:14]],
        "critic_0": [critic(p) for p in problems[14:21]],
    }


SEEDS = {"gen_0": 11, "gen_1": 12, "critic_0": 13}


def adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_adapters(a, b):
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys()
    for key in x:
        torch.testing.assert_close(x[key], y[key], atol=WEIGHT_ATOL, rtol=0, msg=key)
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (a, b)]
    for c in configs:  # PEFT saves a set: its order follows the process's string hashing
        c["target_modules"] = (
            sorted(c["target_modules"]) if isinstance(c["target_modules"], list) else c["target_modules"]
        )
    assert configs[0] == configs[1]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Each role trained one by one (finetune: a TRL trainer each) and all three together."""
    root = tmp_path_factory.mktemp("together")
    alone = {role: finetune(BASE, ex, root / "alone" / role, CFG, seed=SEEDS[role]) for role, ex in data.items()}
    events = []
    together = finetune_together(
        BASE,
        [RoleRun(role, ex, root / "together" / role, seed=SEEDS[role]) for role, ex in data.items()],
        CFG,
        on_step=lambda role, steps, total: events.append(("step", role, steps, total)),
        on_done=lambda role, result: events.append(("done", role, (root / "together" / role).is_dir())),
    )
    return root, alone, together, events


def test_prepared_rows_are_the_rows_trl_trains_on(data, tmp_path):
    tokenizer = _tokenizer(BASE)
    for role, all_turns in (("gen_0", False), ("critic_0", True)):
        trainer = sft_trainer(BASE, data[role], tmp_path / role, CFG, seed=1, device="cpu")
        args = sft_config(tmp_path / role, CFG, seed=1, device="cpu", all_turns=all_turns)
        expected = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trainer.train_dataset]
        assert prepared_rows(tokenizer, data[role], args, all_turns) == expected
    assert any(label == -100 for label in expected[0]["labels"][1:-5])  # the critic's context carries no loss


def test_the_schedule_has_the_trainers_steps_and_epochs(tmp_path):
    args = sft_config(tmp_path, CFG, seed=3, device="cpu", all_turns=False)
    steps = batch_schedule(10, args)  # 5 mini-batches an epoch: steps of 2, 2 and 1; 1.5 epochs: 5 steps
    assert [len(s) for s in steps] == [2, 2, 1, 2, 2]
    first = [i for step in steps[:3] for batch in step for i in batch]
    assert sorted(first) == list(range(10)) and all(len(b) == 2 for s in steps for b in s)
    assert first != [i for step in steps[3:] for batch in step for i in batch][: len(first)]  # a new order
    assert batch_schedule(10, sft_config(tmp_path, CFG, seed=3, device="cpu", all_turns=False)) == steps
    assert batch_schedule(10, sft_config(tmp_path, CFG, seed=4, device="cpu", all_turns=False)) != steps


def test_short_and_long_mini_batches_share_a_forward_only_when_little_padding_is_added():
    assert merge_groups([("a", 16, 150), ("b", 16, 160), ("c", 16, 165)]) == [["a", "b", "c"]]
    assert merge_groups([("g", 16, 160), ("c1", 16, 330), ("g2", 16, 150), ("c2", 16, 344)]) == [
        ["g2", "g"],
        ["c1", "c2"],
    ]


@pytest.mark.parametrize(
    ("sizes", "bf16"),
    [((3, 3, 3), False), ((3, 2, 3), False), ((3, 3, 3), True)],
    ids=["equal-blocks-batched", "unequal-blocks-split", "equal-blocks-batched-bf16-autocast"],
)
def test_a_mixed_forward_gives_each_adapter_the_gradient_of_its_own_rows(data, tmp_path, sizes, bf16, monkeypatch):
    """One forward/backward over the mini-batches of three roles (a generation role next to a longer critic
    conversation) against PEFT's own forward with one active adapter, role by role: with blocks of equal rows
    (every LoRA layer's updates in one batched product, Router._batched) and of unequal rows (one product pair per
    block); and the batched product under bfloat16 autocast, as on a GPU with ``train.bf16`` (fp32 adapters, bf16
    products: both sides round to bf16, so the tolerance is bf16's)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = _tokenizer(BASE)
    runs = [RoleRun(role, ex, tmp_path / role, seed=SEEDS[role]) for role, ex in data.items()]
    model = load_together(BASE, runs, CFG)
    torch.manual_seed(0)
    for run in runs:  # B starts at zero, which would leave A without gradient
        for name, p in role_parameters(model, run.role):
            if "lora_B" in name:
                p.data.normal_(0, 0.05)

    class Part:  # what forward_backward reads of a role
        def __init__(self, role):
            all_turns = role.startswith("critic")
            args = sft_config(tmp_path, CFG, seed=1, device="cpu", all_turns=all_turns)
            self.name, self.rows, self.loss = role, prepared_rows(tokenizer, data[role], args, all_turns)[:3], 0.0

    parts = [Part(run.role) for run in runs]
    for part, n in zip(parts, sizes, strict=True):
        part.rows = part.rows[:n]
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    counts = {p.name: sum(label != -100 for r in p.rows for label in r["labels"][1:]) for p in parts}
    model.train()
    batched = []
    monkeypatch.setattr(Router, "_batched", staticmethod(lambda *a, f=Router._batched: batched.append(1) or f(*a)))
    mixed_batch = [(p, list(range(n))) for p, n in zip(parts, sizes, strict=True)]
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext
    atol, rtol, loss_rel = (3e-4, 1e-2, 1e-2) if bf16 else (GRAD_ATOL, GRAD_RTOL, 1e-5)
    forward_backward(model, Router(model), collate, mixed_batch, counts, "cpu", autocast)
    assert len(batched) == (7 * 4 if len(set(sizes)) == 1 else 0)  # every LoRA layer (7 linears, 4 layers), or none
    mixed = {p.name: {n: w.grad.clone() for n, w in role_parameters(model, p.name)} for p in parts}
    model.zero_grad()
    for p in parts:
        model.set_adapter(p.name)  # PEFT's forward, this adapter alone, on this role's rows alone
        batch = collate(p.rows)
        with autocast():
            nll = -model(**batch, fused_lm_head=True, use_cache=False).log_probs.float().sum()
        assert float(nll.detach() / counts[p.name]) == pytest.approx(float(p.loss), rel=loss_rel)
        (nll / counts[p.name]).backward()
        alone = {n: w.grad for n, w in role_parameters(model, p.name)}
        assert alone.keys() == mixed[p.name].keys() and len(alone) == 2 * 7 * 4  # A and B, 7 linears, 4 layers
        for name, grad in alone.items():
            assert grad.abs().max() > 0, name
            torch.testing.assert_close(
                mixed[p.name][name], grad, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
            )
        model.zero_grad()


def test_a_base_model_with_dropout_is_refused(data, tmp_path):
    """Its masks would be drawn in another order in the concatenated batch than one role at a time."""
    import shutil

    base = tmp_path / "dropping"
    shutil.copytree(BASE, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    runs = [RoleRun(role, examples[:4], tmp_path / role) for role, examples in data.items()]
    with pytest.raises(ValueError, match="applies dropout 0.1 in training.*execution.concurrent_training=false"):
        load_together(str(base), runs, CFG)


def test_adapters_of_another_rank_or_unequal_blocks_take_the_per_block_path(data, tmp_path):
    """The batched product needs equal blocks filling the batch and alike adapters; a role continuing from an
    adapter saved with another rank or scaling (``init_from``) falls back to one product pair per block. Either
    way each block's output is PEFT's own forward with that block's adapter alone."""
    from peft.tuners.lora import LoraLayer

    runs = [RoleRun(role, data[role], tmp_path / role, seed=SEEDS[role]) for role in ("gen_0", "gen_1")]
    model = load_together(BASE, runs, CFG)
    r, alpha = CFG.lora_r, CFG.lora_alpha
    model.add_adapter("wide", lora_config(CFG.model_copy(update={"lora_r": 2 * r, "lora_alpha": 2 * alpha})))
    model.add_adapter("loud", lora_config(CFG.model_copy(update={"lora_alpha": 2 * alpha})))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would make every update zero
            p.data.normal_(0, 0.05)
    router = Router(model)
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["wide"] == layer.scaling["gen_0"] != layer.scaling["loud"]
    x = torch.randn(4, 5, layer.in_features)
    cases = {
        (("gen_0", 2), ("gen_1", 2)): True,
        (("gen_0", 2), ("wide", 2)): False,  # ranks differ: the weights cannot be stacked
        (("gen_0", 2), ("loud", 2)): False,  # scalings differ
        (("gen_0", 3), ("gen_1", 1)): False,  # unequal blocks
        (("gen_0", 4),): False,  # one block: nothing to batch
    }
    with torch.no_grad():
        for blocks, batchable in cases.items():
            with router(list(blocks)):
                assert router._batchable(layer, x) is batchable, blocks
                mixed = layer(x)
            alone = []
            for (role, _), rows in zip(blocks, x.split([n for _, n in blocks]), strict=True):
                model.set_adapter(role)  # PEFT's forward, this adapter alone
                alone.append(layer(rows))
            torch.testing.assert_close(
                mixed, torch.cat(alone), atol=1e-6, rtol=1e-5, msg=lambda m, b=blocks: f"{b}: {m}"
            )
            assert not torch.allclose(alone[0], layer.base_layer(x[: blocks[0][1]]))  # the adapter changes it
        with router([("gen_0", 1), ("gen_1", 1)]):
            assert not router._batchable(layer, x)  # the blocks do not make up the batch


def test_concurrent_training_gives_the_adapters_of_training_one_by_one(trained, data):
    root, alone, together, _ = trained
    assert set(together) == set(data)
    for role in data:
        a, t = alone[role], together[role]
        assert (t.steps, t.examples, t.init, t.method) == (a.steps, a.examples, a.init, a.method)
        assert t.train_loss == pytest.approx(a.train_loss, rel=1e-5)
        assert_same_adapters(root / "alone" / role, root / "together" / role)
        assert sorted(p.name for p in (root / "together" / role).iterdir()) == sorted(
            p.name for p in (root / "alone" / role).iterdir()
        )
        assert t.trained_with == [r for r in data if r != role]
    assert [alone[r].steps for r in data] == [5, 2, 3]
    b = {role: adapter(root / "together" / role) for role in data}
    key = next(k for k in b["gen_0"] if "lora_B" in k)
    assert all(b[role][key].abs().max() > 40 * WEIGHT_ATOL for role in data)  # trained: B starts at zero
    assert not torch.equal(b["gen_0"][key], b["gen_1"][key])  # each its own init and data


def test_a_role_with_fewer_steps_drops_out_and_is_reported_first(trained):
    _, _, together, events = trained
    done = [e for e in events if e[0] == "done"]
    assert [e[1] for e in done] == ["gen_1", "critic_0", "gen_0"] and all(e[2] for e in done)  # saved, then told
    assert events.index(done[0]) < events.index(("step", "gen_0", 3, 5))
    assert [e[2] for e in events if e[:2] == ("step", "gen_0")] == [1, 2, 3, 4, 5]
    total = sum(r.seconds for r in together.values())
    assert all(0 < r.seconds < total for r in together.values())


def test_continuing_from_previous_adapters_matches_too(trained, data, tmp_path):
    root, _, _, _ = trained
    cfg = CFG.model_copy(update={"gradient_accumulation_steps": 1, "epochs": 1})
    pair = {role: data[role][:4] for role in ("gen_0", "critic_0")}
    for role, ex in pair.items():
        finetune(BASE, ex, tmp_path / "alone" / role, cfg, init_from=root / "alone" / role, seed=7)
    runs = [RoleRun(role, ex, tmp_path / "together" / role, root / "alone" / role, 7) for role, ex in pair.items()]
    results = finetune_together(BASE, runs, cfg)
    for role in pair:
        assert results[role].init == str(root / "alone" / role)
        assert_same_adapters(tmp_path / "alone" / role, tmp_path / "together" / role)


def test_a_role_without_examples_keeps_its_starting_weights(tmp_path, data):
    runs = [RoleRun("gen_0", [], tmp_path / "g"), RoleRun("critic_0", data["critic_0"][:2], tmp_path / "c")]
    results = finetune_together(BASE, runs, CFG)
    assert results["gen_0"].steps == 0 and results["gen_0"].train_loss is None
    assert all(v.abs().sum() == 0 for k, v in adapter(tmp_path / "g").items() if "lora_B" in k)
    assert results["critic_0"].steps == 2 and results["critic_0"].trained_with == []  # 1 step an epoch, 1.5 epochs


def test_settings_that_would_change_the_result_are_refused():
    ok = RunConfig.model_validate({"execution": {"concurrent_training": True}})
    assert ok.execution.concurrent_training and ok.hash() == RunConfig().hash()  # how to run, not what
    for train in ({"lora_dropout": 0.1}, {"method": "full"}):
        with pytest.raises(ValidationError, match="concurrent_training"):
            RunConfig.model_validate({"execution": {"concurrent_training": True}, "train": train})
    RunConfig.model_validate({"iterations": 0, "execution": {"concurrent_training": True}, "train": {"method": "full"}})
    with pytest.raises(ValueError, match="lora_dropout"):
        finetune_together(BASE, [], TrainConfig(lora_dropout=0.1))


def test_the_loop_records_each_role_as_its_own_stage_and_resume_keeps_the_finished_ones(data, tmp_path, monkeypatch):
    """The loop's training stage (``Society._train``, on data files written here rather than debated) with
    ``execution.concurrent_training``, crashing while the job still trains: the roles recorded before are kept on
    resume, the others train (together)."""
    overrides = ["iterations=1", "debate.agents=2", "train.epochs=1", "execution.concurrent_training=true"]
    store = RunStore.create(tmp_path / "r", load_config(None, [*overrides, "train.batch_size=2"]))
    d = store.iter_dir(1)
    files = {"gen_0": data["gen_0"][:6], "gen_1": data["gen_1"], "critic_0": data["critic_0"][:5], "critic_1": []}
    steps = {"gen_0": 3, "gen_1": 2, "critic_0": 3, "critic_1": 0}
    for role, examples in files.items():
        write_jsonl(d / "data" / f"{role}.jsonl", examples)
    finish = RunStore.finish
    recorded: list[str] = []

    def crash_at_the_third_role(self, stage, *args, **kwargs):
        if len(recorded) == 2:
            raise KeyboardInterrupt
        finish(self, stage, *args, **kwargs)
        recorded.append(stage.rsplit("/", 1)[1])

    monkeypatch.setattr(RunStore, "finish", crash_at_the_third_role)
    with pytest.raises(KeyboardInterrupt):
        Society(store, progress=False)._train(1)
    monkeypatch.undo()
    # critic_1 (no data, saved untouched before the job starts), then gen_1 (the fewest steps: out first)
    assert recorded == ["critic_1", "gen_1"] == [r for r in roles(2)[::-1] if store.done(f"iter_1/train/{r}")]
    kept = {role: store.manifest["stages"][f"iter_1/train/{role}"] for role in recorded}
    assert json.loads((d / "agents" / "gen_1" / "maft_train.json").read_text())["trained_with"] == ["gen_0", "critic_0"]

    store = RunStore.open(store.root)
    Society(store, progress=False)._train(1)
    assert {role: store.manifest["stages"][f"iter_1/train/{role}"] for role in recorded} == kept
    for role in roles(2):
        entry = store.manifest["stages"][f"iter_1/train/{role}"]
        info = json.loads((d / "agents" / role / "maft_train.json").read_text())
        assert info["examples"] == entry["examples"] == len(files[role])
        assert info["steps"] == entry["steps"] == steps[role]
    for role, other in (("gen_0", "critic_0"), ("critic_0", "gen_0")):  # the resumed job: the two left
        assert json.loads((d / "agents" / role / "maft_train.json").read_text())["trained_with"] == [other]
    assert not list(store.root.rglob(".tmp-*")) and not list(store.root.rglob(".trainer"))


def test_the_loop_trains_together_by_default_where_it_can(tmp_path):
    """execution.concurrent_training left at None: the embedded default run trains its roles together (they fit
    in this machine's RAM); where they cannot train together (dropout), one by one, without an error."""
    for overrides, together in (([], True), (["train.lora_dropout=0.05"], False), (["train.method=full"], False)):
        store = RunStore.create(tmp_path / str(len(list(tmp_path.iterdir()))), load_config(None, overrides))
        assert store.config.execution.concurrent_training is None
        config, _ = Society(store, progress=False)._training_plan()
        assert config.execution.concurrent_training is together
        assert config.hash() == store.config.hash()  # how to run, not what


def test_jobs_are_grouped_by_the_size_of_their_data(tmp_path):
    sizes = {"gen_0": 900, "gen_1": 500, "gen_2": 450, "critic_0": 700, "critic_1": 100}
    jobs = []
    for role, size in sizes.items():
        (tmp_path / f"{role}.jsonl").write_text("x" * size)
        jobs.append(TrainJob(role, BASE, tmp_path / f"{role}.jsonl", tmp_path / role, None, 0, "cpu", CFG))
    roles_of = lambda groups: [[j.role for j in g] for g in groups]  # noqa: E731
    # largest first, each to the lightest group so far: 900 | 700 + 100 | 500 + 450
    assert roles_of(balanced_groups(jobs, 3)) == [["gen_0"], ["critic_0", "critic_1"], ["gen_1", "gen_2"]]
    assert roles_of(balanced_groups(jobs, 2)) == [["gen_0", "gen_2"], ["gen_1", "critic_0", "critic_1"]]
    assert roles_of(balanced_groups(jobs, 1)) == [list(sizes)]
    assert sorted(roles_of(balanced_groups(jobs, 9))) == sorted([r] for r in sizes)  # never an empty group
    for job in jobs:  # empty (or missing) data: spread by count, not piled into one group
        job.data.write_text("")
    assert [len(g) for g in balanced_groups(jobs, 2)] == [3, 2]


def test_with_ray_the_concurrent_jobs_are_one_ray_task_per_group_ray_can_run(data, tmp_path):
    """With 2 CPUs: one CPU per job gives two groups (two tasks), two CPUs per job one."""
    ray = pytest.importorskip("ray")
    import os

    jobs: dict[int, list[TrainJob]] = {1: [], 2: []}
    for role, examples in data.items():
        write_jsonl(tmp_path / f"{role}.jsonl", examples[:4])
        for cpus, group in jobs.items():
            group.append(
                TrainJob(
                    role, BASE, tmp_path / f"{role}.jsonl", tmp_path / f"{cpus}" / role, None, SEEDS[role], "cpu", CFG
                )
            )
    reported: dict[int, dict[str, TrainResult]] = {1: {}, 2: {}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for cpus in (1, 2):
            assert ray_slots(0, cpus) == 2 // cpus
            config = ExecutionConfig(scheduler="ray", concurrent_training=True, cpus_per_job=cpus)
            run_ray(jobs[cpus], lambda job, result, c=cpus: reported[c].__setitem__(job.role, result), config)
        assert ray_slots(0, 0.2) == 10  # not 2 // 0.2 == 9.0
        assert ray_slots(1, 1) == 1  # no GPU here: none fits, still one group (its task waits for a GPU)
    finally:
        ray.shutdown()
    groups = [[j.role for j in g] for g in balanced_groups(jobs[1], 2)]
    assert len(groups) == 2
    for cpus, results in reported.items():
        assert set(results) == set(data)
        assert os.getpid() not in {r.pid for r in results.values()}
        for role, result in results.items():
            assert (tmp_path / f"{cpus}" / role / "adapter_model.safetensors").is_file()
            mates = next(g for g in groups if role in g) if cpus == 1 else list(data)
            assert result.trained_with == [r for r in mates if r != role]
    assert len({r.pid for r in reported[2].values()}) == 1  # one task
    for role in data:  # the grouping changes the speed, not the adapters
        assert_same_adapters(tmp_path / "1" / role, tmp_path / "2" / role)


@pytest.mark.parametrize("cpus_per_job", [2, 1])
def test_with_ray_a_crash_of_the_concurrent_task_keeps_the_roles_that_finished(data, tmp_path, cpus_per_job):
    """One group (2 CPUs per job): gen_1 (2 steps) is saved and streamed to the driver; the critic (3 steps) then
    fails to save (its directory would be under a file); gen_0 (5 steps) never finishes. The driver has gen_1's
    result, then the error. Two groups (1 CPU per job): the group without the critic trains to its end."""
    ray = pytest.importorskip("ray")

    (tmp_path / "blocker").write_text("a file, not a directory")
    out = {"gen_0": tmp_path / "gen_0", "gen_1": tmp_path / "gen_1"}
    jobs = []
    for role, examples in data.items():
        write_jsonl(tmp_path / f"{role}.jsonl", examples)
        out_dir = out.get(role, tmp_path / "blocker" / role)
        jobs.append(TrainJob(role, BASE, tmp_path / f"{role}.jsonl", out_dir, None, SEEDS[role], "cpu", CFG))
    reported: dict[str, TrainResult] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = ExecutionConfig(scheduler="ray", concurrent_training=True, cpus_per_job=cpus_per_job)
        with pytest.raises(Exception, match="blocker"):
            run_ray(jobs, lambda job, result: reported.__setitem__(job.role, result), config)
    finally:
        ray.shutdown()
    if cpus_per_job == 2:
        assert list(reported) == ["gen_1"] and reported["gen_1"].steps == 2
        assert (tmp_path / "gen_1" / "adapter_model.safetensors").is_file()
        assert not (tmp_path / "gen_0" / "adapter_model.safetensors").exists()
        return
    failing, other = sorted(([j.role for j in g] for g in balanced_groups(jobs, 2)), key=lambda g: "critic_0" not in g)
    steps = {"gen_0": 5, "gen_1": 2}
    assert "critic_0" in failing and other  # the critic's group fails; the other trains on
    assert set(reported) == {*other, *(r for r in failing if r != "critic_0" and steps[r] < 3)}
    for role in reported:
        assert reported[role].steps == steps[role] and (out[role] / "adapter_model.safetensors").is_file()


def test_with_ray_each_group_is_reported_as_it_streams_not_after_the_groups_before_it(data, tmp_path):
    """Two groups (1 CPU per job). The first group's only role reads its data from a named pipe, so its task waits
    until the driver writes it; the driver writes it when it is told that the second group's role is done (an empty
    data file: an untouched adapter at once). A driver that drained the groups in order would wait on the first for
    ever: a timer writes the pipe after 120 s, so that such a driver fails this test instead of hanging it."""
    ray = pytest.importorskip("ray")
    import errno
    import os
    import threading
    import time

    pipe, empty = tmp_path / "gen_0.jsonl", tmp_path / "gen_1.jsonl"
    os.mkfifo(pipe)
    empty.write_text("")
    jobs = [
        TrainJob("gen_0", BASE, pipe, tmp_path / "gen_0", None, SEEDS["gen_0"], "cpu", CFG),
        TrainJob("gen_1", BASE, empty, tmp_path / "gen_1", None, SEEDS["gen_1"], "cpu", CFG),
    ]
    lines = "".join(e.model_dump_json() + "\n" for e in data["gen_0"][:4])
    fed_by: list[str] = []
    lock = threading.Lock()

    def feed(by: str) -> None:
        with lock:
            if fed_by:
                return
            fed_by.append(by)
            deadline = time.monotonic() + 120
            while True:  # open once the task has opened it to read; a task that never does fails the test
                try:
                    fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as e:
                    if e.errno != errno.ENXIO or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(lines)

    reported: list[str] = []

    def on_done(job, result):
        reported.append(job.role)
        if job.role == "gen_1":
            feed("driver")

    timer = threading.Timer(120, feed, args=("timer",))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert [[j.role for j in g] for g in balanced_groups(jobs, ray_slots(0, 1))] == [["gen_0"], ["gen_1"]]
        timer.start()
        run_ray(jobs, on_done, ExecutionConfig(scheduler="ray", concurrent_training=True, cpus_per_job=1))
    finally:
        timer.cancel()
        ray.shutdown()
    assert fed_by == ["driver"] and reported == ["gen_1", "gen_0"]
    assert (tmp_path / "gen_0" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("together", [False, True])
def test_with_ray_every_failed_task_is_named_and_the_others_train_on(data, tmp_path, together):
    """gen_1 and the critic fail to save (their directories would be under a file), each in a Ray task of its own
    (one job per task, or two groups with 1 CPU per job). The driver waits for every task, then raises one of the
    errors with notes naming what each failure left untrained. gen_0 trains on: it is reported, unless it shares
    a group whose failure came before gen_0's last step."""
    ray = pytest.importorskip("ray")

    (tmp_path / "blocker").write_text("a file, not a directory")
    jobs = []
    for role, examples in data.items():
        write_jsonl(tmp_path / f"{role}.jsonl", examples[:4])
        out_dir = tmp_path / role if role == "gen_0" else tmp_path / "blocker" / role
        jobs.append(TrainJob(role, BASE, tmp_path / f"{role}.jsonl", out_dir, None, SEEDS[role], "cpu", CFG))
    reported: dict[str, TrainResult] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = ExecutionConfig(scheduler="ray", concurrent_training=together, cpus_per_job=1)
        with pytest.raises(OSError, match="blocker") as raised:  # file exists, or is not a directory
            run_ray(jobs, lambda job, result: reported.__setitem__(job.role, result), config)
    finally:
        ray.shutdown()
    first, other = raised.value.__notes__
    assert (m := re.fullmatch(r"this error left untrained: ([\w, ]+)", first))
    named = [set(m[1].split(", "))]
    assert (m := re.match(r"another Ray task failed too, leaving untrained ([\w, ]+): \w+Error: .*blocker", other))
    named.append(set(m[1].split(", ")))
    assert named[0].isdisjoint(named[1]) and {"gen_1", "critic_0"} <= named[0] | named[1]
    assert set(reported) | named[0] | named[1] == set(data) and not set(reported) & (named[0] | named[1])
    if not together:
        assert list(reported) == ["gen_0"]
    for role in reported:
        assert (tmp_path / role / "adapter_model.safetensors").is_file()


def test_failure_notes_name_what_each_failed_task_left_untrained():
    """The notes that :func:`raise_failures` puts on the first failure, and that the driver's own error (Ctrl-C, a
    failing record) carries when it stops the others."""
    first = NotADirectoryError("x/blocker/critic_0")
    other = RuntimeError("out of memory\nmore lines")
    failures = [(["critic_0", "gen_2"], first), ([], other)]
    with pytest.raises(NotADirectoryError) as raised:
        raise_failures(failures)
    assert raised.value.__notes__ == [
        "this error left untrained: critic_0, gen_2",
        "another Ray task failed too, leaving untrained nothing (it had reported every role): "
        "RuntimeError: out of memory",
    ]
    stopped = KeyboardInterrupt()
    add_failure_notes(stopped, failures[:1], first_is_this=False)
    assert stopped.__notes__ == [
        "another Ray task failed too, leaving untrained critic_0, gen_2: NotADirectoryError: x/blocker/critic_0"
    ]
    raise_failures([])  # nothing failed: nothing raised
