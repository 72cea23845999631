"""`maft run` as a user runs it: a real process, killed with SIGKILL mid-run, then resumed; bad input refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = [
    "--set",
    "debate.agents=2",
    "--set",
    "task.n_train=10",
    "--set",
    "task.n_test=6",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=4",
    "--iterations",
    "2",
]


def maft(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maft.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        **kwargs,
    )


def stages(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())["stages"]


def test_kill_9_mid_run_then_resume_redoes_no_finished_stage(tmp_path):
    root = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maft.cli", "run", "--out", str(root), "--quiet", *SMALL],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (root / "manifest.json").exists() and "iter_1/train/gen_0" in stages(root):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    finished = stages(root)
    assert "iter_1/train/gen_0" in finished and "iter_2/metrics" not in finished
    kept = {p: p.stat().st_mtime_ns for p in (root / "iter_1").rglob("*") if p.is_file()}

    result = maft("run", "--resume", str(root), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    after = stages(root)
    for name, entry in finished.items():  # nothing finished before the kill was redone
        assert after[name] == entry, name
        assert f"{name}: finished earlier" in result.stdout
    assert "iter_2/metrics" in after and not list(root.rglob(".tmp-*"))
    for path, mtime in kept.items():
        if path.parent.name in ("gen_0",) or path.name in ("debate_train.jsonl", "votes.jsonl"):
            assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    # iteration 2 continues from iteration 1's agents (train.init=previous, the default)
    info = json.loads((root / "iter_2/agents/critic_1/maft_train.json").read_text())
    assert info["init"] == str(root / "iter_1/agents/critic_1")
    assert "majority" in result.stdout and len(json.loads((root / "metrics.json").read_text())) == 3


def test_resume_refuses_a_changed_config_and_new_run_refuses_an_existing_dir(tmp_path):
    root = tmp_path / "run"
    first = maft("run", "--out", str(root), "--quiet", *SMALL[:-2], "--iterations", "0")
    assert first.returncode == 0, first.stdout + first.stderr
    changed = maft("run", "--resume", str(root), "--set", "debate.agents=3")
    assert changed.returncode == 2
    assert "refusing to resume" in changed.stdout and "debate.agents: 2 -> 3" in changed.stdout
    again = maft("run", "--out", str(root))
    assert again.returncode == 2 and "--resume" in again.stdout
    saved = (root / "config.yaml").read_text()
    refused = maft("run", "--resume", str(root), "--set", "execution.device=cuda")  # this machine has no CUDA
    assert refused.returncode == 2 and "execution.device" in refused.stdout, refused.stdout
    assert (root / "config.yaml").read_text() == saved  # a refused value is not saved over the working one
    smaller = maft(
        "run", "--resume", str(root), "--set", "execution.generation_batch_size=8"
    )  # execution settings may change
    assert smaller.returncode == 0, smaller.stdout + smaller.stderr
    assert "changed on resume: execution.generation_batch_size: None -> 8" in smaller.stdout
    assert "batch_size: 8" in (root / "config.yaml").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "debate.agentz=3"], "debate.agentz"),
        (["--set", "debate.top_p=1.5"], "debate.top_p"),
        (["--set", "task.name=nope"], "unknown task 'nope'"),
        (["--set", "task.name=jsonl", "--set", "task.options.path=/no/such.jsonl"], "/no/such.jsonl"),
        (["--set", "model.name=/no/such/model"], "/no/such/model"),
        (
            [
                "--set",
                "task.name=jsonl",
                "--set",
                f"task.options.path={FIXTURES / 'custom.jsonl'}",
                "--set",
                "task.n_train=100",
            ],
            "only 6 exist",
        ),
    ],
)
def test_bad_input_is_refused_before_any_run_directory_exists(tmp_path, args, message):
    root = tmp_path / "run"
    result = maft("run", "--out", str(root), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stdout
    assert not root.exists()


def test_compare_then_report_from_the_command_line(tmp_path):
    out = tmp_path / "cmp"
    small = ["--set", "task.n_test=6", "--set", "diversity.likelihood=false"]
    result = maft("compare", "--methods", "single,majority", "--out", str(out), "--quiet", *small)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "majority vote over N independent samples" in result.stdout and "the report" in result.stdout
    lines = (out / "comparison.md").read_text().splitlines()
    main = [
        line.split(" | ") for line in lines if line.startswith(("| single |", "| majority |")) and line.count("|") == 9
    ]
    assert [row[0] for row in main] == ["| single", "| majority"]
    assert all(row[5] == "0" for row in main)  # no training examples without finetuning
    result = maft("report", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "report" / "index.html").is_file() and (out / "report" / "accuracy.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--method", "nope"], "unknown method 'nope'"),
        (["compare", "--methods", "maft,nope"], "unknown method(s) nope"),
        (["compare", "--set", "debate.agents=0"], "debate.agents"),
        (["transfer", "no/such/run", "--task", "gsm8k"], "not a maft run directory"),
        (["evaluate", "--run", "no/such/run", "--task", "gsm8k"], "not a maft run directory"),  # deprecated alias
        (["report", "no/such/run"], "does not exist"),
    ],
)
def test_bad_input_to_the_other_commands_is_refused(tmp_path, args, message):
    result = maft(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stdout
    assert not (tmp_path / "runs").exists()
