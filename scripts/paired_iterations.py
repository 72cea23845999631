"""Paired differences within one method of a seeded ``maft compare`` (docs/experiments.md, experiment 3).

    python scripts/paired_iterations.py runs/iterations maft

prints, with the 95% paired bootstrap intervals of ``maft.evaluation.statistics`` over problems and seeds:
the method's held-out accuracy at each iteration minus iteration 0 and minus iteration 1, and, per
iteration, the final round's majority minus the same agents' round-1 majority (what the critic round adds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from maft.config import load_config
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule
from maft.evaluation.metrics import majority_scores
from maft.evaluation.statistics import Scores, paired_difference
from maft.loop import task_splits
from maft.store import read_jsonl


def scores(method_dir: Path, last_round: int | None = None) -> list[Scores]:
    """Per iteration: the stacked per-problem scores of every ``seed_<s>`` run (turns up to ``last_round``)."""
    per_iteration: dict[int, list] = {}
    for root in sorted(method_dir.glob("seed_*")):
        config = load_config(root / "config.yaml")  # read only: nothing in the run directory is written
        task, splits = task_splits(config)
        test = splits.test
        rule = VoteRule.of(config)
        for it in range(config.iterations + 1):
            turns = read_jsonl(root / f"iter_{it}" / "debate_test.jsonl", Turn)
            if last_round is not None:
                turns = [t for t in turns if t.round <= last_round]
            kept = majority_scores(turns, task, test, rule)
            per_iteration.setdefault(it, []).append((int(root.name.removeprefix("seed_")), [p.id for p in test], kept))
    return [Scores.stack(per_iteration[it], what=method_dir.name) for it in sorted(per_iteration)]


def main(out: str, method: str) -> None:
    final, first_round = scores(Path(out) / method), scores(Path(out) / method, last_round=1)
    for it in range(1, len(final)):
        print(f"iteration {it} - iteration 0: {paired_difference(final[it], final[0])}")
        if it > 1:
            print(f"iteration {it} - iteration 1: {paired_difference(final[it], final[1])}")
    for it, (f, r) in enumerate(zip(final, first_round)):
        print(f"iteration {it}: final-round majority - round-1 majority: {paired_difference(f, r)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/paired_iterations.py COMPARISON_DIR METHOD  (e.g. runs/iterations maft)")
    main(*sys.argv[1:3])
