import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from maft.tasks import grading
from maft.tasks.grading import choice_letter, equivalent, extract_answer, last_boxed, normalize, to_number

# --- extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"So the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"First \boxed{3}, no wait: \boxed{4}", "4"),
        (r"The set is $\boxed{\{1, 2\}}$.", r"\{1, 2\}"),
        (r"The answer is \boxed 5.", "5"),
        (r"\fbox{7}", "7"),
        (r"\boxed{ 12. }", "12"),
        ("He pays 3 + 4 = 7 dollars.\n#### 1,234\nDone", "1,234"),
        ("so it costs $1,234.50 and then -3 more", "-3"),
        ("Total: 1,234,567 apples", "1234567"),
        ("It is 0.75 of it", "0.75"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_abstention_is_none():
    assert extract_answer("I do not know.") is None
    assert extract_answer("") is None
    assert extract_answer(r"\boxed{}") is None


def test_truncated_box_falls_back_to_an_earlier_complete_one():
    assert last_boxed(r"\boxed{2} and then \boxed{\frac{1}{") == "2"
    assert extract_answer(r"we get 41, so \boxed{x+") == "41"


# --- normalisation and numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (r"\text{5 cm}", "5cm"),
        (r"\$1,000", "1000"),
        (r"45^\circ", "45"),
        (r"10\%", "10"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        ("x = 3", "3"),
        (r"\dfrac{1}{2}.", r"\frac{1}{2}"),
        ("1,2", "1,2"),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw, "math") == expected


def test_to_number():
    assert to_number("3/4") == 0.75
    assert to_number(r"\frac{3}{4}") == 0.75
    assert to_number(r"-\frac{1}{2}") == -0.5
    assert to_number(r"\frac12") == 0.5
    assert to_number("1/0") is None
    assert to_number("abc") is None


# --- equivalence ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numeric", "math", "choice"])
def test_none_never_equals_anything(kind):
    assert not equivalent(None, None, kind)
    assert not equivalent(None, "3", kind)
    assert not equivalent("3", None, kind)


def test_numeric():
    assert equivalent("18", "18.0", "numeric")
    assert equivalent("1,234", "1234", "numeric")
    assert equivalent("0.75", "3/4", "numeric")
    assert equivalent(r"\frac{3}{4}", "0.75", "numeric")
    assert equivalent("$70,000", "70000", "numeric")
    assert equivalent("1000000", "1000000.0001", "numeric")  # within 1e-6 relative
    assert not equivalent("1000", "1001", "numeric")
    assert not equivalent("0.3333", "1/3", "numeric")
    assert equivalent("ten", "ten", "numeric")  # not numbers: string equality
    assert not equivalent("ten", "10", "numeric")
    assert not equivalent("", "", "numeric")


def test_choice():
    assert equivalent("(B)", "b", "choice")
    assert equivalent("B.", r"\text{(B)}", "choice")
    assert equivalent("(C) 42", "C", "choice")
    assert not equivalent("A", "B", "choice")
    assert not equivalent("Bob", "B", "choice")


def test_unknown_kind():
    with pytest.raises(ValueError, match="grader kind"):
        equivalent("1", "2", "fuzzy")


@pytest.mark.parametrize(
    "a, b",
    [
        (r"\frac{1}{2}", "0.5"),
        (r"\sqrt{8}", r"2\sqrt{2}"),
        (r"3\pi", r"3 \pi"),
        (r"\pi \cdot 3", r"3\pi"),
        ("(1,2]", "(1, 2]"),
        ("x^2+2x+1", "(x+1)^2"),
        (r"\{1, 2\}", "2, 1"),
        ("x = 3", "3"),
        (r"\dfrac{7}{12}", r"\frac{7}{12}"),
    ],
)
def test_math_equivalent(a, b):
    assert equivalent(a, b, "math")
    assert equivalent(b, a, "math")


@pytest.mark.parametrize(
    "a, b",
    [(r"\sqrt{2}", "1.41"), (r"3\pi", r"\pi"), ("[1,2)", "(1,2)"), ("x+1", "x-1"), ("2", "3")],
)
def test_math_not_equivalent(a, b):
    assert not equivalent(a, b, "math")


def test_math_check_works_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(equivalent(r"\sqrt{12}", r"2\sqrt{3}", "math")))
    thread.start()
    thread.join(timeout=60)
    assert results == [True]

    pairs = [(r"\sqrt{50}", r"5\sqrt{2}"), (r"\frac{2}{\sqrt{2}}", r"\sqrt{2}"), (r"2\pi", r"\pi")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        verdicts = list(pool.map(lambda p: equivalent(*p, "math"), pairs))
    assert verdicts == [True, True, False]


def test_math_timeout_returns_false_and_recovers(monkeypatch):
    equivalent(r"\sqrt{27}", r"3\sqrt{3}", "math")  # make sure the worker is up
    monkeypatch.setattr(grading, "MATH_VERIFY_TIMEOUT", 1.0)
    start = time.monotonic()
    result = []
    # sympy tries to evaluate 9^(9^(9^9)): it never finishes, so only the hard timeout ends it.
    thread = threading.Thread(target=lambda: result.append(equivalent(r"9^{9^{9^{9}}}", "1", "math")))
    thread.start()
    thread.join(timeout=30)
    assert result == [False]
    assert 0.9 < time.monotonic() - start < 15  # it was the timeout that ended it
    # The killed worker is replaced.
    assert equivalent(r"\sqrt{32}", r"4\sqrt{2}", "math")


# --- the fallback when there is no boxed answer, per task -----------------------------------------

UNBOXED = [
    ("So 3 + 4 = 7, and the answer is 7.", "7"),
    ("He pays 3 + 4 = 7 dollars.\n#### 1,234\nDone", "1,234"),
    (r"we get 41, so \boxed{x+", "41"),  # a box cut off mid-answer (e.g. at max_new_tokens)
]


def test_extract_answer_without_fallback_needs_a_box():
    for text, fallback in UNBOXED:
        assert extract_answer(text) == fallback
        assert extract_answer(text, fallback=False) is None
    assert extract_answer(r"7, so \boxed{\frac{1}{2}}", fallback=False) == r"\frac{1}{2}"


def test_the_fallback_is_a_property_of_the_task(tmp_path):
    import json
    from pathlib import Path

    from maft.tasks import get_task

    fixtures = Path(__file__).parent / "fixtures"
    numeric_file = tmp_path / "n.jsonl"
    numeric_file.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    tasks = {
        "arithmetic": get_task("arithmetic"),
        "gsm8k": get_task("gsm8k", path=str(fixtures / "gsm8k_sample.jsonl")),
        "math": get_task("math", path=str(fixtures / "math_sample.jsonl")),
        "jsonl numeric": get_task("jsonl", path=str(numeric_file)),
        "jsonl math": get_task("jsonl", path=str(numeric_file), grader="math"),
        "jsonl choice": get_task("jsonl", path=str(numeric_file), grader="choice"),
    }
    falls_back = {name: task.answer_fallback for name, task in tasks.items()}
    assert falls_back == {
        "arithmetic": True,
        "gsm8k": True,
        "math": False,
        "jsonl numeric": True,
        "jsonl math": False,
        "jsonl choice": True,
    }
    for name, task in tasks.items():
        for text, fallback in UNBOXED:
            assert task.extract(text) == (fallback if falls_back[name] else None), (name, text)
        assert task.extract(r"first 3, then \boxed{5}") == "5"  # a boxed answer always counts
    assert tasks["jsonl choice"].extract("I pick option B") is None  # choice: as before (the last number, none here)
    assert tasks["jsonl choice"].extract("I pick 2") == "2"


def test_numbers_beyond_float_range_stay_distinct():
    # as floats both were inf, and isclose(inf, inf) held: two different answers graded equal
    for kind in ("numeric", "math"):
        assert not equivalent("1" * 400, "2" * 400, kind)
        assert equivalent("1" * 400, "1" * 400, kind)
        assert not equivalent("1" * 400 + "/3", "2" * 400 + "/3", kind)
        assert equivalent("3" * 400 + "/3", "1" * 400, kind)
    assert to_number("1" * 400) == int("1" * 400)
    assert to_number("1" * 5000) is None  # more digits than Python converts: compared as text
    assert equivalent("1" * 5000, "1" * 5000) and not equivalent("1" * 5000, "1" * 4999 + "2")


def test_a_deeply_nested_answer_is_not_read_as_its_innermost_part():
    deep = "\\frac{" * 200 + "1" + "}{2}" * 200
    assert not equivalent(deep, "\\frac{1}{2}", "math")
    assert equivalent(deep, deep, "math")  # still equal to itself, as text
    assert equivalent("\\frac{\\frac{1}{2}}{2}", "\\frac{1}{4}", "math")  # ordinary nesting keeps the symbolic check


def test_extraction_is_linear_in_unclosed_boxes():
    # every unclosed \boxed{ used to rescan to the end of the text: 20,000 of them never finished
    text = "\\boxed{" * 200_000
    assert last_boxed(text) is None and extract_answer(text, fallback=False) is None
    assert last_boxed("\\boxed{" * 50_000 + "\\boxed{7}") == "7"
    assert last_boxed("\\boxed{3}" + "\\boxed{" * 50_000) == "3"


@pytest.mark.parametrize(
    "response, gold",
    [
        (r"so \boxed{18 \text{ dollars}}", "18"),
        (r"\boxed{18\,\text{km}}", "18"),
        (r"\boxed{18 hours}", "18"),
        ("#### 18 dollars", "18"),
        (r"\boxed{3 \times 6 = 18}", "18"),
        (r"\boxed{1{,}000}", "1000"),
        (r"\boxed{+18}", "18"),
        ("#### $1,000", "1000"),
        (r"\boxed{1,000 \text{ dollars}}", "1000"),
        ("#### 1,200 dollars", "1200"),
        ("#### x = 18\nCheck: 18 - 3 = 15.", "18"),
        (r"\boxed{\frac{1}{2} \text{ cup}}", "0.5"),
        ("#### -18 km", "-18"),
    ],
)
def test_a_numeric_answer_is_the_number_stated_whatever_surrounds_it(response, gold):
    """Units, an equation before the number, LaTeX's {,} and a plus sign (GSM8K answers from instruction models);
    before, each compared as text and graded wrong, and split the vote from a bare "18"."""
    assert equivalent(extract_answer(response), gold, "numeric")


@pytest.mark.parametrize(
    "answer, gold",
    [
        (r"2 \text{ million}", "2"),
        ("1.5 billion", "1.5"),
        ("2 dozen", "2"),
        ("2 thirds", "2"),
        ("3 pi", "3"),
        ("2x", "2"),
        ("5k", "5"),
        ("x != 5", "5"),
        ("x <= 5", "5"),
        ("x=5, y=3", "3"),
        ("x^2=4", "4"),
    ],
)
def test_words_and_relations_that_change_the_number_are_not_dropped(answer, gold):
    """A scale (million, dozen), a one-letter factor (2x, 5k), an inequality, a list of equations or a power's
    equation do not state the bare number: graded as written, not as it."""
    assert not equivalent(answer, gold, "numeric")


@pytest.mark.parametrize("kind", ["numeric", "math"])
def test_a_list_is_not_one_number_with_thousands_separators(kind):
    assert not equivalent("3, 125", "3125", kind) and not equivalent("0, 100", "100", kind)
    assert equivalent("1,000", "1000", kind) and equivalent("12,345.5", "12345.5", kind)


def test_integers_compare_exactly_and_json_numbers_in_exponent_form_are_numbers():
    assert not equivalent("1000000", "1000001", "numeric")  # within 1e-6 relative, but other integers
    assert equivalent("2.9999999", "3", "numeric")  # one integer: the relative tolerance
    assert equivalent("0.1000000001", "0.1", "numeric")  # decimals keep the tolerance
    assert equivalent("1e-05", "0.00001", "numeric") and equivalent("2.5E3", "2500", "math")  # str(0.00001)


def test_a_markdown_heading_after_hashes_is_not_the_answer():
    text = "#### Step 1: Find the cost\n3*2 = 6.\n#### Step 2: Total\nSo the total is 6 + 4 = 10 dollars."
    assert extract_answer(text) == "10"
    assert extract_answer("so #### 42") == "42" and extract_answer("#### -3.5") == "-3.5"


def test_an_article_is_not_an_option_letter_and_bold_letters_are():
    assert choice_letter("a mitochondrion") is None and choice_letter("A. a mitochondrion") == "A"
    assert choice_letter(r"\mathbf{B}") == "B" and choice_letter(r"\textit{(c)}") == "C"
    assert choice_letter("(b) 42") == "B" and choice_letter("b.") == "B" and choice_letter("d") == "D"
    assert choice_letter("b) 42") == "B" and choice_letter("c. seven") == "C" and choice_letter("c: 7") == "C"
