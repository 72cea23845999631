"""Train one role in several processes (``execution.processes_per_job`` > 1, or a whole ``gpus_per_job`` > 1):
the paper's setting, a 7-8B model fully finetuned with its states sharded over GPUs.

:func:`launch` starts the processes with torch's own launcher (``python -m torch.distributed.run --standalone``,
what ``torchrun`` runs), one per GPU (or ``processes_per_job`` on a CPU), each running this module's
:func:`main` on the same job; each process calls :func:`maft.training.sft.finetune` with ``processes`` set, and
the trainer does the rest through accelerate (:func:`maft.training.sft.parallelism`):

- FSDP (version 2) full sharding: weights, gradients and optimizer states divided over the processes, each
  decoder layer a unit, bf16 mixed precision with ``train.bf16``, activation checkpointing with
  ``execution.activation_checkpointing``; the sharded weights are gathered into one Hugging Face checkpoint
  (safetensors), or a PEFT adapter, that the engines serve as they serve a one-process result;
- on GPUs, one process per GPU, collectives over NCCL; on a CPU, the same sharding with its collectives over gloo
  (accelerate gates FSDP to accelerators; :func:`maft.training.fsdp.allow_fsdp_on_cpu` lifts that gate). That is
  what the tests run: two processes on the tiny model, the code path of a multi-GPU launch.

The effective batch stays ``train.batch_size x train.gradient_accumulation_steps``: each process accumulates
``gradient_accumulation_steps / processes`` mini-batches of ``batch_size`` (the config refuses counts that do
not divide). The trainer's sampler deals the mini-batches of a step round-robin over the processes, and the
loss of a step is normalized by the label tokens of all of them (transformers' ``average_tokens_across_devices``),
so a step sees the same examples and the same gradient as one process accumulating them all: the weights
match one-process training up to floating-point rounding (tests/test_distributed.py), also where an epoch's
mini-batches do not divide among the processes (the rows accelerate repeats to even them out are masked:
:class:`~maft.training.sft.RepeatsMasked`).

With Ray, the job's task holds ``gpus_per_job`` GPUs and launches the processes on its node. The launcher's
main process (rank 0) reports progress on its standard output, one ``maft-step <done> <total>`` line per
optimizer step, and writes the job's :class:`~maft.training.sft.TrainResult` (its loss the mean over the
processes) to a file the caller reads; a process that fails fails the job, and the run keeps the roles that
finished.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from maft.training.job import TrainJob, finetune_job
from maft.training.sft import StepCallback, TrainResult

#: The prefix of rank 0's progress lines.
STEP = "maft-step"


def command(processes: int, job_file: Path, result_file: Path) -> list[str]:
    """The launch: torch's launcher, ``processes`` processes on this machine, each running :func:`main`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on this machine, on a free port
        f"--nproc-per-node={processes}",
        "-m",
        "maft.training.distributed",
        str(job_file),
        str(result_file),
    ]


def launch(
    job: TrainJob, processes: int, on_step: StepCallback | None = None, threads: int | None = None
) -> TrainResult:
    """Train ``job`` in ``processes`` processes; its result once they have all finished."""
    with tempfile.TemporaryDirectory(prefix="maft-job-") as scratch:
        job_file, result_file = Path(scratch) / "job.pkl", Path(scratch) / "result.json"
        job_file.write_bytes(pickle.dumps(job))
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch threads per process (the launcher's default is 1)
        if job.device == "cpu":  # torch's FSDP2 would build its device mesh on a GPU it can see
            env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.Popen(
            command(processes, job_file, result_file), stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(STEP):
                    done, total = (int(x) for x in line.split()[1:3])
                    if on_step:
                        on_step(done, total)
                else:
                    sys.stderr.write(line)
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: the launcher stops its processes
                proc.terminate()
                proc.wait()
        if code != 0 or not result_file.exists():
            raise RuntimeError(
                f"finetuning {job.role} in {processes} processes failed (exit status {code}); the messages above are "
                "the processes' own (execution.processes_per_job=1 trains it in one process)"
            )
        return TrainResult.model_validate_json(result_file.read_text())


def main(argv: list[str] | None = None) -> None:
    """One process of a launch: train the job; rank 0 reports progress and writes the result."""
    from maft.data.agent_data import Example
    from maft.store import read_jsonl

    job_file, result_file = (Path(a) for a in (argv or sys.argv[1:]))
    job: TrainJob = pickle.loads(job_file.read_bytes())
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))

    examples = read_jsonl(job.data, Example)
    if not examples and rank > 0:  # nothing to train: the main process saves the starting weights alone
        return

    def progress(done: int, total: int) -> None:
        print(f"{STEP} {done} {total}", flush=True)

    result = finetune_job(job, examples, on_step=progress if rank == 0 else None, processes=world, main=rank == 0)
    if rank == 0:
        result_file.write_text(result.model_dump_json())


if __name__ == "__main__":
    main()
