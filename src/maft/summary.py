"""The per-iteration table of a run, as a rich table (terminal) and as Markdown (summary.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

from maft.config import RunConfig

if TYPE_CHECKING:
    from maft.society import IterationMetrics

#: Columns: the final round's majority vote; one agent's accuracy in round 1 and the final round; the share
#: of problems where the final round is unanimous; the training labels' precision; data sizes; wall time.
HEADER = ["iter", "majority %", "agent r1 %", "agent final %", "unanimous %", "label prec. %", "D^G", "D^C", "s"]


def iteration_rows(metrics: Sequence[IterationMetrics]) -> list[list[str]]:
    rows = []
    for m in metrics:
        t = m.test
        if m.train is not None:
            precision = str(m.train.label_precision)
            gen = str(sum(c["generation"] for c in m.train.data.values()))
            critic = str(sum(c["critic"] for c in m.train.data.values()))
        else:
            precision = gen = critic = "-"
        rows.append(
            [
                str(m.iteration),
                str(t.majority),
                str(t.round_agent[0]),
                str(t.round_agent[-1]),
                f"{100 * t.unanimous:.1f}",
                precision,
                gen,
                critic,
                f"{sum(m.seconds.values()):.0f}",
            ]
        )
    return rows


def rich_table(header: Sequence[str], rows: Sequence[Sequence[object]], title: str = "") -> Table:
    """A terminal table: the first column left-aligned, the others right-aligned."""
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*map(str, row))
    return table


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def iteration_table(metrics: Sequence[IterationMetrics], title: str = "") -> Table:
    return rich_table(HEADER, iteration_rows(metrics), title)


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
    lines = [f"# maft run: {title(config)}", "", f"Config hash `{manifest['config_hash']}`.", ""]
    lines += ["## Accuracy on held-out problems, per iteration", ""]
    lines += markdown_table(HEADER, iteration_rows(metrics))
    lines += [
        "",
        "Iteration 0 is the base model. Majority: the final round's majority vote. Agent columns: the mean",
        "accuracy of one agent in that round. Train label precision: the share of the training debate's",
        "majority labels that equal the gold answer (a diagnostic; training never sees gold answers).",
        "",
        "## Per agent and round (held-out accuracy %)",
        "",
    ]
    rounds = len(metrics[0].test.round_agent) if metrics else 0
    lines += markdown_table(
        ["iter", "agent", *(f"round {r + 1}" for r in range(rounds))],
        [[m.iteration, n, *per_round] for m in metrics for n, per_round in enumerate(m.test.agent_round)],
    )
    lines += ["", "## Diversity of the agents' round-1 responses and compute, per iteration", ""]
    measures = ("answer_agreement", "consensus", "embedding_dissimilarity", "cross_nll", "kl")
    lines += markdown_table(
        ["iter", "answer agreement", "consensus", "embedding dissimilarity", "cross NLL", "KL", "generated tokens", "training examples"],
        [
            [m.iteration, *(_num(getattr(m.diversity, k, None)) for k in measures),
             f"{m.compute.generated_tokens:,}", f"{m.compute.train_examples:,}"]
            for m in metrics
        ],
    )
    stages = manifest["stages"]
    total = sum(entry["seconds"] for entry in stages.values())
    lines += ["", "## Stage times (seconds)", ""]
    lines += markdown_table(
        ["stage", "seconds"],
        [*([name, f"{entry['seconds']:.1f}"] for name, entry in stages.items()), ["**total**", f"**{total:.1f}**"]],
    )
    lines += [""]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
