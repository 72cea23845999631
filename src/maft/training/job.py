"""One role's finetuning job, as the loop hands it to a scheduler (:mod:`maft.training.scheduler`) and a
scheduler to the processes that train it (:mod:`maft.training.distributed`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from maft.config import TrainConfig
from maft.data.agent_data import Example
from maft.tracking import Tracking
from maft.training.sft import StepCallback, TrainResult, finetune


@dataclass(frozen=True)
class TrainJob:
    """One role's finetune: its data, where it starts from, and where it writes."""

    role: str
    base_model: str
    data: Path  # prompt-completion JSONL (finetune_data.Example records)
    out_dir: Path
    init_from: Path | None
    seed: int
    device: str
    config: TrainConfig
    tracking: Tracking | None = None  # where its losses are logged (execution.report_to; maft.tracking)
    processes: int = 1  # > 1: trained by that many processes together (maft.training.distributed)
    activation_checkpointing: bool = True  # execution.activation_checkpointing


OnDone = Callable[[TrainJob, TrainResult], None]


def finetune_job(
    job: TrainJob,
    examples: Sequence[Example],
    *,
    on_step: StepCallback | None = None,
    processes: int = 1,
    main: bool = True,
) -> TrainResult:
    """Train ``job`` on ``examples`` (its data file's) in this process, one of ``processes`` training it together;
    only the ``main`` process logs to the job's tracker."""
    return finetune(
        job.base_model,
        examples,
        job.out_dir,
        job.config,
        init_from=job.init_from,
        seed=job.seed,
        device=job.device,
        on_step=on_step,
        tracking=job.tracking if main else None,
        processes=processes,
        activation_checkpointing=job.activation_checkpointing,
    )
