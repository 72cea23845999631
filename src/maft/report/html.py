"""``maft report``: a static HTML report of a run directory or a comparison directory.

    write_report(source) -> source/report/index.html

The report folder holds ``index.html`` (config, tables, plots, a transcript browser), ``accuracy.png``,
``diversity.png`` (when there are diversity measures) and ``transcripts.js`` (every held-out debate turn,
loaded by a plain ``<script>`` so the page works from file://). No network resources: the stylesheet and
the transcript browser's script are package data (``maft/report/assets/report.css``, ``report.js``), inlined
into the page. The tables are those of summary.md and comparison.md (:mod:`maft.report.summary`, :mod:`maft.compare`),
rendered as HTML. Every file is written atomically (temporary file + rename): a killed ``maft report`` leaves
the previous files intact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any

from maft.compare import MethodResult, comparison_tables, diversity_tables
from maft.config import RunConfig
from maft.debate.transcript import Turn
from maft.evaluation.metrics import Accuracy, Diversity, IterationMetrics
from maft.report.summary import diversity, per_agent, per_iteration, title
from maft.report.tables import html
from maft.store import RunDirError, RunStore, atomic_file, read_jsonl, write_text

MEASURES = {  # the diversity measures plotted (those measured), and their axis labels
    "answer_agreement": "answer agreement",
    "consensus": "consensus",
    "embedding_dissimilarity": "embedding dissimilarity",
    "cross_nll": "cross NLL (nats/token)",
    "kl": "KL (nats/token)",
    "critic_cross_nll": "critic cross NLL (nats/token)",
    "critic_kl": "critic KL (nats/token)",
    "kl_from_base": "KL from base (nats/token)",
}
SHOWN = 200  # the transcript browser renders at most this many turns at a time


@dataclass
class Series:
    """One line of a plot: accuracy (and diversity) per iteration 0..L."""

    label: str
    accuracy: list[Accuracy]
    diversity: list[Diversity | None] = field(default_factory=list)
    flat: bool = False  # no finetuning: a horizontal line at iteration 0 with a shaded ±SE band
    width: float = 1.8
    band: list[tuple[float, float]] | None = None  # several seeds: per iteration, the 95% interval (shaded)


@dataclass
class Report:
    """Everything a page shows, whichever kind of directory it came from."""

    heading: str
    config: RunConfig | None
    series: list[Series]
    tables: str  # HTML
    turns: list[tuple[str, int, Turn]]  # (method, iteration, turn)
    comparison: bool
    seeds: list[int] = field(default_factory=list)  # a comparison's run seeds (when several)


def write_report(source: Path, out: Path | None = None) -> Path:
    """Write the report of a run or comparison directory ``source`` to ``out`` (default ``source/report``);
    returns the path of ``index.html``."""
    source = Path(source)
    if (source / "comparison.json").is_file():
        report = _comparison(source)
    elif (source / "metrics.json").is_file():
        report = _run(source)
    else:
        what = "does not exist" if not source.exists() else "has neither comparison.json nor metrics.json"
        raise FileNotFoundError(
            f"{source} {what}: expected a finished run directory (with metrics.json) "
            "or a comparison directory (with comparison.json)"
        )
    out = Path(out) if out is not None else source / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(report.series, out / "accuracy.png")
    has_diversity = plot_diversity(report.series, out / "diversity.png")
    if not has_diversity:
        (out / "diversity.png").unlink(missing_ok=True)  # a stale plot from an earlier report
    write_text(out / "transcripts.js", transcripts_js(report.turns))
    write_text(out / "index.html", _page(report, has_diversity))
    return out / "index.html"


# -- reading ----------------------------------------------------------------------------------------
def _config(run: Path) -> RunConfig | None:
    try:
        return RunStore.saved_config(run)
    except RunDirError:
        return None


def _turns(run: Path, iterations: int, method: str = "") -> list[tuple[str, int, Turn]]:
    out = []
    for it in range(iterations):
        path = run / f"iter_{it}" / "debate_test.jsonl"
        if path.is_file():
            out += [(method, it, t) for t in read_jsonl(path, Turn)]
    return out


def _run(run: Path) -> Report:
    config = _config(run)
    metrics = [IterationMetrics.model_validate(m) for m in json.loads((run / "metrics.json").read_text())]
    if not metrics:
        raise ValueError(f"{run}/metrics.json holds no iterations")
    base = metrics[0].test
    agents = config.debate.shape(held_out=True)[0] if config else len(base.agent_round)
    method = config.method if config else "maft"
    series = [
        Series(
            f"{method}: final-round majority",
            [m.test.majority for m in metrics],
            [m.diversity for m in metrics],
            width=3,
        ),
        Series("agent, round 1 (mean)", [m.test.round_agent[0] for m in metrics], width=1),
        Series("single agent (base)", [base.round_agent[0]], flat=True),
    ]
    if agents > 1:  # the references a one-agent or one-round run cannot tell apart are left out
        series.append(Series(f"majority of {agents} (base)", [base.round_majority[0]], flat=True))
    if len(base.round_agent) > 1:
        series.append(Series("debate (base)", [base.majority], flat=True))
    tables = _run_tables(metrics)
    heading = f"maft run: {title(config)}" if config else f"maft run: {run.name}"
    return Report(heading, config, series, tables, _turns(run, len(metrics)), comparison=False)


def _comparison(root: Path) -> Report:
    results = [MethodResult.model_validate(r) for r in json.loads((root / "comparison.json").read_text())]
    if not results:
        raise ValueError(f"{root}/comparison.json lists no methods")
    configs = {r.method: _config(root / r.run_dir) for r in results}
    config = configs.get("maft") or next((c for c in configs.values() if c is not None), None)
    series = [
        Series(
            r.method + (" (gold labels)" if r.uses_gold_labels else ""),
            r.accuracy,
            r.diversity if any(d is not None for d in r.diversity) else [],
            flat=not r.finetunes,
            width=3 if r.method == "maft" else 1.8,
            band=[(c.low, c.high) for c in r.accuracy_ci] if r.accuracy_ci else None,
        )
        for r in results
    ]
    turns = []  # several seeds: every seed's transcripts, labelled "<method> seed <s>"
    for r in results:
        runs = (
            [(s.run_dir, f"{r.method} seed {s.seed}") for s in r.seeds] if len(r.seeds) > 1 else [(r.run_dir, r.method)]
        )
        turns += [t for run_dir, label in runs for t in _turns(root / run_dir, len(r.accuracy), label)]
    heading = f"maft comparison: {title(config)}" if config else f"maft comparison: {root.name}"
    seeds = [s.seed for s in results[0].seeds] if len(results[0].seeds) > 1 else []
    return Report(heading, config, series, _comparison_tables(results), turns, comparison=True, seeds=seeds)


# -- plots ------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _iterations(series: Sequence[Series]) -> int:
    return max(len(s.accuracy) for s in series)


def plot_accuracy(series: Sequence[Series], path: Path) -> None:
    """Held-out accuracy (%) per iteration with ±1 SE, or, over several seeds, the mean with its 95% interval
    shaded; methods without finetuning as dashed lines."""
    fig = _figure(8, 4.5)
    ax = fig.add_subplot()
    handles = []  # the legend in the order of ``series``
    for i, s in enumerate(series):
        color = f"C{i % 10}"
        mean = [100 * a.mean for a in s.accuracy]
        se = [100 * a.se for a in s.accuracy]
        if s.band is not None:  # several seeds: the 95% interval
            low, high = ([100 * b[k] for b in s.band] for k in (0, 1))
        else:  # one seed: ±1 SE
            low, high = [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)]
        if s.flat:
            handles.append(ax.axhline(mean[0], color=color, ls="--", lw=s.width, label=s.label))
            ax.axhspan(low[0], high[0], color=color, alpha=0.12, lw=0)
            continue
        x = range(len(mean))
        yerr = [[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]]
        layer = {} if s.band is not None else {"zorder": 3 if s.width > 2 else 2}
        handles.append(
            ax.errorbar(
                x,
                mean,
                yerr=yerr,
                color=color,
                lw=s.width,
                marker="o",
                ms=2 + s.width,
                capsize=3,
                label=s.label,
                **layer,
            )
        )
        if s.band is not None:
            ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
    _iteration_axis(ax, _iterations(series))
    ax.set_ylabel("accuracy (%)")
    spread = (
        "mean over seeds; bars and bands: 95% interval over problems and seeds"
        if any(s.band is not None for s in series)
        else "±1 SE"
    )
    ax.set_title(f"Held-out accuracy of the final round's majority vote ({spread})", fontsize=10)
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    _save(fig, path)


def plot_diversity(series: Sequence[Series], path: Path) -> bool:
    """One subplot per diversity measure vs iteration; returns False (writing nothing) without any data."""

    def values(s: Series, key: str) -> list[tuple[int, float]]:
        return [
            (it, getattr(d, key)) for it, d in enumerate(s.diversity) if d is not None and getattr(d, key) is not None
        ]

    measures = [k for k in MEASURES if any(values(s, k) for s in series)]
    if not measures:
        return False
    cols = min(3, len(measures))
    rows = -(-len(measures) // cols)
    fig = _figure(3.6 * cols, 3.0 * rows)
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in grid[len(measures) :]:
        ax.set_visible(False)
    axes = grid[: len(measures)]
    handles: dict[int, Any] = {}  # series index -> a line, for one legend in the order of ``series``
    for ax, key in zip(axes, measures):
        for i, s in enumerate(series):
            points = values(s, key)
            if not points:
                continue
            color = f"C{i % 10}"  # the same colour as in the accuracy plot
            if s.flat:
                line = ax.axhline(points[0][1], color=color, ls="--", lw=s.width, label=s.label)
            else:
                x, y = zip(*points)
                (line,) = ax.plot(x, y, color=color, lw=s.width, marker="o", ms=2 + s.width, label=s.label)
            handles.setdefault(i, line)
        _iteration_axis(ax, max(len(s.diversity) for s in series))
        ax.set_title(MEASURES[key], fontsize=9)
    if len(handles) > 1:
        legend = [handles[i] for i in sorted(handles)]
        axes[cols - 1].legend(handles=legend, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: Path) -> None:
    """Save a PNG atomically: a killed process leaves the previous plot (or none), never a truncated one."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")


def _iteration_axis(ax, iterations: int) -> None:
    ax.set_xticks(range(iterations))
    ax.set_xlim(-0.25, max(iterations - 1, 0) + 0.25)
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)


# -- tables: those of summary.md and comparison.md -----------------------------------------------------
def _run_tables(metrics: Sequence[IterationMetrics]) -> str:
    tables = [per_iteration(metrics), *diversity([(None, [m.diversity for m in metrics])]), per_agent(metrics)]
    return "".join(map(html, tables))


def _comparison_tables(results: list[MethodResult]) -> str:
    tables = [*comparison_tables(results, description=True), *diversity_tables(results)]
    return "".join(map(html, tables))


# -- transcripts ------------------------------------------------------------------------------------
def transcripts_js(turns: Sequence[tuple[str, int, Turn]]) -> str:
    """``window.MAFT_TRANSCRIPTS`` (one record per turn) and ``window.MAFT_QUESTIONS`` (problem id -> question)."""
    records: list[dict[str, Any]] = []
    questions: dict[str, str] = {}
    for method, iteration, t in turns:
        questions.setdefault(t.problem_id, t.messages[0]["content"] if t.messages else "")
        record = {
            "method": method,
            "iteration": iteration,
            "problem_id": t.problem_id,
            "agent": t.agent,
            "round": t.round,
            "answer": t.answer,
            "correct": t.correct,
            "response": t.response,
        }
        if t.round > 1 and t.messages:
            record["critic"] = t.messages[-1]["content"]
        records.append(record)

    def js(obj: object) -> str:  # JSON is valid JS; "</" must not close the script element
        return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")

    return f"window.MAFT_TRANSCRIPTS = {js(records)};\nwindow.MAFT_QUESTIONS = {js(questions)};\n"


# -- the page ---------------------------------------------------------------------------------------
def _config_summary(config: RunConfig | None, seeds: Sequence[int] = ()) -> str:
    if config is None:
        return "<p>No config.yaml found.</p>\n"
    d, t = config.debate, config.task
    items = {
        "model": config.model.name or "embedded tiny model",
        "task": t.name + (f" {t.options}" if t.options else ""),
        "agents x rounds": f"{d.agents} x {d.rounds} ({d.summarizer} summaries)",
        "problems": f"{t.n_train} train / {t.n_test} held-out",
        "iterations": str(config.iterations),
        "finetuning": f"{config.train.method}, lr {config.train.learning_rate:g}, {config.train.epochs:g} epochs",
        "seed": str(config.seed),
    }
    if seeds:
        items["seed"] = f"{', '.join(map(str, seeds))} (problems drawn with split seed {config.split_seed})"
    return (
        '<dl class="config">'
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items.items())
        + "</dl>\n"
    )


def _page(report: Report, has_diversity: bool) -> str:
    diversity = (
        '<img src="diversity.png" alt="diversity measures per iteration">'
        if has_diversity
        else "<p>No diversity data: diversity.png was not written.</p>"
    )
    hidden = "" if report.comparison else " hidden"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(report.heading)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{asset("report.css")}</style></head>
<body>
<h1>{escape(report.heading)}</h1>
{_config_summary(report.config, report.seeds)}
<h2>Accuracy</h2>
<img src="accuracy.png" alt="held-out accuracy per iteration">
<h2>Diversity</h2>
{diversity}
{report.tables}
<h2>Transcripts</h2>
<div class="filters">
<label{hidden}>method <select id="f-method"><option value="">all</option></select></label>
<label>iteration <select id="f-iteration"><option value="">all</option></select></label>
<label>problem <input id="f-problem" placeholder="problem id contains"></label>
<label>agent <select id="f-agent"><option value="">all</option></select></label>
<label>round <select id="f-round"><option value="">all</option></select></label>
<label>graded <select id="f-correct"><option value="">all</option>
<option value="correct">correct</option><option value="wrong">wrong</option></select></label>
<span id="t-count"></span>
</div>
<div id="transcripts"></div>
<script src="transcripts.js"></script>
<script>const SHOWN = {SHOWN};
{asset("report.js")}</script>
</body></html>
"""


@cache
def asset(name: str) -> str:
    """A file of ``maft/report/assets`` (package data): the page's stylesheet or script."""
    return (files("maft.report") / "assets" / name).read_text(encoding="utf-8")
