import json

import pytest
from typer.testing import CliRunner

from maft.cli import app
from maft.debate.voting import majority_vote, tie_key
from maft.engines import Sampling
from maft.evaluation.single_agent import evaluate


def test_evaluate_majority_of_k(engine, arithmetic):
    problems = arithmetic.splits(0, 12, seed=1).test
    result = evaluate(engine, arithmetic, problems, samples=3, sampling=Sampling(max_new_tokens=128), seed=0)
    assert len(result.records) == 36 and result.single.n == 12
    for i, p in enumerate(problems):  # the reported numbers follow from the saved records
        recs = result.records[3 * i : 3 * i + 3]
        assert all(r.problem_id == p.id for r in recs)
        assert all(r.correct == arithmetic.is_correct(r.answer, p) for r in recs)
    single = sum(r.correct for r in result.records) / 36
    assert abs(result.single.mean - single) < 1e-9
    majority = [
        arithmetic.is_correct(
            majority_vote(
                [r.answer for r in result.records[3 * i : 3 * i + 3]],
                arithmetic.equivalent,
                tie_break="random",
                key=tie_key(0, p.id),
            ).answer,
            p,
        )
        for i, p in enumerate(problems)
    ]
    assert abs(result.majority.mean - sum(majority) / 12) < 1e-9
    assert result.pass_at_k.mean >= result.majority.mean and result.generated_tokens > 0


def test_cli_evaluate_writes_json(tmp_path):
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", "--task", "arithmetic", "--n", "8", "--samples", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "majority of 3" in res.output and "single sample" in res.output
    data = json.loads(out.read_text())
    assert data["samples"] == 3 and len(data["records"]) == 24


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "nope"),
        (["--task", "jsonl", "--option", "path=/nonexistent/file.jsonl"], "/nonexistent/file.jsonl"),
        (["--option", "levels"], "key=value"),
    ],
)
def test_cli_bad_input_is_a_clear_error(args, message):
    res = CliRunner().invoke(app, ["evaluate", "--n", "2", *args])
    assert res.exit_code != 0
    assert message in res.output
