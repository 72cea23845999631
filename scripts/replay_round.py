"""Replay one debate round of a finished run through the in-process engine, with and without segmented decoding:
tokens/s each way, and whether every text is the same.

    python scripts/replay_round.py RUN_DIR [ITERATION] [ROUND] [REQUESTS]     # defaults: 2 2 300

It loads the agents that iteration's held-out debate used (``iter_<l>/agents``, the base model at iteration 0),
rebuilds the requests of that round from ``iter_<l>/debate_test.jsonl`` (messages, adapter, the run's sampling
settings), and generates them with ``HFEngine.SEGMENT`` at 16 (the default: ended rows leave the batch every 16
tokens) and at 10,000 (one ``generate`` call per batch, every row kept to the longest's end), in that order,
once each. A measurement for docs/bench-generate.md, not a test (tests/test_kv_cache.py holds the equality).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from maft.config import load_config
from maft.engines.base import Request, Sampling
from maft.engines.hf import HFEngine


def main() -> None:
    run = Path(sys.argv[1])
    given = [int(a) for a in sys.argv[2:5]]
    iteration, round_, n = given + [2, 2, 300][len(given) :]
    cfg = load_config(run / "config.yaml")
    rows = [json.loads(line) for line in open(run / f"iter_{iteration}/debate_test.jsonl")]
    rows = [r for r in rows if r["round"] == round_][:n]
    engine = HFEngine(batch_size=cfg.execution.generation_batch_size)
    for adapter in sorted({r["adapter"] for r in rows if r["adapter"]}):
        engine.load_agent(adapter, run / f"iter_{iteration}/agents" / adapter)
    d = cfg.debate
    sampling = Sampling(temperature=d.temperature, top_p=d.top_p, max_new_tokens=d.max_new_tokens)
    requests = [Request(r["messages"], r["adapter"], sampling) for r in rows]
    texts = None
    for segment in (16, 10_000):
        engine.SEGMENT = segment
        start = time.perf_counter()
        out = engine.generate(requests, seed=cfg.seed)
        seconds = time.perf_counter() - start
        tokens = sum(g.completion_tokens for g in out)
        same = "" if texts is None else f", same texts {sum(a == g.text for a, g in zip(texts, out))}/{len(out)}"
        rate = f"{tokens} tokens, {seconds:.1f} s, {tokens / seconds:.0f} tokens/s"
        print(f"segment {segment}: {len(out)} requests, {rate}{same}")
        texts = texts or [g.text for g in out]


if __name__ == "__main__":
    main()
