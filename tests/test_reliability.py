"""Reliability: bad files and failing disks end in one clear line, crashes leave nothing half-made, and resume
checks what it keeps. Everything is real: real processes (killed with SIGKILL or Ctrl-C at a precise point
through an audit hook), real permissions (as root, with the capabilities that bypass them dropped), a real
full filesystem (a tiny tmpfs in a private mount namespace) and the real tiny model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interrupt import sigint_default

from maft.config import RunConfig, load_config
from maft.store import RunDirError, RunStore, write_json, write_text

FIXTURES = Path(__file__).parent / "fixtures"
TINY = [
    "--set",
    "debate.agents=1",
    "--set",
    "debate.rounds=1",
    "--set",
    "task.n_train=2",
    "--set",
    "task.n_test=2",
    "--set",
    "debate.max_new_tokens=16",
    "--set",
    "diversity.enabled=false",
    "--iterations",
    "0",
    "--quiet",
]
ENV = {**os.environ, "COLUMNS": "1000"}  # rich wraps at the terminal width; one message = one line here

#: Runs a script and SIGKILLs it right after it opens, for writing, a file whose name ends with argv[1]
#: (the open has happened: the kill comes at the next Python event after the audit hook).
KILLER = r"""
import os, runpy, signal, sys
suffix, armed = sys.argv[1], False
def hook(event, args):
    global armed
    if event != "open" or armed or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    mode, flags = args[1], args[2]
    writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & (os.O_WRONLY | os.O_RDWR))
    if writing and os.fsdecode(args[0]).endswith(suffix):
        armed = True
        sys.setprofile(profile)
def profile(frame, event, arg):
    if frame.f_code is not hook.__code__:
        os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def maft(*args: str, prefix: list[str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "maft.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        **kwargs,
    )


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with one ``error:`` line holding every needle, and no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode not in (0, None), output
    assert "Traceback" not in output, output
    lines = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], output
    return lines[0]


def run_killed(tmp_path: Path, suffix: str, script: str, *args: str) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "script.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "killer.py"), suffix, str(tmp_path / "script.py"), *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr  # it was killed where asked


# -- permissions, for real also as root -------------------------------------------------------------------
def unprivileged() -> list[str]:
    """A command prefix under which file permissions bind (root: drop the capabilities that bypass them)."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def read_only(*paths: Path) -> None:
    for path in paths:
        path.chmod(0o555)
    probe = paths[0] / "probe"
    blocked = subprocess.run([*unprivileged(), "sh", "-c", f"touch '{probe}'"], capture_output=True).returncode != 0
    if not blocked:
        probe.unlink()
        pytest.skip("cannot make a directory read-only here")


@pytest.fixture
def restore_permissions():
    paths: list[Path] = []
    yield paths
    for path in paths:
        if path.exists():
            path.chmod(0o755)


# -- a finished run (the real tiny model), copied by each test that changes it ----------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished") / "run"
    result = maft("run", "--out", root, *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(finished_run, root)
    return root


def stages(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())["stages"]


def new_run(root: Path, config: RunConfig) -> Path:
    """A new, empty run that this process does not hold (as if made by another process)."""
    from maft import store as store_module

    RunStore.create(root, config)
    store_module._LOCKS.pop(root.resolve()).close()
    return root


@pytest.fixture
def config():
    return load_config(None, ["seed=3", "debate.rounds=3"])


# == 4. wrong-typed JSONL fields are refused before any compute ===================================================
def test_wrong_typed_jsonl_fields_are_refused_before_any_run_directory_exists(tmp_path):
    data = tmp_path / "typed.jsonl"
    data.write_text("".join(json.dumps({"question": {"x": 1}, "answer": [1]}) + "\n" for _ in range(100)))
    root = tmp_path / "run"
    result = maft(
        "run",
        "--out",
        root,
        "--set",
        "task.name=jsonl",
        "--set",
        f"task.options.path={data}",
        "--set",
        "task.n_train=10",
        "--set",
        "task.n_test=10",
    )
    assert result.returncode == 2
    one_line_error(result, str(data), "row 1", "'question'", "must be a string", "got an object")
    assert not root.exists()


@pytest.mark.parametrize(
    "row, message",
    [
        ({"question": "1+1?", "answer": [2]}, "field 'answer' must be a string or a number, got a list"),
        ({"question": "1+1?", "answer": True}, "field 'answer' must be a string or a number, got a boolean"),
        ({"question": ["1+1?"], "answer": "2"}, "field 'question' must be a string, got a list"),
        ({"question": "1+1?", "answer": "2", "id": {"a": 1}}, "field 'id' must be a string or a number, got an object"),
        ({"question": "1+1?", "answer": "2", "choices": "AB"}, "field 'choices' must be a list, got a string"),
        ({"question": "1+1?", "answer": "2", "grader": ["math"]}, "field 'grader' must be a string, got a list"),
        ({"question": "  ", "answer": "2"}, "field 'question' is empty"),
        ({"question": "1+1?", "answer": ""}, "field 'answer' is empty"),
    ],
)
def test_each_wrong_typed_or_empty_field_is_named_with_its_row(tmp_path, row, message):
    from maft.tasks import get_task

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "2+2?", "answer": 4}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError) as info:
        get_task("jsonl", path=str(data)).splits(0, 2)
    assert f"row 2 of {data}" in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


# == 5. one line instead of a traceback ============================================================================
def test_a_yaml_syntax_error_in_the_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("debate:\n  agents: [1, 2\nseed: 1\n")
    result = maft("run", "--config", bad, "--out", tmp_path / "run")
    assert result.returncode == 2
    one_line_error(result, str(bad), "not valid YAML at line")
    assert not (tmp_path / "run").exists()


def test_a_yaml_syntax_error_in_a_runs_config_on_resume_is_one_line(tmp_path, config):
    root = tmp_path / "run"
    new_run(root, config)
    (root / "config.yaml").write_text("seed: 3\ndebate: {rounds: 3\n")
    result = maft("run", "--resume", root)
    assert result.returncode == 2
    one_line_error(result, str(root / "config.yaml"), "not valid YAML", "cannot be resumed")


def test_a_bad_set_value_is_one_line(tmp_path):
    result = maft("run", "--out", tmp_path / "run", "--set", "debate.agents=[3")
    assert result.returncode == 2
    one_line_error(result, "debate.agents=[3", "not valid YAML")


def test_non_utf8_config_files_are_named(tmp_path, config):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("seed: 1  # r\xe9glage\n".encode("latin-1"))
    result = maft("run", "--config", bad, "--out", tmp_path / "new")
    one_line_error(result, str(bad), "not UTF-8")
    root = tmp_path / "run"
    new_run(root, config)
    (root / "config.yaml").write_bytes(b"\xff\xfe" + config.to_yaml().encode("utf-16-le"))
    result = maft("run", "--resume", root)
    one_line_error(result, str(root / "config.yaml"), "not UTF-8")


@pytest.mark.parametrize(
    "line, kind", [("[1, 2]", "a list"), ("null", "null"), ("42", "a number"), ('"q"', "a string")]
)
def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path, line, kind):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n\n" + line + "\n")
    result = maft("run", "--out", tmp_path / "run", "--set", "task.name=jsonl", "--set", f"task.options.path={data}")
    assert result.returncode == 2
    error = one_line_error(result, f"{data}:3:", f"expected a JSON object with the row's fields, got {kind}")
    assert "bad options" not in error
    assert not (tmp_path / "run").exists()


def test_a_non_utf8_task_file_is_named_with_its_line(tmp_path):
    data = tmp_path / "rows.jsonl"
    good = json.dumps({"question": "1+1?", "answer": "2"}) + "\n"
    data.write_bytes(good.encode() + '{"question": "caf\xe9?", "answer": "1"}\n'.encode("latin-1"))
    result = maft("run", "--out", tmp_path / "run", "--set", "task.name=jsonl", "--set", f"task.options.path={data}")
    one_line_error(result, f"{data}:2:", "not UTF-8")
    # a byte-order mark is fine
    data.write_bytes(b"\xef\xbb\xbf" + (good * 4).encode())
    from maft.tasks import get_task

    assert len(get_task("jsonl", path=str(data)).problems()["all"]) == 4


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"[]", "it holds a list, not an object"),
        (b'{"config_hash": "HASH"}', "it has no stages"),
        (b'{"stages": {}}', "it has no config_hash"),
        (b'{"config_hash": "HASH", "stages": {"iter_0/debate_test": 3}}', "'iter_0/debate_test' has no seconds"),
        (b'{"config_hash": "HASH", "sta', "it is not valid JSON"),
        (b"", "it is empty"),
        (b'{"config_hash": "\xff"}', "it is not UTF-8 text"),
    ],
)
def test_a_broken_manifest_is_one_line(tmp_path, config, content, problem):
    root = tmp_path / "run"
    new_run(root, config)
    (root / "manifest.json").write_bytes(content.replace(b"HASH", config.hash().encode()))
    result = maft("run", "--resume", root)
    assert result.returncode == 2
    one_line_error(result, str(root / "manifest.json"), problem, "cannot be resumed")
    with pytest.raises(RunDirError, match="not a valid maft manifest"):
        RunStore.open(root)


def test_a_read_only_run_directory_is_one_line(tmp_path, config, restore_permissions):
    root = tmp_path / "run"
    new_run(root, config)
    restore_permissions.append(root)
    read_only(root)
    result = maft("run", "--resume", root, *TINY[-1:], prefix=unprivileged())
    assert result.returncode == 2
    one_line_error(result, str(root / "manifest.json"), "Permission denied")
    # the lock file itself read-only too
    (root / ".lock").chmod(0o444)
    result = maft("run", "--resume", root, prefix=unprivileged())
    one_line_error(result, str(root / ".lock"), "Permission denied")


def test_a_new_run_in_a_read_only_directory_is_one_line(tmp_path, restore_permissions):
    parent = tmp_path / "ro"
    parent.mkdir()
    restore_permissions.append(parent)
    read_only(parent)
    result = maft("run", "--out", parent / "run", *TINY, prefix=unprivileged())
    assert result.returncode == 2
    one_line_error(result, f"cannot create the run directory {parent / 'run'}", "Permission denied")
    assert list(parent.iterdir()) == []


def test_a_read_only_folder_midway_stops_the_run_with_one_line(run_copy, restore_permissions):
    """The write fails in the middle of the run (iter_0/metrics is redone into a read-only folder)."""
    (run_copy / "iter_0" / "metrics.json").unlink()
    restore_permissions.append(run_copy / "iter_0")
    read_only(run_copy / "iter_0")
    result = maft("run", "--resume", run_copy, "--quiet", prefix=unprivileged())
    assert result.returncode == 1
    one_line_error(result, str(run_copy / "iter_0" / "metrics.json"), "Permission denied", "--resume")
    assert "iter_0/debate_test: finished earlier" in result.stdout


def _private_tmpfs(mount: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a 1 MiB tmpfs at ``mount``, in a private mount namespace (gone afterwards)."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare: cannot make a small filesystem")
    userns = [] if os.geteuid() == 0 else ["--map-root-user"]
    probe = subprocess.run(
        [
            "unshare",
            *userns,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=1m tmpfs '{mount}'",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        [
            "unshare",
            *userns,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs -o size=1m tmpfs '{mount}' && {script}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )


def test_a_full_disk_is_one_line(run_copy, tmp_path):
    """A real ENOSPC: the run directory on a tmpfs filled to the last block."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = _private_tmpfs(
        mount,
        f"cp -a '{run_copy}' '{mount}/run' && (dd if=/dev/zero of='{mount}/filler' bs=4k 2>/dev/null; true) && "
        f"'{sys.executable}' -m maft.cli run --resume '{mount}/run' --quiet",
    )
    assert result.returncode == 2
    one_line_error(result, f"{mount}/run/manifest.json", "No space left on device", "free some space")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, config):
    """ENOSPC for real from /dev/full, in place of the manifest's temporary file."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    store = RunStore.create(tmp_path / "run", config)
    before = store.manifest_path.read_text()
    temporary = store.root / f".tmp-{os.getpid()}-manifest.json"  # this process's temporary of the manifest
    temporary.symlink_to("/dev/full")
    with pytest.raises(OSError) as info:
        store.finish("iter_0/debate_test", 1.0)
    assert info.value.errno == 28 and info.value.filename == str(store.manifest_path)
    assert store.manifest_path.read_text() == before
    assert not temporary.is_symlink()


def test_maft_report_on_unreadable_unwritable_or_malformed_files_is_one_line(run_copy, restore_permissions):
    metrics = run_copy / "metrics.json"
    restore_permissions.append(run_copy / "report")
    metrics.chmod(0o000)
    result = maft("report", run_copy, prefix=unprivileged())
    if result.returncode == 0 and os.geteuid() != 0:
        pytest.skip("cannot make a file unreadable here")
    assert result.returncode == 2
    one_line_error(result, str(metrics), "Permission denied")
    metrics.chmod(0o644)
    read_only(run_copy / "report")
    result = maft("report", run_copy, prefix=unprivileged())
    assert result.returncode == 2
    one_line_error(result, str(run_copy / "report"), "Permission denied")
    metrics.write_text("[{")
    result = maft("report", run_copy)
    assert result.returncode == 2
    one_line_error(result, f"cannot write the report of {run_copy}")


# -- outputs of finished stages are checked on resume -----------------------------------------------------------
def test_finished_stages_record_their_outputs(finished_run):
    entries = stages(finished_run)
    outputs = entries["iter_0/debate_test"]["outputs"]
    assert list(outputs) == ["iter_0/debate_test.jsonl"]
    data = (finished_run / "iter_0/debate_test.jsonl").read_bytes()
    import hashlib

    assert outputs["iter_0/debate_test.jsonl"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert list(entries["iter_0/metrics"]["outputs"]) == ["iter_0/metrics.json"]


def test_a_deleted_output_is_redone_on_resume(run_copy):
    (run_copy / "iter_0" / "metrics.json").unlink()
    result = maft("run", "--resume", run_copy, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "iter_0/metrics: its output iter_0/metrics.json is missing; the stage will be redone" in result.stdout
    assert "metrics.json, summary.md, report withdrawn until the run finishes again" in result.stdout
    assert "iter_0/debate_test: finished earlier" in result.stdout
    assert (run_copy / "iter_0" / "metrics.json").is_file()
    assert all((run_copy / name).exists() for name in ("metrics.json", "summary.md", "report/index.html"))  # again
    entry = stages(run_copy)["iter_0/metrics"]
    assert "redo" not in entry and entry["outputs"]["iter_0/metrics.json"]["size"] > 0


@pytest.mark.slow
def test_a_truncated_output_is_redone_on_resume(run_copy):
    path = run_copy / "iter_0" / "debate_test.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    result = maft("run", "--resume", run_copy, "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"iter_0/debate_test: its output iter_0/debate_test.jsonl changed size ({len(whole)} -> {len(whole) // 2}"
        " bytes); the stage will be redone"
    ) in result.stdout
    assert "iter_0/debate_test: done in" in result.stdout
    assert "iter_0/debate_test: redone with" in result.stdout  # and what that means for iter_0/metrics
    assert len(path.read_text().splitlines()) == len(whole.decode().splitlines())
    assert not any("redo" in entry for entry in stages(run_copy).values())


def test_a_run_with_stages_to_redo_shows_no_final_results(run_copy):
    """Opening a finished run whose outputs changed (a deleted file) withdraws its whole-run results: a report of
    it would show the old numbers as final, and the resume is then interrupted before it writes new ones."""
    (run_copy / "iter_0" / "debate_test.jsonl").unlink()
    RunStore.open(run_copy, say=lambda _: None)
    assert not any((run_copy / name).exists() for name in ("metrics.json", "summary.md", "report"))
    result = maft("report", run_copy)
    assert result.returncode != 0 and "expected a finished run directory" in result.stdout + result.stderr


def test_store_marks_changed_and_missing_outputs_and_cascades_only_on_other_outputs(tmp_path, config):
    root = tmp_path / "run"
    store = RunStore.create(root, config)
    said: list[str] = []
    names = [
        "iter_1/debate_train",
        "iter_1/data",
        "iter_1/train/gen_0",
        "iter_1/train/critic_0",
        "iter_1/debate_test",
        "iter_1/metrics",
        "iter_2/debate_train",
    ]
    write_text(root / "iter_1/debate_train.jsonl", "{}\n")
    write_json(root / "iter_1/data/counts.json", {"a": 1})
    for role in ("gen_0", "critic_0"):
        write_text(root / f"iter_1/agents/{role}/adapter_config.json", role)
    write_text(root / "iter_1/debate_test.jsonl", "{}\n")
    write_json(root / "iter_1/metrics.json", {})
    write_text(root / "iter_2/debate_train.jsonl", "{}\n")
    for name in names:
        store.finish(name, 1.0)
    assert list(stages(root)["iter_1/train/gen_0"]["outputs"]) == ["iter_1/agents/gen_0/adapter_config.json"]
    assert list(stages(root)["iter_1/data"]["outputs"]) == ["iter_1/data/counts.json"]

    # same size, other content; and a whole training folder gone
    write_text(root / "iter_1/debate_train.jsonl", "[]\n")
    shutil.rmtree(root / "iter_1/agents/gen_0")
    store = RunStore.open(root, say=said.append)
    assert said == [
        "iter_1/debate_train: its output iter_1/debate_train.jsonl changed content; the stage will be redone",
        "iter_1/train/gen_0: its output iter_1/agents/gen_0/adapter_config.json is missing; the stage will be redone",
    ]
    assert [n for n in names if not store.done(n)] == ["iter_1/debate_train", "iter_1/train/gen_0"]
    assert [n for n in names if not RunStore.open(root, say=said.append).done(n)] == [  # recorded in the manifest
        "iter_1/debate_train",
        "iter_1/train/gen_0",
    ]

    # redone with the recorded outputs: the later stages are kept
    said.clear()
    write_text(root / "iter_1/debate_train.jsonl", "{}\n")
    store.finish("iter_1/debate_train", 2.0)
    assert said == ["iter_1/debate_train: redone with the same outputs as before; the later stages are kept"]
    assert list(stages(root)) == names  # in the order they ran
    # redone with other outputs: the held-out side of its iteration and everything later, not its sibling roles
    said.clear()
    write_text(root / "iter_1/agents/gen_0/adapter_config.json", "other weights")
    store.finish("iter_1/train/gen_0", 2.0)
    assert said == [
        (
            "iter_1/train/gen_0: redone with other outputs than before; the stages that read them are "
            "redone too: iter_1/debate_test, iter_1/metrics, iter_2/debate_train"
        )
    ]
    assert [n for n in names if not store.done(n)] == ["iter_1/debate_test", "iter_1/metrics", "iter_2/debate_train"]
    # a held-out stage redone with other outputs concerns its own iteration only
    said.clear()
    write_text(root / "iter_1/debate_test.jsonl", "[]\n[]\n")
    store.finish("iter_1/debate_test", 2.0)
    assert said == []  # iter_1/metrics is already marked; iter_2 does not read the held-out debate
    assert [n for n in names if not store.done(n)] == ["iter_1/metrics", "iter_2/debate_train"]
    assert list(stages(root)) == names


# == 6. crash windows ================================================================================================
def test_a_kill_during_run_directory_creation_leaves_no_half_made_run(tmp_path):
    root = tmp_path / "run"
    script = (
        "import sys\nfrom pathlib import Path\nfrom maft.config import RunConfig\n"
        "from maft.store import RunStore\nRunStore.create(Path(sys.argv[1]), RunConfig())\n"
    )
    run_killed(tmp_path, "versions.json", script, str(root))  # killed with config.yaml written, versions.json open
    assert not root.exists() or (root / "manifest.json").is_file()
    store = RunStore.create(root, RunConfig())  # the same --out works
    assert sorted(p.name for p in root.iterdir()) == [".lock", "config.yaml", "manifest.json", "versions.json"]
    assert RunStore.open(root).config == store.config
    assert not (tmp_path / ".tmp-run").exists()


def test_a_kill_while_filling_an_existing_empty_directory_is_accepted_by_the_next_out(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    script = (
        "import sys\nfrom pathlib import Path\nfrom maft.config import RunConfig\n"
        "from maft.store import RunStore\nRunStore.create(Path(sys.argv[1]), RunConfig())\n"
    )
    run_killed(tmp_path, "config.yaml", script, str(root))  # versions.json in place, config.yaml open
    assert not (root / "manifest.json").exists() and (root / "versions.json").is_file()
    with pytest.raises(RunDirError, match=f"the creation of the run {root} was interrupted; start it again with --out"):
        RunStore.open(root)
    said: list[str] = []
    RunStore.create(root, RunConfig(), say=said.append)
    assert said and "clearing what an interrupted run creation left" in said[0]
    assert sorted(p.name for p in root.iterdir()) == [".lock", "config.yaml", "manifest.json", "versions.json"]


def test_what_an_older_version_left_is_accepted_but_a_users_files_are_not(tmp_path, config):
    root = tmp_path / "old"
    root.mkdir()
    (root / ".lock").touch()
    (root / "versions.json").write_text("{}")
    (root / "config.yaml").write_text(config.to_yaml())
    result = maft("run", "--resume", root)
    one_line_error(result, "was interrupted", f"--out {root}")
    RunStore.create(root, config, say=lambda message: None)
    assert RunStore.open(root).config == config
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own file\n")
    with pytest.raises(RunDirError, match="not empty"):
        RunStore.create(mine, config)
    assert (mine / "config.yaml").read_text() == "my: own file\n"


def test_a_kill_while_the_report_writes_its_plot_keeps_the_previous_plot(run_copy, tmp_path):
    from maft.report.html import write_report

    write_report(run_copy)
    plot = run_copy / "report" / "accuracy.png"
    before = plot.read_bytes()
    assert len(before) > 1000
    script = "import sys\nfrom maft.report.html import write_report\nwrite_report(sys.argv[1])\n"
    run_killed(tmp_path, "accuracy.png", script, str(run_copy))
    assert plot.read_bytes() == before


@pytest.mark.slow
def test_ctrl_c_during_finetuning_leaves_no_temporary_folder(tmp_path):
    root = tmp_path / "run"
    args = [
        *TINY[:-3],
        "--set",
        "task.n_train=4",
        "--set",
        "debate.max_new_tokens=128",
        "--set",
        "train.epochs=400",
        "--iterations",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maft.cli", "run", "--out", str(root), *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=sigint_default,  # Ctrl-C must reach it however the suite was launched
    )
    tmp = root / "iter_1" / "agents" / ".tmp-gen_0"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None and not tmp.exists():
            time.sleep(0.02)
        assert tmp.exists(), "training never started"
        time.sleep(1.0)  # into the finetune
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # Once in CI (2026-11-27) a first Ctrl-C had no effect at all: the run trained on and ended normally,
            # with no trace of the signal in any process of the group (cause not found). A user would press it
            # again; so does the test, while the role is still training (an interrupted run is gone by now)
            assert tmp.exists(), "the run neither stopped nor kept training after Ctrl-C"
            os.killpg(proc.pid, signal.SIGINT)
            output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # 130, or (seen once in CI, cause not found) death by the SIGINT itself, which a shell reports as 130 too
    assert proc.returncode in (130, -signal.SIGINT), output
    assert "interrupted" in output and "Traceback" not in output
    assert list(root.rglob(".tmp-*")) == []
    assert "iter_1/train/gen_0" not in stages(root)


def test_open_takes_the_lock_before_reading_the_manifest(tmp_path, config):
    from maft import store as store_module

    root = tmp_path / "run"
    RunStore.create(root, config)
    store_module._LOCKS.pop(root.resolve()).close()  # as if this process had exited
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time; from pathlib import Path; from maft.store import RunStore; "
                f"RunStore.open(Path({str(root)!r})); print('locked', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        (root / "manifest.json").write_text("[]")  # what the holder might be doing: nothing is read before the lock
        with pytest.raises(RunDirError, match="another maft process is using"):
            RunStore.open(root)
    finally:
        holder.kill()
        holder.wait()
