"""``maft compare``: maft and the baselines on the same problems and model, one run directory each.

The comparison directory holds ``<method>/`` (an ordinary run directory per method, resumable),
``comparison.json`` (a list of :class:`MethodResult`) and ``comparison.md`` (the Table-1-style table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.table import Table

from maft.baselines import DEFAULT_METHODS, METHODS, method_overrides
from maft.config import ConfigError, RunConfig, apply_overrides, load_config, validation_errors, read_yaml
from maft.metrics import Accuracy, Compute, Diversity
from maft.store import RunStore, write_json, write_text
from maft.summary import markdown_table, rich_table, title


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


def load_compare_config(path: Path | None, overrides: list[str] | None = None, methods: list[str] | None = None) -> CompareConfig:
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
        raise ConfigError("invalid compare config" + (f" in {path}" if path else "") + ":\n" + validation_errors(e)) from None
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


def compare(cfg: CompareConfig, out: Path, *, console: Console | None = None, progress: bool = True) -> list[MethodResult]:
    """Run (or resume) every method in ``out/<method>`` and write comparison.json and comparison.md."""
    from maft.society import Society, prepare

    console = console or Console()
    configs = {name: method_config(cfg, name) for name in cfg.methods}
    for run_config in configs.values():
        prepare(run_config)  # bad task options or sizes fail here, before any run starts
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    engine, engine_model = None, None
    results = []
    for i, (name, run_config) in enumerate(configs.items(), 1):
        console.rule(f"[bold]{i}/{len(configs)} {name}[/bold]: {METHODS[name].description}")
        root = out / name
        store = RunStore.open(root, run_config) if (root / "manifest.json").is_file() else RunStore.create(root, run_config)
        # one model in memory for every method; a server engine is not shared: its adapter names and managed
        # server belong to one run directory
        shared = engine if run_config.model == engine_model and run_config.model.engine == "hf" else None
        society = Society(store, console=console, progress=progress, engine=shared)
        metrics = society.run()
        if society.engine_loaded and society.engine is not engine:
            if engine is not None:
                engine.close()
            engine, engine_model = society.engine, run_config.model
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


HEADER = ["method", "iter 0 %", "final %", "best %", "generated tokens", "training examples", "wall time s", "labels"]


def comparison_rows(results: list[MethodResult]) -> list[list[str]]:
    rows = []
    for r in results:
        final = r.accuracy[-1]
        best = max(r.accuracy, key=lambda a: a.mean)
        rows.append(
            [
                r.method,
                str(r.accuracy[0]),
                f"{final} (iter {len(r.accuracy) - 1})" if r.finetunes else str(final),
                str(best) if r.finetunes else "-",
                f"{sum(c.generated_tokens for c in r.compute):,}",
                f"{sum(c.train_examples for c in r.compute):,}",
                f"{sum(c.seconds for c in r.compute):.0f}",
                "gold" if r.uses_gold_labels else ("majority" if r.finetunes else "-"),
            ]
        )
    return rows


def comparison_table(results: list[MethodResult], title: str = "") -> Table:
    return rich_table(HEADER, comparison_rows(results), title)


def comparison_markdown(results: list[MethodResult], config: RunConfig) -> str:
    iterations = max(len(r.accuracy) for r in results)
    lines = [f"# maft compare: {title(config)}", "", "## Accuracy % ± SE on held-out problems (final-round majority vote)", ""]
    lines += markdown_table(HEADER, comparison_rows(results))
    lines += ["", "## Per iteration", ""]
    lines += markdown_table(
        ["method", *(f"iter {l}" for l in range(iterations))],
        [[r.method, *r.accuracy, *[""] * (iterations - len(r.accuracy))] for r in results],
    )
    lines += ["", "## Methods", ""]
    lines += [f"- **{r.method}**: {r.description}" for r in results]
    lines += [
        "",
        "Iteration 0 is the base model. Generated tokens count every debate (training and held-out); training",
        "examples are summed over the finetuned models and iterations; wall time is the sum of the run's stages.",
        "",
    ]
    return "\n".join(lines)
