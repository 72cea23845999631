"""The MMLU task: local JSONL/parquet files, subject filter, prompt, choice grading, splits, bad rows, the hub.

tests/fixtures/mmlu_sample.jsonl holds 12 hand-written questions in 3 subjects (4 each), with answers
as int indices and as letters. tests/fixtures/mmlu_sample.parquet holds the same rows in the schema of
the cais/mmlu parquet files (choices: a sequence of strings; answer: a ClassLabel A-D, stored as 0-3).
"""

import json
from pathlib import Path

import pytest

from maft.prompts import critic_message
from maft.tasks import TASKS, DatasetUnavailableError, MMLUTask, get_task, task_names
from maft.tasks.mmlu import SUBJECTS

FIXTURES = Path(__file__).parent / "fixtures"
JSONL = FIXTURES / "mmlu_sample.jsonl"
PARQUET = FIXTURES / "mmlu_sample.parquet"
#: The gold letters of the fixture's rows, in file order.
GOLD = ["B", "C", "B", "A", "C", "B", "D", "C", "C", "B", "A", "D"]
GOOD_ROW = {"question": "Which is a prime?", "subject": "maths", "choices": ["4", "6", "7", "9"], "answer": 2}


def rows() -> list[dict]:
    return [json.loads(line) for line in JSONL.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def disjoint(splits) -> bool:
    return not ({p.question for p in splits.train} & {p.question for p in splits.test})


# --- loading -------------------------------------------------------------------------------


def test_registered():
    assert "mmlu" in task_names() and TASKS["mmlu"] is MMLUTask
    task = get_task("mmlu", path=str(JSONL))
    assert isinstance(task, MMLUTask) and task.grader == "choice" and task.answer_fallback is False
    assert len(SUBJECTS) == 57 and len(set(SUBJECTS)) == 57


def test_load_jsonl():
    problems = MMLUTask(path=JSONL).problems()["all"]
    assert [p.answer for p in problems] == GOLD  # int indices and letters ("C", "b") alike
    assert [p.id for p in problems] == [f"mmlu-{i}" for i in range(12)]
    first = problems[0]
    assert first.question == (
        "Which planet in the Solar System has the shortest orbital period?\nA. Venus\nB. Mercury\nC. Mars\nD. Earth"
    )
    assert first.meta == {
        "subject": "astronomy",
        "choices": ["Venus", "Mercury", "Mars", "Earth"],
        "stem": "Which planet in the Solar System has the shortest orbital period?",
    }
    assert {p.meta["subject"] for p in problems} == {"astronomy", "high_school_chemistry", "high_school_geography"}


def test_load_parquet_in_the_cais_mmlu_schema():
    from datasets import ClassLabel, Dataset

    features = Dataset.from_parquet(str(PARQUET)).features
    assert isinstance(features["answer"], ClassLabel) and features["answer"].names == list("ABCD")
    from_parquet = MMLUTask(path=PARQUET)
    assert from_parquet.problems() == MMLUTask(path=JSONL).problems()
    assert from_parquet.splits(5, 5, seed=7) == MMLUTask(path=JSONL).splits(5, 5, seed=7)


def test_load_directory_with_train_and_test(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows()[:8])
    write_jsonl(tmp_path / "test.jsonl", rows()[8:])
    task = MMLUTask(path=tmp_path)
    splits = task.splits(8, 4, seed=0)
    assert {p.meta["subject"] for p in splits.test} == {"high_school_geography"}
    assert "high_school_geography" not in {p.meta["subject"] for p in splits.train}
    assert {p.id.rsplit("-", 1)[0] for p in splits.train} == {"mmlu-train"}


def test_explicit_ids_are_kept(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [dict(GOOD_ROW, id="q-prime")])
    assert MMLUTask(path=path).problems()["all"][0].id == "q-prime"


# --- subjects ------------------------------------------------------------------------------


def test_subject_filter():
    astronomy = MMLUTask(path=JSONL, subjects=["astronomy"]).problems()["all"]
    assert [p.answer for p in astronomy] == GOLD[:4]
    assert {p.meta["subject"] for p in astronomy} == {"astronomy"}
    assert astronomy[3].id == "mmlu-3"  # ids are the row index in the file, whatever the filter
    two = MMLUTask(path=JSONL, subjects="astronomy, High School Geography").problems()["all"]
    assert [p.answer for p in two] == GOLD[:4] + GOLD[8:]
    splits = MMLUTask(path=JSONL, subjects=["high_school_chemistry"]).splits(2, 2, seed=0)
    assert {p.meta["subject"] for p in splits.train + splits.test} == {"high_school_chemistry"}
    with pytest.raises(ValueError, match="only 4 exist"):
        MMLUTask(path=JSONL, subjects=["high_school_chemistry"]).splits(3, 2)


def test_subject_not_in_the_file_lists_the_files_subjects():
    task = MMLUTask(path=JSONL, subjects=["astronomy", "virology"])
    with pytest.raises(ValueError, match=r"mmlu_sample\.jsonl has the subject virology") as info:
        task.splits(1, 1)
    assert "astronomy, high_school_chemistry, high_school_geography" in str(info.value)
    with pytest.raises(ValueError, match="virology"):  # the failure is not cached as a success
        task.problems()


def test_subject_filter_needs_a_subject_field(tmp_path):
    row = {k: v for k, v in GOOD_ROW.items() if k != "subject"}
    path = write_jsonl(tmp_path / "nosubject.jsonl", [row])
    assert len(MMLUTask(path=path).problems()["all"]) == 1
    with pytest.raises(ValueError, match=r"row 1 of .*nosubject\.jsonl has no field 'subject'"):
        MMLUTask(path=path, subjects=["maths"]).problems()


def test_bad_subject_options():
    with pytest.raises(ValueError, match="unknown subjects astrology; MMLU's subjects are: abstract_algebra"):
        MMLUTask(subjects=["astronomy", "astrology"])
    with pytest.raises(ValueError, match="subjects is empty"):
        MMLUTask(path=JSONL, subjects=[])
    with pytest.raises(ValueError, match="bad options"):
        get_task("mmlu", path=str(JSONL), levels=[1])


# --- prompt and grading --------------------------------------------------------------------


def test_prompt_shows_lettered_choices_and_asks_for_a_boxed_letter():
    task = MMLUTask(path=JSONL)
    problem = task.problems()["all"][1]
    prompt = task.prompt(problem)
    assert prompt == (
        "What is the main source of the Sun's energy?\n"
        "A. Chemical burning of hydrogen\nB. Gravitational collapse\n"
        "C. Nuclear fusion of hydrogen into helium\nD. Radioactive decay of uranium\n"
        "Solve the problem step by step. Make sure to state your final answer in the form \\boxed{letter} "
        "at the end of your response."
    )
    assert task.answer_format == "\\boxed{letter}"
    assert "\\boxed{letter}" in critic_message(summary="two agents said C", answer_format=task.answer_format)


def test_grading():
    task = MMLUTask(path=JSONL)
    mercury = task.problems()["all"][0]  # answer index 1
    assert mercury.answer == "B"

    def correct(response: str) -> bool:
        return task.is_correct(task.extract(response), mercury)

    assert correct("Mercury is closest to the Sun, so it is \\boxed{B}.")
    assert correct("\\boxed{b}") and correct("\\boxed{(B)}") and correct("\\boxed{B. Mercury}")
    assert correct("$\\boxed{\\text{B}}$")
    assert correct("First I thought \\boxed{A}, but the answer is \\boxed{B}")  # the last box counts
    assert not correct("\\boxed{C}")
    assert not correct("\\boxed{A}, no wait, \\boxed{C}")
    assert task.extract("\\boxed{C}") == "C" and task.extract("\\boxed{(d) Earth}") == "D"
    # No boxed letter: an abstention, never correct (no fallback to the last number or a bare letter).
    for response in (
        "The answer is B.",
        "It orbits in 88 days, answer (B)",
        "#### B",
        "\\boxed{88}",
        "\\boxed{E}",
        "\\boxed{Mercury}",
        "\\boxed{B",
        "",
    ):
        assert task.extract(response) is None, response
        assert not correct(response)
    assert task.equivalent("B", "B") and not task.equivalent("B", "C") and not task.equivalent(None, None)


# --- splits --------------------------------------------------------------------------------


def test_splits_are_disjoint_and_seeded():
    task = MMLUTask(path=JSONL)
    splits = task.splits(6, 6, seed=0)
    assert len(splits.train) == 6 and len(splits.test) == 6 and disjoint(splits)
    assert {p.id for p in splits.train + splits.test} == {f"mmlu-{i}" for i in range(12)}
    assert MMLUTask(path=JSONL).splits(6, 6, seed=0) == splits
    assert task.splits(6, 6, seed=1) != splits
    assert task.splits(3, 6, seed=0).test == splits.test  # fewer training problems keep the test set
    with pytest.raises(ValueError, match="only 12 exist"):
        task.splits(7, 6)


# --- bad rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"choices": ["4", "6", "7"]}, "has 3 choices, not 4"),
        ({"choices": ["4", "6", "7", "9", "11"]}, "has 5 choices, not 4"),
        ({"choices": "4, 6, 7, 9"}, "not a list of strings"),
        ({"choices": ["4", "6", 7, "9"]}, "not a list of strings"),
        ({"answer": 4}, "answer 4, not an index 0-3 or a letter A-D"),
        ({"answer": -1}, "answer -1, not an index"),
        ({"answer": "E"}, "answer 'E', not an index"),
        ({"answer": "2"}, "answer '2', not an index"),
        ({"answer": 2.0}, "answer 2.0, not an index"),
        ({"answer": True}, "answer True, not an index"),
        ({"answer": None}, "has no field 'answer'"),
        ({"question": 12}, "question 12, not a non-empty text"),
        ({"question": "  "}, "not a non-empty text"),
        ({"subject": ["maths"]}, "subject \\['maths'\\], not a text"),
    ],
)
def test_bad_row_errors_name_the_file_and_row(tmp_path, change, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD_ROW, {**GOOD_ROW, "question": "Which is odd?", **change}])
    task = MMLUTask(path=path)  # nothing is read yet
    with pytest.raises(ValueError, match=rf"mmlu: row 2 of \S*bad\.jsonl .*{message}"):
        task.splits(1, 1)
    with pytest.raises(ValueError, match=message):  # still bad the second time (no partial cache)
        task.problems()


def test_missing_choices_field(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Which is a prime?", "answer": "C"}])
    with pytest.raises(ValueError, match=r"row 1 of \S*bad\.jsonl has no field 'choices'.*question, choices, answer"):
        MMLUTask(path=path).problems()


# --- the hub -------------------------------------------------------------------------------


def test_no_path_and_no_network_says_to_pass_a_path(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # offline switched on after import
    for task in (get_task("mmlu"), get_task("mmlu", subjects=["astronomy"])):
        with pytest.raises(DatasetUnavailableError, match="path=") as info:
            task.splits(5, 5)
        assert "'cais/mmlu'" in str(info.value) and "Hugging Face hub" in str(info.value)
        assert "question, choices, answer" in str(info.value)
