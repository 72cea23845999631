"""Bad models and settings are refused before any compute (maft.checks), each with the fix in the message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from maft.checks import (
    MAX_QUESTION_CHARS,
    SetupError,
    check_device,
    check_lora_targets,
    check_model_files,
    module_names,
)
from maft.config import load_config
from maft.loop import prepare
from maft.tiny import default_checkpoint


@pytest.fixture
def copy_of_tiny(tmp_path):
    out = tmp_path / "tiny"
    shutil.copytree(default_checkpoint(), out)
    return out


def test_a_truncated_weights_file_is_refused(copy_of_tiny):
    weights = copy_of_tiny / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(SetupError, match="model.safetensors are unreadable or incomplete"):
        check_model_files(str(copy_of_tiny))


def test_missing_weights_and_shards_are_refused(copy_of_tiny):
    """A checkpoint folder with no weights, or a sharded one missing a shard its index lists, is refused up front
    (it failed at load time, after the run folder existed)."""
    (copy_of_tiny / "model.safetensors").rename(copy_of_tiny / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (copy_of_tiny / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SetupError, match="lists model-00002-of-00002.safetensors, missing from"):
        check_model_files(str(copy_of_tiny))
    for f in copy_of_tiny.glob("model*.safetensors*"):
        f.unlink()
    with pytest.raises(SetupError, match="holds no weights"):
        check_model_files(str(copy_of_tiny))


def maft_run_on(model, root):
    """``maft run --out root`` with ``model`` as the base model, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "maft.cli", "run", "--out", str(root), "--set", f"model.name={model}"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_model_without_a_chat_template_is_refused_before_a_run_directory_exists(copy_of_tiny, tmp_path):
    (copy_of_tiny / "chat_template.jinja").unlink()
    root = tmp_path / "run"
    result = maft_run_on(copy_of_tiny, root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "has no chat template" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert not root.exists()


def test_a_home_relative_model_name_is_the_path_it_names(monkeypatch, tmp_path):
    """~/models/x is loaded from that path (transformers took it for a malformed hub id), and the config keeps it as
    written (its hash too: a run saved with it still resumes)."""
    from maft.serving import base_model, make_engine

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(default_checkpoint(), tmp_path / "models" / "tiny")
    config = load_config(None, ["model.name=~/models/tiny", "execution.device=cpu"])
    assert config.model.name == "~/models/tiny" and base_model(config) == str(tmp_path / "models" / "tiny")
    prepare(config)
    engine = make_engine(config, tmp_path)  # the in-process engine loads it from there
    assert engine.model_name == str(tmp_path / "models" / "tiny")


def test_a_garbage_config_is_refused_through_the_cli_before_a_run_directory_exists(copy_of_tiny, tmp_path):
    (copy_of_tiny / "config.json").write_text("{not json")
    root = tmp_path / "run"
    result = maft_run_on(copy_of_tiny, root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "config.json cannot be read" in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert not root.exists()


def test_a_model_name_that_is_no_directory_is_refused_at_once():
    start = time.perf_counter()
    with pytest.raises(SetupError, match="not a model directory"):
        check_model_files("models/nope/tiny")  # a relative path that does not exist: no hub retries
    with pytest.raises(SetupError, match="not a model directory"):
        check_model_files("./nope")
    assert time.perf_counter() - start < 30  # not a timing test: hub retries would take about 40 s


def test_a_hub_id_that_is_not_cached_and_not_reachable_names_the_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub cannot be asked (as on this machine: no network)
    with pytest.raises(SetupError, match="neither a local directory nor a model in the Hugging Face cache"):
        check_model_files("maft-test/no-such-model")


def test_devices_are_checked():
    check_device("auto")
    check_device("cpu")
    with pytest.raises(SetupError, match="'bogus' is not a device"):
        check_device("bogus")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(SetupError, match="no CUDA GPU"):
            check_device("cuda:0")


def test_lora_targets_must_name_modules_of_the_model():
    names = module_names(str(default_checkpoint()))
    assert "model.layers.0.self_attn.q_proj" in names
    check_lora_targets("all-linear", names)
    check_lora_targets(["q_proj", "v_proj"], names)
    check_lora_targets(["self_attn.q_proj"], names)
    check_lora_targets(r".*\.q_proj", names)
    with pytest.raises(SetupError, match=r"\['nope'\] match no module.*q_proj"):
        check_lora_targets(["q_proj", "nope"], names)
    with pytest.raises(SetupError, match="matches no module"):
        check_lora_targets(r"nope\d", names)


def test_prepare_refuses_bad_device_targets_and_huge_questions_before_any_model_loads(tmp_path):
    with pytest.raises(SetupError, match="not a device"):
        prepare(load_config(None, ["execution.device=bogus"]))
    with pytest.raises(SetupError, match="nope"):
        prepare(load_config(None, ["train.lora_target_modules=[nope]"]))
    prepare(load_config(None, ["train.lora_target_modules=nope", "iterations=0"]))  # no finetuning: not checked
    rows = [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(3)] + [
        {"question": "x" * (MAX_QUESTION_CHARS + 1), "answer": "1"}
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = ["task.name=jsonl", f"task.options={{path: {path}}}", "task.n_train=1", "task.n_test=3", "iterations=0"]
    with pytest.raises(SetupError, match="characters"):
        prepare(load_config(None, task))
