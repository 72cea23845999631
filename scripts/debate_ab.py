"""Time a run's held-out debate of one iteration in this process, two ways interleaved, and check that both give
the same texts: the in-process engine as it is (``new``) against one change undone (``old``).

    python scripts/debate_ab.py RUN_DIR ITERATION {prefix,top-p,select} [ROUNDS]

RUN_DIR is a finished run (``maft run``); the debate is the one the loop ran at ITERATION (its agents, problems
and seed). What ``old`` undoes:

- ``prefix``: the prefix cache (``execution.prefix_cache_gb`` 0 against 2);
- ``top-p``: the partial top-k (transformers' ``TopPLogitsWarper`` finds the nucleus by sorting every token);
- ``select``: the in-place batch selection (transformers' ``DynamicLayer.batch_select_indices``, a copy).

ROUNDS runs (default 3) of each, alternating, ``new`` first. Prints each run's seconds, then how many of the
debate's texts are the same.
"""

import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

import maft.engines.hf as hf
import maft.engines.kv_cache as kv_cache
from maft.agents import agents_at
from maft.config import RunConfig
from maft.debate.protocol import run_debate
from maft.engines.prefix_cache import PrefixStore
from maft.tasks import get_task


def hf_nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    return torch.isfinite(TopPLogitsWarper(top_p)(None, scores))


def main(run: Path, iteration: int, change: str, rounds: int) -> None:
    config = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    task = get_task(config.task.name, **config.task.options)
    problems = task.splits(config.task.n_train, config.task.n_test, config.seed).test
    engine = hf.HFEngine(config.model.name)
    agents = agents_at(config, run, iteration)
    engine.serve(agents)
    new_nucleus, new_select = hf.nucleus, kv_cache.GrowingLayer.batch_select_indices
    texts: dict[str, list[str]] = {}
    for variant in ["new", "old"] * rounds:
        old = variant == "old"
        engine.prefixes = None if old and change == "prefix" else PrefixStore(2 << 30)
        hf.nucleus = hf_nucleus if old and change == "top-p" else new_nucleus
        kv_cache.GrowingLayer.batch_select_indices = (
            DynamicLayer.batch_select_indices if old and change == "select" else new_select
        )
        start = time.perf_counter()
        turns = run_debate(engine, config, task, problems, agents, seed=config.seed * 1000, progress=False)
        print(f"{variant} {time.perf_counter() - start:.2f} s", flush=True)
        texts.setdefault(variant, [t.response for t in turns])
    same = sum(a == b for a, b in zip(texts["new"], texts["old"]))
    print(f"same texts: {same} of {len(texts['new'])}")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[3] not in ("prefix", "top-p", "select"):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) == 5 else 3)
