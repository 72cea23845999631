"""build_agent_data on hand-written debates: exact membership of D^G, D^C- and D^C+ per agent."""

from __future__ import annotations

import math

import pytest

from maft.debate import Turn
from maft.finetune_data import build_agent_data
from maft.tasks import Problem
from maft.voting import vote_final_round


def response(problem_id: str, agent: int, round: int, answer: str | None) -> str:
    tail = f"\\boxed{{{answer}}}" if answer is not None else "I am not sure."
    return f"[{problem_id} a{agent} r{round}] reasoning... {tail}"


def make_turns(task, problems, answers) -> list[Turn]:
    """``answers[problem_id][round - 1][agent]`` -> the turns of a debate, with realistic conversations.

    Round 1 is the single task-prompt user message; round m appends the agent's own round m-1
    response and a critic user message (tagged so that tests can tell the messages apart).
    """
    gold = {p.id: p for p in problems}
    turns = []
    for p in problems:
        rounds = answers[p.id]
        agents = len(rounds[0])
        for n in range(agents):
            messages = [{"role": "user", "content": task.prompt(p)}]
            for m, row in enumerate(rounds, start=1):
                if m > 1:
                    messages = [
                        *messages,
                        {"role": "assistant", "content": response(p.id, n, m - 1, rounds[m - 2][n])},
                        {"role": "user", "content": f"critic message for {p.id} a{n} r{m}"},
                    ]
                turns.append(
                    Turn(
                        problem_id=p.id,
                        agent=n,
                        round=m,
                        adapter=None,
                        messages=list(messages),
                        response=response(p.id, n, m, row[n]),
                        answer=row[n],
                        correct=task.is_correct(row[n], gold[p.id]),
                        completion_tokens=5,
                    )
                )
    return turns


PROBLEMS = [
    Problem("p1", "2+2", "4"),
    Problem("p2", "5*2", "10"),
    Problem("p3", "3+3", "6"),  # the society's majority is wrong here (8)
    Problem("p4", "6+6", "12"),
    Problem("p5", "1+1", "2"),
    Problem("p6", "4+5", "9"),  # every final answer abstains: no label
]

# [round][agent]
ANSWERS = {
    "p1": [["4", "4.0", "5"], ["4", "4", "4.0"]],
    "p2": [["7", "10", "10"], ["10", "10", "3"]],
    "p3": [["8", "8", "6"], ["8", "8", "6"]],
    "p4": [[None, "12", "11"], ["12", None, "12"]],
    "p5": [["2", "2", "2"], ["2", "2", "2"]],
    "p6": [["9", "9", "9"], [None, None, None]],
}

# per agent: (D^G, D^C-, D^C+) problem ids, worked out by hand from ANSWERS
EXPECTED = {
    0: (["p1", "p3", "p5"], ["p2", "p4"], ["p1", "p3", "p5"]),
    1: (["p1", "p2", "p3", "p4", "p5"], [], ["p1", "p2", "p3", "p5"]),
    2: (["p2", "p5"], ["p1", "p4"], ["p5"]),
}


@pytest.fixture
def debate(arithmetic):
    turns = make_turns(arithmetic, PROBLEMS, ANSWERS)
    votes = vote_final_round(turns, arithmetic, PROBLEMS)
    return turns, votes


def build(arithmetic, debate, w, seed=0):
    turns, votes = debate
    return build_agent_data(turns, votes, arithmetic, agents=3, critic_plus_fraction=w, seed=seed)


def ids(examples):
    return [e.problem_id for e in examples]


def turn(turns, problem_id, agent, round):
    (t,) = [t for t in turns if (t.problem_id, t.agent, t.round) == (problem_id, agent, round)]
    return t


def test_labels_of_the_hand_written_debate(debate):
    _, votes = debate
    assert [(v.problem_id, v.label) for v in votes] == [
        ("p1", "4"), ("p2", "10"), ("p3", "8"), ("p4", "12"), ("p5", "2"), ("p6", None),
    ]


def test_generation_data_is_round_one_agreeing_with_the_label(arithmetic, debate):
    data = build(arithmetic, debate, w=1.0)
    assert [d.agent for d in data] == [0, 1, 2]
    for d in data:
        assert ids(d.generation) == EXPECTED[d.agent][0], d.agent
        assert {e.kind for e in d.generation} == {"generation"}
        assert {e.agent for e in d.generation} == {d.agent}


def test_w_one_gives_all_of_critic_minus_then_all_of_critic_plus(arithmetic, debate):
    data = build(arithmetic, debate, w=1.0)
    for d in data:
        _, minus, plus = EXPECTED[d.agent]
        assert ids(d.critic) == minus + plus, d.agent
        assert [e.kind for e in d.critic] == ["critic-"] * len(minus) + ["critic+"] * len(plus)
        assert {e.agent for e in d.critic} == {d.agent}
        assert d.critic_minus == len(minus) and d.critic_plus == len(plus)


def test_w_zero_gives_exactly_critic_minus(arithmetic, debate):
    data = build(arithmetic, debate, w=0.0)
    for d in data:
        _, minus, plus = EXPECTED[d.agent]
        assert ids(d.critic) == minus, d.agent
        assert {e.kind for e in d.critic} <= {"critic-"}
        assert d.critic_plus == len(plus)  # the pool size is still reported


def test_counts(arithmetic, debate):
    assert [d.counts() for d in build(arithmetic, debate, w=1.0)] == [
        {"generation": 3, "critic": 5, "critic_minus": 2, "critic_plus_total": 3, "critic_plus_used": 3},
        {"generation": 5, "critic": 4, "critic_minus": 0, "critic_plus_total": 4, "critic_plus_used": 4},
        {"generation": 2, "critic": 3, "critic_minus": 2, "critic_plus_total": 1, "critic_plus_used": 1},
    ]
    assert [d.counts() for d in build(arithmetic, debate, w=0.0)] == [
        {"generation": 3, "critic": 2, "critic_minus": 2, "critic_plus_total": 3, "critic_plus_used": 0},
        {"generation": 5, "critic": 0, "critic_minus": 0, "critic_plus_total": 4, "critic_plus_used": 0},
        {"generation": 2, "critic": 2, "critic_minus": 2, "critic_plus_total": 1, "critic_plus_used": 0},
    ]


def test_w_half_adds_a_rounded_sample_of_critic_plus(arithmetic, debate):
    data = build(arithmetic, debate, w=0.5, seed=3)
    for d in data:
        generation, minus, plus = EXPECTED[d.agent]
        used = math.floor(0.5 * len(plus) + 0.5)  # halves round up: 1 -> 1, 3 -> 2, 4 -> 2
        assert ids(d.generation) == generation  # w never touches D^G
        assert ids(d.critic[: len(minus)]) == minus
        sampled = ids(d.critic[len(minus):])
        assert len(sampled) == used
        assert len(set(sampled)) == used and set(sampled) <= set(plus)
        assert sampled == [p for p in plus if p in sampled]  # problem order is kept
        assert {e.kind for e in d.critic[len(minus):]} <= {"critic+"}
    assert [d.counts()["critic_plus_used"] for d in data] == [2, 2, 1]
    assert [len(d.critic) for d in data] == [4, 2, 3]


def test_w_half_is_deterministic_for_a_seed(arithmetic, debate):
    def chosen(seed):
        return [ids(d.critic) for d in build(arithmetic, debate, w=0.5, seed=seed)]

    assert chosen(7) == chosen(7)
    assert [d.model_dump() for d in build(arithmetic, debate, w=0.5, seed=7)] == [
        d.model_dump() for d in build(arithmetic, debate, w=0.5, seed=7)
    ]
    # agent 0 draws 2 of its 3 D^C+ examples: over many seeds more than one subset must come up
    subsets = {tuple(chosen(seed)[0]) for seed in range(30)}
    assert len(subsets) > 1
    assert all(s[:2] == ("p2", "p4") and len(s) == 4 for s in subsets)


def test_w_out_of_range_is_rejected(arithmetic, debate):
    for w in (-0.1, 1.5):
        with pytest.raises(ValueError, match="critic_plus_fraction"):
            build(arithmetic, debate, w=w)


def test_prompts_and_completions_are_the_agents_own(arithmetic, debate):
    turns, _ = debate
    for d in build(arithmetic, debate, w=1.0):
        n = d.agent
        for e in d.generation:
            first = turn(turns, e.problem_id, n, 1)
            problem = next(p for p in PROBLEMS if p.id == e.problem_id)
            assert e.prompt == [{"role": "user", "content": arithmetic.prompt(problem)}]
            assert e.completion == [{"role": "assistant", "content": response(e.problem_id, n, 1, first.answer)}]
        for e in d.critic:
            last = turn(turns, e.problem_id, n, 2)
            first = turn(turns, e.problem_id, n, 1)
            assert e.prompt == last.messages
            assert [m["role"] for m in e.prompt] == ["user", "assistant", "user"]
            assert e.prompt[0] == first.messages[0]
            assert e.prompt[1] == {"role": "assistant", "content": first.response}  # its own round-1 response
            assert e.prompt[2] == {"role": "user", "content": f"critic message for {e.problem_id} a{n} r2"}
            assert e.completion == [{"role": "assistant", "content": last.response}]
            assert f"a{n} r2]" in e.completion[0]["content"]


def test_concrete_examples(arithmetic, debate):
    agent2 = build(arithmetic, debate, w=1.0)[2]
    critic_p1 = agent2.critic[0]
    assert critic_p1.problem_id == "p1" and critic_p1.kind == "critic-"
    assert critic_p1.prompt[1] == {"role": "assistant", "content": "[p1 a2 r1] reasoning... \\boxed{5}"}
    assert critic_p1.completion == [{"role": "assistant", "content": "[p1 a2 r2] reasoning... \\boxed{4.0}"}]
    gen_p2 = agent2.generation[0]
    assert gen_p2.problem_id == "p2"
    assert gen_p2.prompt == [{"role": "user", "content": arithmetic.prompt(PROBLEMS[1])}]
    assert "5*2" in gen_p2.prompt[0]["content"]
    assert gen_p2.completion == [{"role": "assistant", "content": "[p2 a2 r1] reasoning... \\boxed{10}"}]


def test_unlabelled_problem_contributes_nothing(arithmetic, debate):
    # p6: every round-1 answer is 9 (and right), but the final round abstains: no label, no data
    for d in build(arithmetic, debate, w=1.0):
        assert "p6" not in ids(d.generation) + ids(d.critic)


def test_gold_answer_is_never_used(arithmetic, debate):
    turns, votes = debate
    # p3's majority (8) is wrong against gold (6): agents 0 and 1 still train on it, agent 2 (gold-right) does not
    v3 = next(v for v in votes if v.problem_id == "p3")
    assert v3.label == "8" and not v3.correct
    data = build(arithmetic, debate, w=1.0)
    assert "p3" in ids(data[0].generation) and "p3" in ids(data[0].critic)
    assert "p3" in ids(data[1].generation) and "p3" in ids(data[1].critic)
    assert "p3" not in ids(data[2].generation) + ids(data[2].critic)

    # other gold answers and flipped `correct` flags change nothing
    flipped = [t.model_copy(update={"correct": not t.correct}) for t in turns]
    wrong_gold = [Problem(p.id, p.question, "-1000") for p in PROBLEMS]
    votes_wrong_gold = vote_final_round(flipped, arithmetic, wrong_gold)
    assert [v.label for v in votes_wrong_gold] == [v.label for v in votes]
    again = build_agent_data(flipped, votes_wrong_gold, arithmetic, agents=3, critic_plus_fraction=0.5, seed=1)
    reference = build(arithmetic, debate, w=0.5, seed=1)
    assert [d.model_dump() for d in again] == [d.model_dump() for d in reference]


def test_single_round_debate_has_no_critic_data(arithmetic):
    one_round = {pid: rounds[:1] for pid, rounds in ANSWERS.items()}
    turns = make_turns(arithmetic, PROBLEMS, one_round)
    votes = vote_final_round(turns, arithmetic, PROBLEMS)
    # labels now come from round 1: p1 "4" (4, 4.0 vs 5), p2 "10", p3 "8", p4 "12" (tie, first), p5 "2", p6 "9"
    assert [v.label for v in votes] == ["4", "10", "8", "12", "2", "9"]
    data = build_agent_data(turns, votes, arithmetic, agents=3, critic_plus_fraction=1.0)
    assert [ids(d.generation) for d in data] == [
        ["p1", "p3", "p5", "p6"],
        ["p1", "p2", "p3", "p4", "p5", "p6"],
        ["p2", "p5", "p6"],
    ]
    for d in data:
        assert d.critic == [] and d.critic_minus == 0 and d.critic_plus == 0
        assert d.counts()["critic"] == 0 and d.counts()["critic_plus_used"] == 0


def test_three_rounds_critic_uses_final_round_and_split_uses_round_one(arithmetic):
    problems = [Problem("q", "1+1", "2")]
    # agent 0: wrong, right, right -> D^C- (round 1 decides, not round 2)
    # agent 1: right, right, wrong -> D^G only (the final round decides critic data, not round 2)
    # agent 2: right, wrong, right -> D^G and D^C+ (round 1 decides, not round 2)
    answers = {"q": [["1", "2", "2"], ["2", "2", "1"], ["2", "1", "2"]]}
    turns = make_turns(arithmetic, problems, answers)
    votes = vote_final_round(turns, arithmetic, problems)
    assert votes[0].label == "2" and votes[0].classes == [[0, 2], [1]]
    data = build_agent_data(turns, votes, arithmetic, agents=3, critic_plus_fraction=1.0)
    assert [(ids(d.generation), [(e.problem_id, e.kind) for e in d.critic]) for d in data] == [
        ([], [("q", "critic-")]),
        (["q"], []),
        (["q"], [("q", "critic+")]),
    ]
    for d in (data[0], data[2]):
        (e,) = d.critic
        n = d.agent
        assert e.prompt == turn(turns, "q", n, 3).messages
        assert [m["role"] for m in e.prompt] == ["user", "assistant", "user", "assistant", "user"]
        assert e.prompt[1]["content"] == response("q", n, 1, answers["q"][0][n])
        assert e.prompt[3]["content"] == response("q", n, 2, answers["q"][1][n])
        assert e.prompt[4]["content"] == f"critic message for q a{n} r3"
        assert e.completion == [{"role": "assistant", "content": response("q", n, 3, answers["q"][2][n])}]
    (g,) = data[2].generation
    assert g.prompt == turn(turns, "q", 2, 1).messages and len(g.prompt) == 1
    assert g.completion == [{"role": "assistant", "content": response("q", 2, 1, "2")}]
