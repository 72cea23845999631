"""Zero-shot transfer (SPEC section 5): a finished run's agents debate the held-out problems of another task.

Results land in ``<run>/transfer/<task>/iter_<l>/`` (debate_test.jsonl, metrics.json), one folder per
evaluated iteration; iteration 0 (the base model) is the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from maft.debate import debate
from maft.metrics import DebateMetrics, debate_metrics
from maft.store import RunStore, write_json, write_jsonl
from maft.tasks import get_task


def transfer(
    run: Path,
    task_name: str,
    *,
    options: dict | None = None,
    n: int = 300,
    iterations: Sequence[int] | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> dict[int, DebateMetrics]:
    """Debate ``n`` test problems of ``task_name`` with the run's agents of each iteration in ``iterations``
    (default: 0 and the last finished one); returns held-out metrics per iteration. Finished ones are kept."""
    from maft.society import Society

    console = console or Console()
    store = RunStore.open(run)
    cfg = store.config
    finished = [l for l in range(cfg.iterations + 1) if store.done(f"iter_{l}/metrics")]
    if not finished:
        raise ValueError(f"{store.root} has no finished iteration yet; run or resume it first")
    wanted = list(iterations) if iterations else sorted({0, finished[-1]})
    missing = [l for l in wanted if l not in finished]
    if missing:
        raise ValueError(f"iteration(s) {missing} of {store.root} are not finished (finished: {finished})")
    task = get_task(task_name, **(options or {}))
    problems = task.splits(0, n, seed=cfg.seed).test
    if len(problems) < n:
        raise ValueError(f"task {task_name!r} has {len(problems)} test problems, fewer than n={n}")
    society = Society(store, console=console, progress=progress)
    out: dict[int, DebateMetrics] = {}
    for l in wanted:
        d = store.root / "transfer" / task_name / f"iter_{l}"
        if (d / "metrics.json").is_file() and (d / "debate_test.jsonl").is_file():
            metrics = DebateMetrics.model_validate_json((d / "metrics.json").read_text())
            if metrics.problems == n:
                console.print(f"[dim]transfer to {task_name}, iteration {l}: finished earlier, kept[/dim]")
                out[l] = metrics
                continue
        turns = debate(
            society.engine,
            task,
            problems,
            agents=cfg.debate.agents,
            rounds=cfg.debate.rounds,
            summarizer=cfg.debate.summarizer,
            sampling=society._sampling(),
            adapter_for=society._use_agents(l),
            seed=cfg.seed * 1000,
            progress=f"transfer {task_name} iter_{l}" if progress else False,
        )
        write_jsonl(d / "debate_test.jsonl", turns)
        out[l] = debate_metrics(turns, task, problems)
        write_json(d / "metrics.json", out[l].model_dump(mode="json"))
    return out

