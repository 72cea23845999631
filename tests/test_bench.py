"""`maft bench generate`: a real tiny run on every in-process path (behaviour only, no timing assertions)."""

from __future__ import annotations

import json

import pytest

from maft.bench import (
    PATHS,
    BenchConfig,
    BenchError,
    bench_generate,
    gpu_bandwidth_gbs,
    parse_paths,
    write,
)

AGENTS, PROMPTS, NEW = 2, 3, 8


@pytest.fixture(scope="module")
def result():
    cfg = BenchConfig(
        agents=AGENTS,
        prompts=PROMPTS,
        new_tokens=NEW,
        paths=["authors", "hf-merged", "hf-mixed"],
        device="cpu",
        isolate=False,
    )
    return bench_generate(cfg)


def test_every_path_generates_the_same_tokens(result):
    assert [r["path"] for r in result["paths"]] == ["authors", "hf-merged", "hf-mixed"]
    assert result["omitted"] == {}
    for row in result["paths"]:
        assert row["generated_tokens"] == row["expected_tokens"] == AGENTS * PROMPTS * NEW
        assert row["requests"] == AGENTS * PROMPTS
        assert row["seconds_per_round"] > 0 and row["peak_memory_mib"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["generated_tokens"] / row["seconds_per_round"])
        assert row["requests_per_s"] == pytest.approx(row["requests"] / row["seconds_per_round"])


def test_ratios_are_relative_to_the_authors_pattern(result):
    rows = {r["path"]: r for r in result["paths"]}
    assert rows["authors"]["ratio_to_authors"] == 1.0
    for row in rows.values():
        assert row["ratio_to_authors"] == pytest.approx(row["tokens_per_s"] / rows["authors"]["tokens_per_s"])


def test_json_has_the_fields(result, tmp_path):
    data = json.loads(write(result, tmp_path / "b.json").read_text())
    assert data["workload"] == {
        "agents": AGENTS,
        "prompts": PROMPTS,
        "new_tokens": NEW,
        "requests": AGENTS * PROMPTS,
        "expected_tokens": AGENTS * PROMPTS * NEW,
        "ignore_eos": True,
    }
    assert data["model"]["name"] == "tiny" and data["model"]["parameters"] > 0
    for row in data["paths"]:
        assert {
            "tokens_per_s",
            "requests_per_s",
            "seconds_per_round",
            "ratio_to_authors",
            "peak_memory_mib",
            "generated_tokens",
            "note",
        } <= set(row)
        assert "roofline_fraction" not in row  # a CPU without --bandwidth-gbs has no roofline


def test_cli_writes_json_and_table(tmp_path):
    from typer.testing import CliRunner

    from maft.cli import app

    out = tmp_path / "cli.json"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "generate",
            "--agents",
            "1",
            "--prompts",
            "2",
            "--new-tokens",
            "4",
            "--paths",
            "hf-merged",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-isolate",
            "--bandwidth-gbs",
            "10",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "one debate round" in res.output and "hf-merged" in res.output
    row = json.loads(out.read_text())["paths"][0]
    assert row["generated_tokens"] == 8 and row["ratio_to_authors"] is None  # no authors row to compare with
    assert 0 < row["roofline_fraction"]


def test_bad_path_names_the_accepted_ones(tmp_path):
    with pytest.raises(BenchError, match="unknown path 'fast'; accepted: " + ", ".join(PATHS)):
        parse_paths("authors,fast")
    from typer.testing import CliRunner

    from maft.cli import app

    res = CliRunner().invoke(app, ["bench", "generate", "--paths", "authors,warp", "--out", str(tmp_path / "x.json")])
    assert res.exit_code != 0
    assert "warp" in res.output and "hf-mixed" in res.output
    assert not (tmp_path / "x.json").exists()


def test_openai_path_needs_a_url():
    with pytest.raises(BenchError, match="--url"):
        BenchConfig(paths=["openai"]).check()


def test_gpu_bandwidth_by_name():
    assert gpu_bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350
    assert gpu_bandwidth_gbs("NVIDIA H200") == 4800
    assert gpu_bandwidth_gbs("NVIDIA L40") == 864 and gpu_bandwidth_gbs("NVIDIA L4") == 300
    assert gpu_bandwidth_gbs("NVIDIA A100-SXM4-80GB") == 2039
    assert gpu_bandwidth_gbs("a mystery card") is None
