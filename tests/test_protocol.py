"""The debate protocol end to end on scripted responses: exact votes, labels, critic views and data.

Every response is written here (:class:`maft.engines.scripted.ScriptedEngine`), so each test can say
what each agent answers in each round and assert exactly what the debate shows, how the final round
votes, and which responses become whose finetuning data.
"""

from __future__ import annotations

import random

import pytest

from maft.agents import Agents
from maft.data.agent_data import build_agent_data, majority_pairs
from maft.debate.protocol import debate
from maft.debate.voting import VoteRule, tie_key, vote_final_round
from maft.engines import Request
from maft.engines.scripted import (
    ABSTAIN,
    Reply,
    ScriptedEngine,
    response,
    served_name,
    table,
    truncated,
)
from maft.evaluation.metrics import debate_metrics
from maft.tasks import Problem, get_task

TASK = get_task("arithmetic")
FIRST = VoteRule(tie_break="first")
DIGEST = "Here is a summary of the other agents' solutions: The other agents' answers are: {}."


def problems_for(grid, gold=None):
    """One problem per grid row, with distinct questions (the prompt is how the script finds the problem)."""
    gold = gold or {}
    return [Problem(pid, f"{i}+{i}*{i}+0-0*0", gold.get(pid, "0")) for i, pid in enumerate(grid)]


def run(grid, *, rule=FIRST, summarizer="answers", agents=None, gold=None, seed=0):
    """Debate ``grid`` (problem id -> [round][agent] replies) at iteration 0; returns the debate's pieces."""
    problems = problems_for(grid, gold)
    rows = next(iter(grid.values()))
    engine = ScriptedEngine(table(TASK, problems, grid))
    turns = debate(
        engine,
        TASK,
        problems,
        agents=len(rows[0]),
        rounds=len(rows),
        summarizer=summarizer,
        adapter_for=engine.serve(agents or Agents(0)),
        answer_of=rule.answer,
        seed=seed,
    )
    votes = vote_final_round(turns, TASK, problems, rule)
    data = build_agent_data(turns, votes, TASK, agents=len(rows[0]), critic_plus_fraction=1.0, rule=rule)
    grid_turns = {(t.problem_id, t.agent, t.round): t for t in turns}
    return engine, problems, turns, {v.problem_id: v for v in votes}, data, grid_turns


def ids(examples):
    return [e.problem_id for e in examples]


def critic_kinds(agent_data):
    return [(e.problem_id, e.kind) for e in agent_data.critic]


def test_an_abstaining_critic_does_not_vote_and_gets_no_critic_data():
    grid = {
        "p": [["7", "7", "3"], ["7", None, "7"]],
        # the abstainer would break the tie if it voted; the label comes from agents 0 and 2
        "q": [["5", "5", "6"], ["5", None, "6"]],
    }
    _, _, _, votes, data, turns = run(grid)
    assert turns[("p", 1, 2)].response == ABSTAIN and turns[("p", 1, 2)].answer is None
    assert (votes["p"].label, votes["p"].count, votes["p"].voters, votes["p"].agents) == ("7", 2, 2, 3)
    assert votes["p"].classes == [[0, 2]] and votes["p"].tied == 1
    assert (votes["q"].label, votes["q"].voters, votes["q"].classes, votes["q"].tied) == ("5", 2, [[0], [2]], 2)
    # agent 1's round-1 answers agreed with the labels: generation data, but no critic data at all
    assert ids(data[1].generation) == ["p", "q"]
    assert data[1].critic == [] and (data[1].critic_minus, data[1].critic_plus) == (0, 0)
    assert critic_kinds(data[0]) == [("p", "critic+"), ("q", "critic+")]
    assert critic_kinds(data[2]) == [("p", "critic-")]  # q: agent 2's final 6 lost the tie


def test_a_problem_where_every_answer_abstains_has_no_label_no_data_and_counts_as_wrong():
    grid = {
        "ok": [["4", "4", "4"], ["4", "4", "4"]],
        "none": [["9", "9", "9"], [None, None, None]],  # round 1 was right and unanimous: irrelevant
    }
    _, problems, turns, votes, data, _ = run(grid, gold={"ok": "4", "none": "9"})
    v = votes["none"]
    assert (v.label, v.count, v.voters, v.classes, v.tied, v.correct) == (None, 0, 0, [], 0, False)
    assert sum(v.label is not None for v in votes.values()) == 1  # the run's "labelled" count
    for d in data:
        assert ids(d.generation) == ["ok"] and ids(d.critic) == ["ok"]
    assert ids(majority_pairs(turns, list(votes.values()), TASK, FIRST)) == ["ok"] * 3
    m = debate_metrics(turns, TASK, problems, FIRST)
    assert (m.problems, m.majority.n, m.majority.mean) == (2, 2, 0.5)  # the unlabelled problem is wrong
    assert [a.mean for a in m.round_majority] == [1.0, 0.5]
    assert [a.mean for a in m.round_agent] == [1.0, 0.5]
    assert m.abstention_rate == 3 / 12 and m.unanimous == 0.5 and m.pairwise_agreement == 0.5


def test_tie_break_first_picks_the_class_of_the_lowest_agent_index():
    grid = {
        "a": [["1", "1", "1", "1"], ["5", "7", "7", "5"]],
        "b": [["1", "1", "1", "1"], ["7", "5", "5", "7"]],
        "c": [["8", "8", "8", "8"], [None, "9", "8", None]],  # abstentions are never candidates
    }
    _, _, _, votes, data, _ = run(grid)
    assert [(votes[p].label, votes[p].tied) for p in "abc"] == [("5", 2), ("7", 2), ("9", 2)]
    assert votes["a"].classes == [[0, 3], [1, 2]] and votes["c"].classes == [[1], [2]]
    assert [ids(d.critic) for d in data] == [["a", "b"], ["c"], [], ["a", "b"]]
    assert [ids(d.generation) for d in data] == [[], [], [], []]


def test_tie_break_random_is_seeded_by_the_run_seed_and_the_problem():
    grid = {f"tie-{i}": [["3", "3"], ["5", "7"]] for i in range(40)}

    def labels(seed, debate_seed=0, which=None):
        g = {p: grid[p] for p in (which or grid)}
        _, _, _, votes, _, _ = run(g, rule=VoteRule(tie_break="random", seed=seed), seed=debate_seed)
        return {p: v.label for p, v in votes.items()}

    first = labels(11)
    expected = {p: ["5", "7"][random.Random(tie_key(11, p)).randrange(2)] for p in grid}
    assert first == expected
    assert labels(11, debate_seed=5) == first  # the debate's sampling seed plays no part
    assert labels(11, which=["tie-7", "tie-3"]) == {"tie-7": first["tie-7"], "tie-3": first["tie-3"]}
    assert set(first.values()) == {"5", "7"}  # both sides win sometimes
    assert labels(12) != first


def test_three_rounds_critics_see_the_previous_round_and_data_comes_from_the_final_round():
    grid = {
        "p": [
            ["1", "4", "3", "4"],
            ["6", "6", "4", "6"],  # round 2's majority (6) is not the label
            ["4", "4", "4", "9"],
        ],
    }
    engine, _, _, votes, data, turns = run(grid)
    assert [[(c.agent, c.round) for c in call] for call in engine.calls] == [
        [(n, m) for n in range(4)] for m in (1, 2, 3)
    ]
    assert votes["p"].label == "4" and votes["p"].classes == [[0, 1, 2], [3]]
    shown = {m: [engine.calls[m - 1][n].messages[-1]["content"] for n in range(4)] for m in (2, 3)}
    assert shown[2][0].startswith(DIGEST.format("4, 3, 4"))  # round 1's answers
    assert shown[3][0].startswith(DIGEST.format("6, 4, 6"))  # round 2's, not round 1's
    assert shown[3][3].startswith(DIGEST.format("6, 6, 4"))
    third = engine.calls[2][0].messages
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert third[1]["content"] == response("p", 0, 1, "1") and third[3]["content"] == response("p", 0, 2, "6")
    assert [ids(d.generation) for d in data] == [[], ["p"], [], ["p"]]
    assert [critic_kinds(d) for d in data] == [[("p", "critic-")], [("p", "critic+")], [("p", "critic-")], []]
    for n in range(3):  # the final round's conversation and response
        (e,) = data[n].critic
        assert e.prompt == turns[("p", n, 3)].messages and len(e.prompt) == 5
        assert e.completion == [{"role": "assistant", "content": response("p", n, 3, "4")}]
    (e,) = data[1].generation
    assert e.prompt == turns[("p", 1, 1)].messages and e.completion[0]["content"] == response("p", 1, 1, "4")


@pytest.mark.parametrize("truncation", ["abstain", "keep"])
def test_a_truncated_response_votes_and_gives_data_only_when_kept(truncation):
    grid = {"p": [["5", truncated("5"), "7"], ["5", truncated("7"), "7"]]}
    rule = VoteRule(tie_break="first", truncated=truncation)
    _, problems, turns, votes, data, grid_turns = run(grid, rule=rule, gold={"p": "7"})
    cut = grid_turns[("p", 1, 2)]
    assert cut.truncated and cut.answer == "7" and "\\boxed{7}" in cut.response  # its text holds an answer
    m = debate_metrics(turns, TASK, problems, rule)
    assert m.truncated == [1 / 3, 1 / 3]
    if truncation == "abstain":
        assert (votes["p"].label, votes["p"].voters, votes["p"].classes) == ("5", 2, [[0], [2]])
        assert [ids(d.generation) for d in data] == [["p"], [], []]  # agent 1's truncated "5" agreed, still nothing
        assert [critic_kinds(d) for d in data] == [[("p", "critic+")], [], []]
        assert m.abstention_rate == 2 / 6 and m.agent_round[1][1].mean == 0.0 and m.majority.mean == 0.0
    else:
        assert (votes["p"].label, votes["p"].voters, votes["p"].classes) == ("7", 3, [[0], [1, 2]])
        assert [ids(d.generation) for d in data] == [[], [], ["p"]]
        assert [critic_kinds(d) for d in data] == [[], [("p", "critic-")], [("p", "critic+")]]
        assert data[1].critic[0].completion[0]["content"] == cut.response
        assert m.abstention_rate == 0 and m.agent_round[1][1].mean == 1.0 and m.majority.mean == 1.0


@pytest.mark.parametrize("truncation", ["abstain", "keep"])
def test_a_critic_sees_each_other_agents_answer_and_no_answer_for_an_abstention(truncation):
    grid = {"p": [["4", None, truncated("6")], ["4", "4", "4"]]}
    engine, _, _, _, _, turns = run(grid, rule=VoteRule(tie_break="first", truncated=truncation))
    cut = "no answer" if truncation == "abstain" else "6"
    expected = [f"no answer, {cut}", f"4, {cut}", "4, no answer"]
    for n in range(3):
        message = engine.calls[1][n].messages[-1]["content"]
        assert message == (
            DIGEST.format(expected[n]) + "\n\nUsing this summary as additional advice, give an updated answer. "
            "Put your final answer in the form \\boxed{answer} at the end of your response."
        )
        assert turns[("p", n, 2)].messages == engine.calls[1][n].messages  # the turn records what was sent
        assert engine.calls[1][n].messages[1] == {"role": "assistant", "content": turns[("p", n, 1)].response}


def test_concat_shows_the_other_agents_raw_responses_abstentions_included():
    grid = {"p": [["4", None, "6"], ["4", "4", "4"]]}
    engine, *_ = run(grid, summarizer="concat")
    message = engine.calls[1][0].messages[-1]["content"]
    assert message.startswith(
        "These are the solutions to the problem from other agents:\n\n"
        f"One agent solution: {ABSTAIN}\n\nOne agent solution: {response('p', 2, 1, '6')}\n\n"
    )


@pytest.mark.parametrize("summarizer", ["answers", "concat"])
def test_each_agents_data_comes_only_from_its_own_responses(summarizer):
    grid = {
        "p": [["2", "2", "2"], ["2", "2", "2"]],
        "q": [["3", "8", "8"], ["8", "8", "8"]],
        "r": [["5", "5", "1"], ["5", "5", "5"]],
    }
    *_, data, turns = run(grid, summarizer=summarizer)
    assert [len(d.generation) + len(d.critic) for d in data] == [5, 6, 5]
    for n, d in enumerate(data):
        for e in d.generation + d.critic:
            assert e.agent == n
            own = turns[(e.problem_id, n, 1 if e.kind == "generation" else 2)]
            assert e.prompt == own.messages and e.completion == [{"role": "assistant", "content": own.response}]
            assistant = [m["content"] for m in e.prompt + e.completion if m["role"] == "assistant"]
            assert all(text.startswith(f"[{e.problem_id} agent {n} round ") for text in assistant)
            if summarizer == "answers":  # the digest shows answers only: no other agent's text anywhere
                others = [t.response for (p, a, _), t in turns.items() if a != n]
                assert not any(o in m["content"] for o in others for m in e.prompt + e.completion)


def test_served_agents_answer_as_their_roles():
    """Iteration >= 1: the served names decode to the role that answers (critics only finetuned: the
    generation agents stay the base model), and a script can answer by role."""
    agents = Agents(1, {"critic_0": "/x/critic_0", "critic_1": "/x/critic_1"})
    problems = problems_for({"p": None})

    def script(call):
        return response("p", call.agent, call.round, "1" if call.adapter is None else "2")

    engine = ScriptedEngine(script)
    turns = debate(engine, TASK, problems, agents=2, rounds=3, adapter_for=engine.serve(agents))
    assert [[(c.adapter, c.role) for c in call] for call in engine.calls] == [
        [(None, "gen_0"), (None, "gen_1")],
        [("critic_0", "critic_0"), ("critic_1", "critic_1")],
        [("critic_0", "critic_0"), ("critic_1", "critic_1")],
    ]
    assert [(t.round, t.answer) for t in turns] == [(1, "1"), (1, "1"), (2, "2"), (2, "2"), (3, "2"), (3, "2")]
    assert turns[0].adapter == served_name(None, 0, 1) == "base|agent=0|round=1"
    assert engine.served == [agents]


def test_the_engine_refuses_a_served_request_with_the_wrong_conversation_and_records_everything():
    engine = ScriptedEngine(lambda call: f"round {call.round}", scorer=lambda call, text: -2.5)
    one = [{"role": "user", "content": "q"}]
    with pytest.raises(ValueError, match="served as agent 0 in round 2, but its conversation has 1 user"):
        engine.generate([Request(one, adapter=served_name(None, 0, 2))])
    (g,) = engine.generate([Request(one, adapter="gen_0")], seed=9)
    assert (g.text, g.truncated, g.completion_tokens, g.prompt_tokens) == ("round 1", False, 2, 1)
    (c,) = engine.calls[-1]
    assert (c.agent, c.adapter, c.round, c.seed, c.role) == (None, "gen_0", 1, 9, None)
    (s,) = engine.score([Request(one)], ["a b c"])
    assert (s.logprob, s.tokens) == (-2.5, 4)
    engine.release()
    engine.close()
    assert engine.releases == 1
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([Request(one)])


def test_a_table_refuses_unserved_requests_and_cells_that_do_not_mean_what_they_say():
    problems = problems_for({"p": None})
    script = table(TASK, problems, {"p": [["1", Reply(text="the answer is 12")]]})
    engine = ScriptedEngine(script)
    with pytest.raises(LookupError, match="adapter_for=engine.serve"):
        debate(engine, TASK, problems, agents=2, rounds=1)  # iteration 0 without serve: who is asking?
    turns = debate(engine, TASK, problems, agents=2, rounds=1, adapter_for=engine.serve(Agents(0)))
    assert [t.answer for t in turns] == ["1", "12"]  # a Reply's own text is taken as is
    engine = ScriptedEngine(table(TASK, problems, {"p": [[""]]}))  # an empty box is no answer
    with pytest.raises(ValueError, match="extracts to"):
        debate(engine, TASK, problems, agents=1, rounds=1, adapter_for=engine.serve(Agents(0)))


def test_model_summaries_are_counted_as_generated_tokens():
    """With ``summarizer: model`` the base model writes one summary per (problem, critic): its tokens are recorded
    on the critic turn whose conversation ends with it, so a debate's compute counts them (loop: generated_tokens)."""
    grid = {"p": [["2", "3", "2"], ["2", "2", "2"]], "q": [["4", "4", "4"], ["4", "4", "4"]]}
    problems = problems_for(grid)
    summaries = iter(["one two three", "four five", "six", "seven eight nine ten", "a b", "c d e"])
    engine = ScriptedEngine(table(TASK, problems, grid, other=lambda call: next(summaries)))
    turns = debate(engine, TASK, problems, agents=3, rounds=2, summarizer="model", adapter_for=engine.serve(Agents(0)))
    assert [t.summary_tokens for t in turns if t.round == 1] == [0] * 6
    assert [t.summary_tokens for t in turns if t.round == 2] == [3, 2, 1, 4, 2, 3]
    assert [t.messages[-1]["content"].count("seven eight nine ten") for t in turns if t.round == 2] == [
        0,
        0,
        0,
        1,
        0,
        0,
    ]
    for summarizer in ("answers", "concat"):
        engine = ScriptedEngine(table(TASK, problems, grid))
        plain = debate(
            engine, TASK, problems, agents=3, rounds=2, summarizer=summarizer, adapter_for=engine.serve(Agents(0))
        )
        assert all(t.summary_tokens == 0 for t in plain)


def test_a_transcript_without_model_summaries_is_written_as_before():
    """A turn with no summary tokens is written without the field, byte for byte as before it existed: an older
    run whose debate is generated again on resume is recognized as the same outputs (later stages kept)."""
    from maft.debate.transcript import Turn

    turn = Turn(
        problem_id="p",
        agent=0,
        round=1,
        adapter=None,
        messages=[],
        response="r",
        answer=None,
        correct=False,
        completion_tokens=3,
    )
    assert turn.model_dump_json() == (
        '{"problem_id":"p","agent":0,"round":1,"adapter":null,"messages":[],"response":"r","answer":null,'
        '"correct":false,"completion_tokens":3,"truncated":false}'
    )
    summarized = turn.model_copy(update={"summary_tokens": 5})
    assert Turn.model_validate_json(summarized.model_dump_json()) == summarized
