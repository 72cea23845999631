"""The multiagent finetuning loop, stage by stage, resumable (SPEC section 3).

Iteration 0 is the base model's debate on the test problems. Iteration l >= 1:

    debate_train   the agents of iteration l-1 debate the training problems
    votes          majority vote of the final round -> one label per problem
    data           D^G_n and D^C_n for every agent n, from its own responses only
    train/<role>   each of the 2N roles (gen_n, critic_n) finetuned on its own data, independently (one
                   after another, or together on one base copy where they can and fit: execution.concurrent_training)
    debate_test    the new agents debate the held-out problems (generation agents answer round 1,
                   critic agents later rounds)
    metrics        accuracy with standard error, per agent and round, agreement, data sizes (and, with
                   execution.report_to, logged at step l: maft.tracking)

Each stage's outputs land in ``<run>/iter_<l>/`` before the stage is recorded in the manifest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from maft.agents import SINGLE, Agents, agents_at, roles, saved_kind, trained_roles
from maft.checks import check_model, check_questions, check_tracking
from maft.config import RunConfig
from maft.data.agent_data import build_agent_data, majority_pairs, rationalized_examples
from maft.data.rationalization import rationalize
from maft.debate.protocol import base_debate_key, run_debate, sampling
from maft.debate.transcript import Turn
from maft.debate.voting import ProblemVote, VoteRule, vote_final_round
from maft.evaluation.diversity import EmbeddingsUnavailable, check_embeddings, diversity, load_embedder
from maft.evaluation.metrics import Accuracy, Compute, Diversity, IterationMetrics, TrainStats, accuracy, debate_metrics
from maft.report.summary import summary_markdown
from maft.serving import base_model, check_serving, make_engine
from maft.store import (
    RunDirError,
    RunStore,
    atomic_dir,
    publish_dir,
    read_jsonl,
    temporary_dir,
    write_json,
    write_jsonl,
    write_text,
)
from maft.tasks import Splits, Task, get_task
from maft.tracking import SOCIETY, MetricsLogger, Tracking, iteration_scalars, role_stream
from maft.training.memory import (
    ModelCounts,
    activation_checkpointing,
    cannot_train_together,
    device_memory,
    trains_together,
    with_concurrency,
)
from maft.training.precision import bf16_for, precision_line
from maft.training.scheduler import TrainJob, run_local, run_ray, run_together
from maft.training.sft import TrainResult, check_critic_loss


def task_splits(config: RunConfig) -> tuple[Task, Splits]:
    """The run's task and its training and held-out problems (drawn by ``config.split_seed``). A run that never
    trains (``iterations=0``: the single, majority and debate baselines) needs no training problems: where the task
    has too few for ``task.n_train``, it gets none, and the same held-out problems (they are drawn first)."""
    task = get_task(config.task.name, **config.task.options)
    try:
        return task, task.splits(config.task.n_train, config.task.n_test, seed=config.split_seed)
    except ValueError:
        if config.iterations:
            raise
        return task, task.splits(0, config.task.n_test, seed=config.split_seed)


def prepare(config: RunConfig) -> tuple[Task, Splits]:
    """The task and its splits: everything that can fail on bad input, checked before any model loads."""
    check_model(config, base_model(config))  # the model's files, device and LoRA targets
    check_tracking(config.execution)  # execution.report_to: each backend's library installed
    check_serving(config)  # unreachable servers, missing flags or installations: refused before any compute
    check_critic_loss(base_model(config), config.train, rounds=config.debate.rounds)  # a template TRL can mask
    if config.diversity.enabled and config.diversity.embeddings == "on":
        check_embeddings(config.diversity)  # missing extra, encoder directory, or uncached hub id while offline
    task, splits = task_splits(config)
    if len(splits.test) < config.task.n_test or (config.iterations and len(splits.train) < config.task.n_train):
        raise ValueError(
            f"task {config.task.name!r} has {len(splits.train)} train / {len(splits.test)} test problems, "
            f"fewer than task.n_train={config.task.n_train} / task.n_test={config.task.n_test}"
        )
    check_questions([*splits.train, *splits.test])
    return task, splits


def role_seed(run_seed: int, iteration: int, role_index: int) -> int:
    """The seed of a role's finetuning (its LoRA init and data order): each role its own, not depending on which
    roles train, folded into the 32 bits the trainers' ``set_seed`` takes (numpy's; this changes no seed that was
    already below 2**32, such as every seed of a run seed below 42,000 for its first 200 iterations)."""
    return (run_seed * 100_003 + iteration * 1009 + role_index) % 2**32


class Society:
    """Runs (or resumes) the loop for the run in ``store``."""

    def __init__(
        self,
        store: RunStore,
        *,
        console: Console | None = None,
        progress: bool = True,
        engine: Any = None,
        shared_debates: Path | None = None,
    ) -> None:
        """``engine``: an engine already holding this run's base model (e.g. shared by ``maft compare``);
        ``shared_debates``: a folder of the base model's debates that other runs (of a comparison) computed, by
        :func:`~maft.debate.protocol.base_debate_key`: this run reuses a debate found there instead of
        generating it again, and leaves its own there."""
        self.store = store
        self.config = store.config
        self.console = console or Console()
        self.progress = progress
        self.task, self.splits = prepare(self.config)
        self._check_problems()
        store.save_config()  # execution settings changed on resume: accepted now
        self._engine = engine
        self.shared_debates = shared_debates
        self._embedder = None
        self._warned: set[str] = set()
        self._tracker: MetricsLogger | None = None  # the society's metrics stream (maft.tracking)

    def _check_problems(self) -> None:
        """Resuming must see the same problems (a task file edited after a crash would mix two sets)."""
        import hashlib

        blob = json.dumps([[p.id, p.question, p.answer] for p in [*self.splits.train, *self.splits.test]])
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        recorded = self.store.manifest.setdefault("problems_hash", digest)
        if recorded != digest:
            raise RunDirError(
                f"the problems of {self.config.task.name!r} changed since {self.store.root} started "
                "(was a task file edited?); start a new run"
            )
        self.store.save_manifest()

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def engine_loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = make_engine(
                self.config,
                self.store.root,
                say=lambda message: self.console.print(message, markup=False, highlight=False),
            )
        return self._engine

    @property
    def base_model(self) -> str:
        return base_model(self.config)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self.console.print(message)
            self._warned.add(key)

    def _kept(self, name: str) -> bool:
        """Whether stage ``name`` finished earlier (then it is kept, and said so)."""
        if not self.store.done(name):
            return False
        self.console.print(f"[dim]{name}: finished earlier ({self.store.seconds(name):.1f} s), kept[/dim]")
        return True

    def _stage(self, name: str, work: Callable[[], dict | None]) -> bool:
        """Run stage ``name`` unless it finished earlier; whether it ran."""
        if self._kept(name):
            return False
        self.console.print(f"[bold]{name}[/bold] ...")
        start = time.perf_counter()
        info = work() or {}
        seconds = time.perf_counter() - start
        self.store.finish(name, seconds, **info)
        self.console.print(f"{name}: done in {seconds:.1f} s")
        return True

    def agents(self, iteration: int) -> Agents:
        """Iteration ``iteration``'s agents (0: the base model)."""
        return agents_at(self.config, self.store.root, iteration)

    def _debate(self, iteration: int, split: str) -> tuple[list[Turn], bool]:
        """Iteration ``iteration``'s debate on the ``split`` problems, and whether it was reused from
        ``shared_debates`` rather than generated."""
        problems = self.splits.test if split == "test" else self.splits.train
        # the test debate uses one seed for every iteration (common random numbers across iterations)
        seed = self.config.seed * 1000 + (0 if split == "test" else 1 + iteration)
        agents = self.agents(iteration if split == "test" else iteration - 1)
        shared = None
        if self.shared_debates is not None and not agents.models:  # the base model answers every agent
            key = base_debate_key(self.config, problems, seed=seed, held_out=split == "test")
            shared = self.shared_debates / f"{key}.jsonl"
            if shared.is_file():
                self.console.print(
                    f"[dim]iter_{iteration}/debate_{split}: the base model's debate reused from another run "
                    f"({shared.name})[/dim]"
                )
                return read_jsonl(shared, Turn), True
        turns = self._run_debate(problems, agents, seed, iteration, split)
        if shared is not None:
            write_jsonl(shared, turns)
        return turns, False

    def _run_debate(self, problems, agents: Agents, seed: int, iteration: int, split: str) -> list[Turn]:
        if hasattr(self.engine, "endpoint_counts"):
            self.engine.endpoint_counts()  # count this stage's requests only
        return run_debate(
            self.engine,
            self.config,
            self.task,
            problems,
            agents,
            seed=seed,
            progress=f"iter_{iteration}/debate_{split}" if self.progress else False,
            held_out=split == "test",
        )

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> list[IterationMetrics]:
        cfg = self.config
        self._stage("iter_0/debate_test", lambda: self._debate_stage(0, "test"))
        self._diversity(0)
        self._stage("iter_0/metrics", lambda: self._write_metrics(0))
        self._track(0)
        for it in range(1, cfg.iterations + 1):
            self._iteration(it)
        self._close_tracker()
        metrics = [self.load_metrics(it) for it in range(cfg.iterations + 1)]
        write_json(self.store.root / "metrics.json", [m.model_dump(mode="json") for m in metrics])

        write_text(self.store.root / "summary.md", summary_markdown(cfg, metrics, self.store.manifest))
        return metrics

    def _iteration(self, it: int) -> None:
        """Iteration ``it >= 1``: the stages of the module docstring, each skipped if it finished earlier."""
        self._stage(f"iter_{it}/debate_train", lambda: self._debate_stage(it, "train"))
        self._stage(f"iter_{it}/votes", lambda: self._votes(it))
        if self.config.data.rationalize:
            self._stage(f"iter_{it}/rationalize", lambda: self._rationalize(it))
        self._stage(f"iter_{it}/data", lambda: self._data(it))
        self._train(it)
        self._stage(f"iter_{it}/debate_test", lambda: self._debate_stage(it, "test"))
        self._diversity(it)
        self._stage(f"iter_{it}/metrics", lambda: self._write_metrics(it))
        self._track(it)

    def _track(self, it: int) -> None:
        """Log iteration ``it``'s metrics, as recorded, to the society's stream (``execution.report_to``;
        :mod:`maft.tracking`), at step ``it``: once per metrics stage, which records ``tracked: false`` until then,
        so a run stopped between the stage and its logging logs it on resume. (A stage recorded before this record
        existed was logged when it ran, if at all: it is not logged again.)"""
        tracking = Tracking.of(self.config.execution, self.store.root, SOCIETY)
        entry = self.store.manifest["stages"].get(f"iter_{it}/metrics")
        if tracking is None or entry is None or "redo" in entry or entry.get("tracked") is not False:
            return
        if self._tracker is None:
            self._tracker = MetricsLogger(tracking)
        self._tracker.log(iteration_scalars(self.load_metrics(it)), step=it)
        entry["tracked"] = True
        self.store.save_manifest()

    def _close_tracker(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None

    # -- stages -----------------------------------------------------------------------------------
    def _debate_stage(self, iteration: int, split: str) -> dict:
        """Stage ``iter_<iteration>/debate_<split>``: the debate, written to its transcript, and what it cost."""
        turns, reused = self._debate(iteration, split)
        write_jsonl(self.store.iter_dir(iteration) / f"debate_{split}.jsonl", turns)
        info: dict[str, Any] = {"generated_tokens": sum(t.completion_tokens + t.summary_tokens for t in turns)}
        if reused:  # generated by another run (shared_debates): its tokens are this method's, not its time
            info["reused"] = True
        if not reused and hasattr(self.engine, "endpoint_counts"):  # requests and failures per server endpoint
            info["endpoints"] = self.engine.endpoint_counts()
        return info

    def close(self) -> None:
        """Stop what the run started (a managed server); the engine's memory goes with the Society."""
        self._close_tracker()
        if self._engine is not None:
            self._engine.close()

    def _votes(self, it: int) -> dict:
        d = self.store.iter_dir(it)
        turns = read_jsonl(d / "debate_train.jsonl", Turn)
        votes = vote_final_round(turns, self.task, self.splits.train, VoteRule.of(self.config))
        if self.config.data.label == "gold":  # STaR: the gold answer is the label (uses ground truth)
            gold = {p.id: p.answer for p in self.splits.train}
            votes = [v.model_copy(update={"label": gold[v.problem_id], "correct": True}) for v in votes]
        write_jsonl(d / "votes.jsonl", votes)
        return {"labelled": sum(v.label is not None for v in votes)}

    def _rationalize(self, it: int) -> dict:
        """STaR: the round-1 answers that missed the gold answer, asked again with it as a hint."""
        d = self.store.iter_dir(it)
        turns = read_jsonl(d / "debate_train.jsonl", Turn)
        hinted = rationalize(
            self.engine,
            self.task,
            self.splits.train,
            turns,
            adapter_for=self.engine.serve(self.agents(it - 1)),
            sampling=sampling(self.config),
            seed=self.config.seed * 1000 + 500 + it,
            rule=VoteRule.of(self.config),
            progress=f"iter_{it}/rationalize" if self.progress else False,
        )
        write_jsonl(d / "rationalize.jsonl", hinted)
        return {"asked": len(hinted), "generated_tokens": sum(t.completion_tokens for t in hinted)}

    def _data(self, it: int) -> dict:
        d = self.store.iter_dir(it)
        turns = read_jsonl(d / "debate_train.jsonl", Turn)
        votes = read_jsonl(d / "votes.jsonl", ProblemVote)
        rule = VoteRule.of(self.config)
        data = build_agent_data(
            turns,
            votes,
            self.task,
            agents=self.config.debate.agents,
            critic_mix=self.config.data.critic_mix,
            critic_plus_fraction=self.config.data.critic_plus_fraction,
            critic_share=self.config.data.critic_share,
            seed=self.config.seed * 1000 + it,
            rule=rule,
        )
        counts = {f"agent_{a.agent}": a.counts() for a in data}
        if self.config.data.rationalize:  # STaR: right answers found with the hint join the agent's D^G
            order = {p.id: i for i, p in enumerate(self.splits.train)}
            questions = {t.problem_id: t.messages[0] for t in turns if t.round == 1}
            labels = {v.problem_id: v.label for v in votes}
            extra = rationalized_examples(read_jsonl(d / "rationalize.jsonl", Turn), questions, labels, self.task, rule)
            for a in data:
                mine = [e for e in extra if e.agent == a.agent]
                a.generation = sorted([*a.generation, *mine], key=lambda e: order[e.problem_id])
                counts[f"agent_{a.agent}"].update(generation=len(a.generation), rationalized=len(mine))
        info: dict[str, Any] = {"counts": counts}
        with atomic_dir(d / "data") as tmp:
            for a in data:
                write_jsonl(tmp / f"gen_{a.agent}.jsonl", a.generation)
                write_jsonl(tmp / f"critic_{a.agent}.jsonl", a.critic)
            if self.config.train.shared and self.config.data.shared_from == "majority_responses":  # section 2.2
                pairs = majority_pairs(turns, votes, self.task, rule)
                write_jsonl(tmp / f"{SINGLE}.jsonl", pairs)
                info["majority_responses"] = len(pairs)
                self.console.print(f"  one shared model: {len(pairs)} majority-consistent final-round responses")
            elif self.config.train.shared:  # one model learns from every agent's data
                write_jsonl(tmp / f"{SINGLE}.jsonl", [e for a in data for e in [*a.generation, *a.critic]])
            write_json(tmp / "counts.json", counts)
        for agent, c in counts.items():
            rationalized = f" (incl. {c['rationalized']} rationalized)" if "rationalized" in c else ""
            self.console.print(
                f"  {agent.replace('_', ' ')}: D^G {c['generation']}{rationalized} | D^C {c['critic']} = "
                f"D^C- {c['critic_minus']} + {c['critic_plus_used']} of D^C+ {c['critic_plus_total']}"
            )
        return info

    def _training_plan(self, pending: int | None = None) -> tuple[RunConfig, bool]:
        """The run's config with ``execution.concurrent_training`` resolved for ``pending`` roles (default: all),
        and ``execution.activation_checkpointing`` resolved, both against the memory free now (call it once the
        engine has stepped aside: what it keeps loaded is then already taken)."""
        config, x = self.config, self.config.execution
        if config.train.bf16 == "auto":
            self._say_precision()
        if x.concurrent_training is not None and x.activation_checkpointing is not None:
            return config, x.activation_checkpointing
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # memory the engine's allocator caches but no longer uses is free to the jobs
        counts, memory = ModelCounts.of(self.base_model), device_memory(config)
        if x.concurrent_training is None:
            together = trains_together(config, counts, memory, pending)
            config = with_concurrency(config, together)
            fit = "together they would not fit, or only with activation checkpointing where one by one needs none"
            left = "one role left" if pending is not None and pending < 2 else None
            why = cannot_train_together(config, counts) or left or ("memory unknown" if memory is None else fit)
            how = "together on one base copy" if together else f"one by one ({why})"
            self.console.print(f"  the roles' adapters train {how} (execution.concurrent_training auto)")
        checkpointing = x.activation_checkpointing
        if checkpointing is None:
            checkpointing = activation_checkpointing(config, counts, memory)
            why = "a job would not fit without it, or its memory is unknown" if checkpointing else "jobs fit without it"
            self.console.print(f"  activation checkpointing {'on' if checkpointing else 'off'} (auto: {why})")
        return config, checkpointing

    def _say_precision(self) -> None:
        """Say once what ``train.bf16: auto`` trains in here, and warn where roles this run trained before (a
        resumed run, on another machine) recorded the other precision: ``auto`` is in the config, not what it
        resolved to (:mod:`maft.training.precision`)."""
        train, device = self.config.train, self.config.execution.device
        self._warn_once("precision", f"  {precision_line(train, device)} (train.bf16 auto)")
        now = bf16_for(train, device)
        earlier = {
            json.loads(path.read_text()).get("bf16")
            for path in sorted(self.store.root.glob("iter_*/agents/*/maft_train.json"))
        }
        if (not now) in earlier:
            self._warn_once(
                "precision-changed",
                f"[yellow]train.bf16 auto trains in {'bf16' if now else 'fp32'} here, but roles this run trained "
                f"before recorded {'fp32' if now else 'bf16'} (maft_train.json): the iterations differ in "
                "precision[/yellow]",
            )

    def _train(self, it: int) -> None:
        """Finetune every role of iteration ``it`` not finished yet; each is a stage of its own."""
        cfg = self.config
        d = self.store.iter_dir(it)
        every = roles(cfg.debate.agents, cfg.debate.rounds)
        pending = [role for role in trained_roles(cfg) if not self._kept(f"iter_{it}/train/{role}")]
        if not pending:
            return
        if self.engine_loaded:
            self.engine.release()  # a managed server on the training GPU steps aside (maft.servers.managed)
        cfg, checkpointing = self._training_plan(len(pending))  # against the memory free once the engine stepped aside
        jobs = [
            TrainJob(
                role=role,
                base_model=self.base_model,
                data=d / "data" / f"{role}.jsonl",
                out_dir=temporary_dir(d / "agents" / role),
                init_from=self.store.iter_dir(it - 1) / "agents" / role
                if cfg.train.init == "previous" and it > 1
                else None,
                seed=role_seed(cfg.seed, it, every.index(role) if role in every else 0),
                device=cfg.execution.device,
                config=cfg.train,
                tracking=self._role_tracking(role, it),
                processes=cfg.execution.job_processes,
                activation_checkpointing=checkpointing,
            )
            for role in pending
        ]

        def done(job: TrainJob, result: TrainResult) -> None:
            if saved_kind(job.out_dir, missing_ok=True) is None:
                raise RuntimeError(
                    f"finetuning {job.role} reported success but left no adapter or checkpoint in {job.out_dir}"
                    " (with Ray on several nodes, the run directory must be on a shared filesystem)"
                )
            write_json(job.out_dir / "maft_train.json", result.model_dump(mode="json"))
            publish_dir(job.out_dir, d / "agents" / job.role)
            loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "-"
            self.store.finish(
                f"iter_{it}/train/{job.role}",
                result.seconds,
                examples=result.examples,
                steps=result.steps,
                train_loss=result.train_loss,
            )
            self.console.print(
                f"iter_{it}/train/{job.role}: {result.examples} examples, {result.steps} steps, "
                f"loss {loss}, done in {result.seconds:.1f} s"
                + (f" (its share of a job shared with {len(result.trained_with)} roles)" if result.trained_with else "")
            )

        if cfg.execution.scheduler == "ray":
            together = ", trained together: one task per group" if cfg.execution.concurrent_training else ""
            self.console.print(f"[bold]iter_{it}/train[/bold]: {len(jobs)} finetuning jobs on Ray{together} ...")
            run_ray(jobs, done, cfg.execution)
            return
        with Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not self.progress,
        ) as bar:

            def on_step(job: TrainJob):
                task = bar.add_task(f"train {job.role}", total=None)
                return lambda steps, total: bar.update(task, completed=steps, total=total)

            if cfg.execution.concurrent_training:  # one base copy, one loop; each role still its own stage
                run_together(jobs, done, on_step)
            else:
                run_local(jobs, done, on_step)

    def _role_tracking(self, role: str, it: int) -> Tracking | None:
        """Where role ``role``'s losses of iteration ``it`` are logged; a role trained again starts afresh."""
        tracking = Tracking.of(self.config.execution, self.store.root, role_stream(role, it))
        return tracking.fresh() if tracking else None

    def _write_metrics(self, it: int) -> dict:
        d = self.store.iter_dir(it)
        test = debate_metrics(
            read_jsonl(d / "debate_test.jsonl", Turn), self.task, self.splits.test, VoteRule.of(self.config)
        )
        train = None
        if it > 0:
            votes = read_jsonl(d / "votes.jsonl", ProblemVote)
            labelled = [v for v in votes if v.label is not None]
            counts = json.loads((d / "data" / "counts.json").read_text())
            losses = {
                role: json.loads((d / "agents" / role / "maft_train.json").read_text())["train_loss"]
                for role in trained_roles(self.config)
            }
            train = TrainStats(
                problems=len(votes),
                labelled=len(labelled),
                unanimous=sum(v.unanimous for v in votes) / len(votes),
                label_precision=accuracy([float(v.correct) for v in labelled])
                if labelled
                else Accuracy(mean=0, se=0, n=0),
                data=counts,
                losses=losses,
            )
        diversity = None
        if (d / "diversity.json").is_file():
            diversity = Diversity.model_validate_json((d / "diversity.json").read_text())
        metrics = IterationMetrics(
            iteration=it,
            test=test,
            train=train,
            seconds=self._stage_seconds(it),
            compute=self._compute(it),
            diversity=diversity,
        )
        write_json(d / "metrics.json", metrics.model_dump(mode="json"))
        return {"tracked": False}  # not yet in the trackers (_track)

    def _compute(self, it: int) -> Compute:
        """Iteration ``it``'s tokens, training examples and times, from the manifest."""
        stages = self._stages(it)
        train = [v for k, v in stages.items() if k.startswith("train/")]
        return Compute(
            train_generated_tokens=sum(
                stages.get(k, {}).get("generated_tokens", 0) for k in ("debate_train", "rationalize")
            ),
            test_generated_tokens=stages.get("debate_test", {}).get("generated_tokens", 0),
            train_examples=sum(v.get("examples", 0) for v in train),
            train_seconds=sum(v["seconds"] for v in train),
            seconds=sum(v["seconds"] for v in stages.values()),
        )

    def _diversity(self, it: int) -> None:
        """The diversity of the held-out debate: round 1, the critics' final round and the distance of each
        role from the base model (skipped with one agent or when disabled)."""
        cfg = self.config.diversity
        if not cfg.enabled or self.config.debate.shape(held_out=True)[0] < 2:
            return

        def work() -> dict:
            embedder = None
            if cfg.embeddings != "off":
                try:
                    embedder = self._embedder or load_embedder(encoder=cfg.encoder)
                    self._embedder = embedder
                except EmbeddingsUnavailable as e:
                    if cfg.embeddings == "on":
                        raise
                    self._warn_once(
                        "embeddings", f"[yellow]diversity: embedding dissimilarity skipped:[/yellow] {escape(str(e))}"
                    )
            likelihood = cfg.likelihood and self.engine.can_score
            if cfg.likelihood and not likelihood:
                self._warn_once(
                    "likelihood",
                    "[yellow]diversity: likelihoods skipped:[/yellow] this server returns no "
                    "prompt log-probabilities (vLLM and the hf engine do)",
                )
            turns = read_jsonl(self.store.iter_dir(it) / "debate_test.jsonl", Turn)
            result = diversity(
                turns,
                self.task,
                round=1,
                embedder=embedder,
                encoder=cfg.encoder,
                scorer=self.engine if likelihood else None,
                paper_likelihoods=cfg.paper_likelihoods,
                adapter_for=self.engine.serve(self.agents(it)) if likelihood else None,
                progress=f"iter_{it}/diversity score" if self.progress else False,
                answer_of=VoteRule.of(self.config).answer,  # a truncated response abstains, as in the vote
            )
            write_json(self.store.iter_dir(it) / "diversity.json", result.model_dump(mode="json"))
            shown = {k: v for k, v in result.model_dump().items() if isinstance(v, float)}
            self.console.print("  " + " | ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in shown.items()))
            return {}

        self._stage(f"iter_{it}/diversity", work)

    def _stages(self, it: int) -> dict[str, dict]:
        """Iteration ``it``'s finished stages (name within the iteration -> manifest entry)."""
        stages = self.store.manifest["stages"]
        return {k.split("/", 1)[1]: v for k, v in stages.items() if k.startswith(f"iter_{it}/")}

    def _stage_seconds(self, it: int) -> dict[str, float]:
        """Iteration ``it``'s finished stages and their times, from the manifest."""
        return {name: v["seconds"] for name, v in self._stages(it).items()}

    def load_metrics(self, it: int) -> IterationMetrics:
        m = IterationMetrics.model_validate_json((self.store.iter_dir(it) / "metrics.json").read_text())
        m.seconds = self._stage_seconds(it)  # the metrics stage's own time is known only after it is recorded
        m.compute = self._compute(it)
        return m
