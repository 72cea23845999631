"""Paired statistics over problems and seeds: the intervals of ``maft compare``.

The data of one method at one iteration is a :class:`Scores`: ``values[k, i]`` is 1.0 when the final round's
majority vote of seed ``seeds[k]``'s run was right on problem ``problem_ids[i]``, else 0.0 (the per-problem
scores of :func:`maft.evaluation.metrics.majority_scores`, whose mean is the run's reported accuracy). Every
seed of a method, and every method of a comparison, must hold the same problems: a comparison pins
``task.split_seed``, and pairing refuses scores whose problem ids (or seeds) differ.

The bootstrap (:func:`bootstrap`): each of ``RESAMPLES`` (2000) resamples draws the n problems with replacement
and, independently, the K seeds with replacement (a two-way bootstrap: both the problems and the seeds are
random draws), and takes the mean over the drawn (seed, problem) cells, each cell counted as often as its seed
times its problem was drawn. The generator is ``numpy.random.default_rng(BOOTSTRAP_SEED)``, fresh for every
call, so an interval depends on its data alone, and two methods with as many seeds and problems are resampled
with the same draws. The 95% interval is the percentile interval: the 2.5th and 97.5th percentiles of the
resampled means (numpy's default, linear, quantile); ``se`` is their standard deviation (ddof 1). With one
seed only the problems vary.

  accuracy_interval(s)     the mean over seeds and problems with its bootstrap interval (used with K > 1 seeds;
                           one seed keeps the binomial standard error of :func:`maft.evaluation.metrics.accuracy`)
  paired_difference(a, b)  a - b on the same problems and seeds: D[k, i] = a[k, i] - b[k, i], its mean and the
                           bootstrap of D (each resample draws the same problems and seeds for both methods).
                           Identical scores give exactly 0 [0, 0]; a difference whose interval lies on one side
                           of zero ``excludes_zero``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, computed_field

RESAMPLES = 2000
BOOTSTRAP_SEED = 20_240_613
LEVEL = 0.95
_CHUNK = 250  # resamples computed at once (memory: _CHUNK x problems floats)


class Interval(BaseModel):
    """A mean with its bootstrap interval (``low``, ``high``: fractions, as ``mean``) and standard error."""

    mean: float
    low: float
    high: float
    se: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


class Difference(Interval):
    """A method's accuracy at ``iteration`` minus the reference's at ``reference_iteration``, paired: the reference
    is maft, or the method itself at another iteration or round (:mod:`maft.compare`)."""

    iteration: int
    reference_iteration: int


class UnpairedError(ValueError):
    """Scores that cannot be paired: other problems, or other seeds."""


@dataclass(frozen=True)
class Scores:
    """Per-problem correctness of one method at one iteration: ``values[k, i]`` for ``seeds[k]`` and
    ``problem_ids[i]`` (K x n)."""

    problem_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.seeds), len(self.problem_ids)):
            raise ValueError(
                f"scores of shape {self.values.shape} for {len(self.seeds)} seeds x {len(self.problem_ids)} problems"
            )
        if not self.problem_ids or not self.seeds:
            raise ValueError("scores of no problems or no seeds")

    @classmethod
    def stack(cls, runs: Sequence[tuple[int, Sequence[str], Sequence[float]]], what: str = "") -> Scores:
        """One row per run ``(seed, problem ids, scores)``; every run must hold the same problems (in any order:
        rows are aligned to the first run's)."""
        if not runs:
            raise ValueError(f"{what or 'scores'}: no runs")
        seed0, ids0, _ = runs[0]
        rows = []
        for seed, ids, values in runs:
            if len(ids) != len(values):
                raise ValueError(f"{what}: seed {seed} has {len(values)} scores for {len(ids)} problems")
            _same_problems(ids0, ids, f"{what} seed {seed0}", f"{what} seed {seed}")
            by_id = dict(zip(ids, values))
            rows.append([float(by_id[p]) for p in ids0])
        seeds = tuple(seed for seed, _, _ in runs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{what}: seeds {list(seeds)} repeat")
        return cls(tuple(ids0), seeds, np.array(rows, dtype=float))

    @property
    def mean(self) -> float:
        return float(self.values.mean())


def _same_problems(a: Sequence[str], b: Sequence[str], name_a: str, name_b: str) -> None:
    if len(set(a)) != len(a) or len(set(b)) != len(b):
        raise UnpairedError(f"{name_a if len(set(a)) != len(a) else name_b}: a problem id appears twice")
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        example = f"{only_a[0]!r} only in {name_a}" if only_a else f"{only_b[0]!r} only in {name_b}"
        raise UnpairedError(
            f"cannot pair {name_a} with {name_b}: their held-out problems differ ({len(a)} and {len(b)} problems, "
            f"{len(set(a) & set(b))} shared; e.g. {example}); a paired comparison needs the same problems "
            "(the same task, task.n_test and task.split_seed)"
        )


def bootstrap(values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``resamples`` means of ``values`` (K seeds x n problems), each over n problems and K seeds drawn with
    replacement, independently (see the module docstring)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"bootstrap of a K x n matrix with K, n >= 1, got shape {values.shape}")
    k, n = values.shape
    rng = np.random.default_rng(seed)
    seed_counts = rng.multinomial(k, np.full(k, 1 / k), size=resamples).astype(float)  # resamples x K
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        problem_counts = rng.multinomial(n, np.full(n, 1 / n), size=stop - start)  # chunk x n
        out[start:stop] = np.einsum("bn,bn->b", seed_counts[start:stop] @ values, problem_counts) / (k * n)
    return out


def _interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float, float, float]:
    means = bootstrap(values, resamples, seed)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(values.mean()), float(low), float(high), float(means.std(ddof=1))


def accuracy_interval(scores: Scores, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean accuracy over seeds and problems with its 95% bootstrap interval."""
    mean, low, high, se = _interval(scores.values, resamples, seed)
    return Interval(mean=mean, low=low, high=high, se=se)


def paired_difference(
    a: Scores,
    b: Scores,
    *,
    names: tuple[str, str] = ("the method", "the reference"),
    iterations: tuple[int, int] = (0, 0),
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Difference:
    """``a - b`` per problem and seed, with its 95% paired bootstrap interval. ``names`` name the two in the
    error raised when they hold other problems or seeds; ``iterations`` are recorded in the result."""
    _same_problems(a.problem_ids, b.problem_ids, *names)
    if sorted(a.seeds) != sorted(b.seeds):
        raise UnpairedError(f"cannot pair {names[0]} (seeds {list(a.seeds)}) with {names[1]} (seeds {list(b.seeds)})")
    column = {p: i for i, p in enumerate(b.problem_ids)}
    aligned = b.values[[b.seeds.index(s) for s in a.seeds]][:, [column[p] for p in a.problem_ids]]
    diff = a.values - aligned
    mean, low, high, se = _interval(diff, resamples, seed)
    return Difference(mean=mean, low=low, high=high, se=se, iteration=iterations[0], reference_iteration=iterations[1])
