"""The command line's edges: `maft transfer`, task options read as config overrides, output to a pipe or a
file never wrapped mid-row, messages printed literally (never as rich markup), one error line for a path
that is not a run."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maft.cli import PIPED_RULE_WIDTH, CLIConsole, _task_options, app
from maft.config import parse_override

NO_COLUMNS = {"COLUMNS": None}  # output to a pipe as a user gets it: no COLUMNS in the environment

#: A run small enough for a CLI test: 2 agents, 2 training and 2 held-out problems, short answers.
SMALL = [
    "--set",
    "debate.agents=2",
    "--set",
    "task.n_train=2",
    "--set",
    "task.n_test=2",
    "--set",
    "debate.max_new_tokens=16",
]


def invoke(*args: str, **kwargs):
    return CliRunner().invoke(app, list(args), env=NO_COLUMNS, **kwargs)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# -- task options -----------------------------------------------------------------------------------
def test_task_options_are_read_as_config_overrides():
    items = ["levels=[1, 2]", "high=35", "path=data/gsm8k.jsonl", "split=null", "name=bare words", "empty="]
    assert _task_options(items) == {
        "levels": [1, 2],
        "high": 35,
        "path": "data/gsm8k.jsonl",
        "split": None,
        "name": "bare words",
        "empty": "",
    }
    for item in items:  # the same values as --set task.options.<key>=<value>
        key, value = item.split("=", 1)
        assert _task_options([item])[key] == parse_override(f"task.options.{item}")[1]


@pytest.mark.parametrize(
    "option, message",
    [
        ("levels", "error: --option 'levels' is not key=value"),
        ("levels=[1", "error: --option 'levels=[1': the value is"),
        ("=3", "error: --option '=3' has an empty key"),
        ("since=2024-01-01", "error: --option 'since=2024-01-01': the value is not a number"),
    ],
)
def test_a_bad_task_option_is_one_error_line_naming_it(option, message):
    for command in (["evaluate", "--n", "2"], ["transfer", "no/such/run", "--task", "arithmetic"]):
        res = invoke(*command, "--option", option)
        assert res.exit_code == 2, res.output
        assert len(error_lines(res.output)) == 1 and message in res.output, res.output


# -- output to a pipe or a file ---------------------------------------------------------------------------
def wide_table():
    from rich.table import Table

    table = Table(title="a table wider than any terminal")
    for i in range(14):
        table.add_column(f"accuracy column {i} % ± SE", justify="right")
    table.add_row(*[f"{12345.678 + i:.3f} ± 1.234" for i in range(14)])
    return table


def test_piped_output_never_wraps_a_table_row(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = CLIConsole(file=io.StringIO())  # a file: not a terminal
    console.print(wide_table())
    console.rule("section")
    console.print("a long line " * 40)
    lines = console.file.getvalue().splitlines()
    header = [line for line in lines if "accuracy column 0" in line]
    row = [line for line in lines if "12345.678" in line]
    assert len(header) == 1 and all(f"accuracy column {i} % ± SE" in header[0] for i in range(14))
    assert len(row) == 1 and all(f"{12345.678 + i:.3f} ± 1.234" in row[0] for i in range(14))
    assert any(line.count("─") > 20 and len(line) <= PIPED_RULE_WIDTH and "section" in line for line in lines)
    assert ("a long line " * 40).strip() in [line.strip() for line in lines]  # text is not wrapped either
    monkeypatch.setenv("COLUMNS", "60")  # a width the user sets is kept
    assert CLIConsole(file=io.StringIO()).width == 60


def test_piped_output_of_a_real_process_never_wraps_a_table_row():
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_cli import wide_table; "
        "from maft.cli import console; console.print(wide_table())"
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    row = [line for line in out.splitlines() if "12345.678" in line]
    assert len(row) == 1 and all(f"{12345.678 + i:.3f} ± 1.234" in row[0] for i in range(14)), out


# -- messages with brackets -----------------------------------------------------------------------------
def test_the_embeddings_install_hint_comes_out_literally(tmp_path, monkeypatch):
    import maft.evaluation.diversity

    monkeypatch.setattr(
        maft.evaluation.diversity, "encoder_problem", lambda encoder: maft.evaluation.diversity.EXTRA_HINT
    )
    res = invoke("run", "--out", str(tmp_path / "run"), "--set", "diversity.embeddings=on")
    assert res.exit_code == 2, res.output
    assert "pip install 'maft[embeddings]'" in res.output and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_embeddings_install_hint_mid_run_is_one_literal_error_line(tmp_path, monkeypatch):
    import maft.evaluation.diversity

    def unavailable(*args, **kwargs):
        raise maft.evaluation.diversity.EmbeddingsUnavailable(maft.evaluation.diversity.EXTRA_HINT)

    monkeypatch.setattr(
        maft.evaluation.diversity, "encoder_problem", lambda encoder: None
    )  # installed when the run starts
    import maft.loop

    monkeypatch.setattr(maft.loop, "load_embedder", unavailable)  # gone when the diversity stage comes
    res = invoke(
        "run",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--iterations",
        "0",
        *SMALL,
        "--set",
        "diversity.embeddings=on",
        "--set",
        "diversity.likelihood=false",
    )
    assert res.exit_code == 1, res.output
    assert "error: embedding dissimilarity needs the optional extra: pip install 'maft[embeddings]'" in res.output
    assert "Traceback" not in res.output and f"maft run --resume {tmp_path / 'run'}" in res.output


def test_paths_with_brackets_come_out_literally(tmp_path):
    where = tmp_path / "[embeddings]" / "[bold]run"
    res = invoke("report", str(where))
    assert res.exit_code == 2 and f"error: {where} does not exist" in res.output, res.output
    res = invoke("evaluate", "--task", "jsonl", "--option", f"path={where}/x.jsonl")
    assert res.exit_code == 2 and str(where) in res.output, res.output
    res = invoke("evaluate", "--n", "2", "--max-new-tokens", "8", "--out", str(where / "eval.json"))
    assert res.exit_code == 0 and f"wrote {where / 'eval.json'}" in res.output, res.output


# -- maft report on what is not a run ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("file.txt", None, "is a file, not a run directory or a comparison directory"),
        ("empty", {}, "has neither comparison.json nor metrics.json"),
        ("garbled", {"metrics.json": "{not json"}, "cannot write the report of"),
        ("null", {"metrics.json": "null"}, "is not one maft writes"),
        ("nullcmp", {"comparison.json": "null"}, "is not one maft writes"),
        ("shape", {"metrics.json": "[{}]"}, "IterationMetrics"),
        ("binary", {"metrics.json": b"\x8f\xff\x00"}, "cannot write the report of"),
    ],
)
def test_report_on_what_is_not_a_run_is_one_error_line_naming_it(tmp_path, name, content, message):
    source = tmp_path / name
    if content is None:
        source.write_text("hello\n")
    else:
        source.mkdir()
        for file, text in content.items():
            (source / file).write_bytes(text if isinstance(text, bytes) else text.encode())
    res = invoke("report", str(source))
    assert res.exit_code == 2, res.output
    assert len(error_lines(res.output)) == 1 and res.output.startswith("error: "), res.output
    assert str(source) in res.output and message in res.output, res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 directory anyway")
@pytest.mark.parametrize("command", [["report"], ["transfer", "--task", "arithmetic"], ["run", "--resume"]])
def test_an_unreadable_directory_is_one_error_line_naming_it(tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "metrics.json").write_text("[]")
    locked.chmod(0)
    try:
        args = [*command, str(locked)] if command[0] != "transfer" else ["transfer", str(locked), *command[1:]]
        res = invoke(*args)
    finally:
        locked.chmod(0o755)
    assert res.exit_code == 2, res.output
    assert len(error_lines(res.output)) == 1 and str(locked) in res.output and "Permission denied" in res.output


# -- maft transfer ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["transfer", "no/such/run", "--task", "arithmetic"], "not a maft run directory"),
        (["transfer", "no/such/run", "--task", "arithmetic", "--iterations", "0,x"], "--iterations '0,x'"),
        (["evaluate", "--run", "no/such/run", "--task", "arithmetic"], "not a maft run directory"),
        (["evaluate", "--run", "no/such/run", "--samples", "3"], "--model and --samples do not apply"),
    ],
)
def test_transfer_refuses_bad_input_in_one_line(tmp_path, args, message):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    lines = [line for line in error_lines(res.output) if "is deprecated" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


def test_transfer_help_says_what_it_does():
    res = CliRunner().invoke(app, ["transfer", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for words in ["Zero-shot transfer", "--task", "--option", "--n", "--iterations", "RUN/transfer/<task>"]:
        assert words in res.output
    assert "--run" not in CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"}).output


@pytest.mark.slow
def test_transfer_debates_another_task_and_evaluate_run_is_its_deprecated_alias(tmp_path):
    root = tmp_path / "[embeddings]run"  # brackets in a path are printed as they are
    small = [*SMALL, "--set", "diversity.enabled=false"]
    res = invoke("run", "--out", str(root), "--quiet", "--iterations", "0", *small)
    assert res.exit_code == 0 and f"run directory {root} (config hash" in res.output, res.output
    res = invoke("transfer", str(root), "--task", "arithmetic", "--option", "high=12", "--n", "2", "--quiet")
    assert res.exit_code == 0, res.output
    from maft.evaluation.transfer import transfer_dir

    where = transfer_dir(root, "arithmetic", {"high": 12})
    assert (where / "iter_0" / "metrics.json").is_file() and str(where) in res.output
    header = [line for line in res.output.splitlines() if "iteration" in line and "majority" in line]
    assert len(header) == 1 and "unanimous %" in header[0]  # the table is not wrapped: output is not a terminal
    assert len([line for line in res.output.splitlines() if line.startswith("│") and "±" in line]) == 1
    res = invoke("transfer", str(root), "--task", "arithmetic", "--option", "high=12", "--n", "2", "-i", "1")
    assert res.exit_code == 2 and "iteration(s) [1]" in res.output and "not finished" in res.output, res.output
    res = invoke("evaluate", "--run", str(root), "--task", "arithmetic", "--option", "high=12", "--n", "2")
    assert res.exit_code == 0, res.output
    assert f"maft evaluate --run is deprecated: use maft transfer {root}" in res.output
    assert "finished earlier, kept" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--n", "2", "--model", "/no/such/model"], "/no/such/model"),
        (["evaluate", "--n", "2", "--device", "cuda:7"], "execution.device 'cuda:7'"),
        (["tiny", "check", "--n", "2", "--model", "/no/such/model"], "/no/such/model"),
        (["tiny", "train", "--out", "{tmp}/t", "--config", "{tmp}/missing.yaml"], "missing.yaml"),
        (["tiny", "train", "--out", "{tmp}/t", "--config", "{tmp}/typo.yaml"], "step"),  # "step: 5", not steps
        (["tiny", "train", "--out", "{tmp}/t", "--config", "{tmp}/nested.yaml"], "hiden_size"),
        (["tiny", "train", "--out", "{tmp}/t", "--lr", "0"], "lr"),
        (["bench", "train", "--out", "{tmp}"], "is a folder"),  # refused before the benchmark runs
        (["bench", "generate", "--out", "{tmp}"], "is a folder"),
        (["bench", "train", "--out", "{tmp}/typo.yaml/b.json"], "is a file, not a folder"),
        (["bench", "generate", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["bench", "generate", "--device", "cuda:7"], "--device: execution.device 'cuda:7'"),
        (["tiny", "train", "--out", "{tmp}/t", "--init-from", "{tmp}/nope"], "--init-from: model.name"),
        (["run", "--out", "{tmp}/r", "--set", "train.lora_target_modules=q_proj("], "not a regular expression"),
        (["run", "--out", "{tmp}/r", "--set", "train.lora_target_modules=[]"], "names no module"),
        (["run", "--out", "{tmp}/r", "--set", "execution.urls=[http://127.0.0.1:1/v1]"], "set model.engine=openai"),
        (["run", "--out", "{tmp}/r", "--set", "execution.ray_address=auto"], "for execution.scheduler=ray"),
        (
            [
                "run",
                "--out",
                "{tmp}/r",
                "--set",
                "execution.scheduler=ray",
                "--set",
                "execution.ray_address=127.0.0.1:9",
            ],
            "execution.ray_address '127.0.0.1:9' does not answer",
        ),
        (
            ["run", "--out", "{tmp}/r", "--method", "single_agent_ft", "--set", "data.rationalize=true"]
            + ["--set", "data.label=gold"],
            "generated and dropped",
        ),
        (
            ["run", "--out", "{tmp}/r", "--method", "debate", "--iterations", "3"],
            "--method debate contradicts iterations=3",
        ),
        (
            ["run", "--out", "{tmp}/r", "--method", "star", "--set", "debate.agents=3"],
            "debate.agents=3 (the method sets 1)",
        ),
        (["run", "--out", "{tmp}/r", "--set", "seed=-1"], "seed"),
        (["run", "--out", "{tmp}/r", "--set", "train.warmup_ratio=0.1"], "constant_with_warmup"),
        (["evaluate", "--n", "2", "--out", "{tmp}"], "is a folder"),  # refused before the evaluation runs
        (["evaluate", "--n", "2", "--out", "{tmp}/typo.yaml/e.json"], "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_error_line_before_compute(tmp_path, args, message):
    (tmp_path / "typo.yaml").write_text("step: 5\n")
    (tmp_path / "nested.yaml").write_text("model: {hiden_size: 64}\n")
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error:" in output and message in output and "Traceback" not in output
    assert not (tmp_path / "t").exists() and not (tmp_path / "r").exists()


def test_compare_methods_may_have_spaces_after_commas(tmp_path):
    """ "maft, star" names maft and star (the unknown one below is the only method refused; before, " star" was)."""
    result = CliRunner().invoke(app, ["compare", "--out", str(tmp_path / "c"), "--methods", "maft, star,  nosuch"])
    assert result.exit_code == 2 and "unknown method(s) nosuch;" in " ".join(result.output.split())


@pytest.mark.parametrize("command", [["run"], ["compare", "--methods", "debate"]])
def test_a_hub_task_without_the_hub_is_one_error_line(tmp_path, monkeypatch, command):
    """configs/mistral-gsm8k.yaml and paper.yaml name hub data sets: where the hub cannot be reached, the run is
    refused in one line that says to pass path=, before a run folder exists (it was a long traceback)."""
    monkeypatch.setattr("maft.tasks.loading._hub_reachable", lambda: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "r"), "--set", "task.name=gsm8k"])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error: gsm8k: cannot load" in output and "Pass path=" in output and "Traceback" not in output
    assert not (tmp_path / "r").exists()


def test_compare_refuses_a_run_directory_as_its_out(tmp_path):
    """A comparison written into a run's folder made that run's report the comparison's."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    result = CliRunner().invoke(app, ["compare", "--out", str(run), "--methods", "debate"])
    assert result.exit_code == 2 and "is the directory of one run" in " ".join(result.output.split()), result.output
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]  # nothing written there
