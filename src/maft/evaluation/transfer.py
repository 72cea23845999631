"""Zero-shot transfer (SPEC section 5): a finished run's agents debate the held-out problems of another task.

Results land in ``<run>/transfer/<task>[-<options hash>]/iter_<l>/`` (debate_test.jsonl, metrics.json,
spec.json: task, options, problem ids, a digest of the problems (questions, gold answers, graders) and the
agents' weights' fingerprints), one folder per evaluated iteration; iteration 0 (the base model) is the reference.
A folder is reused only for the same task, options, problems and agents: a task file whose answers were corrected
since is graded again. Only iterations whose agents the run still vouches for are debated: one whose training
stages the run must redo (their saved agents changed or went missing) is refused until the run is resumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from maft.agents import agents_at, fingerprint, trained_roles
from maft.checks import check_device
from maft.debate.protocol import run_debate
from maft.debate.transcript import Turn
from maft.debate.voting import VoteRule
from maft.evaluation.metrics import DebateMetrics, debate_metrics
from maft.serving import check_serving, make_engine
from maft.store import RunStore, atomic_dir, read_jsonl, write_json, write_jsonl
from maft.tasks import Task, get_task

if TYPE_CHECKING:
    from maft.config import RunConfig
    from maft.tasks import Problem


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
    console = console or Console()

    def say(message: str) -> None:  # a server's or the run directory's message: text, never markup
        console.print(message, markup=False, highlight=False)

    store = RunStore.open(run, say=say)
    cfg = store.config
    finished = [it for it in range(cfg.iterations + 1) if store.done(f"iter_{it}/metrics")]
    if not finished:
        raise ValueError(f"{store.root} has no finished iteration yet; run or resume it first")
    wanted = list(iterations) if iterations else sorted({0, finished[-1]})
    missing = [it for it in wanted if it not in finished]
    if missing:
        raise ValueError(f"iteration(s) {missing} of {store.root} are not finished (finished: {finished})")
    stale = [it for it in wanted if it and not all(store.done(f"iter_{it}/train/{r}") for r in trained_roles(cfg))]
    if stale:
        raise ValueError(
            f"the agents of iteration(s) {stale} of {store.root} changed or went missing since they were trained "
            f"(their training stages are marked to be redone): resume the run first (maft run --resume {store.root})"
        )
    task = get_task(task_name, **(options or {}))
    problems = task.splits(0, n, seed=cfg.split_seed).test  # the same problems for every seed of a comparison
    if len(problems) < n:
        raise ValueError(f"task {task_name!r} has {len(problems)} test problems, fewer than n={n}")
    trained = _trained_on(cfg, task_name, problems)
    if trained:
        raise ValueError(
            f"{trained} of the {n} problems of {task_name!r} are the run's training problems (the run trained on "
            f"{cfg.task.n_train} problems of this task and held out {cfg.task.n_test}): use --n {cfg.task.n_test} or "
            "fewer, or another task"
        )
    if cfg.model.engine == "hf":  # the run's device may be missing here (another machine): one line, not a crash
        check_device(cfg.execution.device)
    check_serving(cfg)
    engine = None
    where = transfer_dir(store.root, task_name, options or {})
    spec = {
        "task": task_name,
        "options": options or {},
        "n": n,
        "problems": [p.id for p in problems],
        "problems_digest": _digest(problems),
    }
    out: dict[int, DebateMetrics] = {}
    try:
        for it in wanted:
            d = where / f"iter_{it}"
            agents = agents_at(cfg, store.root, it)
            # the agents' weights too: a role retrained since (a resumed run) makes the folder stale
            spec_it = {**spec, "agents": {role: fingerprint(path) for role, path in sorted(agents.models.items())}}
            if (kept := _finished(d, spec_it, task, problems, VoteRule.of(cfg))) is not None:
                console.print(f"[dim]transfer to {escape(where.name)}, iteration {it}: finished earlier, kept[/dim]")
                out[it] = kept
                continue
            engine = engine or make_engine(cfg, store.root, say=say)
            turns = run_debate(
                engine,
                cfg,
                task,
                problems,
                agents,
                seed=cfg.seed * 1000,
                progress=f"transfer {escape(task_name)} iter_{it}" if progress else False,
            )
            out[it] = debate_metrics(turns, task, problems, VoteRule.of(cfg))
            with atomic_dir(d) as tmp:
                write_jsonl(tmp / "debate_test.jsonl", turns)
                write_json(tmp / "metrics.json", out[it].model_dump(mode="json"))
                write_json(tmp / "spec.json", spec_it)
    finally:
        if engine is not None:  # a managed server stops with the transfer
            engine.close()
    return out


def _finished(d: Path, spec: dict, task: Task, problems: Sequence[Problem], rule: VoteRule) -> DebateMetrics | None:
    """The metrics ``d`` recorded when it holds this transfer, finished; else None. A folder of an older maft has no
    problems digest in its spec.json: it counts when the rest matches, its debate asked today's questions, and
    graded again against today's answers it gives the metrics it recorded (its spec is then brought up to date)."""
    if not ((d / "metrics.json").is_file() and (d / "spec.json").is_file()):
        return None
    recorded = json.loads((d / "spec.json").read_text())
    if recorded == spec:
        return DebateMetrics.model_validate_json((d / "metrics.json").read_text())
    if "problems_digest" in recorded or recorded != {k: v for k, v in spec.items() if k != "problems_digest"}:
        return None
    gold = {p.id: p for p in problems}
    try:
        metrics = DebateMetrics.model_validate_json((d / "metrics.json").read_text())
        turns = read_jsonl(d / "debate_test.jsonl", Turn)
        if any(t.messages[0]["content"] != task.prompt(gold[t.problem_id]) for t in turns):
            return None  # a question edited since, under the same id
        regraded = [t.model_copy(update={"correct": task.is_correct(t.answer, gold[t.problem_id])}) for t in turns]
        if debate_metrics(regraded, task, problems, rule) != metrics:
            return None
    except (OSError, ValueError, KeyError):
        return None
    write_json(d / "spec.json", spec)
    return metrics


def _trained_on(cfg: RunConfig, task_name: str, problems: Sequence[Problem]) -> int:
    """How many of ``problems`` the run trained on (their questions among its training problems' questions): a
    transfer to the run's own task must not grade agents on what they were finetuned on."""
    if task_name != cfg.task.name or cfg.iterations == 0:
        return 0
    own = get_task(cfg.task.name, **cfg.task.options)
    train = {p.question for p in own.splits(cfg.task.n_train, cfg.task.n_test, seed=cfg.split_seed).train}
    return sum(p.question in train for p in problems)


def _digest(problems: Sequence[Problem]) -> str:
    """What grading reads of the problems: their questions, gold answers and metadata (a row's grader)."""
    blob = json.dumps([[p.id, p.question, p.answer, p.meta] for p in problems], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def transfer_dir(run: Path, task_name: str, options: dict) -> Path:
    """``<run>/transfer/<task>``, or ``<task>-<hash of the options>`` when the task has options."""
    if not options:
        return Path(run) / "transfer" / task_name
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return Path(run) / "transfer" / f"{task_name}-{digest}"
