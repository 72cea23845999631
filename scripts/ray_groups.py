"""Time one iteration's training, trained together, three ways on this machine: in this process (``local``, the
loop's default), and on Ray in local mode with two CPUs, as one group (``ray2``: ``cpus_per_job=2``, one task of
two threads) or as two groups (``ray1``: ``cpus_per_job=1``, two tasks of one thread each).

    python scripts/ray_groups.py RUN_DIR ITERATION {local,ray1,ray2}

RUN_DIR is a finished run of the embedded default (``maft run``); ITERATION >= 2 trains from iteration
ITERATION - 1's agents on iteration ITERATION's data, as the loop did. Needs ``maft[ray]``. Prints the wall time.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

from maft.config import ExecutionConfig, TrainConfig
from maft.tiny import default_checkpoint
from maft.training.scheduler import TrainJob, run_ray, run_together

ROLES = ["gen_0", "gen_1", "gen_2", "critic_0", "critic_1", "critic_2"]


def main(run: Path, iteration: int, mode: str) -> None:
    data, init = run / f"iter_{iteration}" / "data", run / f"iter_{iteration - 1}" / "agents"
    out = Path(tempfile.mkdtemp(prefix=f"ray-groups-{mode}-"))
    jobs = [
        TrainJob(
            r,
            str(default_checkpoint()),
            data / f"{r}.jsonl",
            out / r,
            init / r,
            i,
            "cpu",
            TrainConfig(),
            activation_checkpointing=False,
        )
        for i, r in enumerate(ROLES)
    ]
    done = {}
    try:
        if mode == "local":
            start = time.perf_counter()
            run_together(jobs, lambda job, result: done.__setitem__(job.role, result), threads=2)
        else:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            config = ExecutionConfig(
                scheduler="ray", concurrent_training=True, cpus_per_job={"ray1": 1, "ray2": 2}[mode]
            )
            start = time.perf_counter()
            run_ray(jobs, lambda job, result: done.__setitem__(job.role, result), config)
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
    processes = len({result.pid for result in done.values()})
    print(f"{mode}: {wall:.1f} s, {len(done)} roles in {processes} process(es)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
