"""Experiment tracking (``execution.report_to``): the trainers' losses and the loop's per-iteration metrics,
sent to TensorBoard, Trackio, Weights & Biases or MLflow through their own libraries. Default: ``none`` (nothing
is logged, nothing is imported, no network).

What is logged, and where:

- **training** (one stream per role and iteration, named ``<role>/iter_<l>``, e.g. ``gen_0/iter_1``): the
  trainer's ``train/loss``, ``train/learning_rate`` and ``train/grad_norm`` every optimizer step, and
  ``train/train_loss`` (the mean over the run) at its end, at step = the role's optimizer step. One by one,
  TRL's own integrations log them (``report_to``, ``run_name`` and ``project`` in
  :func:`maft.training.sft.sft_config`; :func:`trainer_environment`), except wandb: transformers' wandb
  callback uses wandb's one global run, and ``wandb.init`` in a process where another run is open (the
  society's) returns that run instead of a new one, so the role's losses reach wandb through
  :class:`MetricsLogger` in a trainer callback (:func:`trainer_callbacks`), a run of the role's own. Trained
  together (:mod:`maft.training.concurrent`), :class:`MetricsLogger` logs ``train/loss``,
  ``train/learning_rate`` and ``train/train_loss`` under the same names. (The integrations keep their own
  conventions: MLflow's names the keys ``loss``, ``learning_rate``, ... without ``train/``, and trackio's counts
  steps from 0.)
- **the society** (one stream, named ``society``): every scalar of an iteration's metrics
  (:func:`iteration_scalars`: held-out majority and per-agent accuracy by round, agreement, label precision,
  data sizes, losses, diversity, compute) at step = the iteration (0: the base model), once each: logged after
  the iteration's ``metrics`` stage finishes and recorded in its manifest entry (``tracked``), so a resumed run
  logs only the iterations not logged yet (one stopped between the two included).

How it is grouped (the run's name, :func:`run_name`, is the run directory's name and six hex digits of its path,
e.g. ``20260101-120000-3fa2c1``, or ``maft/seed_0-9b01de`` for one seed of a comparison):

- tensorboard: event files under ``<run>/tracking/<stream>/``: ``tracking/society/``, ``tracking/gen_0/iter_1/``,
  ...; ``tensorboard --logdir <run>/tracking`` shows each stream as a run. With ``execution.tracking_dir`` (a
  folder several runs may share) under ``<tracking_dir>/<run's name>/<stream>/``. A role trained again (its stage
  redone after a crash) starts its directory afresh.
- trackio, wandb: project ``maft``, group = the run's name, run name = ``<run>/<stream>``. They keep their own
  stores (trackio: local, ``TRACKIO_DIR``; wandb: its server, or ``WANDB_MODE=offline``).
- mlflow: experiment ``maft``, run name = ``<run>/<stream>``, tag ``maft.run`` = the run's name; the store is
  ``MLFLOW_TRACKING_URI`` (MLflow's default where unset; MLflow 3 refuses a ``./mlruns`` file store, and the
  store is opened before anything is computed).

A requested backend that is not installed, or an MLflow store that MLflow refuses, is refused before anything is
computed (:func:`maft.checks.check_tracking`). TensorBoard is tested for real (tests/test_tracking.py reads the
event files back); trackio, wandb and mlflow are driven through their documented APIs (wandb >= 0.19.10, for
several runs in one process), are not installed in the tests, and were run by hand (README, "Experiment
tracking"). The trainers' settings reach transformers' callbacks partly through environment variables, set in
the training process (:func:`set_trainer_environment`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maft.config import ExecutionConfig
    from maft.evaluation.metrics import IterationMetrics

#: The project (trackio, wandb) or experiment (mlflow) every run logs to.
PROJECT = "maft"
#: The loop's stream.
SOCIETY = "society"
#: backend -> (the module it needs, what to install)
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard (or pip install 'maft[tracking]')"),
    "trackio": ("trackio", "pip install trackio"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow"),
}


def backends(execution: ExecutionConfig) -> tuple[str, ...]:
    """The backends ``execution.report_to`` asks for (none: empty)."""
    return tuple(b for b in execution.report_to if b != "none")


@dataclass(frozen=True)
class Tracking:
    """Where one stream of metrics goes (module docstring): a role's training or the society's iterations."""

    report_to: tuple[str, ...]  # the backends (never empty)
    run: str  # the run's name (run_name)
    stream: str  # "society" or "<role>/iter_<l>"
    logdir: str  # tensorboard's event files: <run>/tracking/<stream>, or <tracking_dir>/<run's name>/<stream>

    @classmethod
    def of(cls, execution: ExecutionConfig, root: Path, stream: str) -> Tracking | None:
        """Stream ``stream`` of the run in ``root`` (None: ``report_to`` is none)."""
        chosen = backends(execution)
        if not chosen:
            return None
        run = run_name(root)
        # a tracking_dir may be shared by several runs: each writes (and clears) only its own folder there
        base = Path(execution.tracking_dir).expanduser() / run if execution.tracking_dir else root / "tracking"
        return cls(chosen, run, stream, str((base / stream).absolute()))

    @property
    def name(self) -> str:
        """The stream's run name in trackio, wandb and mlflow."""
        return f"{self.run}/{self.stream}"

    def fresh(self) -> Tracking:
        """This stream with its tensorboard directory emptied (a role trained again logs from step 1 again)."""
        if "tensorboard" in self.report_to:
            shutil.rmtree(self.logdir, ignore_errors=True)
        return self


def run_name(root: Path) -> str:
    """A run's name in the trackers: its directory's name (with the method's, for one seed of a comparison:
    ``maft/seed_0``) and six hex digits of its absolute path, so that two runs never share one (every method of a
    comparison with seeds has a ``seed_0``; two comparisons each have a ``maft``)."""
    root = Path(root).absolute()
    readable = f"{root.parent.name}/{root.name}" if root.name.startswith("seed_") else root.name
    return f"{readable}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}"


def role_stream(role: str, iteration: int) -> str:
    return f"{role}/iter_{iteration}"


# -- TRL's integrations (training one by one) -------------------------------------------------------------
def trainer_arguments(tracking: Tracking | None) -> dict[str, Any]:
    """What :func:`maft.training.sft.sft_config` hands TRL: no reporting without tracking, else the backends, the
    stream's run name, trackio's project (local only: no Space), and a log every optimizer step."""
    if tracking is None:
        return {"report_to": "none", "logging_steps": 10}
    through_trl = [b for b in tracking.report_to if b != "wandb"]  # wandb: trainer_callbacks
    return {
        "report_to": through_trl or "none",
        "run_name": tracking.name,
        "project": PROJECT,
        "trackio_static_space_id": False,
        "logging_steps": 1,
    }


def trainer_environment(tracking: Tracking) -> dict[str, str]:
    """The environment variables transformers' integration callbacks read (``TENSORBOARD_LOGGING_DIR`` when the
    trainer is built; the others when training begins)."""
    env = {}
    if "tensorboard" in tracking.report_to:
        env["TENSORBOARD_LOGGING_DIR"] = tracking.logdir
    if "mlflow" in tracking.report_to:
        env.update(MLFLOW_EXPERIMENT_NAME=PROJECT, MLFLOW_TAGS=json.dumps({"maft.run": tracking.run}))
    return env


def set_trainer_environment(tracking: Tracking | None) -> None:
    """Set :func:`trainer_environment` in this process (the training process) before the trainer is built."""
    if tracking is not None:
        os.environ.update(trainer_environment(tracking))


def trainer_callbacks(tracking: Tracking | None) -> list:
    """The trainer callbacks of what maft logs itself while a trainer trains: wandb (module docstring), a run of
    the role's own that gets the trainer's logs as ``train/<name>`` at the optimizer step."""
    if tracking is None or "wandb" not in tracking.report_to:
        return []
    from transformers import TrainerCallback

    only_wandb = replace(tracking, report_to=("wandb",))

    class LogToWandb(TrainerCallback):
        def __init__(self) -> None:
            self.logger: MetricsLogger | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if self.logger is None:
                self.logger = MetricsLogger(only_wandb)
            numbers = {f"train/{k}": v for k, v in logs.items() if isinstance(v, Real) and not isinstance(v, bool)}
            self.logger.log(numbers, step=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.logger is not None:
                self.logger.close()
                self.logger = None

    return [LogToWandb()]


# -- maft's own logging (the society; concurrent training) ---------------------------------------------------
class MetricsLogger:
    """Logs dicts of scalars at a step to every backend of one stream, each through its own library (an
    independent run per stream: several may be open at once in one process). Use as a context manager, or
    :meth:`close` it."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking
        self._sinks = [_SINKS[b](tracking) for b in tracking.report_to]

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        for sink in self._sinks:
            sink.log(scalars, step)

    def close(self) -> None:
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TensorBoard:
    def __init__(self, tracking: Tracking) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=tracking.logdir)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, tracking: Tracking) -> None:
        import trackio

        self.run = trackio.init(project=PROJECT, name=tracking.name, group=tracking.run, resume="allow")

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


class _Wandb:
    def __init__(self, tracking: Tracking) -> None:
        import wandb

        # a run of its own, beside the trainer's (needs wandb >= 0.19.10)
        self.run = wandb.init(project=PROJECT, group=tracking.run, name=tracking.name, reinit="create_new")

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, tracking: Tracking) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        experiment = self.client.get_experiment_by_name(PROJECT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(PROJECT)
        run = self.client.create_run(experiment_id, run_name=tracking.name, tags={"maft.run": tracking.run})
        self.run_id = run.info.run_id

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_SINKS: dict[str, Any] = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb, "mlflow": _MLflow}


# -- what the society logs ---------------------------------------------------------------------------------
def iteration_scalars(m: IterationMetrics) -> dict[str, float]:
    """Every scalar of an iteration's metrics, by tag: ``test/...`` (the held-out debate: accuracies are the means,
    their standard errors ``..._se``; rounds and agents count from 1 and 0 as in the report), ``train/...``
    (iteration >= 1), ``diversity/...`` (when measured) and ``compute/...``."""
    t = m.test
    out: dict[str, float] = {
        "test/majority": t.majority.mean,
        "test/majority_se": t.majority.se,
        "test/unanimous": t.unanimous,
        "test/pairwise_agreement": t.pairwise_agreement,
        "test/abstention_rate": t.abstention_rate,
        "test/generated_tokens": t.generated_tokens,
    }
    for r, (one, majority) in enumerate(zip(t.round_agent, t.round_majority, strict=True), start=1):
        out[f"test/round_{r}/agent_mean"] = one.mean
        out[f"test/round_{r}/majority"] = majority.mean
    for n, rounds in enumerate(t.agent_round):
        for r, acc in enumerate(rounds, start=1):
            out[f"test/agent_{n}/round_{r}"] = acc.mean
    for r, share in enumerate(t.truncated, start=1):
        out[f"test/round_{r}/truncated"] = share
    if m.train is not None:
        s = m.train
        out.update(
            {
                "train/labelled": s.labelled,
                "train/unanimous": s.unanimous,
                "train/label_precision": s.label_precision.mean,
            }
        )
        for agent, counts in s.data.items():
            out.update({f"train/data/{agent}/{k}": v for k, v in counts.items()})
        out.update({f"train/loss/{role}": loss for role, loss in s.losses.items() if loss is not None})
    if m.diversity is not None:
        for key, value in m.diversity.model_dump().items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("round", "critic_round"):
                out[f"diversity/{key}"] = value
        out.update(
            {f"diversity/kl_from_base/{role}": v for role, v in (m.diversity.kl_from_base_by_role or {}).items()}
        )
    out.update({f"compute/{k}": v for k, v in m.compute.model_dump().items()})
    return out


def read_scalars(logdir: str | Path, tags: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """The scalars of the tensorboard event files in ``logdir`` (tag -> step -> value; the last value of a step
    wins), read back with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"] if tags is None or tag in tags
    }
