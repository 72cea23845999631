"""vote_final_round (the label of each problem) and debate_metrics on hand-written debates."""

from __future__ import annotations

import math

import pytest

from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule, vote_final_round
from maft.evaluation.metrics import debate_metrics
from maft.tasks import Problem

FIRST = VoteRule(tie_break="first")  # the old fixed rule: ties go to the lowest agent index


def make_turns(task, problems, answers, tokens=lambda agent, round: 1) -> list[Turn]:
    """``answers[problem_id][round - 1][agent]`` -> turns (conversations are irrelevant to voting)."""
    gold = {p.id: p for p in problems}
    turns = []
    for p in problems:
        for m, row in enumerate(answers[p.id], start=1):
            for n, a in enumerate(row):
                turns.append(
                    Turn(
                        problem_id=p.id,
                        agent=n,
                        round=m,
                        adapter=None,
                        messages=[{"role": "user", "content": task.prompt(p)}],
                        response=f"... \\boxed{{{a}}}" if a is not None else "...",
                        answer=a,
                        correct=task.is_correct(a, gold[p.id]),
                        completion_tokens=tokens(n, m),
                    )
                )
    return turns


def vote_one(task, rounds, gold="4", rule=FIRST):
    problems = [Problem("p", "2+2", gold)]
    (v,) = vote_final_round(make_turns(task, problems, {"p": rounds}), task, problems, rule)
    return v


# -- vote_final_round --------------------------------------------------------------------------------


def test_only_the_final_round_votes(arithmetic):
    v = vote_one(arithmetic, [["1", "1", "1"], ["4", "3", "4.0"]])
    assert v.label == "4" and v.count == 2 and v.voters == 3 and v.agents == 3
    assert v.classes == [[0, 2], [1]]
    assert v.correct and not v.unanimous
    # and the reverse: a unanimous round 1 does not make the final vote unanimous
    v = vote_one(arithmetic, [["4", "4", "4"], ["1", "1", "4"]])
    assert v.label == "1" and v.count == 2 and not v.correct and not v.unanimous


def test_final_round_is_the_last_of_three(arithmetic):
    v = vote_one(arithmetic, [["4", "4", "4"], ["4", "4", "4"], ["7", "7", "4"]])
    assert v.label == "7" and v.classes == [[0, 1], [2]] and not v.correct


def test_label_is_the_first_members_answer_and_equivalence_is_numeric(arithmetic):
    v = vote_one(arithmetic, [["4.0", "4", "4.00"]], gold="4")
    assert v.label == "4.0" and v.count == 3 and v.classes == [[0, 1, 2]]
    assert v.correct and v.unanimous


def test_tie_goes_to_the_class_of_the_lowest_agent(arithmetic):
    v = vote_one(arithmetic, [["5", "3", "3", "5"]], gold="3")
    assert v.classes == [[0, 3], [1, 2]]
    assert v.label == "5" and v.count == 2 and v.voters == 4 and v.agents == 4
    assert not v.correct  # the tie picked the wrong class
    v = vote_one(arithmetic, [[None, "8", "7", "7", "8"]], gold="8")
    assert v.classes == [[1, 4], [2, 3]] and v.label == "8" and v.correct


def test_tie_rule_follows_agent_index_not_turn_order(arithmetic):
    problems = [Problem("p", "2+2", "4")]
    turns = make_turns(arithmetic, problems, {"p": [["5", "4", "4", "5"]]})
    v_sorted = vote_final_round(turns, arithmetic, problems, FIRST)[0]
    v_reversed = vote_final_round(list(reversed(turns)), arithmetic, problems, FIRST)[0]
    assert v_sorted == v_reversed
    assert v_reversed.label == "5" and v_reversed.classes == [[0, 3], [1, 2]]


def test_abstentions_never_vote_or_win(arithmetic):
    v = vote_one(arithmetic, [[None, None, "4"]])
    assert v.label == "4" and v.count == 1 and v.voters == 1 and v.agents == 3
    assert v.classes == [[2]] and v.correct
    assert not v.unanimous  # an abstaining agent breaks unanimity
    v = vote_one(arithmetic, [["6", None, None, None, "6"]], gold="6")
    assert v.label == "6" and v.count == 2 and v.voters == 2 and v.agents == 5 and v.classes == [[0, 4]]


def test_all_abstain_gives_no_label(arithmetic):
    v = vote_one(arithmetic, [["4", "4", "4"], [None, None, None]])
    assert v.label is None and v.count == 0 and v.voters == 0 and v.agents == 3
    assert v.classes == [] and not v.correct and not v.unanimous


def test_unanimous(arithmetic):
    assert vote_one(arithmetic, [["1", "2", "3"], ["9", "9.0", "9"]]).unanimous
    assert not vote_one(arithmetic, [["9", "9", "8"]]).unanimous


def test_one_vote_per_problem_in_problem_order(arithmetic):
    problems = [Problem("a", "1+1", "2"), Problem("b", "1+2", "3"), Problem("c", "2+3", "5")]
    answers = {"a": [["2", "2"], ["2", "3"]], "b": [["3", "3"], ["3", "3"]], "c": [["5", "1"], ["1", "1"]]}
    turns = make_turns(arithmetic, problems, answers)
    votes = vote_final_round(turns, arithmetic, list(reversed(problems)))
    assert [(v.problem_id, v.label, v.correct, v.unanimous) for v in votes] == [
        ("c", "1", False, True),
        ("b", "3", True, True),
        ("a", "2", True, False),
    ]


# -- debate_metrics ----------------------------------------------------------------------------------

METRIC_PROBLEMS = [Problem("q1", "2+2", "4"), Problem("q2", "5*2", "10"), Problem("q3", "3+3", "6")]
# [round][agent]; per-turn correctness and votes worked out by hand in the test below
METRIC_ANSWERS = {
    "q1": [["4", "5", None], ["4", "4.0", "4"]],
    "q2": [["10", "10", "3"], ["10", "3", "3"]],
    "q3": [["8", "8", "6"], ["6", None, "8"]],
}


def close(x, y):
    return math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-12)


def se(scores):
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores) / len(scores))


def test_debate_metrics_by_hand(arithmetic):
    turns = make_turns(arithmetic, METRIC_PROBLEMS, METRIC_ANSWERS, tokens=lambda n, m: 1 + n + 10 * (m - 1))
    m = debate_metrics(turns, arithmetic, METRIC_PROBLEMS, FIRST)
    assert m.problems == 3

    # final-round majority: q1 "4" right, q2 "3" wrong (2 vs 1), q3 tie -> agent 0's "6" right
    assert close(m.majority.mean, 2 / 3) and m.majority.n == 3
    assert close(m.majority.se, math.sqrt((2 / 9) / 3))

    # per round, majority: round 1: q1 tie -> "4" right, q2 "10" right, q3 "8" wrong
    assert [round(a.mean, 12) for a in m.round_majority] == [round(2 / 3, 12), round(2 / 3, 12)]

    # per round, one agent's mean accuracy: per-problem fractions r1 [1/3, 2/3, 1/3], r2 [1, 1/3, 1/3]
    assert len(m.round_agent) == 2
    assert close(m.round_agent[0].mean, 4 / 9) and close(m.round_agent[1].mean, 5 / 9)
    assert close(m.round_agent[0].se, se([1 / 3, 2 / 3, 1 / 3]))
    assert close(m.round_agent[1].se, se([1, 1 / 3, 1 / 3]))
    assert close(m.round_agent[0].se, math.sqrt(2 / 243))

    # [agent][round]: a0 [2/3, 1], a1 [1/3, 1/3], a2 [1/3, 1/3]
    means = [[a.mean for a in row] for row in m.agent_round]
    expected = [[2 / 3, 1.0], [1 / 3, 1 / 3], [1 / 3, 1 / 3]]
    assert len(means) == 3 and all(len(row) == 2 for row in means)
    assert all(close(x, y) for row, erow in zip(means, expected) for x, y in zip(row, erow))
    assert m.agent_round[0][1].se == 0.0 and m.agent_round[0][1].n == 3

    # final round: q1 unanimous (4, 4.0, 4); q2 one pair of 3 agree; q3 no pair (None never agrees)
    assert close(m.unanimous, 1 / 3)
    assert close(m.pairwise_agreement, (1 + 1 / 3 + 0) / 3)

    # two abstentions among 18 turns
    assert close(m.abstention_rate, 2 / 18)
    # per problem: round 1 tokens 1+2+3, round 2 tokens 11+12+13
    assert m.generated_tokens == 3 * (6 + 36)


def test_debate_metrics_agrees_with_vote_final_round(arithmetic):
    turns = make_turns(arithmetic, METRIC_PROBLEMS, METRIC_ANSWERS)
    m = debate_metrics(turns, arithmetic, METRIC_PROBLEMS, FIRST)
    votes = vote_final_round(turns, arithmetic, METRIC_PROBLEMS, FIRST)
    assert [v.correct for v in votes] == [True, False, True]
    assert close(m.majority.mean, sum(v.correct for v in votes) / len(votes))
    assert close(m.unanimous, sum(v.unanimous for v in votes) / len(votes))


def test_debate_metrics_all_abstain_is_not_unanimous(arithmetic):
    problems = [Problem("z", "1+1", "2")]
    turns = make_turns(arithmetic, problems, {"z": [[None, None]]})
    m = debate_metrics(turns, arithmetic, problems)
    assert m.unanimous == 0.0 and m.pairwise_agreement == 0.0
    assert m.abstention_rate == 1.0 and m.majority.mean == 0.0


@pytest.mark.parametrize(
    ("answers", "unanimous", "pairwise"),
    [
        ([["2", "2.0", "2", "2"]], 1.0, 1.0),
        ([["2", "2", "3", "3"]], 0.0, 2 / 6),
        ([["2", "2", "2", "3"]], 0.0, 3 / 6),
        ([["1", "2", "3", None]], 0.0, 0.0),
    ],
)
def test_pairwise_agreement_four_agents(arithmetic, answers, unanimous, pairwise):
    problems = [Problem("z", "1+1", "2")]
    m = debate_metrics(make_turns(arithmetic, problems, {"z": answers}), arithmetic, problems)
    assert m.unanimous == unanimous and close(m.pairwise_agreement, pairwise)
    # one agent's accuracy against gold "2" is the fraction of the four agents that are right
    right = sum(a is not None and float(a) == 2 for a in answers[0])
    assert close(m.round_agent[0].mean, right / 4)


# -- random ties through vote_final_round and debate_metrics -----------------------------------------

TIED = [Problem(f"t{i}", f"{i}+0", str(i)) for i in range(60)]


def tied_turns(arithmetic):
    # every problem: a three-way split of the final round (agent 0 is right)
    return make_turns(arithmetic, TIED, {p.id: [[p.answer, "-1", "-2"]] for p in TIED})


def test_random_ties_are_seeded_by_run_seed_and_problem(arithmetic):
    turns = tied_turns(arithmetic)
    votes = vote_final_round(turns, arithmetic, TIED, VoteRule(seed=0))
    assert all(v.tied == 3 and v.count == 1 for v in votes)
    assert all(v.classes == [[0], [1], [2]] for v in votes)
    winners = [[p.answer, "-1", "-2"].index(v.label) for v, p in zip(votes, TIED)]  # the winning agent
    # the winning agent differs across problems (not agent 0 every time) and each agent wins some
    assert set(winners) == {0, 1, 2} and min(winners.count(a) for a in range(3)) >= 10, winners
    # a resume reads the same turns: the same labels; a problem's label does not depend on the others
    assert vote_final_round(list(reversed(turns)), arithmetic, TIED, VoteRule(seed=0)) == votes
    alone = vote_final_round([t for t in turns if t.problem_id == "t7"], arithmetic, [TIED[7]], VoteRule(seed=0))
    assert alone == [votes[7]]
    # another run seed draws other winners for some problems
    other = vote_final_round(turns, arithmetic, TIED, VoteRule(seed=1))
    assert [v.label for v in other] != [v.label for v in votes]
    # first: agent 0 wins every split
    assert all(v.label == p.answer for v, p in zip(vote_final_round(turns, arithmetic, TIED, FIRST), TIED))


def test_debate_metrics_and_labels_break_ties_the_same_way(arithmetic):
    turns = tied_turns(arithmetic)
    for rule in (VoteRule(seed=0), VoteRule(seed=3), FIRST):
        votes = vote_final_round(turns, arithmetic, TIED, rule)
        m = debate_metrics(turns, arithmetic, TIED, rule)
        assert close(m.majority.mean, sum(v.correct for v in votes) / len(votes))
    assert debate_metrics(turns, arithmetic, TIED, FIRST).majority.mean == 1.0
    assert 0.2 < debate_metrics(turns, arithmetic, TIED, VoteRule(seed=0)).majority.mean < 0.5


# -- truncated responses -----------------------------------------------------------------------------


def truncate(turns, which):
    """Mark the turns ``(problem_id, agent, round)`` in ``which`` as cut off at max_new_tokens."""
    return [t.model_copy(update={"truncated": True}) if (t.problem_id, t.agent, t.round) in which else t for t in turns]


def test_a_truncated_turn_abstains_under_abstain_and_keeps_its_answer_under_keep(arithmetic):
    problems = [Problem("p", "2+2", "4")]
    turns = truncate(
        make_turns(arithmetic, problems, {"p": [["4", "4", "4"], ["7", "7", "4"]]}), {("p", 0, 2), ("p", 1, 2)}
    )
    cut = [t for t in turns if t.truncated]
    assert [(t.answer, t.response) for t in cut] == [
        ("7", "... \\boxed{7}")
    ] * 2  # the record keeps its text and answer
    abstain, keep = VoteRule(truncated="abstain"), VoteRule(truncated="keep")
    assert [abstain.answer(t) for t in cut] == [None, None] and [keep.answer(t) for t in cut] == ["7", "7"]
    (v,) = vote_final_round(turns, arithmetic, problems, abstain)
    assert v.label == "4" and v.voters == 1 and v.classes == [[2]] and v.correct
    (v,) = vote_final_round(turns, arithmetic, problems, keep)
    assert v.label == "7" and v.voters == 3 and v.classes == [[0, 1], [2]] and not v.correct
    # a truncated right answer is not right under abstain
    right = truncate(make_turns(arithmetic, problems, {"p": [["4", "5", "6"]]}), {("p", 0, 1)})
    assert not abstain.correct(right[0]) and keep.correct(right[0])


def test_truncation_in_debate_metrics(arithmetic):
    turns = make_turns(arithmetic, METRIC_PROBLEMS, METRIC_ANSWERS)
    # round 1: 2 of 9 responses cut off; round 2: 3 of 9 (q3 a1 had no answer anyway)
    cut = {("q1", 0, 1), ("q3", 2, 1), ("q2", 0, 2), ("q2", 1, 2), ("q3", 1, 2)}
    turns = truncate(turns, cut)
    keep = debate_metrics(turns, arithmetic, METRIC_PROBLEMS, VoteRule(tie_break="first", truncated="keep"))
    abstain = debate_metrics(turns, arithmetic, METRIC_PROBLEMS, VoteRule(tie_break="first", truncated="abstain"))
    for m in (keep, abstain):
        assert [round(x, 12) for x in m.truncated] == [round(2 / 9, 12), round(3 / 9, 12)]
    # keep: the numbers of test_debate_metrics_by_hand
    assert close(keep.majority.mean, 2 / 3) and close(keep.abstention_rate, 2 / 18)
    assert close(keep.round_agent[0].mean, 4 / 9) and close(keep.round_agent[1].mean, 5 / 9)
    # abstain: final round q1 4,4.0,4 -> "4" right; q2 (10 cut, 3 cut, 3) -> "3" wrong; q3 (6, None, 8) tie -> "6" right
    assert close(abstain.majority.mean, 2 / 3)
    # round 1 loses q1 a0's "4" (right) and q3 a2's "6" (right): per-problem fractions [0, 2/3, 0]
    assert close(abstain.round_agent[0].mean, 2 / 9)
    # round 2 loses q2 a0's "10" (right): [1, 0, 1/3]
    assert close(abstain.round_agent[1].mean, 4 / 9)
    assert [a.mean for a in abstain.agent_round[0]] == [1 / 3, 2 / 3]  # agent 0: r1 q2 only; r2 q1 and q3
    # round 1 majority: q1 (None, 5, None) -> "5" wrong; q2 "10" right; q3 (8, 8, None) -> "8" wrong
    assert close(abstain.round_majority[0].mean, 1 / 3)
    # 2 abstentions + 5 truncations (q3 a1 r2 was both): 6 of 18
    assert close(abstain.abstention_rate, 6 / 18)
    # final-round agreement: q1 unanimous; q2 (None, None, 3) no pair; q3 (6, None, 8) no pair
    assert close(abstain.unanimous, 1 / 3) and close(abstain.pairwise_agreement, 1 / 3)


def test_truncation_shares_by_hand(arithmetic):
    from maft.evaluation.metrics import truncation_shares

    problems = [Problem("a", "1+1", "2"), Problem("b", "1+2", "3")]
    turns = make_turns(
        arithmetic, problems, {"a": [["2", "2"], ["2", "2"], ["2", "2"]], "b": [["3", "3"], ["3", "3"], ["3", "3"]]}
    )
    turns = truncate(turns, {("a", 0, 1), ("a", 0, 2), ("b", 1, 2), ("a", 1, 2)})
    assert truncation_shares(turns) == [1 / 4, 3 / 4, 0.0]
    assert truncation_shares([]) == []


def test_old_metrics_without_truncation_still_load():
    from maft.evaluation.metrics import DebateMetrics

    old = {
        "problems": 1,
        "majority": {"mean": 1, "se": 0, "n": 1},
        "round_agent": [],
        "round_majority": [],
        "agent_round": [],
        "unanimous": 1,
        "pairwise_agreement": 1,
        "abstention_rate": 0,
        "generated_tokens": 0,
    }  # a metrics.json written before DebateMetrics.truncated existed
    assert DebateMetrics.model_validate(old).truncated == []
