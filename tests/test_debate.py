"""The debate protocol through the real engine: one engine call per round, what critics are shown."""

from __future__ import annotations

import pytest

from maft.debate.protocol import debate
from maft.engines import Request, Sampling

SAMPLING = Sampling(max_new_tokens=160)


class CountingEngine:
    """The real engine, counting its calls (a debate must batch each round into one call)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, requests, *, seed=0, progress=False):
        self.calls.append(list(requests))
        return self.engine.generate(requests, seed=seed, progress=progress)


@pytest.fixture(scope="module")
def problems(arithmetic):
    return arithmetic.splits(0, 4, seed=21).test


def test_answers_digest_one_call_per_round_and_three_rounds(engine, arithmetic, problems):
    counting = CountingEngine(engine)
    turns = debate(counting, arithmetic, problems, agents=3, rounds=3, summarizer="answers", sampling=SAMPLING, seed=1)
    assert [len(c) for c in counting.calls] == [12, 12, 12]
    assert [(t.round, t.problem_id, t.agent) for t in turns] == sorted((t.round, t.problem_id, t.agent) for t in turns)
    grid = {(t.problem_id, t.agent, t.round): t for t in turns}
    for t in turns:
        assert len(t.messages) == 2 * t.round - 1 and t.messages[-1]["role"] == "user"
        if t.round > 1:
            assert (
                t.messages[:-2] == grid[(t.problem_id, t.agent, t.round - 1)].messages
            )  # the agent's own conversation
            assert t.messages[-2]["content"] == grid[(t.problem_id, t.agent, t.round - 1)].response
            others = [grid[(t.problem_id, n, t.round - 1)].answer for n in range(3) if n != t.agent]
            shown = ", ".join(a if a is not None else "no answer" for a in others)
            assert f"The other agents' answers are: {shown}." in t.messages[-1]["content"]
        assert t.correct == arithmetic.is_correct(t.answer, next(p for p in problems if p.id == t.problem_id))


def test_concat_shows_the_other_agents_full_responses_of_the_previous_round(engine, arithmetic, problems):
    turns = debate(engine, arithmetic, problems, agents=3, rounds=2, summarizer="concat", sampling=SAMPLING, seed=2)
    grid = {(t.problem_id, t.agent, t.round): t for t in turns}
    for t in (t for t in turns if t.round == 2):
        others = [grid[(t.problem_id, n, 1)].response for n in range(3) if n != t.agent]
        expected = "\n\n".join(f"One agent solution: {r}" for r in others)
        assert t.messages[-1]["content"].startswith(
            f"These are the solutions to the problem from other agents:\n\n{expected}\n\n"
        )


def test_model_summaries_come_from_the_base_model_in_one_call(engine, arithmetic, problems):
    counting = CountingEngine(engine)
    turns = debate(
        counting,
        arithmetic,
        problems,
        agents=2,
        rounds=2,
        summarizer="model",
        sampling=SAMPLING,
        adapter_for=lambda agent, round: None,
        seed=3,
    )
    assert [len(c) for c in counting.calls] == [8, 8, 8]  # round 1, summaries, round 2
    summary_requests = counting.calls[1]
    assert all(r.adapter is None and "Summarize these solutions" in r.messages[0]["content"] for r in summary_requests)
    grid = {(t.problem_id, t.agent, t.round): t for t in turns}
    for t in (t for t in turns if t.round == 2):
        assert t.messages[-1]["content"].startswith("Here is a summary of the other agents' solutions: ")
        request = summary_requests[[p.id for p in problems].index(t.problem_id) * 2 + t.agent]
        assert grid[(t.problem_id, 1 - t.agent, 1)].response in request.messages[0]["content"]


def test_generation_agents_answer_round_one_and_critics_later(engine, arithmetic, problems):
    class Recording(CountingEngine):
        """Records which adapter each request asked for, then lets the base model answer it."""

        def generate(self, requests, *, seed=0, progress=False):
            self.calls.append(list(requests))
            base = [Request(r.messages, None, r.sampling) for r in requests]
            return self.engine.generate(base, seed=seed, progress=progress)

    recording = Recording(engine)
    debate(
        recording,
        arithmetic,
        problems[:2],
        agents=2,
        rounds=3,
        sampling=SAMPLING,
        adapter_for=lambda agent, round: f"gen_{agent}" if round == 1 else f"critic_{agent}",
    )
    assert [[r.adapter for r in call] for call in recording.calls] == [
        ["gen_0", "gen_1"] * 2,
        ["critic_0", "critic_1"] * 2,
        ["critic_0", "critic_1"] * 2,
    ]


def test_a_debate_needs_agents_and_rounds(engine, arithmetic, problems):
    with pytest.raises(ValueError, match="agents >= 1 and rounds >= 1"):
        debate(engine, arithmetic, problems, agents=0, rounds=2)


def test_a_truncated_answer_shows_as_no_answer_when_it_abstains(engine, arithmetic, problems):
    from maft.debate.voting import VoteRule

    short = Sampling(max_new_tokens=24)  # cuts the tiny model's solutions mid-way, after some numbers
    shown = {}
    for rule in (VoteRule(truncated="abstain"), VoteRule(truncated="keep")):
        turns = debate(
            engine,
            arithmetic,
            problems,
            agents=3,
            rounds=2,
            summarizer="answers",
            sampling=short,
            seed=3,
            answer_of=rule.answer,
        )
        grid = {(t.problem_id, t.agent, t.round): t for t in turns}
        first = [t for t in turns if t.round == 1]
        assert all(t.truncated for t in first) and any(t.answer is not None for t in first)
        for t in (t for t in turns if t.round == 2):
            others = [rule.answer(grid[(t.problem_id, n, 1)]) for n in range(3) if n != t.agent]
            digest = ", ".join(a if a is not None else "no answer" for a in others)
            assert f"The other agents' answers are: {digest}." in t.messages[-1]["content"]
        shown[rule.truncated] = [t.messages[-1]["content"] for t in turns if t.round == 2]
    assert all("no answer, no answer." in m for m in shown["abstain"]) and shown["abstain"] != shown["keep"]
