"""``maft compare``: maft and the baselines on the same problems and model, one run directory each.

The comparison directory holds ``<method>/`` (an ordinary run directory per method, resumable),
``comparison.json`` (a list of :class:`MethodResult`) and ``comparison.md`` (the Table-1-style table).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.markup import escape

from maft.baselines import DEFAULT_METHODS, METHODS, method_overrides
from maft.config import ConfigError, RunConfig, apply_overrides, load_config, read_yaml, validation_errors
from maft.evaluation.metrics import Accuracy, Compute, Diversity
from maft.report.summary import diversity, title
from maft.report.tables import (
    BEST_NOTE,
    MISSING,
    Column,
    Table,
    acc,
    at,
    best_iteration,
    count,
    markdown,
    md_escape,
    rich_table,
    secs,
)
from maft.store import RunStore, write_json, write_text

if TYPE_CHECKING:
    import rich.table


class MethodResult(BaseModel):
    """One method's results in a comparison: per iteration 0..L (iteration 0: before any finetuning)."""

    method: str  # a name in maft.baselines.METHODS
    description: str
    run_dir: str  # relative to the comparison directory
    uses_gold_labels: bool  # STaR trains on answers checked against the gold answers
    finetunes: bool  # False for the methods without training (single, majority, debate)
    accuracy: list[Accuracy]  # the final round's majority vote on the held-out problems, per iteration
    compute: list[Compute]  # per iteration
    diversity: list[Diversity | None]  # per iteration (None with a single agent)


class CompareConfig(BaseModel):
    """A comparison: which methods, on which run config (a run YAML's sections; default: the embedded default)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    run: dict[str, Any] = Field(default_factory=dict, description="the run config every method starts from")

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        if not methods:
            raise ValueError("methods is empty")
        return list(dict.fromkeys(methods))


def load_compare_config(
    path: Path | None, overrides: list[str] | None = None, methods: list[str] | None = None
) -> CompareConfig:
    """The comparison from a YAML file (or the defaults); ``overrides`` (``key=value``) apply to the run config."""
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"compare config {path} does not exist")
        data = read_yaml(path, "compare config") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"compare config {path} must be a mapping with keys methods and run")
    if methods:
        data["methods"] = methods
    try:
        cfg = CompareConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            "invalid compare config" + (f" in {path}" if path else "") + ":\n" + validation_errors(e)
        ) from None
    cfg.run = apply_overrides(cfg.run, overrides or [])
    for name in cfg.methods:  # every method's run config is checked before anything runs
        method_config(cfg, name)
    return cfg


def method_config(cfg: CompareConfig, name: str) -> RunConfig:
    """The run config of method ``name``: the comparison's run config plus the method's overrides."""
    return load_config(None, method_overrides(name), base=_validated(cfg.run))


def _validated(run: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(run)
    except ValidationError as e:
        raise ConfigError("invalid run config in the compare config:\n" + validation_errors(e, "run.")) from None


def compare(
    cfg: CompareConfig, out: Path, *, console: Console | None = None, progress: bool = True
) -> list[MethodResult]:
    """Run (or resume) every method in ``out/<method>`` and write comparison.json and comparison.md."""
    from maft.loop import Society, prepare

    console = console or Console()
    configs = {name: method_config(cfg, name) for name in cfg.methods}
    for run_config in configs.values():
        prepare(run_config)  # bad task options or sizes fail here, before any run starts
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    engine, engine_model = None, None
    results = []
    for i, (name, run_config) in enumerate(configs.items(), 1):
        console.rule(f"[bold]{i}/{len(configs)} {escape(name)}[/bold]: {escape(METHODS[name].description)}")
        root = out / name
        store = (
            RunStore.open(root, run_config) if (root / "manifest.json").is_file() else RunStore.create(root, run_config)
        )
        # one model in memory for every method; a server engine is not shared: its adapter names and managed
        # server belong to one run directory
        same = (run_config.model, run_config.execution) == engine_model
        shared = engine if same and run_config.model.engine == "hf" else None
        society = Society(store, console=console, progress=progress, engine=shared)
        metrics = society.run()
        if society.engine_loaded and society.engine is not engine:
            if engine is not None:
                engine.close()
            engine, engine_model = society.engine, (run_config.model, run_config.execution)
        results.append(
            MethodResult(
                method=name,
                description=METHODS[name].description,
                run_dir=name,
                uses_gold_labels=METHODS[name].uses_gold_labels,
                finetunes=METHODS[name].finetunes,
                accuracy=[m.test.majority for m in metrics],
                compute=[m.compute for m in metrics],
                diversity=[m.diversity for m in metrics],
            )
        )
    if engine is not None:
        engine.close()  # a managed server stops with the comparison
    write_json(out / "comparison.json", [r.model_dump(mode="json") for r in results])
    write_text(out / "comparison.md", comparison_markdown(results, _validated(cfg.run)))
    return results


COMPARISON_NOTE = (
    "Accuracy: the final round's majority vote on the held-out problems, % ± SE. Iteration 0 is the base model. "
    "Generated tokens count every debate (training and held-out); training examples are summed over the "
    "finetuned models and iterations; wall time is the sum of the run's stages, in seconds. Labels: the answers "
    "the finetuning data was built from (the majority vote, or the gold answers)."
)


def labels(r: MethodResult) -> str:
    return "gold" if r.uses_gold_labels else ("majority" if r.finetunes else MISSING)


def methods_table(results: list[MethodResult], description: bool = False) -> Table:
    """The Table-1-style comparison, one row per method (``description``: a last column describing it)."""
    header = [
        "method",
        "iter 0 %",
        "final %",
        "best %*",
        "generated tokens",
        "training examples",
        "wall time s",
        Column("labels", "left"),
    ]
    rows = []
    for r in results:
        final = len(r.accuracy) - 1
        best = best_iteration(r.accuracy)
        rows.append(
            [
                r.method,
                acc(r.accuracy[0]),
                at(r.accuracy[final], final) if r.finetunes else acc(r.accuracy[final]),
                at(r.accuracy[best], best) if r.finetunes else MISSING,  # without finetuning there is one iteration
                count(sum(c.generated_tokens for c in r.compute)),
                count(sum(c.train_examples for c in r.compute)),
                secs(sum(c.seconds for c in r.compute)),
                labels(r),
                *([r.description] if description else []),
            ]
        )
    return Table(
        "Accuracy % ± SE on held-out problems (final-round majority vote)",
        [*header, *([Column("description", "left")] if description else [])],
        rows,
        notes=[COMPARISON_NOTE, BEST_NOTE],
        id="comparison",
    )


def accuracy_table(results: list[MethodResult]) -> Table:
    iterations = max(len(r.accuracy) for r in results)
    return Table(
        "Accuracy % ± SE per iteration",
        ["method", *(f"iter {it}" for it in range(iterations))],
        [
            [r.method, *(acc(r.accuracy[it]) if it < len(r.accuracy) else MISSING for it in range(iterations))]
            for r in results
        ],
        id="accuracy-table",
    )


def diversity_tables(results: list[MethodResult]) -> list[Table]:
    return diversity([(r.method, r.diversity) for r in results])


def comparison_table(results: list[MethodResult], title: str = "") -> rich.table.Table:
    """The console's table at the end of ``maft compare``: :func:`methods_table`."""
    return rich_table(methods_table(results), title=title or None)


def comparison_markdown(results: list[MethodResult], config: RunConfig) -> str:
    methods = "## Methods\n\n" + "".join(f"- **{md_escape(r.method)}**: {md_escape(r.description)}\n" for r in results)
    return "\n".join(
        [
            f"# maft compare: {title(config)}\n",
            markdown(methods_table(results)),
            markdown(accuracy_table(results)),
            methods,
            *map(markdown, diversity_tables(results)),
        ]
    )
