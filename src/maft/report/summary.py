"""The tables of a run, built once as :class:`maft.report.tables.Table` and rendered for the terminal (``maft run``),
summary.md and the HTML report (:mod:`maft.report.html`): accuracy per iteration, per agent and round, the
diversity measures, and stage times. The numbers in them are defined and formatted in :mod:`maft.report.tables`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from maft.config import RunConfig
from maft.report.tables import MISSING, Table, acc, count, markdown, num, pct, rich_table, secs

if TYPE_CHECKING:
    import rich.table

    from maft.evaluation.metrics import Diversity, IterationMetrics

ITERATION_NOTE = (
    "Iteration 0 is the base model. Majority: the final round's majority vote. Agent columns: the mean accuracy "
    "of one agent in that round. Unanimous: the share of problems where every agent's final answer is equivalent. "
    "Label precision: the share of the training debate's majority labels that equal the gold answer (a "
    "diagnostic; training never sees gold answers). D^G / D^C: generation / critic training examples. Generated "
    "tokens: the training and held-out debates. s: the iteration's wall time in seconds."
)


def per_iteration(metrics: Sequence[IterationMetrics]) -> Table:
    """Held-out accuracy, agreement, training labels and data, and compute, one row per iteration."""
    header = [
        "iter",
        "majority %",
        "agent r1 %",
        "agent final %",
        "unanimous %",
        "label prec. %",
        "D^G",
        "D^C",
        "generated tokens",
        "training examples",
        "s",
    ]
    rows = []
    for m in metrics:
        t = m.test
        if m.train is not None:
            precision = acc(m.train.label_precision)
            gen = count(sum(c["generation"] for c in m.train.data.values()))
            critic = count(sum(c["critic"] for c in m.train.data.values()))
        else:
            precision = gen = critic = MISSING
        rows.append(
            [
                str(m.iteration),
                acc(t.majority),
                acc(t.round_agent[0]),
                acc(t.round_agent[-1]),
                pct(t.unanimous),
                precision,
                gen,
                critic,
                count(m.compute.generated_tokens),
                count(m.compute.train_examples),
                secs(sum(m.seconds.values())),
            ]
        )
    return Table("Accuracy on held-out problems, per iteration", header, rows, notes=[ITERATION_NOTE], id="iterations")


def iteration_table(metrics: Sequence[IterationMetrics], title: str = "") -> rich.table.Table:
    """The console's table at the end of ``maft run``: :func:`per_iteration`."""
    return rich_table(per_iteration(metrics), title=title or None)


def per_agent(metrics: Sequence[IterationMetrics]) -> Table:
    rounds = len(metrics[0].test.round_agent) if metrics else 0
    return Table(
        "Per agent and round (held-out accuracy %)",
        ["iter", "agent", *(f"round {r + 1}" for r in range(rounds))],
        [
            [str(m.iteration), str(n), *map(acc, per_round)]
            for m in metrics
            for n, per_round in enumerate(m.test.agent_round)
        ],
        id="agents",
    )


#: The diversity measures of round 1 (always: the answer measures; when computed: the others), and the paper's
#: likelihood measures (``diversity.paper_likelihoods``), as table headers.
ROUND_1 = {
    "answer_agreement": "answer agreement",
    "consensus": "consensus",
    "embedding_dissimilarity": "embedding dissimilarity",
    "cross_nll": "cross NLL",
    "self_nll": "self NLL",
    "kl": "KL",
}
PAPER = {
    "critic_round": "critic round",
    "critic_cross_nll": "critic cross NLL",
    "critic_self_nll": "critic self NLL",
    "critic_kl": "critic KL",
    "kl_from_base": "KL from base",
}
LIKELIHOODS = ("cross_nll", "self_nll", "kl")
PAPER_NOTE = (
    "With diversity.paper_likelihoods, in nats per token. Critic cross NLL, self NLL and KL: as in round 1, for "
    "the critic agents' responses in the critic round, each in its own conversation. KL from base: the mean over "
    "the roles of each role's Monte Carlo estimate of KL(role || base model) on its own responses (gen_n: round "
    "1, critic_n: the critic round), one column each after it; 0 at iteration 0 and for a role not finetuned."
)


def diversity(series: Sequence[tuple[str | None, Sequence[Diversity | None]]]) -> list[Table]:
    """The diversity tables of one run (``[(None, per-iteration)]``) or of several, labelled (``[(method, ...)]``):
    round 1, then, only where any was measured, the paper's likelihood measures. A measure measured nowhere
    has no column; an iteration without diversity (a single agent) has no row."""
    labelled = any(label is not None for label, _ in series)
    prefix = ["method", "iter"] if labelled else ["iter"]
    present = [(label, it, d) for label, values in series for it, d in enumerate(values) if d is not None]

    def key(label: str | None, it: int) -> list[str]:
        return [label or "", str(it)] if labelled else [str(it)]

    def measured(keys: Iterable[str]) -> list[str]:
        return [k for k in keys if any(getattr(d, k) is not None for _, _, d in present)]

    round1 = measured(ROUND_1)
    notes = [
        (
            "Round 1: each generation agent answering alone. Answer agreement: the share of agent pairs whose "
            "answers are equivalent; consensus: the share of problems where all are (lower is more diverse)."
        )
    ]
    encoders = sorted({d.encoder for _, _, d in present if d.encoder and d.embedding_dissimilarity is not None})
    if "embedding_dissimilarity" in round1:
        notes.append(
            f"Embedding dissimilarity: the mean 1 - cosine similarity of two agents' responses "
            f"(encoder {', '.join(encoders) or 'not recorded'})."
        )
    if any(k in round1 for k in LIKELIHOODS):
        notes.append(
            "NLL and KL in nats per token: cross NLL is one agent's NLL of another's response, self NLL "
            'of its own; KL = cross NLL - self NLL, a Monte Carlo estimate (README, "Diversity").'
        )
    tables = [
        Table(
            "Diversity of the agents' round-1 responses",
            [*prefix, *(ROUND_1[k] for k in round1)],
            [[*key(label, it), *(num(getattr(d, k)) for k in round1)] for label, it, d in present],
            notes=notes,
            empty="No diversity measures were recorded.",
            id="diversity-table",
        )
    ]

    paper = measured(PAPER)
    roles = list(dict.fromkeys(r for _, _, d in present for r in (d.kl_from_base_by_role or {})))
    rows = [
        [
            *key(label, it),
            *(_paper_cell(d, k) for k in paper),
            *(num((d.kl_from_base_by_role or {}).get(r)) for r in roles),
        ]
        for label, it, d in present
        if any(getattr(d, k) is not None for k in paper) or d.kl_from_base_by_role
    ]
    if rows:
        tables.append(
            Table(
                "The paper's likelihood measures: the final round and each role's distance from the base model",
                [*prefix, *(PAPER[k] for k in paper), *roles],
                rows,
                notes=[PAPER_NOTE],
                id="likelihood-table",
            )
        )
    return tables


def _paper_cell(d: Diversity, key: str) -> str:
    value = getattr(d, key)
    if key == "critic_round":
        return MISSING if value is None else str(value)
    return num(value)


def stage_times(manifest: dict[str, Any]) -> Table:
    stages = manifest["stages"]
    total = sum(entry["seconds"] for entry in stages.values())
    return Table(
        "Stage times (seconds)",
        ["stage", "seconds"],
        [[name, secs(entry["seconds"], 1)] for name, entry in stages.items()],
        footer=["total", secs(total, 1)],
        empty="No stage has finished.",
    )


def title(config: RunConfig) -> str:
    d, t = config.debate, config.task
    model = config.model.name or "embedded tiny model"
    shape = f"{d.agents} agents x {d.rounds} rounds"
    if d.shape(held_out=True) != d.shape():
        shape += " ({} x {} held out)".format(*d.shape(held_out=True))
    return (
        f"{model} on {t.name}: {shape} ({d.summarizer} summaries), "
        f"{t.n_train} train / {t.n_test} test problems, {config.train.method} finetuning"
    )


def summary_markdown(config: RunConfig, metrics: Sequence[IterationMetrics], manifest: dict[str, Any]) -> str:
    tables = [
        per_iteration(metrics),
        per_agent(metrics),
        *diversity([(None, [m.diversity for m in metrics])]),
        stage_times(manifest),
    ]
    head = f"# maft run: {title(config)}\n\nConfig hash `{manifest['config_hash']}`.\n"
    return "\n".join([head, *map(markdown, tables)])
