"""The baselines as real (small) runs through `maft compare`: what each one trains, on what, and who answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maft.baselines import DEFAULT_METHODS, METHODS, method_overrides
from maft.compare import MethodResult, compare, load_compare_config
from maft.config import ConfigError, load_config
from maft.data.agent_data import Example
from maft.debate.transcript import Turn
from maft.debate.voting import ProblemVote, VoteRule
from maft.evaluation.metrics import majority_scores
from maft.store import RunDirError, read_jsonl

pytestmark = pytest.mark.slow

SMALL = ["iterations=1", "debate.agents=2", "task.n_train=10", "task.n_test=6", "train.epochs=1", "train.batch_size=4"]
METHODS_RUN = [
    "single",
    "majority",
    "debate",
    "star",
    "star_no_rationalization",
    "majority_ft",
    "single_agent_ft",
    "single_agent_ft_no_debate",
    "single_agent_ft_all_data",
    "gen_only",
    "critic_only",
]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "c"
    cfg = load_compare_config(None, SMALL, METHODS_RUN)
    results = compare(cfg, out, progress=False)
    return out, {r.method: r for r in results}


def turns(out, method, iteration, split="test"):
    return read_jsonl(out / method / f"iter_{iteration}/debate_{split}.jsonl", Turn)


def agents_of(out, method, iteration=1):
    return sorted(p.name for p in (out / method / f"iter_{iteration}/agents").iterdir())


def test_unknown_methods_and_bad_configs_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_overrides("nope")
    with pytest.raises(ConfigError, match="unknown method"):
        load_compare_config(None, [], ["maft", "nope"])
    with pytest.raises(ConfigError, match="debate.agents"):
        load_compare_config(None, ["debate.agents=0"])
    bad = tmp_path / "c.yaml"
    bad.write_text("methods: [maft]\nrun: {debate: {agentz: 3}}\n")
    with pytest.raises(ConfigError, match="agentz"):
        load_compare_config(bad)
    assert set(DEFAULT_METHODS) <= set(METHODS_RUN) | {"maft"} <= set(METHODS)


def test_the_methods_not_run_here_are_their_named_overrides():
    from maft.config import load_config

    def cfg(method):
        return load_config(None, method_overrides(method))

    t2, ft = cfg("single_agent_ft_t2"), cfg("single_agent_ft")
    assert t2.debate.temperature == 2.0 and t2.model_copy(update={"debate": ft.debate, "method": ft.method}) == ft
    concat = cfg("no_summary")
    assert concat.debate.summarizer == "concat" and concat.model_copy(
        update={"debate": cfg("maft").debate, "method": "maft"}
    ) == cfg("maft")


def test_comparison_files_and_results(comparison):
    out, results = comparison
    saved = [MethodResult.model_validate(r) for r in json.loads((out / "comparison.json").read_text())]
    assert [r.method for r in saved] == METHODS_RUN
    table = (out / "comparison.md").read_text()
    assert all(f"| {m} |" in table for m in METHODS_RUN)
    for r in saved:
        assert len(r.accuracy) == (2 if r.finetunes else 1)
        metrics = json.loads((out / r.run_dir / "metrics.json").read_text())
        assert [m["test"]["majority"] for m in metrics] == [a.model_dump() for a in r.accuracy]
        assert all(c.test_generated_tokens > 0 for c in r.compute)
    assert [m for m, r in results.items() if r.uses_gold_labels] == ["star", "star_no_rationalization"]
    assert {m for m, r in results.items() if not r.finetunes} == {"single", "majority", "debate"}
    assert all(r.compute[1].train_examples > 0 for r in results.values() if r.finetunes)


def test_within_method_differences_pair_each_iteration_with_iteration_0(comparison, arithmetic):
    """vs_iteration_0: a finetuning method at iteration 1 minus itself at iteration 0, on the same problems; a
    method without finetuning has none. The comparison's markdown shows it."""
    out, results = comparison
    problems = arithmetic.splits(10, 6, seed=0).test
    for method, r in results.items():
        if not r.finetunes:
            assert r.vs_iteration_0 is None
            continue
        (d,) = r.vs_iteration_0
        rule = VoteRule.of(load_config(out / method / "config.yaml"))
        s0, s1 = (majority_scores(turns(out, method, it), arithmetic, problems, rule) for it in (0, 1))
        assert d.mean == pytest.approx(np.mean(np.subtract(s1, s0))) and (d.iteration, d.reference_iteration) == (1, 0)
        assert d.low <= d.mean <= d.high
    for method, r in results.items():  # later rounds: for the methods whose held-out debate has more than one
        debated = any(t.round > 1 for t in turns(out, method, 0))
        assert (r.later_rounds is not None) == debated
        assert r.later_rounds is None or len(r.later_rounds) == len(r.accuracy)  # one per iteration
    assert "What finetuning changed: each iteration minus iteration 0" in (out / "comparison.md").read_text()


def test_methods_without_finetuning_are_one_debate_of_the_base_model(comparison, arithmetic):
    out, results = comparison
    single = turns(out, "single", 0)
    assert len(single) == 6 and {(t.agent, t.round, t.adapter) for t in single} == {(0, 1, None)}
    assert results["single"].accuracy[0].mean == pytest.approx(sum(t.correct for t in single) / 6)
    assert results["single"].diversity == [None]  # one agent: no diversity across agents
    majority = turns(out, "majority", 0)
    assert {t.round for t in majority} == {1} and {t.agent for t in majority} == {0, 1}
    assert {t.round for t in turns(out, "debate", 0)} == {1, 2}
    assert not (out / "debate" / "iter_1").exists()


def test_star_no_rationalization_trains_one_agent_on_answers_that_match_the_gold_answer(comparison, arithmetic):
    out, _ = comparison
    problems = {p.id: p for p in arithmetic.splits(10, 6, seed=0).train}
    votes = read_jsonl(out / "star_no_rationalization/iter_1/votes.jsonl", ProblemVote)
    assert all(v.label == problems[v.problem_id].answer for v in votes)
    data = read_jsonl(out / "star_no_rationalization/iter_1/data/gen_0.jsonl", Example)
    train = {t.problem_id: t for t in turns(out, "star_no_rationalization", 1, "train")}
    assert data and len(data) == sum(t.correct for t in train.values())  # exactly the right answers
    assert all(train[e.problem_id].correct for e in data)
    assert agents_of(out, "star_no_rationalization") == ["gen_0"]
    info = json.loads((out / "star_no_rationalization/iter_1/agents/gen_0/maft_train.json").read_text())
    assert info["init"] == "base"  # STaR restarts from the base model every iteration
    assert {t.adapter for t in turns(out, "star_no_rationalization", 1)} == {"gen_0"}
    assert not (out / "star_no_rationalization/iter_1/rationalize.jsonl").exists()


def test_star_asks_every_miss_again_with_the_gold_hint_and_adds_the_right_ones(comparison, arithmetic):
    out, _ = comparison
    problems = {p.id: p for p in arithmetic.splits(10, 6, seed=0).train}
    train = {t.problem_id: t for t in turns(out, "star", 1, "train")}
    # the same training debate as STaR without rationalization: same seed, same base model
    assert train == {t.problem_id: t for t in turns(out, "star_no_rationalization", 1, "train")}
    hinted = read_jsonl(out / "star/iter_1/rationalize.jsonl", Turn)
    assert [t.problem_id for t in hinted] == [pid for pid, t in train.items() if not t.correct]
    for t in hinted:
        p = problems[t.problem_id]
        assert t.adapter is None  # iteration 1 rationalizes with the agents that debated: the base model
        assert t.messages[0]["content"].startswith(arithmetic.prompt(p))
        assert f"Hint: the correct answer is {p.answer}." in t.messages[0]["content"]
    data = read_jsonl(out / "star/iter_1/data/gen_0.jsonl", Example)
    rationalized = [e for e in data if e.kind == "rationalized"]
    assert [e.problem_id for e in rationalized] == [t.problem_id for t in hinted if t.correct]
    assert [e.problem_id for e in data if e.kind == "generation"] == [pid for pid, t in train.items() if t.correct]
    for e in rationalized:  # kept under the original question, without the hint
        assert e.prompt == [{"role": "user", "content": arithmetic.prompt(problems[e.problem_id])}]
    counts = json.loads((out / "star/iter_1/data/counts.json").read_text())["agent_0"]
    assert counts["rationalized"] == len(rationalized) and counts["generation"] == len(data)
    manifest = json.loads((out / "star/manifest.json").read_text())["stages"]
    assert manifest["iter_1/rationalize"]["asked"] == len(hinted)


def test_majority_ft_and_single_agent_ft_all_data_train_one_shared_model_on_the_agents_data(comparison):
    out, results = comparison
    for method, kinds in [
        ("majority_ft", {"generation"}),
        ("single_agent_ft_all_data", {"generation", "critic-", "critic+"}),
    ]:
        assert agents_of(out, method) == ["single"]
        union = read_jsonl(out / method / "iter_1/data/single.jsonl", Example)
        per_agent = [
            e
            for n in range(2)
            for kind in ("gen", "critic")
            if (out / method / f"iter_1/data/{kind}_{n}.jsonl").exists()
            for e in read_jsonl(out / method / f"iter_1/data/{kind}_{n}.jsonl", Example)
        ]
        assert sorted(e.model_dump_json() for e in union) == sorted(e.model_dump_json() for e in per_agent)
        assert {e.agent for e in union} == {0, 1} and {e.kind for e in union} <= kinds
        assert {t.adapter for t in turns(out, method, 1)} == {"single"}  # one model answers as every agent
        assert results[method].diversity[1].kl == pytest.approx(0, abs=1e-6)  # copies of one model: no divergence
    assert {t.round for t in turns(out, "majority_ft", 1)} == {1}


def test_single_agent_ft_is_section_2_2_one_model_on_majority_responses_as_question_response_pairs(
    comparison, arithmetic
):
    out, results = comparison
    problems = {p.id: p for p in arithmetic.splits(10, 6, seed=0).train}
    train = turns(out, "single_agent_ft", 1, "train")
    votes = {v.problem_id: v.label for v in read_jsonl(out / "single_agent_ft/iter_1/votes.jsonl", ProblemVote)}
    final = [t for t in train if t.round == 2]
    expected = [
        (t.problem_id, t.agent, t.response)
        for t in final
        if votes[t.problem_id] is not None and arithmetic.equivalent(t.answer, votes[t.problem_id]) and not t.truncated
    ]
    data = read_jsonl(out / "single_agent_ft/iter_1/data/single.jsonl", Example)
    assert expected and [(e.problem_id, e.agent, e.completion[0]["content"]) for e in data] == expected
    assert all(
        e.kind == "majority" and e.prompt == [{"role": "user", "content": arithmetic.prompt(problems[e.problem_id])}]
        for e in data
    )
    assert agents_of(out, "single_agent_ft") == ["single"]
    assert {(t.round, t.adapter) for t in turns(out, "single_agent_ft", 1)} == {(1, "single"), (2, "single")}
    # without debate: the same training (same debate, same data), then that model answering alone
    assert (out / "single_agent_ft_no_debate/iter_1/data/single.jsonl").read_text() == (
        out / "single_agent_ft/iter_1/data/single.jsonl"
    ).read_text()
    alone = turns(out, "single_agent_ft_no_debate", 1)
    assert len(alone) == 6 and {(t.agent, t.round, t.adapter) for t in alone} == {(0, 1, "single")}
    assert results["single_agent_ft_no_debate"].accuracy[1].mean == pytest.approx(sum(t.correct for t in alone) / 6)
    assert {(t.agent, t.round) for t in turns(out, "single_agent_ft_no_debate", 0)} == {(0, 1)}


def test_ablations_finetune_only_generation_or_only_critic_agents(comparison):
    out, results = comparison
    assert agents_of(out, "gen_only") == ["gen_0", "gen_1"]
    assert {(t.round, t.adapter) for t in turns(out, "gen_only", 1)} == {(1, "gen_0"), (1, "gen_1"), (2, None)}
    assert agents_of(out, "critic_only") == ["critic_0", "critic_1"]
    assert {(t.round, t.adapter) for t in turns(out, "critic_only", 1)} == {(1, None), (2, "critic_0"), (2, "critic_1")}
    # the ablation's generation agents are the ones the full method would train (same data, same seed)
    counts = json.loads((out / "gen_only/iter_1/data/counts.json").read_text())
    assert results["gen_only"].compute[1].train_examples == sum(c["generation"] for c in counts.values())


def test_running_the_comparison_again_resumes_and_redoes_nothing(comparison):
    out, results = comparison
    before = {m: json.loads((out / m / "manifest.json").read_text()) for m in METHODS_RUN}
    again = compare(load_compare_config(None, SMALL, METHODS_RUN), out, progress=False)
    assert {m: json.loads((out / m / "manifest.json").read_text()) for m in METHODS_RUN} == before
    assert [r.accuracy for r in again] == [results[m].accuracy for m in METHODS_RUN]


def test_a_method_run_of_other_settings_is_refused_before_any_method_runs(comparison, tmp_path):
    """Another comparison's runs in --out: refused before the first method runs (it was refused only when the
    loop reached that method, after the methods before it had run), and compare.yaml is left as it was."""
    import shutil

    out = tmp_path / "c"
    shutil.copytree(comparison[0] / "star", out / "star", ignore=shutil.ignore_patterns(".lock"))
    (out / "compare.yaml").write_text("kept\n")
    changed = load_compare_config(None, [*SMALL, "train.learning_rate=0.001"], ["debate", "star"])
    with pytest.raises(
        RunDirError, match=r"(?s)c/star holds a run of other settings .*train.learning_rate: 0.002 -> 0.001"
    ):
        compare(changed, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["compare.yaml", "star"]
    assert (out / "compare.yaml").read_text() == "kept\n"


def test_the_shipped_compare_config_is_the_default_methods_on_the_embedded_default():
    from pathlib import Path

    from maft.config import RunConfig

    cfg = load_compare_config(Path(__file__).parents[1] / "configs" / "compare.yaml")
    assert cfg == load_compare_config(None)
    assert cfg.methods == DEFAULT_METHODS
    from maft.compare import method_config

    assert method_config(cfg, "maft") == RunConfig()
