"""Experiment tracking (execution.report_to, maft.tracking) through the real tiny model, real TRL training and
real TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from maft.agents import trained_roles
from maft.checks import SetupError, check_tracking
from maft.cli import app
from maft.config import ExecutionConfig, TrainConfig, load_config
from maft.data.agent_data import Example
from maft.evaluation.metrics import IterationMetrics
from maft.loop import Society
from maft.store import RunStore
from maft.tiny import default_checkpoint
from maft.tracking import (
    SOCIETY,
    Tracking,
    iteration_scalars,
    read_scalars,
    trainer_arguments,
    trainer_callbacks,
)
from maft.training.concurrent import RoleRun, finetune_together
from maft.training.sft import finetune, sft_config

pytest.importorskip("tensorboard")


def events(path: Path) -> list[Path]:
    return sorted(path.rglob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def examples(arithmetic):
    return [
        Example(
            prompt=[{"role": "user", "content": arithmetic.prompt(p)}],
            completion=[{"role": "assistant", "content": f"The answer is {p.answer}."}],
            problem_id=p.id,
            agent=0,
            kind="generation",
        )
        for p in arithmetic.splits(12, 1, seed=9).train
    ]


# -- config --------------------------------------------------------------------------------------------------
def test_report_to_defaults_to_none_and_takes_one_name_or_several():
    assert ExecutionConfig().report_to == ["none"]
    assert ExecutionConfig(report_to="tensorboard").report_to == ["tensorboard"]
    assert ExecutionConfig(report_to=["tensorboard", "wandb"]).report_to == ["tensorboard", "wandb"]
    assert load_config(None, ["execution.report_to=[tensorboard]"]).execution.report_to == ["tensorboard"]
    with pytest.raises(ValidationError, match="'none' cannot go with a backend"):
        ExecutionConfig(report_to=["none", "tensorboard"])
    with pytest.raises(ValidationError):
        ExecutionConfig(report_to="tensorbord")


def test_tracking_is_not_part_of_what_a_run_computes():
    base = load_config(None, [])
    tracked = load_config(None, ["execution.report_to=tensorboard", "execution.tracking_dir=/tmp/tb"])
    assert tracked.hash() == base.hash()


def test_none_reports_nowhere(tmp_path):
    assert Tracking.of(ExecutionConfig(), tmp_path / "run", SOCIETY) is None
    assert trainer_arguments(None)["report_to"] == "none"
    args = sft_config(tmp_path / "scratch", TrainConfig(), seed=0, device="cpu", all_turns=False)
    assert args.report_to in ([], ["none"], "none")


def test_streams_are_grouped_per_run_and_role(tmp_path):
    run = tmp_path / "runs" / "r7"
    x = ExecutionConfig(report_to=["tensorboard"])
    role = Tracking.of(x, run, "gen_1/iter_2")
    assert role is not None and re.fullmatch(r"r7-[0-9a-f]{6}", role.run) and role.name == f"{role.run}/gen_1/iter_2"
    assert Path(role.logdir) == run / "tracking" / "gen_1" / "iter_2"
    shared = x.model_copy(update={"tracking_dir": str(tmp_path / "tb")})
    elsewhere = Tracking.of(shared, run, SOCIETY)
    assert elsewhere is not None and Path(elsewhere.logdir) == tmp_path / "tb" / role.run / "society"
    args = trainer_arguments(role)
    assert args["report_to"] == ["tensorboard"] and args["run_name"] == f"{role.run}/gen_1/iter_2"


def test_two_runs_never_share_a_name_or_a_tensorboard_folder(tmp_path):
    """Every method of a comparison with seeds has a seed_0, two comparisons each a maft: distinct names in the
    trackers, and in a shared tracking_dir a run clearing its role's folder leaves the other run's alone."""
    x = ExecutionConfig(report_to=["tensorboard"], tracking_dir=str(tmp_path / "tb"))
    roots = [tmp_path / "cmp" / "maft" / "seed_0", tmp_path / "cmp" / "star" / "seed_0", tmp_path / "cmp2" / "maft"]
    streams = [Tracking.of(x, root, "gen_0/iter_1") for root in roots]
    assert all(t is not None for t in streams)
    names = [t.name for t in streams if t is not None]
    assert len(set(names)) == 3 and names[0].startswith("maft/seed_0-") and names[1].startswith("star/seed_0-")
    assert Tracking.of(x, tmp_path / "cmp3" / "maft", SOCIETY).run != Tracking.of(x, roots[2], SOCIETY).run
    first, second = streams[0], streams[1]
    assert first is not None and second is not None and first.logdir != second.logdir
    Path(first.logdir).mkdir(parents=True)
    (Path(first.logdir) / "events.out.tfevents.1").write_text("run A's losses")
    second.fresh()
    assert (Path(first.logdir) / "events.out.tfevents.1").is_file()


def test_wandb_gets_the_trainers_losses_from_maft_not_from_transformers(tmp_path):
    """transformers' wandb callback logs into whatever run is open in the process (the society's): maft's own
    callback logs a role's losses to a run of the role's own instead (tracking.trainer_callbacks)."""
    both = Tracking.of(ExecutionConfig(report_to=["tensorboard", "wandb"]), tmp_path / "r", "gen_0/iter_1")
    only = Tracking.of(ExecutionConfig(report_to=["wandb"]), tmp_path / "r", "gen_0/iter_1")
    assert trainer_arguments(both)["report_to"] == ["tensorboard"]
    assert trainer_arguments(only)["report_to"] == "none"
    assert [type(c).__name__ for c in trainer_callbacks(both)] == ["LogToWandb"]
    assert trainer_callbacks(Tracking.of(ExecutionConfig(report_to=["tensorboard"]), tmp_path / "r", "s")) == []


# -- a missing backend -----------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed here")
def test_a_missing_backend_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SetupError, match=r"report_to=mlflow needs mlflow.*pip install mlflow"):
        check_tracking(ExecutionConfig(report_to="mlflow"))
    check_tracking(ExecutionConfig(report_to="tensorboard"))  # installed: no complaint
    (tmp_path / "a-file").write_text("")
    for where in ("a-file", "a-file/tb"):  # a tracking_dir that cannot be made: refused, not at the first log
        with pytest.raises(SetupError, match="execution.tracking_dir .*is a file, not a folder"):
            check_tracking(ExecutionConfig(report_to="tensorboard", tracking_dir=str(tmp_path / where)))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--out", str(out), "--set", "execution.report_to=mlflow"])
    assert res.exit_code == 2, res.output  # a usage error, as a bad config
    assert "pip install mlflow" in res.output and "Traceback" not in res.output
    assert not out.exists()  # refused before the run directory was created


# -- the trainers' losses ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_role_logs_its_training_losses(examples, tmp_path):
    run = tmp_path / "r"
    tracking = Tracking.of(ExecutionConfig(report_to="tensorboard"), run, "gen_0/iter_1")
    result = finetune(
        str(default_checkpoint()), examples, run / "out", TrainConfig(epochs=1, batch_size=4), tracking=tracking
    )
    assert tracking is not None and events(Path(tracking.logdir))
    scalars = read_scalars(tracking.logdir)
    assert sorted(scalars["train/loss"]) == list(range(1, result.steps + 1))  # every optimizer step
    assert all(v > 0 for v in scalars["train/loss"].values())
    assert result.train_loss is not None
    assert scalars["train/train_loss"][result.steps] == pytest.approx(result.train_loss, rel=1e-5)
    assert set(scalars["train/learning_rate"]) == set(scalars["train/loss"])

    written = events(tmp_path)
    again = finetune(
        str(default_checkpoint()), examples[:4], tmp_path / "untracked", TrainConfig(epochs=1, batch_size=4)
    )
    assert again.steps == 1 and events(tmp_path) == written  # no tracking: nothing written


@pytest.mark.slow
def test_roles_trained_together_log_their_own_losses(examples, tmp_path):
    run = tmp_path / "r"
    x = ExecutionConfig(report_to="tensorboard")
    cfg = TrainConfig(epochs=1, batch_size=4, lora_dropout=0)
    runs = [
        RoleRun("gen_0", examples, run / "gen_0", seed=1, tracking=Tracking.of(x, run, "gen_0/iter_1")),
        RoleRun("gen_1", examples[:4], run / "gen_1", seed=2, tracking=Tracking.of(x, run, "gen_1/iter_1")),
    ]
    results = finetune_together(str(default_checkpoint()), runs, cfg, device="cpu")
    for role in ("gen_0", "gen_1"):
        scalars = read_scalars(run / "tracking" / role / "iter_1")
        steps = results[role].steps
        assert sorted(scalars["train/loss"]) == list(range(1, steps + 1))
        assert scalars["train/train_loss"][steps] == pytest.approx(results[role].train_loss, rel=1e-5)
        assert sum(scalars["train/loss"].values()) / steps == pytest.approx(results[role].train_loss, rel=1e-4)
    assert results["gen_0"].steps == 3 and results["gen_1"].steps == 1


# -- the loop's metrics -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_society_logs_each_iteration_once(tmp_path):
    root = tmp_path / "r"
    overrides = [
        "iterations=1",
        "debate.agents=2",
        "task.n_train=8",
        "task.n_test=2",
        "train.epochs=1",
        "diversity.embeddings=off",
        "train.batch_size=4",
        "execution.report_to=[tensorboard]",
    ]
    store = RunStore.create(root, load_config(None, overrides))
    society = Society(store, progress=False)
    try:
        society.run()
    finally:
        society.close()
    recorded = [IterationMetrics.model_validate(m) for m in json.loads((root / "metrics.json").read_text())]
    scalars = read_scalars(root / "tracking" / SOCIETY)
    assert set(scalars["test/majority"]) == {0, 1}  # step = iteration
    for m in recorded:
        expected = iteration_scalars(m)
        assert expected["test/majority"] == m.test.majority.mean
        logged = {tag: steps[m.iteration] for tag, steps in scalars.items() if m.iteration in steps}
        assert set(logged) == set(expected)
        for tag, value in expected.items():
            assert logged[tag] == pytest.approx(value, rel=1e-6, abs=1e-6), tag
    assert "train/loss/gen_0" in scalars and 0 not in scalars["train/loss/gen_0"]
    for role in trained_roles(store.config):  # each role's trainer losses, in its own directory
        assert read_scalars(root / "tracking" / role / "iter_1")["train/loss"]

    before = {p: p.stat().st_size for p in events(root / "tracking")}
    again = Society(RunStore.open(root, store.config), progress=False)
    try:
        again.run()  # everything finished earlier: nothing is logged twice
    finally:
        again.close()
    assert {p: p.stat().st_size for p in events(root / "tracking")} == before
    # a run stopped between iteration 1's metrics stage and its logging: the resume logs it, and only it
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stages"]["iter_0/metrics"]["tracked"] and manifest["stages"]["iter_1/metrics"]["tracked"]
    manifest["stages"]["iter_1/metrics"]["tracked"] = False
    (root / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(root / "tracking" / SOCIETY)
    resumed = Society(RunStore.open(root, store.config), progress=False)
    try:
        resumed.run()
    finally:
        resumed.close()
    assert set(read_scalars(root / "tracking" / SOCIETY)["test/majority"]) == {1}
    assert json.loads((root / "manifest.json").read_text())["stages"]["iter_1/metrics"]["tracked"]
    # a stage recorded before the record existed (a run of an older maft) was logged when it ran: not again
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["stages"]["iter_0/metrics"]["tracked"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    logged = {p: p.stat().st_size for p in events(root / "tracking")}
    old = Society(RunStore.open(root, store.config), progress=False)
    try:
        old.run()
    finally:
        old.close()
    assert {p: p.stat().st_size for p in events(root / "tracking")} == logged
