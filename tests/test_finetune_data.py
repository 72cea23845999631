"""build_agent_data on hand-written debates: exact membership of D^G, D^C- and D^C+ per agent."""

from __future__ import annotations

import math
import random

import pytest

from maft.data.agent_data import build_agent_data
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule, vote_final_round
from maft.tasks import Problem


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
        ("p1", "4"),
        ("p2", "10"),
        ("p3", "8"),
        ("p4", "12"),
        ("p5", "2"),
        ("p6", None),
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
        sampled = ids(d.critic[len(minus) :])
        assert len(sampled) == used
        assert len(set(sampled)) == used and set(sampled) <= set(plus)
        assert sampled == [p for p in plus if p in sampled]  # problem order is kept
        assert {e.kind for e in d.critic[len(minus) :]} <= {"critic+"}
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
    votes = vote_final_round(turns, arithmetic, PROBLEMS, VoteRule(tie_break="first"))
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


# -- truncated responses ------------------------------------------------------------------------------


def test_truncated_responses_give_no_data_under_abstain(arithmetic, debate):
    turns, _ = debate
    # p5: every answer is "2". Agent 0's round-1 and agent 1's final response were cut off at max_new_tokens.
    cut = [
        t.model_copy(update={"truncated": (t.problem_id, t.agent, t.round) in {("p5", 0, 1), ("p5", 1, 2)}})
        for t in turns
    ]
    keep, abstain = VoteRule(truncated="keep"), VoteRule(truncated="abstain")
    votes = vote_final_round(cut, arithmetic, PROBLEMS, abstain)
    assert next(v for v in votes if v.problem_id == "p5").label == "2"  # two of three still vote
    kept = build_agent_data(cut, votes, arithmetic, agents=3, critic_plus_fraction=1.0, rule=keep)
    assert [ids(d.generation) for d in kept] == [g for g, _, _ in EXPECTED.values()]  # keep: as if not cut
    data = build_agent_data(cut, votes, arithmetic, agents=3, critic_plus_fraction=1.0, rule=abstain)
    # agent 0: its cut round-1 response leaves D^G; its final "2" now corrected an abstention: D^C-
    assert ids(data[0].generation) == ["p1", "p3"]
    assert [(e.problem_id, e.kind) for e in data[0].critic] == [
        ("p2", "critic-"),
        ("p4", "critic-"),
        ("p5", "critic-"),
        ("p1", "critic+"),
        ("p3", "critic+"),
    ]
    # agent 1: its cut final response is no critic data (its round-1 response still is generation data)
    assert "p5" in ids(data[1].generation) and "p5" not in ids(data[1].critic)
    assert [d.model_dump() for d in data[2:]] == [d.model_dump() for d in kept[2:]]
    assert (
        build_agent_data(cut, votes, arithmetic, agents=3, critic_plus_fraction=1.0) == data
    )  # abstain is the default


# -- the critic data mix ------------------------------------------------------------------------------

# per agent (|D^C-|, |D^C+|) in the hand-written debate: 0 (2, 3), 1 (0, 4), 2 (2, 1)
SIZES = [(len(m), len(p)) for _, m, p in EXPECTED.values()]


def mix(arithmetic, debate, seed=0, **kwargs):
    turns, votes = debate
    return build_agent_data(turns, votes, arithmetic, agents=3, seed=seed, **kwargs)


def used(data):
    return [d.counts()["critic_plus_used"] for d in data]


def check_mix(data):
    """Every rule keeps all of D^C- (first) and a subset of D^C+ (in problem order)."""
    for d in data:
        _, minus, plus = EXPECTED[d.agent]
        assert ids(d.critic[: len(minus)]) == minus
        rest = ids(d.critic[len(minus) :])
        assert set(rest) <= set(plus) and rest == [p for p in plus if p in rest]
        assert d.critic_minus == len(minus) and d.critic_plus == len(plus)


@pytest.mark.parametrize(
    ("share", "expected"),
    [
        (1.0, [0, 0, 0]),  # w = 1: D^C- only
        (2 / 3, [1, 0, 1]),  # round(2 * 0.5) = 1
        (0.5, [2, 0, 1]),  # round(2 * 1) = 2; agent 2 capped by |D^C+| = 1
        (0.4, [3, 0, 1]),  # round(2 * 1.5) = 3
        (0.25, [3, 0, 1]),  # round(2 * 3) = 6, capped by |D^C+| = 3 (agent 0) and 1 (agent 2)
        (0.8, [1, 0, 1]),  # round(2 * 0.25) = round(0.5) = 1: halves round up
        (0.9, [0, 0, 0]),  # round(2 * 0.111) = 0
    ],
)
def test_share_rule_counts(arithmetic, debate, share, expected):
    data = mix(arithmetic, debate, critic_mix="share", critic_share=share)
    check_mix(data)
    assert used(data) == expected
    # agent 1 has no D^C- (no corrected answers): under the share rule it gets no critic data at all
    assert data[1].critic == []


def test_share_rule_count_formula():
    from maft.data.agent_data import critic_plus_count

    for minus, plus, w, k in [
        (3, 10, 2 / 3, 2),  # 1.5 -> 2 (halves up, despite 1.5000000000000002 in floats)
        (1, 10, 2 / 3, 1),  # 0.5 -> 1
        (4, 10, 2 / 3, 2),
        (6, 10, 0.75, 2),
        (10, 3, 0.5, 3),  # capped
        (0, 10, 0.5, 0),  # no D^C-: no D^C+
        (7, 10, 1.0, 0),
        (5, 100, 0.1, 45),
    ]:
        assert critic_plus_count("share", minus, plus, share=w) == k, (minus, plus, w)


def test_fraction_rule_is_todays_rule_exactly(arithmetic, debate):
    turns, votes = debate

    def old(seed, w=0.5):  # the selection before critic_mix existed (verbatim), on the same D^C+ pools
        out = []
        for n, (_, _, plus) in EXPECTED.items():
            rng = random.Random(f"{seed}:critic+:{n}")
            out.append(sorted(rng.sample(plus, math.floor(w * len(plus) + 0.5)), key=plus.index))
        return out

    for seed in range(20):
        for w in (0.5, 0.3, 1.0):
            data = mix(arithmetic, debate, seed=seed, critic_mix="fraction", critic_plus_fraction=w)
            assert [ids(d.critic)[d.critic_minus :] for d in data] == old(seed, w)
        default = mix(arithmetic, debate, seed=seed)  # fraction 0.5 is the default
        assert [d.model_dump() for d in default] == [
            d.model_dump() for d in mix(arithmetic, debate, seed=seed, critic_mix="fraction", critic_plus_fraction=0.5)
        ]
    assert used(mix(arithmetic, debate, critic_mix="fraction", critic_plus_fraction=0.5)) == [2, 2, 1]


def test_authors_rule_exact_counts_for_fixed_seeds(arithmetic, debate):
    # one coin per D^C- example: agent 0 (2 coins, 3 available) 0-2; agent 1 (no coins) 0;
    # agent 2 (2 coins, 1 available) 0-1
    seen = []
    for seed in range(8):
        data = mix(arithmetic, debate, seed=seed, critic_mix="authors")
        check_mix(data)
        seen.append(used(data))
    assert seen == AUTHORS_COUNTS
    for seed, counts in enumerate(seen):  # the same counts, from the documented coin stream
        for n, (minus, plus) in enumerate(SIZES):
            coins = random.Random(f"{seed}:critic+:{n}")
            assert counts[n] == min(sum(coins.random() < 0.5 for _ in range(minus)), plus)
    assert all(u[1] == 0 and u[0] <= 2 and u[2] <= 1 for u in seen)
    assert {u[0] for u in seen} == {0, 1, 2}  # the coins do vary with the seed
    again = mix(arithmetic, debate, seed=5, critic_mix="authors")
    assert [d.model_dump() for d in again] == [
        d.model_dump() for d in mix(arithmetic, debate, seed=5, critic_mix="authors")
    ]


# critic_plus_used per agent for seeds 0..7 (agent n's coins come from random.Random(f"{seed}:critic+:{n}"))
AUTHORS_COUNTS = [[0, 0, 0], [2, 0, 0], [1, 0, 0], [1, 0, 1], [2, 0, 1], [1, 0, 1], [1, 0, 1], [2, 0, 1]]
AUTHORS_BINOMIAL_9 = [5, 5, 3, 5, 6]  # heads of 9 coins from random.Random(seed), seeds 0..4


def test_authors_rule_is_a_capped_binomial():
    from maft.data.agent_data import critic_plus_count

    # exact counts for fixed seeds: the rng's coins (random() < 0.5), one per D^C- example, capped by |D^C+|
    for seed in range(5):
        coins = random.Random(seed)
        heads = sum(coins.random() < 0.5 for _ in range(9))
        assert critic_plus_count("authors", 9, 100, rng=random.Random(seed)) == heads
        assert critic_plus_count("authors", 9, 3, rng=random.Random(seed)) == min(heads, 3)
    assert [critic_plus_count("authors", 9, 100, rng=random.Random(s)) for s in range(5)] == AUTHORS_BINOMIAL_9
    assert critic_plus_count("authors", 0, 100, rng=random.Random(0)) == 0

    # the distribution over 4000 seeds: Binomial(10, 1/2) (mean 5, sd of the mean 0.025), and capped at 3
    seeds = range(4000)
    free = [critic_plus_count("authors", 10, 100, rng=random.Random(f"s{s}")) for s in seeds]
    assert abs(sum(free) / len(free) - 5) < 0.15  # 6 sd
    for k in range(11):  # each frequency within 0.03 of the pmf (sd at most 0.008)
        assert abs(free.count(k) / len(free) - math.comb(10, k) / 1024) < 0.03, k
    capped = [critic_plus_count("authors", 10, 3, rng=random.Random(f"s{s}")) for s in seeds]
    assert capped == [min(k, 3) for k in free]
    capped_mean = sum(min(k, 3) * math.comb(10, k) for k in range(11)) / 1024  # 2.9365...
    assert abs(sum(capped) / len(capped) - capped_mean) < 0.05


def test_bad_mix_values_are_refused_before_any_work(arithmetic, debate):
    with pytest.raises(ValueError, match="fraction, share, authors"):
        mix(arithmetic, debate, critic_mix="paper")
    with pytest.raises(ValueError, match=r"critic_share .* \(0, 1\]"):
        mix(arithmetic, debate, critic_mix="share", critic_share=0.0)
    with pytest.raises(ValueError, match="critic_plus_fraction"):
        mix(arithmetic, debate, critic_mix="fraction", critic_plus_fraction=2.0)


def test_majority_pairs_are_every_final_response_matching_the_label_under_the_question_alone(arithmetic, debate):
    from maft.data.agent_data import majority_pairs

    turns, votes = debate
    pairs = majority_pairs(turns, votes, arithmetic)
    # final round (round 2) answers against the labels p1=4, p2=10, p3=8, p4=12, p5=2 (p6 has none), by hand
    assert [(e.problem_id, e.agent) for e in pairs] == [
        ("p1", 0),
        ("p1", 1),
        ("p1", 2),
        ("p2", 0),
        ("p2", 1),
        ("p3", 0),
        ("p3", 1),
        ("p4", 0),
        ("p4", 2),
        ("p5", 0),
        ("p5", 1),
        ("p5", 2),
    ]
    problems = {p.id: p for p in PROBLEMS}
    for e in pairs:
        assert e.kind == "majority"
        assert e.prompt == [{"role": "user", "content": arithmetic.prompt(problems[e.problem_id])}]  # no debate context
        assert e.completion == [{"role": "assistant", "content": turn(turns, e.problem_id, e.agent, 2).response}]


def test_rationalized_examples_keep_hinted_responses_that_reach_the_label_under_the_original_question(arithmetic):
    from maft.data.agent_data import rationalized_examples

    def hinted(problem_id, agent, answer):
        return Turn(
            problem_id=problem_id,
            agent=agent,
            round=1,
            adapter=None,
            messages=[{"role": "user", "content": f"{problem_id} question\n\nHint: the correct answer is ..."}],
            response=response(problem_id, agent, 1, answer),
            answer=answer,
            correct=False,
            completion_tokens=5,
        )

    questions = {p: {"role": "user", "content": f"{p} question"} for p in ("p1", "p2", "p3")}
    labels = {"p1": "4", "p2": "10", "p3": None}
    out = rationalized_examples(
        [hinted("p1", 0, "4.0"), hinted("p1", 1, "5"), hinted("p2", 0, None), hinted("p3", 0, "6")],
        questions,
        labels,
        arithmetic,
    )
    assert [(e.problem_id, e.agent, e.kind) for e in out] == [("p1", 0, "rationalized")]
    assert out[0].prompt == [questions["p1"]] and "Hint" not in out[0].prompt[0]["content"]
    assert out[0].completion[0]["content"] == response("p1", 0, 1, "4.0")
