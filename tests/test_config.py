"""RunConfig: defaults, YAML files, dotted overrides, validation errors, hashing and diffs."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from maft.config import ConfigError, RunConfig, TrainConfig, apply_overrides, config_diff, load_config, parse_override


def test_defaults_validate():
    config = RunConfig()
    assert config.seed == 0 and config.iterations == 3
    assert config.model.name is None and config.task.name == "arithmetic" and config.task.options == {}
    assert (config.debate.agents, config.debate.rounds, config.debate.summarizer) == (3, 2, "answers")
    assert config.data.critic_plus_fraction == 0.5
    assert (config.debate.tie_break, config.debate.truncated) == ("random", "abstain")
    assert (config.data.critic_mix, config.data.critic_share) == ("fraction", 2 / 3)
    assert config.train.method == "lora"
    assert load_config() == config
    # the YAML dump of the defaults loads back to the same config
    assert RunConfig.model_validate(yaml.safe_load(config.to_yaml())) == config


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "seed: 7\n"
        "iterations: 3\n"
        "model:\n  name: some/model\n  dtype: bfloat16\n"
        "task:\n  name: jsonl\n  options:\n    path: data.jsonl\n  n_train: 10\n"
        "debate:\n  agents: 4\n  rounds: 3\n  summarizer: concat\n"
        "train:\n  learning_rate: 1.0e-4\n  lora_target_modules: [q_proj, v_proj]\n"
    )
    config = load_config(path)
    assert config.seed == 7 and config.iterations == 3
    assert config.model.name == "some/model" and config.model.dtype == "bfloat16"
    assert config.task.name == "jsonl" and config.task.options == {"path": "data.jsonl"} and config.task.n_train == 10
    assert config.task.n_test == 300  # untouched keys keep their defaults
    assert (config.debate.agents, config.debate.rounds, config.debate.summarizer) == (4, 3, "concat")
    assert config.train.learning_rate == 1e-4 and config.train.lora_target_modules == ["q_proj", "v_proj"]


def test_empty_yaml_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == RunConfig()


def test_overrides_are_parsed_as_yaml_values(tmp_path):
    config = load_config(
        None,
        [
            "debate.agents=5",
            "task.options={path: x.jsonl}",
            "model.name=null",
            "debate.temperature=0",
            "train.lora_target_modules=[q_proj, k_proj]",
            "train.bf16=true",
            "train.learning_rate=1e-4",
            "execution.device=cuda:0",
        ],
    )
    assert config.debate.agents == 5 and isinstance(config.debate.agents, int)
    assert config.task.options == {"path": "x.jsonl"}
    assert config.model.name is None
    assert config.debate.temperature == 0.0
    assert config.train.lora_target_modules == ["q_proj", "k_proj"]
    assert config.train.bf16 is True
    assert config.train.learning_rate == 1e-4
    assert config.execution.device == "cuda:0"


def test_parse_override():
    assert parse_override("debate.agents=5") == (["debate", "agents"], 5)
    assert parse_override("task.options={path: x.jsonl}") == (["task", "options"], {"path": "x.jsonl"})
    assert parse_override(" seed = 3") == (["seed"], 3)
    assert parse_override("model.name=a=b") == (["model", "name"], "a=b")  # only the first "=" splits
    assert parse_override("model.name=") == (["model", "name"], "")
    with pytest.raises(ConfigError, match="not key=value"):
        parse_override("debate.agents")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=5")


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("debate:\n  agents: 4\n  rounds: 3\n")
    config = load_config(path, ["debate.agents=6"])
    assert config.debate.agents == 6 and config.debate.rounds == 3


def test_apply_overrides_sets_nested_keys_in_place():
    data = {"debate": {"agents": 3}}
    out = apply_overrides(data, ["debate.rounds=4", "train.lora_r=16"])
    assert out is data
    assert data == {"debate": {"agents": 3, "rounds": 4}, "train": {"lora_r": 16}}


def test_override_through_a_non_section_is_rejected():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load_config(None, ["seed=1", "seed.x=2"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("debate.agentz=5", "debate.agentz"),
        ("trian.epochs=1", "trian"),
        ("model.nme=x", "model.nme"),
        ("seeed=1", "seeed"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert f"  {key}: Extra inputs are not permitted" in str(info.value)


def test_unknown_key_in_a_file_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("debate:\n  agentz: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "debate.agentz" in message and str(path) in message


@pytest.mark.parametrize(
    ("override", "field", "msg"),
    [
        ("debate.agents=0", "debate.agents", "greater than or equal to 1"),
        ("debate.top_p=1.5", "debate.top_p", "less than or equal to 1"),
        ("debate.top_p=0", "debate.top_p", "greater than 0"),
        ("data.critic_plus_fraction=1.1", "data.critic_plus_fraction", "less than or equal to 1"),
        ("train.learning_rate=0", "train.learning_rate", "greater than 0"),
        ("iterations=-1", "iterations", "greater than or equal to 0"),
        ("debate.summarizer=vote", "debate.summarizer", "'answers', 'concat' or 'model'"),
        ("seed=abc", "seed", "valid integer"),
        ("debate.tie_break=lowest", "debate.tie_break", "Input should be 'random' or 'first'"),
        ("debate.truncated=drop", "debate.truncated", "Input should be 'abstain' or 'keep'"),
        ("data.critic_mix=paper", "data.critic_mix", "Input should be 'fraction', 'share' or 'authors'"),
        ("data.critic_share=0", "data.critic_share", "greater than 0"),
        ("data.critic_share=1.5", "data.critic_share", "less than or equal to 1"),
    ],
)
def test_out_of_range_values_are_rejected_naming_the_field(override, field, msg):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    line = next(line for line in str(info.value).splitlines() if line.strip().startswith(field + ":"))
    assert msg in line


def test_several_errors_are_all_reported():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["debate.agents=0", "debate.top_p=1.5", "debate.agentz=1"])
    message = str(info.value)
    assert "debate.agents:" in message and "debate.top_p:" in message and "debate.agentz:" in message


def test_debate_rounds_need_two_agents():
    with pytest.raises(ConfigError, match="at least 2 agents"):
        load_config(None, ["debate.agents=1"])
    # without training iterations too: a lone critic would be shown no other answers
    with pytest.raises(ConfigError, match="at least 2 agents"):
        load_config(None, ["debate.agents=1", "iterations=0"])
    # a single agent is fine without debate rounds, trained or not
    assert load_config(None, ["debate.agents=1", "debate.rounds=1"]).debate.agents == 1
    assert load_config(None, ["debate.agents=1", "debate.rounds=1", "iterations=0"]).iterations == 0


@pytest.mark.parametrize(
    "name", ["reduce_lr_on_plateau", "greedy", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay"]
)
def test_schedulers_that_need_settings_maft_does_not_pass_are_refused_up_front(name):
    """Each would have crashed every finetuning job after the first debate (TrainingArguments or get_scheduler)."""
    with pytest.raises(ConfigError, match=f"'{name}' needs settings maft does not pass.*use one of.*cosine"):
        load_config(None, [f"train.lr_scheduler={name}"])
    for usable in ("constant", "linear", "cosine", "constant_with_warmup"):
        assert load_config(None, [f"train.lr_scheduler={usable}"]).train.lr_scheduler == usable
    with pytest.raises(ConfigError, match="'cosin' is not a transformers scheduler"):
        load_config(None, ["train.lr_scheduler=cosin"])


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_is_rejected(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)


def test_section_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("debate: 5\n")
    with pytest.raises(ConfigError, match="debate"):
        load_config(path)
    with pytest.raises(ConfigError, match="'debate' is not a section"):
        load_config(path, ["debate.agents=4"])


def test_missing_file_is_rejected(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path)  # a directory is not a config file


def test_hash_is_stable_across_equal_configs(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 0\ndebate:\n  agents: 3\n")
    h = RunConfig().hash()
    assert len(h) == 16 and set(h) <= set("0123456789abcdef")
    assert load_config().hash() == h
    assert load_config(path).hash() == h
    assert load_config(None, ["debate.agents=3", "debate.temperature=1"]).hash() == h
    assert RunConfig.model_validate(yaml.safe_load(RunConfig().to_yaml())).hash() == h
    # the same in a fresh interpreter with another string-hash seed (a resumed run is another process)
    import os
    import subprocess
    import sys

    fresh = subprocess.run(
        [sys.executable, "-c", "from maft.config import RunConfig; print(RunConfig().hash())"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert fresh.stdout.strip() == h


def test_hash_ignores_the_order_of_option_keys():
    a = load_config(None, ["task.options={path: x.jsonl, levels: [1, 2]}"])
    b = load_config(None, ["task.options={levels: [1, 2], path: x.jsonl}"])
    assert list(a.task.options) != list(b.task.options) and a == b
    assert a.hash() == b.hash()


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "debate.agents=4",
        "debate.top_p=0.95",
        "task.options={path: x.jsonl}",
        "train.bf16=true",
        "model.name=m",
        "model.server_kind=sglang",
        "model.dtype=float32",
        "train.lora_r=4",
        "data.label=gold",
        "diversity.enabled=false",
    ],
)
def test_hash_changes_with_any_value(override):
    assert load_config(None, [override]).hash() != RunConfig().hash()


def test_config_diff_lists_exactly_the_changed_keys():
    old = RunConfig()
    new = load_config(None, ["debate.agents=5", "train.learning_rate=1e-4", "model.name=m", "seed=0"])
    assert config_diff(old, new) == [
        "debate.agents: 3 -> 5",
        "model.name: None -> 'm'",
        "train.learning_rate: 0.002 -> 0.0001",
    ]
    assert config_diff(new, old) == [
        "debate.agents: 5 -> 3",
        "model.name: 'm' -> None",
        "train.learning_rate: 0.0001 -> 0.002",
    ]
    assert config_diff(old, RunConfig()) == []


def test_config_diff_inside_nested_options():
    old = load_config(None, ["task.options={path: a.jsonl, levels: [1, 2]}"])
    new = load_config(None, ["task.options={path: b.jsonl, levels: [1, 2]}"])
    assert config_diff(old, new) == ["task.options.path: 'a.jsonl' -> 'b.jsonl'"]


def test_config_diff_from_empty_options_names_only_the_new_key():
    new = load_config(None, ["task.options={path: x.jsonl}"])
    assert config_diff(RunConfig(), new) == ["task.options.path: None -> 'x.jsonl'"]


def test_shipped_configs_validate_and_default_yaml_is_the_default():
    from pathlib import Path

    configs = Path(__file__).parents[1] / "configs"
    runs = [p for p in configs.glob("*.yaml") if not p.name.startswith(("tiny-", "compare"))]
    assert {p.name for p in runs} >= {"default.yaml", "mistral-gsm8k.yaml"}
    for path in runs:
        load_config(path)
    assert load_config(configs / "default.yaml") == RunConfig()
    written = yaml.safe_load((configs / "default.yaml").read_text())  # the README: it lists every key
    for section, fields in RunConfig().model_dump().items():
        assert section in written, section
        if isinstance(fields, dict):
            assert set(fields) <= set(written[section]), (section, set(fields) - set(written[section]))


def test_the_paper_preset_holds_the_papers_choices():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[1] / "configs" / "paper.yaml")
    d, data, t = cfg.debate, cfg.data, cfg.train
    assert (d.agents, d.rounds, d.summarizer, d.tie_break, d.temperature, d.top_p) == (
        3,
        2,
        "model",
        "random",
        1.0,
        0.9,
    )
    assert (cfg.task.name, cfg.task.n_train, cfg.task.n_test, cfg.iterations) == ("math", 500, 500, 5)
    assert data.critic_mix == "authors" and t.critic_loss == "all_turns"
    assert (t.method, t.learning_rate, t.epochs, t.batch_size * t.gradient_accumulation_steps) == ("full", 1e-5, 2, 192)


def test_held_out_shape_and_baseline_data_options_are_checked_up_front():
    with pytest.raises(ConfigError, match="needs data.label=gold"):
        load_config(None, ["data.rationalize=true"])
    with pytest.raises(ConfigError, match="needs train.shared=true"):
        load_config(None, ["data.shared_from=majority_responses"])
    with pytest.raises(ConfigError, match="at least 2 agents"):
        load_config(None, ["debate.test_agents=1"])
    with pytest.raises(ConfigError, match="only a shared model"):
        load_config(None, ["debate.test_agents=1", "debate.test_rounds=1"])
    with pytest.raises(ConfigError, match="majority_responses"):  # a bad value lists the accepted ones
        load_config(None, ["data.shared_from=nope"])
    cfg = load_config(None, ["train.shared=true", "debate.test_agents=1", "debate.test_rounds=1"])
    assert cfg.debate.shape() == (3, 2) and cfg.debate.shape(held_out=True) == (1, 1)
    assert load_config(None, ["iterations=0", "debate.test_agents=5"]).debate.shape(held_out=True) == (5, 2)


def test_every_execution_setting_is_left_out_of_the_hash():
    """The execution section is excluded by construction: changing any of its fields keeps the hash
    (test_hash_changes_with_any_value: a field of any other section changes it)."""
    from maft.config import ExecutionConfig

    base = RunConfig()
    changed = {
        "device": "cpu",
        "generation_batch_size": 3,
        "merge_adapters": True,
        "prefix_cache_gb": 0.0,
        "server": "managed",
        "urls": ["http://127.0.0.1:1/v1"],
        "served_name": "x",
        "api_key_env": "K",
        "concurrency": 2,
        "request_timeout": 1.0,
        "max_retries": 0,
        "server_python": "/p",
        "server_args": ["--a"],
        "server_devices": ["0"],
        "stop_server_for_training": True,
        "scheduler": "ray",
        "ray_address": "auto",
        "gpus_per_job": 0.5,
        "cpus_per_job": 2.0,
        "concurrent_training": True,
        "processes_per_job": 1,
        "activation_checkpointing": False,
        "report_to": ["tensorboard"],
        "tracking_dir": "/tb",
    }
    assert set(changed) == set(ExecutionConfig.model_fields)  # a new execution field must be listed here
    for key, value in changed.items():
        other = RunConfig.model_validate({"execution": {key: value}})
        assert other.execution != base.execution and other.hash() == base.hash(), key


def test_execution_keys_written_under_model_or_train_move_to_execution():
    """Configs and run directories from before the execution section still load, with the same hash."""
    old = RunConfig.model_validate(
        {
            "model": {"batch_size": 8, "device": "cpu", "urls": ["http://h/v1"]},
            "train": {"scheduler": "ray", "lr_scheduler": "linear"},
        }
    )
    new = RunConfig.model_validate(
        {
            "execution": {"generation_batch_size": 8, "device": "cpu", "urls": ["http://h/v1"], "scheduler": "ray"},
            "train": {"lr_scheduler": "linear"},
        }
    )
    assert old == new and old.hash() == new.hash()
    assert old.execution.generation_batch_size == 8 and old.train.lr_scheduler == "linear"
    assert load_config(None, ["model.batch_size=4"]).execution.generation_batch_size == 4


def test_every_setting_has_a_description():
    """Each field of each section says what it does (the CLI's and the README's reference)."""
    from pydantic import BaseModel

    sections = [RunConfig, *(f.annotation for f in RunConfig.model_fields.values() if isinstance(f.annotation, type))]
    sections = [s for s in sections if issubclass(s, BaseModel)]
    assert len(sections) == 8
    missing = [f"{s.__name__}.{name}" for s in sections for name, f in s.model_fields.items() if not f.description]
    assert missing == []


def test_any_run_seed_gives_finetuning_seeds_the_trainers_take():
    """A large run seed (a date) once passed the checks and then crashed the first finetune, after a whole
    debate: the role seeds are folded into 32 bits (unchanged for the seeds runs used before), and a negative
    run seed is refused up front."""
    from transformers import set_seed

    from maft.loop import role_seed

    assert role_seed(0, 1, 2) == 1009 + 2 and role_seed(7, 3, 5) == 7 * 100_003 + 3 * 1009 + 5
    big = role_seed(20250101, 3, 5)
    assert 0 <= big < 2**32
    set_seed(big)
    assert len({role_seed(20250101, it, r) for it in (1, 2, 3) for r in range(6)}) == 18
    with pytest.raises(ValidationError, match="seed"):
        RunConfig(seed=-1)


def test_a_warmup_the_schedule_would_ignore_is_refused():
    """transformers' constant schedule takes no warmup: a warmup_ratio with it would silently do nothing."""
    with pytest.raises(ValidationError, match="warmup_ratio=0.1 would do nothing.*constant_with_warmup"):
        TrainConfig(warmup_ratio=0.1)
    for schedule in ("constant_with_warmup", "linear", "cosine"):
        TrainConfig(warmup_ratio=0.1, lr_scheduler=schedule)
    TrainConfig(lr_scheduler="constant")  # no warmup asked for


def test_server_devices_may_be_written_as_numbers():
    """YAML reads [0, 1] as integers: they are the GPU names CUDA_VISIBLE_DEVICES takes (it was a type error)."""
    assert load_config(None, ["execution.server_devices=[0,1]"]).execution.server_devices == ["0", "1"]
    assert load_config(None, ["execution.server_devices=3"]).execution.server_devices == ["3"]
    assert load_config(None, ["execution.server_devices='0,1'"]).execution.server_devices == ["0", "1"]
    assert load_config(None, ["execution.server_devices=[GPU-5e1f]"]).execution.server_devices == ["GPU-5e1f"]
