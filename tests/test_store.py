"""The run directory: create/open guards, the manifest, atomic directories and JSONL records."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from pydantic import ValidationError

from maft.config import ConfigError, RunConfig, load_config
from maft.data.agent_data import Example
from maft.debate.transcript import Turn
from maft.debate.voting import ProblemVote
from maft.store import RunDirError, RunStore, atomic_dir, read_jsonl, write_json, write_jsonl, write_text


@pytest.fixture
def config():
    return load_config(None, ["seed=3", "debate.rounds=3"])


def test_create_writes_config_and_manifest(tmp_path, config):
    root = tmp_path / "runs" / "a"  # parents are created
    store = RunStore.create(root, config)
    assert store.root == root and store.config == config
    assert sorted(p.name for p in root.iterdir()) == [".lock", "config.yaml", "manifest.json", "versions.json"]
    assert (root / "config.yaml").read_text() == config.to_yaml()
    assert RunConfig.model_validate(yaml.safe_load((root / "config.yaml").read_text())) == config
    assert json.loads((root / "manifest.json").read_text()) == {"config_hash": config.hash(), "stages": {}}


def test_create_accepts_an_existing_empty_directory(tmp_path, config):
    RunStore.create(tmp_path, config)
    assert (tmp_path / "manifest.json").is_file()


def test_create_refuses_a_directory_that_holds_a_run(tmp_path, config):
    RunStore.create(tmp_path / "run", config)
    with pytest.raises(RunDirError, match="already holds a run"):
        RunStore.create(tmp_path / "run", config)
    with pytest.raises(RunDirError, match="already holds a run"):
        RunStore.create(tmp_path / "run", RunConfig())


def test_create_refuses_a_non_empty_directory(tmp_path, config):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not empty"):
        RunStore.create(tmp_path, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing was written
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_open_returns_the_run(tmp_path, config):
    RunStore.create(tmp_path, config).finish("iter_0/debate", 2.0)
    store = RunStore.open(tmp_path, config)
    assert store.config == config and store.done("iter_0/debate")
    store = RunStore.open(tmp_path)  # no config: the run's own
    assert store.config == config and store.seconds("iter_0/debate") == 2.0


def test_open_refuses_a_directory_without_a_run(tmp_path, config):
    with pytest.raises(RunDirError, match="not a maft run directory"):
        RunStore.open(tmp_path, config)
    with pytest.raises(RunDirError, match="not a maft run directory"):
        RunStore.open(tmp_path / "missing")


def test_open_refuses_a_different_config_listing_the_changes(tmp_path, config):
    RunStore.create(tmp_path, config)
    other = load_config(None, ["seed=3", "debate.rounds=3", "debate.agents=5", "train.lora_r=4"])
    with pytest.raises(RunDirError) as info:
        RunStore.open(tmp_path, other)
    message = str(info.value)
    assert "refusing to resume" in message
    changes = [line.strip() for line in message.splitlines() if " -> " in line]
    assert changes == ["debate.agents: 3 -> 5", "train.lora_r: 8 -> 4"]  # exactly the changed keys
    # the run itself is untouched
    assert json.loads((tmp_path / "manifest.json").read_text())["config_hash"] == config.hash()


def test_open_refuses_an_edited_config_yaml(tmp_path, config):
    RunStore.create(tmp_path, config).finish("iter_0/debate", 1.0)
    edited = config.model_copy(update={"seed": 4})
    (tmp_path / "config.yaml").write_text(edited.to_yaml())
    with pytest.raises(RunDirError, match="edited after the run started"):
        RunStore.open(tmp_path)
    # even when asked to resume with the edited values
    with pytest.raises(RunDirError, match="edited after the run started"):
        RunStore.open(tmp_path, edited)


def test_finish_done_seconds(tmp_path, config):
    store = RunStore.create(tmp_path, config)
    assert not store.done("iter_0/debate") and store.seconds("iter_0/debate") is None
    store.finish("iter_0/debate", 1.23456, turns=18)
    assert store.done("iter_0/debate") and not store.done("iter_0/train")
    assert store.seconds("iter_0/debate") == 1.235
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    entry = on_disk["stages"]["iter_0/debate"]
    assert entry["seconds"] == 1.235 and entry["turns"] == 18 and isinstance(entry["finished_at"], float)
    assert on_disk["config_hash"] == config.hash()

    store.finish("iter_0/train", 0.0)
    reopened = RunStore.open(tmp_path, config)
    assert reopened.done("iter_0/debate") and reopened.done("iter_0/train")
    assert reopened.seconds("iter_0/debate") == 1.235 and reopened.seconds("iter_0/train") == 0.0
    assert reopened.manifest["stages"]["iter_0/debate"]["turns"] == 18
    assert list(reopened.manifest["stages"]) == ["iter_0/debate", "iter_0/train"]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_iter_dir(tmp_path, config):
    assert RunStore.create(tmp_path, config).iter_dir(2) == tmp_path / "iter_2"


def test_atomic_dir_success_creates_the_directory(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.is_dir() and not target.exists()
        (tmp / "weights.bin").write_text("w")
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_dir_leaves_nothing_when_the_block_raises(tmp_path):
    target = tmp_path / "adapter"
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_text("partial")
            raise RuntimeError("crash")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_failure_keeps_the_previous_directory(tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "new.bin").write_text("new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["old.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_dir_replaces_an_existing_directory(tmp_path):
    target = tmp_path / "adapter"
    (target / "sub").mkdir(parents=True)
    (target / "old.bin").write_text("old")
    (target / "sub" / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.bin").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert (target / "new.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_atomic_dir_discards_a_stale_temporary(tmp_path):
    target = tmp_path / "adapter"
    stale = tmp_path / ".tmp-adapter"
    stale.mkdir()
    (stale / "stale.bin").write_text("from a crashed run")
    with atomic_dir(target) as tmp:
        assert list(tmp.iterdir()) == []
        (tmp / "fresh.bin").write_text("fresh")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.bin"]


def test_open_removes_leftover_temporaries(tmp_path, config):
    RunStore.create(tmp_path, config)
    it = tmp_path / "iter_0"
    (it / ".tmp-adapter_0" / "deep").mkdir(parents=True)
    (it / ".tmp-adapter_0" / "deep" / "w.bin").write_text("partial")
    (it / ".tmp-turns.jsonl").write_text("{}\n")
    (it / "turns.jsonl").write_text("{}\n")
    (it / "adapter_1").mkdir()
    (it / "adapter_1" / "w.bin").write_text("done")
    (tmp_path / ".tmp-manifest.json").write_text("{}")
    RunStore.open(tmp_path, config)
    remaining = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert remaining == [
        ".lock",
        "config.yaml",
        "iter_0",
        "iter_0/adapter_1",
        "iter_0/adapter_1/w.bin",
        "iter_0/turns.jsonl",
        "manifest.json",
        "versions.json",
    ]


def test_write_text_and_json_are_atomic_and_create_parents(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    write_json(path, {"k": [1, 2]})
    assert json.loads(path.read_text()) == {"k": [1, 2]}
    write_text(path, "replaced")
    assert path.read_text() == "replaced"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_jsonl_round_trip_of_pydantic_models(tmp_path):
    turns = [
        Turn(
            problem_id="p1",
            agent=1,
            round=2,
            adapter="iter_1/critic_1",
            messages=[
                {"role": "user", "content": "What is 2+2? \\boxed{answer}"},
                {"role": "assistant", "content": "It is \\boxed{4}\nnew line, ünïcödé"},
                {"role": "user", "content": "critic"},
            ],
            response="\\boxed{4}",
            answer="4",
            correct=True,
            completion_tokens=12,
        ),
        Turn(
            problem_id="p2",
            agent=0,
            round=1,
            adapter=None,
            messages=[{"role": "user", "content": "q"}],
            response="no idea",
            answer=None,
            correct=False,
            completion_tokens=0,
        ),
    ]
    path = tmp_path / "iter_0" / "turns.jsonl"
    write_jsonl(path, turns)
    assert len(path.read_text().splitlines()) == 2
    assert read_jsonl(path, Turn) == turns

    votes = [
        ProblemVote(problem_id="p1", label="4", count=2, voters=3, agents=3, classes=[[0, 2], [1]], correct=True),
        ProblemVote(problem_id="p2", label=None, count=0, voters=0, agents=3, classes=[], correct=False),
    ]
    write_jsonl(tmp_path / "votes.jsonl", votes)
    back = read_jsonl(tmp_path / "votes.jsonl", ProblemVote)
    assert back == votes and back[1].label is None and back[0].classes == [[0, 2], [1]]

    examples = [
        Example(
            prompt=[{"role": "user", "content": "q"}],
            completion=[{"role": "assistant", "content": "a"}],
            problem_id="p1",
            agent=2,
            kind="critic-",
        )
    ]
    write_jsonl(tmp_path / "data.jsonl", iter(examples))  # any iterable, e.g. a generator
    assert read_jsonl(tmp_path / "data.jsonl", Example) == examples


def test_jsonl_dicts_empty_files_and_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(
        path,
        [{"problem_id": "p", "label": "1", "count": 1, "voters": 1, "agents": 1, "classes": [[0]], "correct": True}],
    )
    (vote,) = read_jsonl(path, ProblemVote)
    assert vote.label == "1" and vote.unanimous
    write_jsonl(path, [])
    assert path.read_text() == "" and read_jsonl(path, ProblemVote) == []
    path.write_text(
        '\n{"problem_id": "p", "label": null, "count": 0, "voters": 0, "agents": 2, '
        '"classes": [], "correct": false}\n\n'
    )
    assert [v.label for v in read_jsonl(path, ProblemVote)] == [None]


def test_a_run_in_use_by_another_process_is_refused(tmp_path):
    import subprocess
    import sys
    import time

    from maft import store as store_module

    root = tmp_path / "run"
    RunStore.create(root, RunConfig())
    store_module._LOCKS.pop(root.resolve()).close()  # as if this process had exited
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from maft.store import RunStore; "
            f"RunStore.open(Path({str(root)!r})); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match="another maft process is using"):
            RunStore.open(root)
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    RunStore.open(root)  # free again once the other process is gone


def test_two_processes_writing_one_file_each_publish_theirs_whole(tmp_path):
    """Two comparisons sharing a folder (.shared/) may write the same base debate at once: each process writes its
    own temporary, so neither fails nor mixes its bytes into the other's file; the file is one of the two whole."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "debate.jsonl"
    started, release = tmp_path / "started", tmp_path / "release"
    other = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from maft.store import atomic_file
        with atomic_file(Path({str(path)!r})) as tmp:
            with open(tmp, "w") as f:
                f.write("other " * 1000)
                f.flush()
                Path({str(started)!r}).touch()
                while not Path({str(release)!r}).exists():
                    time.sleep(0.01)
                f.write("end\\n")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", other])
    try:
        while not started.exists():
            assert proc.poll() is None, "the other writer ended early"
        write_text(path, "mine\n")  # while the other process is halfway through its own temporary
        assert path.read_text() == "mine\n"
        release.touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert path.read_text() == "other " * 1000 + "end\n"  # the last rename wins, whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_run_another_process_is_creating_is_left_to_it(tmp_path):
    """Two maft run --out X at once: the second finds the first's temporary folder locked and is refused, leaving
    it untouched (it used to remove it and take a lock of its own, so both went on); a leftover of a killed
    creation, locked by nobody, is replaced."""
    import subprocess
    import sys

    root = tmp_path / "run"
    creating = tmp_path / ".tmp-run"
    creating.mkdir()
    (creating / "config.yaml").write_text("being written\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(60)",
            str(creating / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match="another maft process is creating"):
            RunStore.create(root, RunConfig())
        assert (creating / "config.yaml").read_text() == "being written\n" and not root.exists()
    finally:
        holder.kill()
        holder.wait()
    RunStore.create(root, RunConfig())
    assert (root / "manifest.json").is_file() and not creating.exists()


def test_a_run_saved_before_a_rule_for_new_runs_still_opens(tmp_path):
    """Rules added for new runs (a negative seed, a warmup the constant schedule ignores, rationalizations that
    would be dropped, no LoRA targets) refuse a new config, but a run saved with such settings before the rule
    existed still opens, resumes and reports: its config is read back as saved."""
    old = {
        "seed": -3,
        "train": {"warmup_ratio": 0.05, "lr_scheduler": "constant", "lora_target_modules": []},
        "data": {"rationalize": True, "label": "gold", "shared_from": "majority_responses"},
        "debate": {"agents": 1, "rounds": 1},
    }
    old["train"]["shared"] = True
    with pytest.raises(ValidationError) as refused:
        RunConfig.model_validate(old)
    assert "names no module" in str(refused.value)  # the first rule it meets
    root = tmp_path / "run"
    RunStore.create(root, RunConfig.saved(old))
    from maft import store as store_module

    store_module._LOCKS.pop(root.resolve()).close()  # as if this process had exited
    reopened = RunStore.open(root)
    assert reopened.config.seed == -3 and reopened.config.train.warmup_ratio == 0.05
    resumed = load_config(None, ["execution.generation_batch_size=8"], base=reopened.config, saved=True)  # --set
    assert resumed.seed == -3
    with pytest.raises(ConfigError, match="warmup_ratio=0.05 would do nothing"):  # a new config on top of it (a
        load_config(None, ["train.lora_target_modules=all-linear"], base=reopened.config)  # comparison's method)


def test_temporaries_of_dead_processes_are_discarded_from_a_shared_folder(tmp_path):
    """.shared/ is written by several comparisons outside any run's lock: a temporary left by a killed process is
    removed; one of a live process (this one, another) is left to it."""
    import subprocess
    import sys

    from maft.store import discard_dead_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f".tmp-{dead.stdout.strip()}-debate.jsonl"
    mine = tmp_path / f".tmp-{os.getpid()}-other.jsonl"
    alive = tmp_path / ".tmp-1-init.jsonl"  # pid 1 is always running
    for path in (left, mine, alive):
        path.write_text("half")
    discard_dead_temporaries(tmp_path)
    assert not left.exists() and mine.exists() and alive.exists()
