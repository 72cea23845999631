"""End to end: one iteration of multiagent finetuning through the real tiny model and real LoRA training."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from maft.agents import roles
from maft.config import load_config
from maft.data.agent_data import Example
from maft.debate.transcript import Turn
from maft.debate.voting import ProblemVote
from maft.evaluation.metrics import IterationMetrics
from maft.loop import Society
from maft.store import RunStore, read_jsonl

pytestmark = pytest.mark.slow

OVERRIDES = [
    "iterations=1",
    "debate.agents=2",
    "debate.rounds=2",
    "task.n_train=12",
    "task.n_test=8",
    "train.epochs=1",
    "train.batch_size=4",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "r"
    store = RunStore.create(root, load_config(None, OVERRIDES))
    metrics = Society(store, progress=False).run()
    return root, store, metrics


def test_run_directory_holds_every_stage_output(finished_run):
    root, store, _ = finished_run
    expected = [
        "config.yaml",
        "manifest.json",
        "versions.json",
        "metrics.json",
        "summary.md",
        "iter_0/debate_test.jsonl",
        "iter_0/diversity.json",
        "iter_0/metrics.json",
        "iter_1/debate_train.jsonl",
        "iter_1/votes.jsonl",
        "iter_1/data/counts.json",
        "iter_1/debate_test.jsonl",
        "iter_1/diversity.json",
        "iter_1/metrics.json",
    ]
    expected += [f"iter_1/data/{r}.jsonl" for r in roles(2)]
    expected += [
        f"iter_1/agents/{r}/{f}"
        for r in roles(2)
        for f in ("adapter_config.json", "adapter_model.safetensors", "maft_train.json")
    ]
    assert [p for p in expected if not (root / p).is_file()] == []
    # no scratch left behind: the publishing folders (store.temporary_dir) and the trainer's output (training.py)
    assert not list(root.rglob(".tmp-*")) and not list(root.rglob(".trainer"))
    import torch

    assert json.loads((root / "versions.json").read_text())["torch"] == torch.__version__
    stages = list(store.manifest["stages"])
    trained = stages[6:10]  # in the order the roles finished (trained together by default: fewest steps first)
    assert sorted(trained) == sorted(f"iter_1/train/{r}" for r in roles(2))
    assert [*stages[:6], *stages[10:]] == [
        "iter_0/debate_test",
        "iter_0/diversity",
        "iter_0/metrics",
        "iter_1/debate_train",
        "iter_1/votes",
        "iter_1/data",
        "iter_1/debate_test",
        "iter_1/diversity",
        "iter_1/metrics",
    ]


def test_debate_transcripts_follow_the_protocol(finished_run):
    root, _, _ = finished_run
    train = read_jsonl(root / "iter_1/debate_train.jsonl", Turn)
    assert len(train) == 12 * 2 * 2
    assert {t.adapter for t in train} == {None}  # iteration 1's data comes from the base model
    for t in train:
        if t.round == 1:
            assert [m["role"] for m in t.messages] == ["user"]
        else:
            assert [m["role"] for m in t.messages] == ["user", "assistant", "user"]
            own = next(u for u in train if u.problem_id == t.problem_id and u.agent == t.agent and u.round == 1)
            other = next(u for u in train if u.problem_id == t.problem_id and u.agent != t.agent and u.round == 1)
            assert t.messages[1]["content"] == own.response
            shown = other.answer if other.answer is not None else "no answer"
            assert f"The other agents' answers are: {shown}." in t.messages[2]["content"]
    test = read_jsonl(root / "iter_1/debate_test.jsonl", Turn)
    assert {(t.agent, t.round, t.adapter) for t in test} == {
        (0, 1, "gen_0"),
        (1, 1, "gen_1"),
        (0, 2, "critic_0"),
        (1, 2, "critic_1"),
    }


def test_each_role_is_trained_on_its_own_data_and_the_adapters_differ(finished_run):
    root, _, _ = finished_run
    counts = json.loads((root / "iter_1/data/counts.json").read_text())
    weights = {}
    for role in roles(2):
        examples = read_jsonl(root / f"iter_1/data/{role}.jsonl", Example)
        agent = int(role.split("_")[1])
        assert all(e.agent == agent for e in examples)
        kind = "generation" if role.startswith("gen") else "critic"
        assert len(examples) == counts[f"agent_{agent}"][kind]
        info = json.loads((root / f"iter_1/agents/{role}/maft_train.json").read_text())
        assert info["examples"] == len(examples) and info["init"] == "base"
        weights[role] = load_file(str(root / f"iter_1/agents/{role}/adapter_model.safetensors"))
    assert all(counts[f"agent_{n}"]["generation"] > 0 for n in range(2))
    # trained together (execution.concurrent_training left at None, the embedded model on a CPU)
    assert "gen_1" in json.loads((root / "iter_1/agents/gen_0/maft_train.json").read_text())["trained_with"]
    for a, b in [("gen_0", "gen_1"), ("gen_0", "critic_0"), ("critic_0", "critic_1")]:
        assert weights[a].keys() == weights[b].keys()
        assert any(not weights[a][k].equal(weights[b][k]) for k in weights[a]), f"{a} and {b} are the same adapter"
    # trained: LoRA B matrices start at zero and moved
    assert any(v.abs().sum() > 0 for k, v in weights["gen_0"].items() if "lora_B" in k)


def test_metrics_match_the_transcripts(finished_run, arithmetic):
    root, _, metrics = finished_run
    assert [m.iteration for m in metrics] == [0, 1]
    saved = [IterationMetrics.model_validate(m) for m in json.loads((root / "metrics.json").read_text())]
    assert saved[1].test == metrics[1].test
    for m in metrics:
        turns = read_jsonl(root / f"iter_{m.iteration}/debate_test.jsonl", Turn)
        final = [t for t in turns if t.round == 2]
        assert m.test.problems == 8
        assert m.test.round_agent[1].mean == pytest.approx(sum(t.correct for t in final) / len(final))
        assert len(m.test.agent_round) == 2 and len(m.test.agent_round[0]) == 2
    votes = read_jsonl(root / "iter_1/votes.jsonl", ProblemVote)
    labelled = [v for v in votes if v.label is not None]
    train = metrics[1].train
    assert train.problems == 12 and train.labelled == len(labelled)
    assert train.label_precision.mean == pytest.approx(sum(v.correct for v in labelled) / len(labelled))
    assert set(train.losses) == set(roles(2))
    assert "| 1 |" in (root / "summary.md").read_text()


def test_compute_is_counted_from_the_stages(finished_run):
    root, store, metrics = finished_run
    stages = store.manifest["stages"]
    for m in metrics:
        test = read_jsonl(root / f"iter_{m.iteration}/debate_test.jsonl", Turn)
        assert m.compute.test_generated_tokens == sum(t.completion_tokens for t in test) > 0
        mine = {k: v for k, v in stages.items() if k.startswith(f"iter_{m.iteration}/")}
        assert m.compute.seconds == pytest.approx(sum(v["seconds"] for v in mine.values()))
    assert metrics[0].compute.train_examples == 0 and metrics[0].compute.train_generated_tokens == 0
    train = read_jsonl(root / "iter_1/debate_train.jsonl", Turn)
    assert metrics[1].compute.train_generated_tokens == sum(t.completion_tokens for t in train)
    examples = sum(len(read_jsonl(root / f"iter_1/data/{r}.jsonl", Example)) for r in roles(2))
    assert metrics[1].compute.train_examples == examples > 0


def test_diversity_is_measured_on_round_1_every_iteration(finished_run):
    _, _, metrics = finished_run
    base, tuned = metrics[0].diversity, metrics[1].diversity
    assert base.agents == 2 and base.problems == 8 and base.round == 1
    # iteration 0: every agent is the base model, so the likelihoods agree exactly
    assert base.kl == pytest.approx(0, abs=1e-6) and base.cross_nll == pytest.approx(base.self_nll)
    # iteration 1: the generation agents are different finetuned models
    assert abs(tuned.kl) > 1e-6 and tuned.cross_nll != pytest.approx(tuned.self_nll)
    assert 0 <= tuned.answer_agreement <= 1 and tuned.consensus == tuned.answer_agreement  # 2 agents: one pair


def test_transfer_debates_another_task_with_the_finetuned_agents(finished_run):
    from pathlib import Path

    from maft.evaluation.metrics import DebateMetrics
    from maft.evaluation.transfer import transfer, transfer_dir

    root, _, _ = finished_run
    gsm8k = {"path": str(Path(__file__).parent / "fixtures" / "gsm8k_dir")}
    results = transfer(root, "gsm8k", options=gsm8k, n=3, progress=False)
    assert list(results) == [0, 1]  # the base model for reference, and the last iteration
    for it, adapters in [(0, {None}), (1, {"gen_0", "gen_1", "critic_0", "critic_1"})]:
        d = transfer_dir(root, "gsm8k", gsm8k) / f"iter_{it}"
        turns = read_jsonl(d / "debate_test.jsonl", Turn)
        assert {t.adapter for t in turns} == adapters and len(turns) == 3 * 2 * 2
        assert "ducks" in " ".join(t.messages[0]["content"] for t in turns)  # gsm8k questions, not arithmetic
        assert DebateMetrics.model_validate_json((d / "metrics.json").read_text()) == results[it]
        assert results[it].problems == 3
    mtime = (transfer_dir(root, "gsm8k", gsm8k) / "iter_1/debate_test.jsonl").stat().st_mtime_ns
    assert transfer(root, "gsm8k", options=gsm8k, n=3, iterations=[1], progress=False) == {1: results[1]}
    assert (transfer_dir(root, "gsm8k", gsm8k) / "iter_1/debate_test.jsonl").stat().st_mtime_ns == mtime  # kept
    # an agent written again since (a role retrained on resume) makes the finished transfer stale: debated again
    weights = root / "iter_1/agents/gen_0/adapter_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert transfer(root, "gsm8k", options=gsm8k, n=3, iterations=[1], progress=False) == {1: results[1]}
    assert (transfer_dir(root, "gsm8k", gsm8k) / "iter_1/debate_test.jsonl").stat().st_mtime_ns != mtime
    # other task options are another transfer: never mistaken for a finished one
    transfer(root, "arithmetic", options={"high": 12}, n=3, iterations=[1], progress=False)
    transfer(root, "arithmetic", options={"high": 20}, n=3, iterations=[1], progress=False)
    small, large = (transfer_dir(root, "arithmetic", {"high": h}) for h in (12, 20))
    assert small != large and sorted(p.name for p in (root / "transfer").iterdir()) == sorted(
        [small.name, large.name, transfer_dir(root, "gsm8k", gsm8k).name]
    )
    questions = [
        {t.messages[0]["content"] for t in read_jsonl(d / "iter_1/debate_test.jsonl", Turn)} for d in (small, large)
    ]
    assert questions[0] != questions[1]
    assert json.loads((small / "iter_1/spec.json").read_text())["options"] == {"high": 12}
    with pytest.raises(ValueError, match="not finished"):
        transfer(root, "gsm8k", options=gsm8k, n=3, iterations=[2])
    with pytest.raises(ValueError, match="50 test problems asked, only 5 exist"):
        transfer(root, "gsm8k", options=gsm8k, n=50)
    # the run's own task: its 8 held-out problems come first, the 9th was trained on (refused before any debate)
    with pytest.raises(ValueError, match=r"1 of the 9 problems of 'arithmetic' are the run's training .*--n 8"):
        transfer(root, "arithmetic", n=9)


def test_transfer_grades_again_after_the_answers_change_and_refuses_agents_the_run_must_redo(finished_run, tmp_path):
    """A task file corrected since a transfer (the same path, problem ids by row) is graded again, not reused; and
    an iteration whose saved agents changed since training (its training stages marked to be redone) is refused
    until the run is resumed, instead of debating weights the run no longer vouches for."""
    import shutil
    from pathlib import Path

    from maft.evaluation.transfer import transfer, transfer_dir

    root = tmp_path / "run"
    shutil.copytree(finished_run[0], root, ignore=shutil.ignore_patterns(".lock", "transfer"))
    files = tmp_path / "gsm8k"
    shutil.copytree(Path(__file__).parent / "fixtures" / "gsm8k_dir", files)
    options = {"path": str(files)}
    first = transfer(root, "gsm8k", options=options, n=3, iterations=[0], progress=False)[0]
    debate = transfer_dir(root, "gsm8k", options) / "iter_0/debate_test.jsonl"
    mtime = debate.stat().st_mtime_ns
    # a transfer of an older maft (no digest in its spec): graded again, it gives what it recorded, so it is kept
    spec_file = debate.with_name("spec.json")
    spec = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({k: v for k, v in spec.items() if k != "problems_digest"}))
    assert transfer(root, "gsm8k", options=options, n=3, iterations=[0], progress=False)[0] == first
    assert debate.stat().st_mtime_ns == mtime and json.loads(spec_file.read_text()) == spec
    rows = [json.loads(line) for line in (files / "test.jsonl").read_text().splitlines()]
    rows[0]["answer"] = rows[0]["answer"].rsplit("####", 1)[0] + "#### 123456"  # a corrected (here: wrong) key
    (files / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = transfer(root, "gsm8k", options=options, n=3, iterations=[0], progress=False)[0]
    assert debate.stat().st_mtime_ns != mtime  # debated and graded again
    assert again.problems == first.problems == 3
    (root / "iter_1/agents/gen_0/adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"iteration\(s\) \[1\].*resume the run first"):
        transfer(root, "gsm8k", options=options, n=3, progress=False)
    with pytest.raises(ValueError, match=r"iteration\(s\) \[1\].*resume the run first"):
        transfer(root, "gsm8k", options=options, n=3, iterations=[0, 1], progress=False)
    assert transfer(root, "gsm8k", options=options, n=3, iterations=[0], progress=False)[0] == again  # iteration 0
    # a run made on a GPU machine, transferred here: its device is refused in one line, before any model loads
    saved = yaml.safe_load((root / "config.yaml").read_text())
    saved["execution"]["device"] = "cuda"
    (root / "config.yaml").write_text(yaml.safe_dump(saved))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="execution.device 'cuda', but this machine has no CUDA GPU"):
            transfer(root, "gsm8k", options=options, n=3, iterations=[0], progress=False)


def test_a_finished_run_resumes_without_redoing_anything(finished_run):
    root, store, metrics = finished_run
    before = json.loads((root / "manifest.json").read_text())
    again = Society(RunStore.open(root, store.config), progress=False).run()
    assert json.loads((root / "manifest.json").read_text()) == before
    assert [m.test for m in again] == [m.test for m in metrics]


def test_ray_scheduler_trains_every_role_in_ray_workers(tmp_path):
    """The 2N jobs of an iteration as Ray tasks on a real local Ray cluster."""
    ray = pytest.importorskip("ray")
    import os

    overrides = [*OVERRIDES, "task.n_train=8", "task.n_test=4", "execution.scheduler=ray", "execution.cpus_per_job=1"]
    store = RunStore.create(tmp_path / "r", load_config(None, overrides))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        metrics = Society(store, progress=False).run()
    finally:
        ray.shutdown()
    assert [m.iteration for m in metrics] == [0, 1]
    counts = json.loads((store.root / "iter_1/data/counts.json").read_text())
    for role in roles(2):
        assert store.done(f"iter_1/train/{role}")
        info = json.loads((store.root / f"iter_1/agents/{role}/maft_train.json").read_text())
        kind = "generation" if role.startswith("gen") else "critic"
        assert info["examples"] == counts[f"agent_{role[-1]}"][kind]
        assert info["pid"] not in (0, os.getpid())  # trained in a Ray worker process
        assert info["trained_with"] == []  # concurrent_training None: Ray runs the jobs in parallel instead
        assert (store.root / f"iter_1/agents/{role}/adapter_model.safetensors").is_file()
    assert not list(store.root.rglob(".tmp-*"))


def test_init_base_starts_every_iteration_from_the_base_model(tmp_path):
    overrides = [*OVERRIDES, "iterations=2", "task.n_train=6", "task.n_test=2", "train.init=base"]
    store = RunStore.create(tmp_path / "r", load_config(None, overrides))
    Society(store, progress=False).run()
    for role in roles(2):
        info = json.loads((store.root / f"iter_2/agents/{role}/maft_train.json").read_text())
        assert info["init"] == "base"
    assert {t.adapter for t in read_jsonl(store.root / "iter_2/debate_train.jsonl", Turn)} == set(roles(2))
