"""``maft compare``: maft and the baselines on the same problems and model, one run directory each.

The comparison directory holds ``<method>/`` (an ordinary run directory per method, resumable),
``comparison.json`` (a list of :class:`MethodResult`) and ``comparison.md`` (the Table-1-style table).

Seeds (``seeds:`` in the compare YAML, ``maft compare --seeds``): K seeds run every method K times, with run
seeds ``s = seed + 0..K-1`` (``seed``: the run config's) or an explicit list. Each run is an ordinary run
directory, ``<method>/seed_<s>/``, resumed on its own; a one-seed comparison (the default) keeps the layout
``<method>/``, so comparisons started before seeds existed resume unchanged. A directory laid out for the
other count is refused. The run seed drives every random choice of a run (sampling, tie-breaks, data
subsampling, LoRA init and data order); the problems are drawn by ``task.split_seed``, which every run of a
comparison gets from the run config (its ``task.split_seed``, else its ``seed``), so every seed of every method
debates the same training and held-out problems and the comparison is paired. (The override is left out where
it equals the run seed: such a config is the one-seed run of before, hash included.)

Statistics (:mod:`maft.evaluation.statistics`), from each run's per-problem correctness (the final round's
majority vote, :func:`maft.evaluation.metrics.majority_scores`, under the run's vote rule):

- several seeds: per iteration, the mean accuracy over seeds and problems with its 95% bootstrap interval
  over problems and seeds (``accuracy_ci``; ``accuracy`` then holds that mean and the bootstrap SE);
- one seed: the run's accuracy with its binomial standard error, as before (no seed variation is measured);
- with maft in the comparison: every other method's paired difference to maft (method - maft, on the same
  problems and seeds) with its 95% interval, per iteration of maft (``vs_maft``; a method that finetunes less
  far, e.g. not at all, is taken at its last iteration), and whether the interval excludes zero;
- within each method, paired the same way: each iteration minus iteration 0 (``vs_iteration_0``: what its
  finetuning changed), and, per iteration, the final round's majority minus the same agents' round-1 majority
  (``later_rounds``: what the debate's later rounds add; None for a one-round debate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rich.console import Console
from rich.markup import escape

from maft.baselines import DEFAULT_METHODS, METHODS, method_overrides
from maft.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_diff,
    load_config,
    read_yaml,
    validation_errors,
)
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule
from maft.evaluation.metrics import Accuracy, Compute, Diversity, IterationMetrics, majority_scores
from maft.evaluation.statistics import (
    LEVEL,
    RESAMPLES,
    Difference,
    Interval,
    Scores,
    accuracy_interval,
    paired_difference,
)
from maft.report.summary import diversity, title
from maft.report.tables import (
    BEST_NOTE,
    EXCLUDES_ZERO,
    MISSING,
    Column,
    Table,
    acc,
    at,
    best_iteration,
    count,
    delta,
    markdown,
    md_escape,
    rich_table,
    secs,
)
from maft.store import RunDirError, RunStore, discard_dead_temporaries, read_jsonl, write_json, write_text

if TYPE_CHECKING:
    import rich.table


class SeedRun(BaseModel):
    """One seed's run of a method: its own numbers, per iteration 0..L."""

    seed: int
    run_dir: str  # relative to the comparison directory
    accuracy: list[Accuracy]
    compute: list[Compute]
    diversity: list[Diversity | None]


class MethodResult(BaseModel):
    """One method's results in a comparison: per iteration 0..L (iteration 0: before any finetuning). With
    several seeds, ``accuracy`` is the mean over seeds and problems with the bootstrap SE, ``compute`` the sum
    over the seeds and ``diversity`` the mean; each seed's own numbers are in ``seeds``."""

    method: str  # a name in maft.baselines.METHODS
    description: str
    run_dir: str  # relative to the comparison directory (several seeds: the first seed's)
    uses_gold_labels: bool  # STaR trains on answers checked against the gold answers
    finetunes: bool  # False for the methods without training (single, majority, debate)
    accuracy: list[Accuracy]  # the final round's majority vote on the held-out problems, per iteration
    compute: list[Compute]  # per iteration
    diversity: list[Diversity | None]  # per iteration (None with a single agent)
    seeds: list[SeedRun] = Field(default_factory=list)  # every seed's run (empty in files from before seeds)
    accuracy_ci: list[Interval] | None = None  # several seeds: per iteration, the 95% bootstrap interval
    vs_maft: list[Difference] | None = None  # per iteration of maft: this method - maft, paired (None: maft itself)
    # per iteration 1..L: this method at that iteration - at iteration 0, paired (None: no finetuning iteration)
    vs_iteration_0: list[Difference] | None = None
    # per iteration: the final round's majority - round 1's, paired (None: a one-round debate)
    later_rounds: list[Difference] | None = None

    @property
    def shown(self) -> list[Accuracy] | list[Interval]:
        """What the tables show per iteration: the intervals over seeds, else accuracy ± SE."""
        return self.accuracy_ci or self.accuracy


#: The largest seed count ``seeds: K`` takes: a larger number is much more likely a seed meant as a name.
MAX_SEED_COUNT = 20


class CompareConfig(BaseModel):
    """A comparison: which methods, on which run config (a run YAML's sections; default: the embedded default)."""

    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: int | list[int] | None = Field(
        None,
        description="K (run seeds: the run config's seed + 0..K-1) or a list of run seeds; None: the run seed alone",
    )
    run: dict[str, Any] = Field(default_factory=dict, description="the run config every method starts from")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: int | list[int] | None) -> int | list[int] | None:
        if isinstance(seeds, int) and seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {seeds}")
        if isinstance(seeds, int) and seeds > MAX_SEED_COUNT:
            raise ValueError(
                f"seeds {seeds} is a count: {seeds} runs of every method; to run the one seed {seeds}, name it as a "
                f"list (--seeds '{seeds},' with a trailing comma, or seeds: [{seeds}] in YAML) or set seed={seeds}; "
                f"a count above {MAX_SEED_COUNT} is refused (name the seeds to run more)"
            )
        if isinstance(seeds, list):
            if not seeds:
                raise ValueError("seeds is an empty list")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds {seeds} repeat a seed")
        return seeds

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
    path: Path | None,
    overrides: list[str] | None = None,
    methods: list[str] | None = None,
    seeds: int | list[int] | None = None,
) -> CompareConfig:
    """The comparison from a YAML file (or the defaults); ``overrides`` (``key=value``) apply to the run config;
    ``methods`` and ``seeds``, when given, replace the file's."""
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"compare config {path} does not exist")
        data = read_yaml(path, "compare config") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"compare config {path} must be a mapping with keys methods and run")
    if methods:
        data["methods"] = methods
    if seeds is not None:
        data["seeds"] = seeds
    try:
        cfg = CompareConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            "invalid compare config" + (f" in {path}" if path else "") + ":\n" + validation_errors(e)
        ) from None
    cfg.run = apply_overrides(cfg.run, overrides or [])
    for name in cfg.methods:  # every method's run config is checked before anything runs
        for seed in run_seeds(cfg):
            method_config(cfg, name, seed)
    return cfg


def run_seeds(cfg: CompareConfig) -> list[int]:
    """The run seeds of the comparison: the run config's seed, ``seed + 0..K-1``, or the listed ones."""
    base = _validated(cfg.run).seed
    if cfg.seeds is None:
        return [base]
    if isinstance(cfg.seeds, int):
        return [base + k for k in range(cfg.seeds)]
    return list(cfg.seeds)


def method_config(cfg: CompareConfig, name: str, seed: int | None = None) -> RunConfig:
    """The run config of method ``name`` (with run seed ``seed``, default the run config's): the comparison's
    run config plus the method's overrides, its problems drawn by the comparison's split seed."""
    base = _validated(cfg.run)
    overrides = method_overrides(name)
    if seed is not None and seed != base.seed:
        overrides.append(f"seed={seed}")
    if base.split_seed != (base.seed if seed is None else seed):  # equal: the config of a one-seed run as before
        overrides.append(f"task.split_seed={base.split_seed}")
    return load_config(None, overrides, base=base)


def _run_dir(name: str, seed: int, several: bool) -> str:
    return f"{name}/seed_{seed}" if several else name


def _check_layout(out: Path, methods: list[str], several: bool) -> None:
    """Refuse a comparison directory that is a run's (``maft run --out``), or laid out for the other number of
    seeds (before anything runs)."""
    if (out / "manifest.json").is_file():
        raise RunDirError(
            f"{out} is the directory of one run (maft run), not of a comparison: give maft compare its own --out"
        )
    for name in methods:
        d = out / name
        if several and (d / "manifest.json").is_file():
            raise RunDirError(
                f"{d} holds the run of a one-seed comparison, and this one has several seeds (<method>/seed_<s>/); "
                "pick another --out"
            )
        if not several and d.is_dir() and any(p.name.startswith("seed_") for p in d.iterdir()):
            raise RunDirError(
                f"{d} holds the runs of a comparison with several seeds (seed_<s>/), and this one has one seed; "
                "pick another --out, or ask for the same seeds"
            )


def _validated(run: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(run)
    except ValidationError as e:
        raise ConfigError("invalid run config in the compare config:\n" + validation_errors(e, "run.")) from None


#: The comparison's folder of the base model's debates, reused across its runs (module docstring).
SHARED = ".shared"


def compare(
    cfg: CompareConfig, out: Path, *, console: Console | None = None, progress: bool = True
) -> list[MethodResult]:
    """Run (or resume) every method and seed in ``out/<method>`` (several seeds: ``out/<method>/seed_<s>``) and
    write comparison.json and comparison.md."""
    from maft.loop import Society, prepare

    console = console or Console()
    seeds = run_seeds(cfg)
    several = len(seeds) > 1
    configs = {(name, seed): method_config(cfg, name, seed) for seed in seeds for name in cfg.methods}
    for name in cfg.methods:
        prepare(configs[name, seeds[0]])  # bad task options or sizes fail here, before any run starts
    _check_layout(out, cfg.methods, several)
    for (name, seed), run_config in configs.items():  # a run there from another config: refused now, not after
        root = out / _run_dir(name, seed, several)  # the methods before it have run
        if (root / "manifest.json").is_file():
            saved = RunStore.saved_config(root)
            if saved.hash() != run_config.hash():
                changes = "\n  ".join(config_diff(saved, run_config))
                raise RunDirError(
                    f"{root} holds a run of other settings than this comparison's {name}:\n  {changes}\n"
                    "Use another --out, or the settings that run was started with."
                )
    out.mkdir(parents=True, exist_ok=True)
    if (out / SHARED).is_dir():
        discard_dead_temporaries(out / SHARED)  # what a killed comparison left there
    write_text(out / "compare.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    engine: Any = None
    engine_model: Any = None
    runs: dict[str, list[_Run]] = {name: [] for name in cfg.methods}
    for i, ((name, seed), run_config) in enumerate(configs.items(), 1):  # seed by seed: one seed's table first
        where = f" seed {seed}" if several else ""
        console.rule(f"[bold]{i}/{len(configs)} {escape(name)}{where}[/bold]: {escape(METHODS[name].description)}")
        run_dir = _run_dir(name, seed, several)
        root = out / run_dir
        store = (
            RunStore.open(root, run_config) if (root / "manifest.json").is_file() else RunStore.create(root, run_config)
        )
        # one model in memory for every method; a server engine is not shared: its adapter names and managed
        # server belong to one run directory
        same = (run_config.model, run_config.execution) == engine_model
        shared = engine if same and run_config.model.engine == "hf" else None
        if engine is not None and shared is None:  # not reused: give its memory back before this run loads its own
            engine.close()
            engine = engine_model = None
        society = Society(store, console=console, progress=progress, engine=shared, shared_debates=out / SHARED)
        try:
            metrics = society.run()
        except BaseException:
            if society.engine_loaded and society.engine is not engine:
                society.engine.close()  # a managed server stops with the failed run
            raise
        if society.engine_loaded and society.engine is not engine:
            if run_config.model.engine == "hf":  # kept for the next method on the same model
                engine, engine_model = society.engine, (run_config.model, run_config.execution)
            else:  # a server engine is never shared: its managed server stops now, before the next run starts one
                society.engine.close()
        rule = VoteRule.of(run_config)
        debates = [read_jsonl(store.iter_dir(it) / "debate_test.jsonl", Turn) for it in range(len(metrics))]
        scores = [majority_scores(turns, society.task, society.splits.test, rule) for turns in debates]
        first_round = None
        if any(t.round > 1 for turns in debates for t in turns):
            first_round = [
                majority_scores([t for t in turns if t.round == 1], society.task, society.splits.test, rule)
                for turns in debates
            ]
        problems = [p.id for p in society.splits.test]
        runs[name].append(_Run(seed, run_dir, metrics, problems, scores, first_round))
    if engine is not None:
        engine.close()  # a managed server stops with the comparison
    results = method_results(runs)
    write_json(out / "comparison.json", [r.model_dump(mode="json") for r in results])
    write_text(out / "comparison.md", comparison_markdown(results, _validated(cfg.run)))
    return results


@dataclass
class _Run:
    """One finished run of a comparison: its metrics and per-problem scores (per iteration, in problem order)."""

    seed: int
    run_dir: str
    metrics: list[IterationMetrics]
    problem_ids: list[str]
    scores: list[list[float]]
    first_round: list[list[float]] | None = None  # per iteration, round 1's majority (None: one round)


def method_results(runs: dict[str, list[_Run]]) -> list[MethodResult]:
    """The results of every method (``runs``: method -> its runs, one per seed) with their statistics."""
    stacked = {name: _scores(name, method_runs) for name, method_runs in runs.items()}
    first_rounds = {
        name: _scores(name, method_runs, first_round=True)
        for name, method_runs in runs.items()
        if all(r.first_round is not None for r in method_runs)
    }
    results = []
    for name, method_runs in runs.items():
        several = len(method_runs) > 1
        first = method_runs[0]
        iterations = len(first.metrics)
        ci = [accuracy_interval(s) for s in stacked[name]] if several else None
        vs_maft = None
        if "maft" in stacked and name != "maft":
            vs_maft = [
                paired_difference(
                    stacked[name][min(it, iterations - 1)],
                    reference,
                    names=(name, "maft"),
                    iterations=(min(it, iterations - 1), it),
                )
                for it, reference in enumerate(stacked["maft"])
            ]
        start = stacked[name][0]
        vs_iteration_0 = [
            paired_difference(s, start, names=(f"{name} iteration {it}", f"{name} iteration 0"), iterations=(it, 0))
            for it, s in enumerate(stacked[name])
            if it > 0
        ]
        later_rounds = None
        if name in first_rounds:
            later_rounds = [
                paired_difference(s, first, names=(f"{name} final round", f"{name} round 1"), iterations=(it, it))
                for it, (s, first) in enumerate(zip(stacked[name], first_rounds[name], strict=True))
            ]
        results.append(
            MethodResult(
                method=name,
                description=METHODS[name].description,
                run_dir=first.run_dir,
                uses_gold_labels=METHODS[name].uses_gold_labels,
                finetunes=METHODS[name].finetunes,
                accuracy=(
                    [Accuracy(mean=c.mean, se=c.se, n=len(first.problem_ids)) for c in ci]
                    if ci
                    else [m.test.majority for m in first.metrics]
                ),
                compute=[_summed([r.metrics[it].compute for r in method_runs]) for it in range(iterations)],
                diversity=[_mean_diversity([r.metrics[it].diversity for r in method_runs]) for it in range(iterations)],
                seeds=[
                    SeedRun(
                        seed=r.seed,
                        run_dir=r.run_dir,
                        accuracy=[m.test.majority for m in r.metrics],
                        compute=[m.compute for m in r.metrics],
                        diversity=[m.diversity for m in r.metrics],
                    )
                    for r in method_runs
                ],
                accuracy_ci=ci,
                vs_maft=vs_maft,
                vs_iteration_0=vs_iteration_0 or None,
                later_rounds=later_rounds,
            )
        )
    return results


def _scores(name: str, runs: list[_Run], first_round: bool = False) -> list[Scores]:
    """Per iteration: the method's scores over its seeds, of the final round's majority or (``first_round``)
    round 1's (every seed must have run as many iterations)."""
    lengths = {len(r.scores) for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"{name}: its seeds ran different numbers of iterations")
    if first_round and (missing := [r.seed for r in runs if r.first_round is None]):
        raise ValueError(f"{name}: seed {missing[0]} has no round-1 scores (a one-round debate)")
    rows = [(r, (r.first_round or []) if first_round else r.scores) for r in runs]
    return [
        Scores.stack([(r.seed, r.problem_ids, values[it]) for r, values in rows], what=name)
        for it in range(lengths.pop())
    ]


def _summed(computes: list[Compute]) -> Compute:
    if len(computes) == 1:
        return computes[0]
    fields = Compute.model_fields
    return Compute(**{k: sum(getattr(c, k) for c in computes) for k in fields})


def _mean_diversity(values: list[Diversity | None]) -> Diversity | None:
    """The mean of each measure over the seeds (None where a seed lacks it); None if a seed has no diversity."""
    present = [v for v in values if v is not None]
    if len(present) < len(values):
        return None
    if len(values) == 1:
        return values[0]
    out: dict[str, Any] = present[0].model_dump()
    for key, value in out.items():
        if key != "kl_from_base_by_role" and (isinstance(value, float) or (value is None and key != "encoder")):
            column = [getattr(v, key) for v in present]
            out[key] = None if any(x is None for x in column) else float(np.mean(column))
    by_role = [v.kl_from_base_by_role for v in present]
    if all(r is not None for r in by_role):
        roles = [k for k in by_role[0] or {} if all(k in (r or {}) for r in by_role)]
        out["kl_from_base_by_role"] = {k: float(np.mean([(r or {})[k] for r in by_role])) for k in roles}
    else:
        out["kl_from_base_by_role"] = None
    return Diversity.model_validate(out)


COMPARISON_NOTE = (
    "Accuracy: the final round's majority vote on the held-out problems, % ± SE. Iteration 0 is the base model. "
    "Generated tokens count every debate (training and held-out); training examples are summed over the "
    "finetuned models and iterations; wall time is the sum of the run's stages, in seconds. Labels: the answers "
    "the finetuning data was built from (the majority vote, or the gold answers)."
)
ONE_SEED_NOTE = (
    "One seed: ± is the binomial standard error over the held-out problems; the variation from seed to seed is "
    "not measured (maft compare --seeds K measures it)."
)
DIFFERENCE_NOTE = (
    f"Δ vs maft: the method's accuracy minus maft's, in percentage points, paired on the same held-out problems "
    f"(and seeds), with its {LEVEL:.0%} interval from a paired bootstrap ({RESAMPLES} resamples of the problems "
    f"and of the seeds); {EXCLUDES_ZERO} marks an interval that excludes zero. A method without finetuning is "
    "compared at its one iteration."
)


def seeds_note(results: list[MethodResult]) -> str:
    """What a comparison over several seeds shows (its run seeds named)."""
    seeds = [s.seed for s in results[0].seeds]
    return (
        f"{len(seeds)} seeds per method (run seeds {', '.join(map(str, seeds))}), every run on the same training "
        f"and held-out problems. Accuracy: the final round's majority vote on the held-out problems, the mean over "
        f"seeds and problems in %, with its {LEVEL:.0%} interval [low, high] from a bootstrap over problems and "
        f"seeds ({RESAMPLES} resamples; each draws the problems and, independently, the seeds with replacement; "
        "percentile interval). Iteration 0 is the base model. Generated tokens, training examples and wall time "
        "are summed over the seeds and iterations. Labels: the answers the finetuning data was built from (the "
        "majority vote, or the gold answers)."
    )


def seed_count(results: list[MethodResult]) -> int:
    """The number of seeds per method (1 for a comparison.json written before seeds)."""
    return max([len(r.seeds) for r in results] + [1])


def labels(r: MethodResult) -> str:
    return "gold" if r.uses_gold_labels else ("majority" if r.finetunes else MISSING)


def _accuracy_notes(results: list[MethodResult]) -> list[str]:
    if seed_count(results) > 1:
        return [seeds_note(results)]
    return [COMPARISON_NOTE, *([ONE_SEED_NOTE] if any(r.seeds for r in results) else [])]


def _with_differences(results: list[MethodResult]) -> bool:
    return any(r.vs_maft for r in results)


def methods_table(results: list[MethodResult], description: bool = False) -> Table:
    """The Table-1-style comparison, one row per method (``description``: a last column describing it); with
    maft among the methods, each method's final difference to maft."""
    several = seed_count(results) > 1
    differences = _with_differences(results)
    header: list[Column | str] = [
        "method",
        "iter 0 %",
        "final %",
        "best %*",
        *(["Δ final vs maft [95% CI]"] if differences else []),
        "generated tokens",
        "training examples",
        "wall time s",
        Column("labels", "left"),
    ]
    rows = []
    for r in results:
        shown = r.shown
        final = len(shown) - 1
        best = best_iteration(shown)
        rows.append(
            [
                r.method,
                acc(shown[0]),
                at(shown[final], final) if r.finetunes else acc(shown[final]),
                at(shown[best], best) if r.finetunes else MISSING,  # without finetuning there is one iteration
                *([delta(r.vs_maft[-1]) if r.vs_maft else MISSING] if differences else []),
                count(sum(c.generated_tokens for c in r.compute)),
                count(sum(c.train_examples for c in r.compute)),
                secs(sum(c.seconds for c in r.compute)),
                labels(r),
                *([r.description] if description else []),
            ]
        )
    title = (
        f"Accuracy % [95% CI] on held-out problems, {seed_count(results)} seeds (final-round majority vote)"
        if several
        else "Accuracy % ± SE on held-out problems (final-round majority vote)"
    )
    return Table(
        title,
        [*header, *([Column("description", "left")] if description else [])],
        rows,
        notes=[*_accuracy_notes(results), *([DIFFERENCE_NOTE] if differences else []), BEST_NOTE],
        id="comparison",
    )


def accuracy_table(results: list[MethodResult]) -> Table:
    iterations = max(len(r.accuracy) for r in results)
    several = seed_count(results) > 1
    return Table(
        f"Accuracy % [95% CI] per iteration, {seed_count(results)} seeds"
        if several
        else "Accuracy % ± SE per iteration",
        ["method", *(f"iter {it}" for it in range(iterations))],
        [
            [r.method, *(acc(r.shown[it]) if it < len(r.shown) else MISSING for it in range(iterations))]
            for r in results
        ],
        id="accuracy-table",
    )


def _differences(
    title: str, columns: list[str], rows: list[tuple[str, list[Difference]]], notes: list[str], id: str
) -> Table | None:
    """A table of paired differences, one row per method (its name and its differences, one per column; a row with
    fewer is padded), None without rows."""
    if not rows:
        return None
    return Table(
        title,
        ["method", *columns],
        [[name, *(delta(d) for d in ds), *[MISSING] * (len(columns) - len(ds))] for name, ds in rows],
        notes=notes,
        id=id,
    )


def _width(rows: list[tuple[str, list[Difference]]]) -> int:
    return max((len(ds) for _, ds in rows), default=0)


def difference_table(results: list[MethodResult]) -> Table | None:
    """Each method minus maft per iteration of maft, paired, with its interval (None without maft)."""
    rows = [(r.method, r.vs_maft) for r in results if r.vs_maft]
    return _differences(
        "Δ vs maft per iteration, percentage points [95% CI] (paired on the same problems and seeds)",
        [f"iter {it}" for it in range(_width(rows))],
        rows,
        [
            DIFFERENCE_NOTE,
            "Each column compares maft at that iteration with the method at the same iteration, or at its last "
            "one if it has fewer (a method without finetuning: its base-model result in every column).",
        ],
        "difference-table",
    )


WITHIN_NOTE = (
    f"Paired on the same held-out problems (and seeds) within the method, with its {LEVEL:.0%} interval from a paired "
    f"bootstrap ({RESAMPLES} resamples of the problems and of the seeds); {EXCLUDES_ZERO} marks an interval that "
    "excludes zero."
)


def iterations_table(results: list[MethodResult]) -> Table | None:
    """Each finetuning method at each iteration minus itself at iteration 0 (None: no method finetuned)."""
    rows = [(r.method, r.vs_iteration_0) for r in results if r.vs_iteration_0]
    return _differences(
        "What finetuning changed: each iteration minus iteration 0, percentage points [95% CI]",
        [f"iter {it} - iter 0" for it in range(1, _width(rows) + 1)],
        rows,
        [WITHIN_NOTE],
        "iterations-table",
    )


def rounds_table(results: list[MethodResult]) -> Table | None:
    """Per iteration, each debating method's final-round majority minus its round-1 majority (None: none debated
    over more than one round)."""
    rows = [(r.method, r.later_rounds) for r in results if r.later_rounds]
    return _differences(
        "What the later debate rounds add: the final round's majority minus round 1's, percentage points [95% CI]",
        [f"iter {it}" for it in range(_width(rows))],
        rows,
        [
            WITHIN_NOTE,
            "Round 1: each agent's first answer, before it sees the others' (the generation models; the final round "
            "is the critics').",
        ],
        "rounds-table",
    )


def diversity_tables(results: list[MethodResult]) -> list[Table]:
    tables = diversity([(r.method, r.diversity) for r in results])
    if seed_count(results) > 1 and tables:
        for t in tables:
            t.notes = [*t.notes, f"Each measure: the mean over the {seed_count(results)} seeds."]
    return tables


def comparison_table(results: list[MethodResult], title: str = "") -> rich.table.Table:
    """The console's table at the end of ``maft compare``: :func:`methods_table`."""
    return rich_table(methods_table(results), title=title or None)


def comparison_tables(results: list[MethodResult], description: bool = False) -> list[Table]:
    """The accuracy tables of comparison.md and of the report, in order (the report adds the descriptions)."""
    optional = [difference_table(results), iterations_table(results), rounds_table(results)]
    return [
        methods_table(results, description=description),
        accuracy_table(results),
        *(t for t in optional if t is not None),
    ]


def comparison_markdown(results: list[MethodResult], config: RunConfig) -> str:
    methods = "## Methods\n\n" + "".join(f"- **{md_escape(r.method)}**: {md_escape(r.description)}\n" for r in results)
    return "\n".join(
        [
            f"# maft compare: {title(config)}\n",
            *map(markdown, comparison_tables(results)),
            methods,
            *map(markdown, diversity_tables(results)),
        ]
    )
