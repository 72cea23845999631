"""Run an iteration's 2N finetuning jobs: one after another in this process, all together in this process
(``execution.concurrent_training``), or spread over Ray.

Each job reads its role's data file and trains into its own directory; the caller is told as each job
finishes (``on_done``), so a crash loses only the jobs still running. Trained together
(:mod:`maft.training.concurrent`), the jobs share one copy of the base model and one training loop, and each
is reported as soon as its role has taken its last step. With Ray, every job is a task
that asks for ``gpus_per_job`` GPUs and ``cpus_per_job`` CPUs, so the jobs of an iteration run in
parallel across the GPUs (and nodes) of a cluster. Trained together, the roles are split into as many groups as
Ray can run such tasks at once (per live node, as many as its GPUs over ``gpus_per_job`` and its CPUs over
``cpus_per_job`` allow; :func:`ray_slots`), balanced by the size of their data (:func:`balanced_groups`): one
concurrent job per GPU group (or CPU slot), each a Ray generator task that streams each role's result to the
driver as the role is saved, so that there too a crash loses only the roles still training. On Ray, a failing
task (a job, or a group) does not stop the others: the first failure is raised once they have all ended,
with a note naming what each failure left untrained (:func:`raise_failures`); the driver stopping (an
error of its own, Ctrl-C) cancels them all. The run directory (an absolute path) and the base
model must be reachable from every node, and the driver's generation engine keeps the GPU it holds.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from maft.config import ExecutionConfig
from maft.training.job import OnDone, TrainJob, finetune_job
from maft.training.sft import StepCallback, TrainResult


def run_job(job: TrainJob, on_step: StepCallback | None = None, threads: int | None = None) -> TrainResult:
    """Train one role (in whatever process this is called; in ``job.processes`` processes it launches)."""
    if job.processes > 1:
        from maft.training.distributed import launch

        return launch(job, job.processes, on_step, threads)
    from maft.data.agent_data import Example
    from maft.store import read_jsonl

    if threads:
        import torch

        torch.set_num_threads(threads)
    return finetune_job(job, read_jsonl(job.data, Example), on_step=on_step)


def run_local(
    jobs: Sequence[TrainJob], on_done: OnDone, on_step: Callable[[TrainJob], StepCallback] | None = None
) -> None:
    for job in jobs:
        on_done(job, run_job(job, on_step(job) if on_step else None))


def run_together(
    jobs: Sequence[TrainJob],
    on_done: OnDone,
    on_step: Callable[[TrainJob], StepCallback] | None = None,
    threads: int | None = None,
) -> None:
    """Train the jobs together in this process (:mod:`maft.training.concurrent`); each is reported as its role
    finishes. The jobs must share their base model, ``train:`` settings and device."""
    from maft.data.agent_data import Example
    from maft.store import read_jsonl
    from maft.training.concurrent import RoleRun, finetune_together

    if not jobs:
        return
    if threads:
        import torch

        torch.set_num_threads(threads)
    first = jobs[0]
    if any((j.base_model, j.config, j.device) != (first.base_model, first.config, first.device) for j in jobs):
        raise ValueError("jobs trained together must share their base model, train: settings and device")
    by_role = {job.role: job for job in jobs}
    bars = {job.role: on_step(job) for job in jobs} if on_step else {}
    finetune_together(
        first.base_model,
        [RoleRun(j.role, read_jsonl(j.data, Example), j.out_dir, j.init_from, j.seed, j.tracking) for j in jobs],
        first.config,
        device=first.device,
        on_step=(lambda role, steps, total: bars[role](steps, total)) if bars else None,
        on_done=lambda role, result: on_done(by_role[role], result),
        activation_checkpointing=first.activation_checkpointing,
    )


def train_together(jobs: Sequence[TrainJob], threads: int | None = None) -> Iterator[tuple[str, TrainResult]]:
    """:func:`run_together` as a generator of ``(role, result)``, each yielded as its role is saved (what a Ray
    generator task streams to the driver); the training runs in a thread of this process, and its error, if
    any, is raised here after the roles that finished."""
    results: queue.Queue[tuple[str, TrainResult] | BaseException | None] = queue.Queue()

    def train() -> None:
        try:
            run_together(jobs, lambda job, result: results.put((job.role, result)), threads=threads)
            results.put(None)
        except BaseException as e:  # handed to the generator, raised there
            results.put(e)

    worker = threading.Thread(target=train, name="maft-train-together", daemon=True)
    worker.start()
    while (item := results.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    worker.join()


def ray_slots(gpus: float, cpus: float) -> int:
    """How many tasks of ``gpus`` GPUs and ``cpus`` CPUs each the Ray cluster's live nodes can run at once: per
    node, as many as both its GPUs and its CPUs allow (a task does not span nodes), summed; at least 1."""
    import ray

    def fit(have: float, each: float) -> float:
        return math.floor(have / each + 1e-6) if each > 0 else math.inf  # 1.0 // 0.2 is 4.0 in floating point

    slots = 0.0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            slots += min(fit(have.get("GPU", 0.0), gpus), fit(have.get("CPU", 0.0), cpus))
    return max(1, int(min(slots, 1 << 20)))


def balanced_groups(jobs: Sequence[TrainJob], groups: int) -> list[list[TrainJob]]:
    """``jobs`` in at most ``groups`` non-empty groups of about equal work: the largest data file (bytes, about
    its tokens) first, each to the group with the least so far (of equal loads, the one with the fewest jobs);
    each group in the jobs' own order."""

    def size(job: TrainJob) -> int:
        return job.data.stat().st_size if job.data.is_file() else 0

    bins: list[list[int]] = [[] for _ in range(max(1, min(groups, len(jobs))))]
    load = [0] * len(bins)
    for k in sorted(range(len(jobs)), key=lambda k: size(jobs[k]), reverse=True):
        i = min(range(len(bins)), key=lambda i: (load[i], len(bins[i])))
        bins[i].append(k)
        load[i] += size(jobs[k])
    return [[jobs[k] for k in sorted(b)] for b in bins if b]


def run_ray(jobs: Sequence[TrainJob], on_done: OnDone, config: ExecutionConfig) -> None:
    """Submit every job to Ray at once; report each as it finishes (with ``config.concurrent_training``, the jobs
    in groups, one task per group, as many as Ray can run at once, each streaming its roles' results as they are
    saved)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("execution.scheduler=ray needs Ray: pip install 'maft[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    threads = max(1, int(config.cpus_per_job))
    gpus = config.gpus_per_job
    if gpus is None:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    if config.concurrent_training:
        _run_ray_together(jobs, on_done, config, gpus, threads)
        return
    task = ray.remote(num_gpus=gpus, num_cpus=config.cpus_per_job)(run_job)
    by_role = {job.role: job for job in jobs}
    refs = {task.remote(job, None, threads): [job.role] for job in jobs}
    # a task returns its one role's result; asked again once it has reported it, it has none left
    _drive(refs, lambda ref: (refs[ref][0], ray.get(ref)) if refs[ref] else None, by_role, on_done)


def _run_ray_together(
    jobs: Sequence[TrainJob], on_done: OnDone, config: ExecutionConfig, gpus: float, threads: int
) -> None:
    """One generator task per group of jobs (:func:`balanced_groups` over :func:`ray_slots`), each role reported
    as its group streams it (:func:`_drive`)."""
    import ray

    # no retry: a retried task would train and report again the roles already recorded (resume redoes the rest)
    together = ray.remote(num_gpus=gpus, num_cpus=config.cpus_per_job, max_retries=0)(train_together)
    groups = balanced_groups(jobs, ray_slots(gpus, config.cpus_per_job))
    streams = {together.remote(group, threads): [job.role for job in group] for group in groups}

    def next_result(stream):
        try:
            return ray.get(next(stream))
        except StopIteration:
            return None

    _drive(streams, next_result, {job.role: job for job in jobs}, on_done)


def _drive(
    tasks: dict[Any, list[str]],
    next_result: Callable[[Any], tuple[str, TrainResult] | None],
    by_role: dict[str, TrainJob],
    on_done: OnDone,
) -> None:
    """Report Ray tasks' results as they come: ``tasks`` maps each running task to the roles it has yet to report;
    ``next_result(task)``, once Ray says the task is ready, gives its next ``(role, result)``, None when it has
    no more, or raises the task's error. A failing task ends without its remaining roles while the others go on,
    and once all have ended the failures are raised (:func:`raise_failures`). The driver stopping (an error of its
    own, Ctrl-C) cancels them all, its error noting the failures so far."""
    import ray

    failures: list[tuple[list[str], Exception]] = []
    try:
        while tasks:
            ready, _ = ray.wait(list(tasks), num_returns=1)
            for task in ready:
                try:
                    got = next_result(task)
                except Exception as e:  # this task failed: the others train on
                    failures.append((tasks.pop(task), e))
                    continue
                if got is None:
                    del tasks[task]
                    continue
                role, result = got
                tasks[task].remove(role)
                on_done(by_role[role], result)
    except BaseException as e:
        for task in tasks:
            ray.cancel(task, force=True)
        add_failure_notes(e, failures, first_is_this=False)
        raise
    raise_failures(failures)


def raise_failures(failures: Sequence[tuple[Sequence[str], BaseException]]) -> None:
    """Once every Ray task has ended: raise the first failure, with notes (:func:`add_failure_notes`) naming the
    roles each failure left untrained and the first line of every other failure's error, so that none goes unsaid
    (the roles that finished are recorded; a resumed run trains the rest). Nothing when nothing failed."""
    if failures:
        first = failures[0][1]
        add_failure_notes(first, failures, first_is_this=True)
        raise first


def add_failure_notes(
    error: BaseException, failures: Sequence[tuple[Sequence[str], BaseException]], *, first_is_this: bool
) -> None:
    """Note on ``error`` what each of ``failures`` (the roles it left untrained, its error) cost; the first is
    ``error`` itself when ``first_is_this``. Notes go to ``__notes__`` (set directly where Python lacks
    ``add_note``: 3.10), which tracebacks (3.11+) and ``maft run``'s error line show."""
    lines = []
    for n, (roles, failed) in enumerate(failures):
        untrained = ", ".join(roles) or "nothing (it had reported every role)"
        if n == 0 and first_is_this:
            lines.append(f"this error left untrained: {untrained}")
            continue
        cause = getattr(failed, "cause", None) or failed  # a Ray task's error wraps the task's own
        why = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
        lines.append(f"another Ray task failed too, leaving untrained {untrained}: {why}")
    if lines:
        error.__notes__ = [*getattr(error, "__notes__", []), *lines]
