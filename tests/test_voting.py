import random
from collections import Counter

import pytest

from maft.debate.voting import VoteRule, majority_vote, tie_key
from maft.evaluation.metrics import accuracy
from maft.tasks import grading


def numeric(a, b):
    return grading.equivalent(a, b, kind="numeric")


def test_equivalent_answers_form_one_class():
    vote = majority_vote(["2", "3", "2.0", "3"], numeric)
    assert vote.classes == [[0, 2], [1, 3]]
    assert vote.answer == "2" and vote.count == 2 and vote.voters == 4  # tie: first class to appear wins


def test_plurality_beats_order():
    assert majority_vote(["1", "2", "2"], numeric).answer == "2"


def test_abstentions_never_vote_or_win():
    vote = majority_vote([None, None, "7"], numeric)
    assert vote.answer == "7" and vote.voters == 1 and vote.count == vote.voters  # the one voter is the majority
    empty = majority_vote([None, None], numeric)
    assert empty.answer is None and empty.count == 0 and empty.voters == 0 and empty.classes == []


@pytest.mark.parametrize("kind", ["numeric", "math"])
def test_answers_that_grade_as_nothing_abstain_and_never_win_a_tie(kind):
    """Answers such as "\\text{}", "x=" or "\\%" normalise to nothing and equal no answer, not even
    themselves: they abstain, and cannot win a random tie against a real answer."""
    same = lambda a, b: grading.equivalent(a, b, kind=kind)  # noqa: E731
    for problem in range(20):
        vote = majority_vote(["\\text{}", "x=", "5", "\\%"], same, tie_break="random", key=tie_key(0, str(problem)))
        assert vote.answer == "5" and vote.voters == 1 and vote.tied == 1 and vote.classes == [[2]]
    assert majority_vote(["\\text{}", "\\text{}"], same).answer is None


def test_three_way_tie_goes_to_the_first_answer():
    assert majority_vote([None, "5", "4", "6"], numeric).answer == "5"


def test_accuracy_standard_error():
    acc = accuracy([1, 0, 1, 1])
    assert acc.mean == 0.75 and acc.n == 4
    assert abs(acc.se - (0.75 * 0.25 / 4) ** 0.5) < 1e-12
    assert str(acc) == "75.0 ± 21.7"


# --- tie-break rules ----------------------------------------------------------------------------


def old_majority_vote(answers, equivalent):
    """The rule before tie_break existed (verbatim): the first of the largest classes wins."""
    classes = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for members in classes:
            if equivalent(answers[members[0]], a):
                members.append(i)
                break
        else:
            classes.append([i])
    if not classes:
        return None, 0, 0, []
    best = max(classes, key=len)
    return answers[best[0]], len(best), sum(map(len, classes)), classes


def winners(answers, seeds=range(200), problem_id="p"):
    return Counter(
        majority_vote(answers, numeric, tie_break="random", key=tie_key(s, problem_id)).answer for s in seeds
    )


def test_random_three_way_tie_is_spread_over_the_tied_classes():
    # 200 seeds, expected 66.7 wins each (sd 6.7): at least 40 each is 4 sd away, and the draw is seeded (no flake)
    counts = winners(["5", "4", "6"])
    assert set(counts) == {"5", "4", "6"} and sum(counts.values()) == 200
    assert min(counts.values()) >= 40, counts


def test_random_two_way_tie_among_four_answers_is_spread():
    counts = winners(["3", "7", "7.0", "3"])  # classes [0, 3] and [1, 2]; the reported answer is the first member
    assert set(counts) == {"3", "7"} and min(counts.values()) >= 70, counts  # expected 100 each (sd 7.1)


def test_random_tie_over_problems_with_one_seed_is_spread_too():
    # the draw depends on the problem id: with one run seed, different problems split differently
    counts = Counter(
        majority_vote(["5", "4", "6"], numeric, tie_break="random", key=tie_key(0, f"p{i}")).answer for i in range(200)
    )
    assert min(counts.values()) >= 40, counts


def test_random_tie_never_picks_an_abstention():
    counts = winners([None, "5", None, "4", None])
    assert set(counts) == {"5", "4"} and min(counts.values()) >= 70, counts
    # two abstentions and one answer: no tie at all
    assert winners([None, "9", None]) == Counter({"9": 200})


def test_same_seed_and_problem_give_the_same_winner():
    for seed in range(20):
        once = majority_vote(["5", "4", "6"], numeric, tie_break="random", key=tie_key(seed, "gsm8k-17"))
        again = majority_vote(["5", "4", "6"], numeric, tie_break="random", key=tie_key(seed, "gsm8k-17"))
        assert once == again
        assert VoteRule(seed=seed).vote(["5", "4", "6"], numeric, "gsm8k-17") == once
    assert tie_key(3, "p1") == "3:tie:p1"  # the run seed and the problem id, nothing else


def test_no_tie_gives_the_majority_whatever_the_seed():
    for answers, majority in [
        (["1", "2", "2"], "2"),
        (["2", "1", "1", "2", "2"], "2"),
        (["4", None, None], "4"),
        (["8", "8.0", "9", "9", "8"], "8"),
    ]:
        assert winners(answers) == Counter({majority: 200}), answers
        vote = majority_vote(answers, numeric, tie_break="random", key="any")
        assert vote.tied == 1


def test_tied_counts_the_largest_classes():
    assert majority_vote(["5", "4", "6"], numeric).tied == 3
    assert majority_vote(["5", "5", "6"], numeric).tied == 1
    assert majority_vote([None, None], numeric).tied == 0


def test_first_reproduces_the_old_rule_exactly():
    rng = random.Random(12345)
    pool = [None, "1", "2", "3", "1.0", "2.00"]
    for _ in range(2000):
        answers = [rng.choice(pool) for _ in range(rng.randint(1, 6))]
        vote = majority_vote(answers, numeric, tie_break="first")
        assert (vote.answer, vote.count, vote.voters, vote.classes) == old_majority_vote(answers, numeric), answers
        assert majority_vote(answers, numeric) == vote  # first is majority_vote's own default (callers without a seed)
        assert VoteRule(tie_break="first", seed=7).vote(answers, numeric, "p") == vote


def test_bad_tie_rules_are_refused():
    with pytest.raises(ValueError, match="needs a key"):
        majority_vote(["1", "2"], numeric, tie_break="random")
    assert majority_vote(["1", "1"], numeric, tie_break="random").answer == "1"  # no tie: no key needed
    with pytest.raises(ValueError, match="'random' or 'first'"):
        majority_vote(["1", "2"], numeric, tie_break="lowest")
    with pytest.raises(ValueError, match="'random' or 'first'"):
        VoteRule(tie_break="coin")
    with pytest.raises(ValueError, match="'abstain' or 'keep'"):
        VoteRule(truncated="drop")


def test_vote_rule_of_a_run_config():
    from maft.config import load_config

    rule = VoteRule.of(load_config(None, ["seed=5", "debate.tie_break=first", "debate.truncated=keep"]))
    assert rule == VoteRule(tie_break="first", truncated="keep", seed=5)
    assert VoteRule.of(load_config()) == VoteRule(tie_break="random", truncated="abstain", seed=0) == VoteRule()
