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


def iteration_table(metrics: Sequence[IterationMetrics], title: str = "") -> Table:
    table = Table(title=title)
    for i, h in enumerate(HEADER):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in iteration_rows(metrics):
        table.add_row(*row)
    return table


def title(config: RunConfig) -> str:
    d, t = config.debate, config.task
    model = config.model.name or "embedded tiny model"
    return (
        f"{model} on {t.name}: {d.agents} agents x {d.rounds} rounds ({d.summarizer} summaries), "
        f"{t.n_train} train / {t.n_test} test problems, {config.train.method} finetuning"
    )


def summary_markdown(config: RunConfig, metrics: Sequence[IterationMetrics], manifest: dict[str, Any]) -> str:
    lines = [f"# maft run: {title(config)}", "", f"Config hash `{manifest['config_hash']}`.", ""]
    lines += ["## Accuracy on held-out problems, per iteration", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in iteration_rows(metrics)]
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
    lines += ["| iter | agent | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " |"]
    lines += ["|---|---|" + "---|" * rounds]
    for m in metrics:
        for n, per_round in enumerate(m.test.agent_round):
            lines.append(f"| {m.iteration} | {n} | " + " | ".join(str(a) for a in per_round) + " |")
    lines += ["", "## Diversity of the agents' round-1 responses and compute, per iteration", ""]
    lines += ["| iter | answer agreement | consensus | embedding dissimilarity | cross NLL | KL | generated tokens | training examples |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for m in metrics:
        d, c = m.diversity, m.compute
        cells = [_num(getattr(d, k, None)) for k in ("answer_agreement", "consensus", "embedding_dissimilarity", "cross_nll", "kl")]
        lines.append(f"| {m.iteration} | " + " | ".join(cells) + f" | {c.generated_tokens:,} | {c.train_examples:,} |")
    lines += ["", "## Stage times (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {entry['seconds']:.1f} |" for name, entry in manifest["stages"].items()]
    total = sum(entry["seconds"] for entry in manifest["stages"].values())
    lines += [f"| **total** | **{total:.1f}** |", ""]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
