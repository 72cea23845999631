"""Seeds as an axis of `maft compare` and its paired statistics (maft.evaluation.statistics): intervals against
hand-computed and enumerated cases, pairing only on identical problems, the split seed that keeps the problems
fixed while the run seed varies, and a tiny comparison of 2 methods x 2 seeds end to end."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from maft.compare import (
    SHARED,
    CompareConfig,
    MethodResult,
    compare,
    comparison_markdown,
    load_compare_config,
    method_config,
    run_seeds,
)
from maft.config import ConfigError, config_diff, load_config
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule
from maft.evaluation.metrics import accuracy, majority_scores
from maft.evaluation.statistics import (
    Difference,
    Interval,
    Scores,
    UnpairedError,
    accuracy_interval,
    bootstrap,
    paired_difference,
)
from maft.report.html import write_report
from maft.report.tables import delta, md_escape
from maft.store import RunDirError, read_jsonl
from maft.tasks import get_task


def scores(values, ids=None, seeds=None) -> Scores:
    values = np.asarray(values, dtype=float)
    ids = tuple(ids or (f"p{i}" for i in range(values.shape[1])))
    return Scores(ids, tuple(seeds or range(values.shape[0])), values)


# -- intervals ------------------------------------------------------------------------------------------------
def test_identical_methods_differ_by_exactly_zero():
    a = scores(np.random.default_rng(1).integers(0, 2, size=(3, 40)))
    d = paired_difference(a, a)
    assert (d.mean, d.low, d.high, d.se) == (0.0, 0.0, 0.0, 0.0) and not d.excludes_zero
    assert delta(d) == "+0.0 [+0.0, +0.0]"


def test_a_difference_where_every_problem_flips_the_same_way_excludes_zero():
    right, wrong = scores(np.ones((2, 10))), scores(np.zeros((2, 10)))
    up, down = paired_difference(right, wrong), paired_difference(wrong, right)
    assert (up.mean, up.low, up.high) == (1.0, 1.0, 1.0) and up.excludes_zero
    assert (down.mean, down.low, down.high) == (-1.0, -1.0, -1.0) and down.excludes_zero
    assert delta(up) == "+100.0 [+100.0, +100.0] †" and delta(down) == "-100.0 [-100.0, -100.0] †"
    # 18 of 20 problems flip to right, none to wrong: the interval stays above zero
    better = scores([[1.0] * 18 + [0.0, 0.0]])
    d = paired_difference(better, scores(np.zeros((1, 20))))
    assert d.mean == pytest.approx(0.9) and 0 < d.low <= 0.9 <= d.high and d.excludes_zero
    # one problem of 20 flips: the interval includes zero
    one = paired_difference(scores([[1.0] + [0.0] * 19]), scores(np.zeros((1, 20))))
    assert one.low == 0.0 and not one.excludes_zero and delta(one).endswith("]")


def test_the_bootstrap_distribution_of_a_tiny_case_is_the_enumerated_one():
    """2 seeds x 2 problems: every (seed draw, problem draw) pair enumerated with its multinomial probability."""
    values = np.array([[1.0, 0.0], [1.0, 1.0]])
    draws = {(2, 0): 0.25, (1, 1): 0.5, (0, 2): 0.25}  # counts of 2 draws from 2 items, and their probability
    exact: Counter[float] = Counter()
    for (ws, ps), (wp, pp) in itertools.product(draws.items(), draws.items()):
        exact[round(float(np.array(ws) @ values @ np.array(wp)) / 4, 6)] += ps * pp
    # by hand: seed draws (2,0), (1,1), (0,2) give problem weights [2,0], [2,1], [2,2]; each times a problem draw
    assert exact == {1.0: 0.4375, 0.75: 0.25, 0.5: 0.25, 0.0: 0.0625}
    means = bootstrap(values, resamples=40_000)
    seen = Counter(np.round(means, 6).tolist())
    assert set(seen) == set(exact)
    for value, p in exact.items():
        assert seen[value] / len(means) == pytest.approx(p, abs=0.01)
    ci = accuracy_interval(scores(values))
    default = bootstrap(values)
    assert (ci.low, ci.high) == tuple(np.quantile(default, [0.025, 0.975]))
    assert ci.se == pytest.approx(default.std(ddof=1)) and ci.mean == 0.75
    assert (ci.low, ci.high) == (0.0, 1.0)  # 6.25% of the mass at 0 (above 2.5%), 43.75% at 1


def test_one_seed_resamples_problems_only_and_its_se_is_the_binomial_one():
    values = np.array([[1.0] * 13 + [0.0] * 7])
    means = bootstrap(values)
    assert bootstrap(values).tolist() == means.tolist()  # a fixed bootstrap seed: the same draws every call
    binomial = accuracy(values[0].tolist())  # what a single run reports: sqrt(p (1 - p) / n)
    assert means.mean() == pytest.approx(binomial.mean, abs=0.01)
    assert means.std(ddof=1) == pytest.approx(binomial.se, rel=0.06)
    # the same draws as a direct numpy computation of the problem bootstrap: counts from one multinomial per resample
    rng = np.random.default_rng(20_240_613)
    rng.multinomial(1, [1.0], size=2000)  # the (trivial) seed draws come first
    counts = np.concatenate([rng.multinomial(20, np.full(20, 1 / 20), size=250) for _ in range(8)])
    assert np.allclose(means, counts @ values[0] / 20)


def test_variation_between_seeds_widens_the_interval():
    base = np.array([1.0, 0.0] * 30)
    better, worse = base.copy(), base.copy()
    better[1:30:2] = 1.0  # 15 more right
    worse[0:30:2] = 0.0  # 15 fewer
    same = scores(np.stack([base, base, base]))  # the seeds agree: only the problems vary
    spread = scores(np.stack([better, base, worse]))  # the same mean, with a seed effect
    narrow, wide = accuracy_interval(same), accuracy_interval(spread)
    assert narrow.mean == wide.mean == 0.5
    assert narrow.high - narrow.low < wide.high - wide.low


# -- pairing -----------------------------------------------------------------------------------------------------
def test_pairing_refuses_methods_whose_problems_differ():
    a = scores([[1, 0, 1]], ids=["p0", "p1", "p2"])
    with pytest.raises(UnpairedError, match=r"cannot pair debate with maft: their held-out problems differ"):
        paired_difference(a, scores([[1, 0, 1]], ids=["p0", "p1", "q9"]), names=("debate", "maft"))
    with pytest.raises(UnpairedError, match="held-out problems differ"):
        paired_difference(a, scores([[1, 0]], ids=["p0", "p1"]))
    with pytest.raises(UnpairedError, match="seeds"):
        paired_difference(a, scores([[1, 0, 1]], ids=["p0", "p1", "p2"], seeds=[7]))
    with pytest.raises(UnpairedError, match="held-out problems differ"):
        Scores.stack([(0, ["p0", "p1"], [1, 0]), (1, ["p0", "p2"], [1, 1])], what="maft")
    with pytest.raises(ValueError, match="repeat"):
        Scores.stack([(0, ["p0"], [1]), (0, ["p0"], [0])])


def test_pairing_aligns_problems_and_seeds_by_id():
    a = scores([[1, 0, 1], [0, 0, 1]], ids=["p0", "p1", "p2"], seeds=[0, 1])
    shuffled = scores([[1, 0, 0], [1, 1, 0]], ids=["p2", "p0", "p1"], seeds=[1, 0])  # a's values, reordered
    assert paired_difference(a, shuffled).mean == 0.0
    stacked = Scores.stack([(0, ["p0", "p1"], [1, 0]), (1, ["p1", "p0"], [1, 0])])
    assert stacked.values.tolist() == [[1, 0], [0, 1]] and stacked.problem_ids == ("p0", "p1")


def test_intervals_round_trip_through_json():
    d = paired_difference(scores(np.ones((1, 5))), scores(np.zeros((1, 5))), iterations=(0, 2))
    dumped = json.loads(d.model_dump_json())
    assert dumped["excludes_zero"] is True and dumped["reference_iteration"] == 2
    assert Difference.model_validate(dumped) == d
    assert str(Interval(mean=0.5, low=0.25, high=0.75, se=0.1)) == "50.0 [25.0, 75.0]"


# -- seeds and the split seed ---------------------------------------------------------------------------------------
def test_the_split_seed_fixes_the_problems_and_hashes_as_none_when_it_is_the_run_seed(arithmetic):
    one = load_config(None, ["seed=1"])
    pinned = load_config(None, ["seed=1", "task.split_seed=0"])
    zero = load_config(None, [])
    assert (zero.split_seed, one.split_seed, pinned.split_seed) == (0, 1, 0)
    assert load_config(None, ["task.split_seed=0"]).hash() == zero.hash()  # equal to the run seed: as before
    assert pinned.hash() != one.hash() and pinned.hash() != zero.hash()

    def test_ids(config):
        return [p.id for p in arithmetic.splits(5, 4, seed=config.split_seed).test]

    assert test_ids(pinned) == test_ids(zero) != test_ids(one)


def test_compare_seeds_from_the_config_and_the_command_line(tmp_path):
    assert run_seeds(CompareConfig()) == [0]
    assert run_seeds(load_compare_config(None, ["seed=5"], ["maft"], 3)) == [5, 6, 7]
    assert run_seeds(load_compare_config(None, [], ["maft"], [4, 2])) == [4, 2]
    path = tmp_path / "c.yaml"
    path.write_text("methods: [maft, single]\nseeds: 2\nrun: {seed: 10}\n")
    cfg = load_compare_config(path)
    assert run_seeds(cfg) == [10, 11]
    configs = {s: method_config(cfg, "single", s) for s in run_seeds(cfg)}
    assert configs[10] == method_config(cfg, "single")  # the first seed is the one-seed run, hash included
    assert config_diff(configs[10], configs[11]) == ["seed: 10 -> 11", "task.split_seed: None -> 10"]
    for bad, message in [("0", "at least 1"), ("[1, 1]", "repeat"), ("[]", "empty")]:
        path.write_text(f"methods: [maft]\nseeds: {bad}\n")
        with pytest.raises(ConfigError, match=message):
            load_compare_config(path)


def test_within_method_differences_pair_iterations_and_rounds_per_seed_and_problem():
    """method_results: each iteration minus iteration 0, and the final round's majority minus round 1's, from the
    runs' per-problem scores, seed by seed; none for a method without finetuning or with one round; the tables
    pad a method with fewer iterations and are left out when no method has anything to show."""
    from types import SimpleNamespace

    from maft.compare import _Run, iterations_table, method_results, rounds_table
    from maft.evaluation.metrics import Accuracy, Compute, IterationMetrics
    from maft.report.tables import MISSING

    ids = [f"p{i}" for i in range(6)]

    def metrics(n: int) -> list[IterationMetrics]:
        accuracy = SimpleNamespace(majority=Accuracy(mean=0.5, se=0.2, n=6))
        return [IterationMetrics.model_construct(test=accuracy, compute=Compute(), diversity=None) for _ in range(n)]

    final = {  # per seed, per iteration: the final round's majority per problem
        0: [[0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]],
        1: [[0, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 0, 1]],
    }
    first = {s: [[0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0]] for s in (0, 1)}
    runs = {
        "maft": [_Run(s, f"maft/seed_{s}", metrics(3), ids, final[s], first[s]) for s in (0, 1)],
        "majority_ft": [_Run(s, f"majority_ft/seed_{s}", metrics(2), ids, final[s][:2], None) for s in (0, 1)],
        "single": [_Run(s, f"single/seed_{s}", metrics(1), ids, final[s][:1], None) for s in (0, 1)],
    }
    maft, majority_ft, single = method_results(runs)

    def mean(a, b) -> float:
        return float(np.mean([np.subtract(a[s], b[s]) for s in (0, 1)]))

    for it in (1, 2):
        d = maft.vs_iteration_0[it - 1]
        assert d.mean == pytest.approx(mean({s: final[s][it] for s in (0, 1)}, {s: final[s][0] for s in (0, 1)}))
        assert (d.iteration, d.reference_iteration) == (it, 0) and d.low <= d.mean <= d.high
    for it in range(3):
        g = maft.later_rounds[it]
        assert g.mean == pytest.approx(mean({s: final[s][it] for s in (0, 1)}, {s: first[s][it] for s in (0, 1)}))
        assert (g.iteration, g.reference_iteration) == (it, it) and g.low <= g.mean <= g.high
    assert len(majority_ft.vs_iteration_0) == 1 and majority_ft.later_rounds is None
    assert single.vs_iteration_0 is None and single.later_rounds is None

    iterations = iterations_table([maft, majority_ft, single])
    assert [c.header for c in iterations.columns] == ["method", "iter 1 - iter 0", "iter 2 - iter 0"]
    assert [row[0] for row in iterations.rows] == ["maft", "majority_ft"] and iterations.rows[1][2] == MISSING
    assert [row[0] for row in rounds_table([maft, majority_ft, single]).rows] == ["maft"]
    assert iterations_table([single]) is None and rounds_table([majority_ft, single]) is None


# -- end to end: 2 methods x 2 seeds ----------------------------------------------------------------------------------
SMALL = [
    "iterations=0",
    "debate.agents=2",
    "task.n_train=3",
    "task.n_test=4",
    "task.options.high=3",  # small numbers: the tiny model gets some right
    "debate.max_new_tokens=64",
    "diversity.enabled=false",
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "c"
    cfg = load_compare_config(None, SMALL, ["maft", "single"], 2)
    return out, cfg, compare(cfg, out, progress=False)


@pytest.mark.slow
def test_a_comparison_over_seeds(seeded):
    out, cfg, results = seeded
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/seed_*")) == [
        "maft/seed_0",
        "maft/seed_1",
        "single/seed_0",
        "single/seed_1",
    ]
    saved = [MethodResult.model_validate(r) for r in json.loads((out / "comparison.json").read_text())]
    assert saved == results
    maft, single = results
    task = get_task("arithmetic", high=3)
    problems = task.splits(3, 4, seed=0).test
    per_seed = {}
    for r in results:
        assert [s.seed for s in r.seeds] == [0, 1] and r.run_dir == f"{r.method}/seed_0"
        for s in r.seeds:
            run_config = method_config(cfg, r.method, s.seed)
            turns = read_jsonl(out / s.run_dir / "iter_0/debate_test.jsonl", Turn)
            values = majority_scores(turns, task, problems, VoteRule.of(run_config))
            assert s.accuracy[0] == accuracy(values)  # the run's own metric, from the same scores
            per_seed[r.method, s.seed] = values
        ci = r.accuracy_ci[0]
        pooled = per_seed[r.method, 0] + per_seed[r.method, 1]
        assert ci.mean == pytest.approx(np.mean(pooled)) == r.accuracy[0].mean and ci.low <= ci.mean <= ci.high
        assert r.accuracy[0].se == pytest.approx(ci.se)
    assert maft.vs_maft is None and len(single.vs_maft) == 1
    d = single.vs_maft[0]
    expected = np.mean(np.array([per_seed["single", s] for s in (0, 1)]) - [per_seed["maft", s] for s in (0, 1)])
    assert d.mean == pytest.approx(expected) and d.low <= d.mean <= d.high

    # within a method: what the later rounds add (final round - round 1, the same agents); no finetuning here
    assert maft.vs_iteration_0 is None and single.vs_iteration_0 is None and single.later_rounds is None
    first = {}
    for s in (0, 1):
        turns = read_jsonl(out / f"maft/seed_{s}" / "iter_0/debate_test.jsonl", Turn)
        rule = VoteRule.of(method_config(cfg, "maft", s))
        first[s] = majority_scores([t for t in turns if t.round == 1], task, problems, rule)
    (gain,) = maft.later_rounds
    assert any(first[s] != per_seed["maft", s] for s in (0, 1))  # the rounds differ here: the gain is not 0 by default
    assert gain.mean == pytest.approx(np.mean([np.subtract(per_seed["maft", s], first[s]) for s in (0, 1)]))
    assert gain.low <= gain.mean <= gain.high and (gain.iteration, gain.reference_iteration) == (0, 0)

    index = write_report(out)
    page = index.read_text()
    assert 'id="difference-table"' in page and "0, 1 (problems drawn with split seed 0)" in page
    assert (index.parent / "accuracy.png").is_file()
    records = json.loads((index.parent / "transcripts.js").read_text().split("\n")[0].split(" = ", 1)[1][:-1])
    assert {r["method"] for r in records} == {"maft seed 0", "maft seed 1", "single seed 0", "single seed 1"}

    text = comparison_markdown(results, load_config(None, SMALL))
    assert "Accuracy % \\[95% CI\\] on held-out problems, 2 seeds" in text and "run seeds 0, 1" in text
    assert "Δ vs maft per iteration" in text and f"| single | {md_escape(delta(d))} |" in text
    assert "What the later debate rounds add" in text and f"| maft | {md_escape(delta(gain))} |" in text
    assert "What finetuning changed" not in text and 'id="rounds-table"' in page


@pytest.mark.slow
def test_seeds_change_the_sampling_and_nothing_else(seeded):
    out, _, _ = seeded
    for method in ("maft", "single"):
        runs = [out / method / f"seed_{s}" for s in (0, 1)]
        configs = [load_config(r / "config.yaml") for r in runs]
        assert config_diff(*configs) == ["seed: 0 -> 1", "task.split_seed: None -> 0"]
        manifests = [json.loads((r / "manifest.json").read_text()) for r in runs]
        assert manifests[0]["problems_hash"] == manifests[1]["problems_hash"]  # the same train and test problems
        turns = [read_jsonl(r / "iter_0/debate_test.jsonl", Turn) for r in runs]
        assert [(t.problem_id, t.agent, t.round) for t in turns[0]] == [
            (t.problem_id, t.agent, t.round) for t in turns[1]
        ]
        assert [t.response for t in turns[0]] != [t.response for t in turns[1]]  # other sampling seeds


@pytest.mark.slow
def test_a_comparison_over_seeds_resumes_and_refuses_the_other_layout(seeded, tmp_path):
    out, cfg, results = seeded
    assert compare(cfg, out, progress=False) == results  # every stage kept: nothing runs again
    one_seed = load_compare_config(None, SMALL, ["maft", "single"])
    with pytest.raises(RunDirError, match="several seeds"):
        compare(one_seed, out, progress=False)
    (tmp_path / "old" / "maft").mkdir(parents=True)
    (tmp_path / "old" / "maft" / "manifest.json").write_text("{}")
    with pytest.raises(RunDirError, match="one-seed comparison"):
        compare(cfg, tmp_path / "old", progress=False)


@pytest.mark.slow
def test_a_one_seed_comparison_keeps_its_layout_and_standard_errors(tmp_path):
    out = tmp_path / "c"
    cfg = load_compare_config(None, [*SMALL, "task.n_test=3"], ["single", "majority"])
    results = compare(cfg, out, progress=False)
    assert (out / "single" / "manifest.json").is_file() and not list(out.glob("*/seed_*"))
    for r in results:
        assert len(r.seeds) == 1 and r.accuracy_ci is None and r.vs_maft is None and r.run_dir == r.method
        metrics = json.loads((out / r.method / "metrics.json").read_text())
        assert [a.model_dump() for a in r.accuracy] == [m["test"]["majority"] for m in metrics]
    text = (out / "comparison.md").read_text()
    assert "Accuracy % ± SE on held-out problems" in text and "One seed: ± is the binomial standard error" in text
    assert "Δ" not in text  # no maft: nothing to pair with


@pytest.mark.parametrize(
    "seeds, message",
    [
        ("x", "is neither a count"),
        ("0", "seeds must be at least 1"),
        ("1,1", "repeat a seed"),
        ("101", "to run the one seed 101, name it as a list (--seeds '101,' with a trailing comma"),
    ],
)
def test_bad_seeds_on_the_command_line_are_one_error_line(tmp_path, seeds, message):
    from typer.testing import CliRunner

    from maft.cli import app

    out = tmp_path / "c"
    result = CliRunner().invoke(app, ["compare", "--methods", "single", "--seeds", seeds, "--out", str(out)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_several_seeds_average_their_diversity_and_sum_their_compute():
    from maft.compare import _mean_diversity, _summed
    from maft.evaluation.metrics import Compute, Diversity

    def d(agreement, kl, roles):
        return Diversity(
            agents=2, problems=4, answer_agreement=agreement, consensus=0.5, kl=kl, kl_from_base_by_role=roles
        )

    mean = _mean_diversity([d(0.2, 0.1, {"gen_0": 1.0}), d(0.4, None, {"gen_0": 3.0})])
    assert mean is not None and mean.answer_agreement == pytest.approx(0.3) and mean.consensus == 0.5
    assert mean.kl is None and mean.kl_from_base_by_role == {"gen_0": 2.0} and mean.agents == 2
    assert _mean_diversity([None, None]) is None
    assert _mean_diversity([d(0.2, 0.1, None), None]) is None  # a seed without diversity: no mean, as documented
    total = _summed([Compute(test_generated_tokens=5, seconds=1.5), Compute(test_generated_tokens=7, seconds=2.0)])
    assert total == Compute(test_generated_tokens=12, seconds=3.5)


@pytest.mark.slow
def test_a_comparison_generates_each_base_model_debate_once(tmp_path):
    """maft at iteration 0 and the debate baseline debate the held-out problems with the same base model,
    settings and seed: the second run reuses the first's debate, which is what it would have generated itself;
    majority vote (one round) and another seed compute their own."""
    out = tmp_path / "c"
    cfg = load_compare_config(None, SMALL, ["maft", "debate", "majority"], [0, 1])
    compare(cfg, out, progress=False)

    def stage(method: str, seed: int) -> dict:
        return json.loads((out / method / f"seed_{seed}" / "manifest.json").read_text())["stages"]["iter_0/debate_test"]

    def turns(run) -> list[str]:
        return [t.response for t in read_jsonl(run / "iter_0/debate_test.jsonl", Turn)]

    for seed in (0, 1):
        assert "reused" not in stage("maft", seed) and stage("debate", seed)["reused"] is True
        assert "reused" not in stage("majority", seed)
        assert turns(out / "debate" / f"seed_{seed}") == turns(out / "maft" / f"seed_{seed}")
        assert stage("debate", seed)["generated_tokens"] == stage("maft", seed)["generated_tokens"]
    assert len(list((out / SHARED).glob("*.jsonl"))) == 4  # maft's and majority's, per seed
    alone = load_compare_config(None, SMALL, ["debate"], [1])
    compare(alone, tmp_path / "alone", progress=False)  # generated, not reused: the same turns
    assert turns(tmp_path / "alone" / "debate") == turns(out / "debate" / "seed_1")
