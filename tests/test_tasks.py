import json
from pathlib import Path

import pytest

from maft.prompts import BOXED_FORMAT
from maft.tasks import (
    TASKS,
    ArithmeticTask,
    DatasetUnavailableError,
    GSM8KTask,
    JsonlTask,
    MathTask,
    Task,
    get_task,
    register_task,
    task_names,
)

FIXTURES = Path(__file__).parent / "fixtures"
GSM8K = FIXTURES / "gsm8k_sample.jsonl"
MATH = FIXTURES / "math_sample.jsonl"
CUSTOM = FIXTURES / "custom.jsonl"


def disjoint(splits):
    return not ({p.question for p in splits.train} & {p.question for p in splits.test})


# --- registry -----------------------------------------------------------------------------


def test_registry():
    assert {"arithmetic", "gsm8k", "math", "jsonl"} <= set(task_names())
    assert isinstance(get_task("arithmetic"), ArithmeticTask)
    assert isinstance(get_task("math", path=str(MATH), levels=[1]), MathTask)
    assert TASKS["gsm8k"] is GSM8KTask


def test_unknown_task_error_lists_known_tasks():
    with pytest.raises(ValueError, match="unknown task 'gsm9k'") as info:
        get_task("gsm9k")
    for name in ("arithmetic", "gsm8k", "jsonl", "math"):
        assert name in str(info.value)


def test_register_task_decorator():
    @register_task
    class Echo(ArithmeticTask):
        name = "echo-test"

    try:
        assert isinstance(get_task("echo-test"), Echo)
        with pytest.raises(ValueError, match="already registered"):
            register_task(type("Other", (ArithmeticTask,), {"name": "echo-test"}))
    finally:
        del TASKS["echo-test"]


# --- arithmetic ----------------------------------------------------------------------------


def test_arithmetic_splits():
    task = get_task("arithmetic")
    a, b = task.splits(50, 20, seed=3), task.splits(50, 20, seed=3)
    assert a == b
    assert a != task.splits(50, 20, seed=4)
    assert len(a.train) == 50 and len(a.test) == 20 and disjoint(a)
    assert len({p.id for p in a.train + a.test}) == 70
    for p in a.train + a.test:
        assert int(p.answer) == eval(p.question)  # the question is the bare expression
        assert task.is_correct(task.extract(f"It is \\boxed{{{p.answer}}}."), p)
        assert p.question in task.prompt(p) and BOXED_FORMAT in task.prompt(p)
    # Asking for more training problems keeps the test set.
    assert task.splits(80, 20, seed=3).test == a.test


# --- gsm8k ---------------------------------------------------------------------------------


def test_gsm8k_from_file():
    task = GSM8KTask(path=str(GSM8K))
    splits = task.splits(n_train=8, n_test=4, seed=0)
    assert len(splits.train) == 8 and len(splits.test) == 4 and disjoint(splits)
    assert task.splits(8, 4, seed=0) == splits
    problems = {p.id: p for p in task.problems()["all"]}
    assert problems["gsm8k-0"].answer == "18"
    assert problems["gsm8k-2"].answer == "70000"  # "#### 70,000"
    assert problems["gsm8k-0"].question.startswith("Janet")
    assert "#### 18" in problems["gsm8k-0"].meta["solution"]
    assert task.is_correct("70,000", problems["gsm8k-2"])
    prompt = task.prompt(problems["gsm8k-0"])
    assert prompt == (
        f"{problems['gsm8k-0'].question}\nSolve the problem step by step. Make sure to state your final "
        f"answer in the form {BOXED_FORMAT} at the end of your response."
    )


def test_a_gsm8k_row_whose_answer_is_neither_a_solution_nor_a_number_is_refused(tmp_path):
    """MetaMath-style "The answer is: 42" without GSM8K's "####" would become whole-text gold that nothing equals."""
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps({"question": "q?", "answer": "So 6 + 36 = 42. The answer is: 42"}) + "\n")
    with pytest.raises(ValueError, match="neither a GSM8K solution ending in '#### <number>' nor a number"):
        GSM8KTask(path=str(path)).problems()
    path.write_text(json.dumps({"question": "q?", "answer": "1,042"}) + "\n")  # just the final number: fine
    assert GSM8KTask(path=str(path)).problems()["all"][0].answer == "1042"


def test_gsm8k_too_few_problems():
    with pytest.raises(ValueError, match="only 12 exist"):
        GSM8KTask(path=GSM8K).splits(10, 5)


def test_gsm8k_from_directory_drops_train_questions_that_are_in_test():
    task = GSM8KTask(path=FIXTURES / "gsm8k_dir")
    problems = task.problems()
    assert len(problems["train"]) == 8 and len(problems["test"]) == 5
    splits = task.splits(7, 5, seed=1)
    assert disjoint(splits)
    assert not any(p.question.startswith("Janet") for p in splits.train)
    assert any(p.question.startswith("Janet") for p in splits.test)
    assert {p.id.rsplit("-", 1)[0] for p in splits.train} == {"gsm8k-train"}
    with pytest.raises(ValueError, match="only 8 exist in the train split"):
        task.splits(8, 5)


def test_parquet_file(tmp_path):
    from datasets import Dataset

    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "gsm8k.parquet"))
    from_parquet = GSM8KTask(path=tmp_path / "gsm8k.parquet").splits(6, 6, seed=2)
    assert from_parquet == GSM8KTask(path=GSM8K).splits(6, 6, seed=2)


def test_missing_field_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "What is 1+1?", "solution": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"row 1 of .*bad.jsonl has no field 'answer'.*question, answer"):
        GSM8KTask(path=bad).splits(0, 1)


def test_missing_path_and_bad_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        GSM8KTask(path=tmp_path / "nope.jsonl")
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        GSM8KTask(path=tmp_path).splits(0, 0)


def test_offline_hub_error_mentions_path(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # offline switched on after import
    for task in (GSM8KTask(), MathTask()):
        with pytest.raises(DatasetUnavailableError, match="path=") as info:
            task.splits(5, 5)
        assert "Hugging Face hub" in str(info.value)


# --- math ----------------------------------------------------------------------------------


def test_math_levels_and_answers():
    task = MathTask(path=MATH)  # levels 1-3 by default
    assert task.grader == "math"
    problems = task.problems()["all"]
    assert len(problems) == 8
    assert {p.meta["level"] for p in problems} == {1, 2, 3}
    answers = {p.answer for p in problems}
    assert {r"\frac{1}{2}", r"\sqrt{2}", r"3\pi", r"(-\infty, 4]", r"\frac{7}{12}"} <= answers
    assert len(MathTask(path=MATH, levels=None).problems()["all"]) == 12
    assert [p.answer for p in MathTask(path=MATH, levels=[5]).problems()["all"]] == ["1", r"\frac{14}{3}"]
    # ids are the row index in the file, whatever the filter
    assert MathTask(path=MATH, levels=[5]).problems()["all"][0].id == "math-10"


def test_math_subjects():
    algebra = MathTask(path=MATH, levels=None, subjects=["Algebra"]).problems()["all"]
    assert len(algebra) == 4
    assert MathTask(path=MATH, levels=3, subjects="algebra").problems()["all"] == [
        p for p in algebra if p.meta["level"] == 3
    ]
    counting = MathTask(path=MATH, levels=None, subjects=["counting_and_probability"]).problems()["all"]
    assert {p.meta["type"] for p in counting} == {"Counting & Probability"}
    with pytest.raises(ValueError, match="unknown subjects"):
        MathTask(subjects=["astrology"])


def test_math_splits_and_grading():
    task = MathTask(path=MATH, levels=None)
    splits = task.splits(6, 6, seed=0)
    assert disjoint(splits) and len(splits.train) == 6
    by_answer = {p.answer: p for p in task.problems()["all"]}
    assert task.is_correct(task.extract(r"... so the answer is $\boxed{0.5}$."), by_answer[r"\frac{1}{2}"])
    assert task.is_correct(task.extract(r"\boxed{3, 2}"), by_answer["2, 3"])
    assert not task.is_correct(task.extract(r"\boxed{\pi}"), by_answer[r"3\pi"])
    assert "step by step" in task.prompt(splits.test[0])


# --- jsonl ---------------------------------------------------------------------------------


def test_jsonl_task():
    task = get_task("jsonl", path=str(CUSTOM))
    assert task.grader == "numeric"
    splits = task.splits(3, 3, seed=0)
    assert disjoint(splits)
    by_id = {p.id: p for p in splits.train + splits.test}
    assert set(by_id) == {"c1", "c2", "c3", "c4", "c5", "c6"}
    assert task.is_correct("1440", by_id["c5"])
    assert task.is_correct("5/2", by_id["c4"])
    assert BOXED_FORMAT in task.prompt(by_id["c1"])


def test_jsonl_choice_and_grader_from_file(tmp_path):
    rows = [
        {"question": "Which is a prime?", "choices": ["4", "6", "7", "9"], "answer": "C", "grader": "choice"},
        {"question": "Which is even?", "choices": ["3", "8"], "answer": "(B)", "grader": "choice"},
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = JsonlTask(path=path)
    assert task.grader == "choice"
    first, second = task.problems()["all"]
    assert first.id == "jsonl-0" and first.answer == "C" and second.answer == "B"
    assert "C. 7" in first.question
    assert "letter" in task.prompt(first)
    assert task.answer_format == r"\boxed{letter}"  # what the critic messages of rounds > 1 ask for too
    assert task.is_correct(task.extract(r"The answer is \boxed{(c)}"), first)
    assert not task.is_correct(task.extract(r"\boxed{A}"), first)


def test_jsonl_errors(tmp_path):
    with pytest.raises(ValueError, match="path="):
        JsonlTask()
    with pytest.raises(ValueError, match="unknown grader"):
        JsonlTask(path=CUSTOM, grader="fuzzy")
    with pytest.raises(ValueError, match="not an option letter"):
        JsonlTask(path=CUSTOM, grader="choice").problems()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        JsonlTask(path=bad).problems()


def test_all_tasks_are_task_subclasses():
    assert all(issubclass(cls, Task) for cls in TASKS.values())


def test_task_options_are_checked_against_their_types_and_named():
    """A wrong option type names the option (it was the task code's own error: 'non-integer arg 1 for
    randrange()'); a value that converts exactly is taken converted."""
    with pytest.raises(ValueError, match=r"task 'arithmetic': option low=1.5: Input should be a valid integer"):
        get_task("arithmetic", low=1.5)
    with pytest.raises(ValueError, match=r"task 'math': option levels\[0\]=\['a'\]: Input should be a valid integer"):
        get_task("math", levels=["a"])
    assert get_task("arithmetic", low="3", high=9).low == 3


def test_a_run_that_never_trains_needs_no_training_problems():
    """The debate baseline on a small task file: task.n_train (300 by default) asked for problems it never uses.
    Without enough of them it gets none, and the same held-out problems as a run that trains."""
    from pathlib import Path

    from maft.config import load_config
    from maft.loop import task_splits

    path = Path(__file__).parent / "fixtures" / "gsm8k_dir" / "test.jsonl"
    base = ["task.name=jsonl", f"task.options.path={path}", "task.n_test=3"]
    _, debate = task_splits(load_config(None, [*base, "iterations=0"]))  # n_train 300 of 5 problems
    _, trains = task_splits(load_config(None, [*base, "iterations=1", "task.n_train=2"]))
    assert debate.train == [] and [p.id for p in debate.test] == [p.id for p in trains.test]
    with pytest.raises(ValueError, match="300 train \\+ 3 test problems asked, only 5 exist"):
        task_splits(load_config(None, [*base, "iterations=1"]))
