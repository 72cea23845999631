from maft import grading
from maft.metrics import accuracy
from maft.voting import majority_vote


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
    assert vote.answer == "7" and vote.voters == 1 and vote.unanimous
    empty = majority_vote([None, None], numeric)
    assert empty.answer is None and empty.count == 0 and not empty.unanimous


def test_three_way_tie_goes_to_the_first_answer():
    assert majority_vote([None, "5", "4", "6"], numeric).answer == "5"


def test_accuracy_standard_error():
    acc = accuracy([1, 0, 1, 1])
    assert acc.mean == 0.75 and acc.n == 4
    assert abs(acc.se - (0.75 * 0.25 / 4) ** 0.5) < 1e-12
    assert str(acc) == "75.0 ± 21.7"
