"""`maft bench train`: a real tiny run of every path through the CLI (behaviour only, no timing assertions), the
FLOP and MFU formulas on hand-computed cases, and refusals."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from maft.bench import BenchError
from maft.bench_train import (
    PATHS,
    TrainBenchConfig,
    make_examples,
    parameter_counts,
    parse_paths,
    peak_flops,
    too_big,
    train_config,
    train_flops,
    utilization,
)
from maft.cli import app

ROLES, EXAMPLES, GEN, CRITIC, BATCH = 2, 4, 8, 16, 2


def _workload_args() -> list[str]:
    return [
        "--roles",
        str(ROLES),
        "--examples",
        str(EXAMPLES),
        "--gen-tokens",
        str(GEN),
        "--critic-tokens",
        str(CRITIC),
        "--batch-size",
        str(BATCH),
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-train") / "train.json"
    res = CliRunner().invoke(
        app, ["bench", "train", *_workload_args(), "--device", "cpu", "--no-isolate", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    return res.output, json.loads(out.read_text())


def _independent_tokens() -> int:
    """The workload's non-pad tokens, from the tokenizer alone: each example's whole conversation, templated."""
    from transformers import AutoTokenizer

    from maft.tiny import default_checkpoint

    tok = AutoTokenizer.from_pretrained(default_checkpoint())
    cfg = TrainBenchConfig(roles=ROLES, examples=EXAMPLES, gen_tokens=GEN, critic_tokens=CRITIC)
    return sum(
        len(tok.apply_chat_template([*e.prompt, *e.completion], tokenize=True, return_dict=True)["input_ids"])
        for examples in make_examples(cfg).values()
        for e in examples
    )


def test_one_row_per_path_with_the_workload_counted(run):
    output, data = run
    assert "finetuning: 2 roles x 4 examples" in output and "| lora-concurrent |" in output  # table and markdown
    assert [r["path"] for r in data["paths"]] == list(PATHS)
    assert data["omitted"] == {}
    tokens = _independent_tokens()
    assert data["workload"]["tokens"] == tokens == sum(data["workload"]["tokens_by_role"].values())
    assert data["workload"]["roles"] == {"gen_0": EXAMPLES, "critic_0": EXAMPLES}
    for row in data["paths"]:
        assert row["examples"] == ROLES * EXAMPLES and row["tokens"] == tokens
        assert row["steps"] == ROLES * math.ceil(EXAMPLES / BATCH)
        assert min(row["setup_seconds"], row["train_seconds"], row["save_seconds"], row["peak_memory_mib"]) > 0
        assert row["total_seconds"] == pytest.approx(row["setup_seconds"] + row["train_seconds"] + row["save_seconds"])
        assert row["examples_per_s"] == pytest.approx(row["examples"] / row["train_seconds"])
        assert row["tokens_per_s"] == pytest.approx(tokens / row["train_seconds"])
        assert row["tokens_per_s_total"] == pytest.approx(tokens / row["total_seconds"])
        assert row["mfu"] is None  # a CPU, no --peak-tflops
    assert data["peak_flops"] is None and data["machine"]["device"] == "cpu"


def test_flops_and_speedup_in_the_rows(run):
    _, data = run
    model = data["model"]
    # the tiny model: 4 layers, hidden 96, 4 heads of 24 (no grouping), SwiGLU 256; LoRA r=8 on every linear layer
    # of the blocks (not the tied LM head): q, k, v, o of 8 x (96 + 96), gate, up, down of 8 x (96 + 256)
    assert model["lora_parameters"] == 4 * (4 * 8 * (96 + 96) + 3 * 8 * (96 + 256)) == 58368
    assert model["flop_parameters"] == model["parameters"]  # tied embeddings: the LM head is a product
    rows = {r["path"]: r for r in data["paths"]}
    tokens = data["workload"]["tokens"]
    p, t = model["flop_parameters"], model["lora_parameters"]
    assert rows["full-sequential"]["flops"] == 6 * p * tokens
    assert rows["lora-sequential"]["flops"] == rows["lora-concurrent"]["flops"] == (4 * p + 6 * t) * tokens
    concurrent, sequential = rows["lora-concurrent"], rows["lora-sequential"]
    assert concurrent["speedup_train"] == pytest.approx(sequential["train_seconds"] / concurrent["train_seconds"])
    assert concurrent["speedup_total"] == pytest.approx(sequential["total_seconds"] / concurrent["total_seconds"])
    assert sequential["speedup_train"] is None and rows["full-sequential"]["speedup_train"] is None


def test_repeats_interleave_the_paths_and_show_the_median_run(tmp_path):
    out = tmp_path / "train.json"
    args = ["bench", "train", *_workload_args(), "--device", "cpu", "--no-isolate", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--paths", "lora-sequential,lora-concurrent", "--repeats", "3"])
    assert res.exit_code == 0, res.output
    assert "median of 3 runs each" in " ".join(res.output.split())
    data = json.loads(out.read_text())
    sequential, concurrent = ("lora-sequential", "lora-concurrent")
    assert data["order"] == [sequential, concurrent, concurrent, sequential, sequential, concurrent]
    rows = {r["path"]: r for r in data["paths"]}
    for row in rows.values():
        runs = row["runs"]
        assert len(runs) == 3 and all(r["total"] == pytest.approx(r["setup"] + r["train"] + r["save"]) for r in runs)
        median = sorted(runs, key=lambda r: r["total"])[1]
        assert (row["setup_seconds"], row["train_seconds"], row["total_seconds"]) == (
            median["setup"],
            median["train"],
            median["total"],
        )
        assert row["peak_memory_mib"] == max(r["peak_memory_mib"] for r in runs)
        for r in runs:  # where the concurrent set-up went, every part measured
            if row["path"] == "lora-concurrent":
                assert min(r["setup_parts"].values()) > 0
                assert sum(r["setup_parts"].values()) == pytest.approx(r["setup"])
            else:
                assert "setup_parts" not in r
    seq, con = rows[sequential], rows[concurrent]
    assert con["speedup_total"] == pytest.approx(seq["total_seconds"] / con["total_seconds"])
    ratios = [a["total"] / b["total"] for a, b in zip(seq["runs"], con["runs"], strict=True)]
    assert con["speedup_total_range"] == [min(ratios), max(ratios)]
    assert seq["speedup_total_range"] is None


def test_flop_formulas_by_hand():
    # full: 6 x 1e9 parameters x 1000 tokens
    assert train_flops("full", 10**9, 0, 1000) == 6e12
    # LoRA: forward 2 P + input gradients through the frozen base 2 P + adapters 6 T, per token
    assert train_flops("lora", 10**9, 5 * 10**6, 1000) == (4e9 + 3e7) * 1000 == 4.03e12
    # 6e12 FLOPs in 2 s on a 989 TFLOP/s H100: 3e12 / 989e12
    assert utilization(6e12, 2.0, 989e12) == pytest.approx(0.003033367)
    assert utilization(6e12, 2.0, None) is None


def test_peak_flops_by_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("a mystery card") is None
    assert peak_flops("NVIDIA L40") == 181e12 and peak_flops("NVIDIA L4") == 121e12  # whole names: L4 is not L40
    # a path that trains in fp32 (full finetuning under --bf16 auto) is measured against the fp32 peak
    assert peak_flops("NVIDIA H100 80GB HBM3", bf16=False) == 67e12 and peak_flops("NVIDIA L40", bf16=False) == 90.5e12


def test_full_finetuning_that_cannot_fit_is_skipped():
    eight_b, gib = 7_241_732_096, 2**30
    reason = too_big("full-sequential", eight_b, 4, 23 * gib)  # fp32 on a 23 GiB CPU machine
    assert reason is not None and reason.startswith("skipped: needs at least 108 GiB")
    assert too_big("lora-concurrent", eight_b, 2, 80 * gib) is None  # bf16 weights alone on an 80 GB GPU
    assert too_big("full-sequential", 1_038_682_112, 2, 80 * gib) is None


def test_the_skip_counts_full_finetuning_in_its_own_precision(tmp_path, monkeypatch):
    """Under --bf16 auto full finetuning trains in fp32 (maft.training.precision) whatever LoRA trains in, so its
    skip counts 4 bytes a value: room for 9 P bytes skips it (16 P), as bf16's 8 P would not."""
    import maft.bench_train as bench_train
    from maft.tiny import default_checkpoint

    p = parameter_counts(str(default_checkpoint()), train_config("lora", TrainBenchConfig(), "cpu"))["parameters"]
    monkeypatch.setattr(bench_train, "device_memory", lambda device: int(9 * p / 0.9))
    cfg = TrainBenchConfig(roles=ROLES, examples=EXAMPLES, paths=["full-sequential"], device="cpu")
    result = bench_train.bench_train(cfg, tmp_path)
    assert result["omitted"]["full-sequential"].startswith("skipped: needs at least")
    assert result["paths"] == []


def test_workload_has_fixed_completion_lengths():
    from transformers import AutoTokenizer

    from maft.tiny import default_checkpoint

    tok = AutoTokenizer.from_pretrained(default_checkpoint())
    roles = make_examples(TrainBenchConfig(roles=3, examples=2, gen_tokens=5, critic_tokens=11))
    assert list(roles) == ["gen_0", "gen_1", "critic_0"]
    for name, examples in roles.items():
        for e in examples:
            ids = tok(e.completion[0]["content"], add_special_tokens=False)["input_ids"]
            assert len(ids) == (11 if name.startswith("critic") else 5)
            assert len(e.prompt) == (3 if name.startswith("critic") else 1)
    assert make_examples(TrainBenchConfig(roles=3, examples=2)) == make_examples(TrainBenchConfig(roles=3, examples=2))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--shape", "llama-70b", "unknown shape 'llama-70b'; accepted: tiny, llama-1b, llama-8b"),
        ("--paths", "lora-sequential,qlora", "unknown path 'qlora'; accepted: " + ", ".join(PATHS)),
        ("--repeats", "0", "Invalid value for '--repeats': Input should be greater than or equal to 1"),
    ],
)
def test_bad_input_is_refused_clearly(tmp_path, option, value, message):
    out = tmp_path / "x.json"
    res = CliRunner().invoke(app, ["bench", "train", option, value, "--out", str(out)])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
    assert not out.exists()
    with pytest.raises(BenchError):
        parse_paths("")
