"""The ``maft`` command line.

Bad input, unreadable or malformed files, and files that cannot be written (a read-only directory, a full
disk) end a command with one ``error:`` line naming the file and the problem, and a non-zero exit code
(2 before any work starts, 1 when a run stops midway, 130 after Ctrl-C); no traceback.

Output to a pipe or a file is not wrapped: a table row stays one line (COLUMNS, when set, gives a width).
Paths, values and error messages are printed as they are, never read as rich markup.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from maft.baselines import DEFAULT_METHODS, METHODS
from maft.engines.openai import EngineError
from maft.servers import ServerError
from maft.tasks import task_names

if TYPE_CHECKING:
    from maft.engines.hf import HFEngine

app = typer.Typer(help="maft: multiagent finetuning of language models.", no_args_is_help=True, add_completion=False)
tiny_app = typer.Typer(help="The embedded default model: pretrain it, check it.", no_args_is_help=True)
app.add_typer(tiny_app, name="tiny")

#: The width of output to a pipe or a file when COLUMNS does not set one: no table row is wrapped.
PIPED_WIDTH = 10_000
#: The width of a rule (a section line) in such output.
PIPED_RULE_WIDTH = 100


class CLIConsole(Console):
    """rich's console, except that output to a pipe or a file (``maft run | tee log``, ``maft report > out``)
    is not wrapped: rich would render it at 80 columns (or the width of a terminal on another stream) and
    break table rows mid-number. The COLUMNS environment variable, when set, still gives the width."""

    def piped(self) -> bool:
        return self._width is None and not self.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit()

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return ConsoleDimensions(PIPED_WIDTH, size.height) if self.piped() else size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # rich's property setter

    def rule(self, title="", *, characters: str = "─", style="rule.line", align="center") -> None:
        if not self.piped():
            return super().rule(title, characters=characters, style=style, align=align)
        self.print(Rule(title=title, characters=characters, style=style, align=align), width=PIPED_RULE_WIDTH)


console = CLIConsole()
# Path parameters are declared readable=False: click's own check ends in a usage panel, while the command's
# handling of an unreadable path ends in the one error line that names it.


def _task_options(options: list[str]) -> dict[str, object]:
    """``--option key=value`` pairs as task options, read as ``--set task.options.key=value`` is (the
    config's override parser: YAML values, so numbers, lists, null and bare strings)."""
    from maft.config import ConfigError, apply_overrides

    parsed: dict[str, object] = {}
    for item in options:
        if "=" not in item:
            _fail(f"--option {item!r} is not key=value (e.g. --option path=data.jsonl or --option levels=[1,2])")
        try:
            apply_overrides(parsed, [item])
        except ConfigError as e:
            message = str(e)
            _fail("--option " + message.removeprefix("override ") if message.startswith("override ") else message)
        try:  # options are saved as JSON (a transfer's spec.json); YAML also reads dates and times
            json.dumps(parsed)
        except (TypeError, ValueError):
            _fail(
                f"--option {item!r}: the value is not a number, text, list, mapping or null "
                "(quote it to pass it as text, e.g. key='2024-01-01')"
            )
    return parsed


@app.command()
def evaluate(
    task: Annotated[str, typer.Option(help="task name (" + ", ".join(task_names()) + ")")] = "arithmetic",
    samples: Annotated[int, typer.Option(min=1, help="samples per problem; majority-of-k is reported for k > 1")] = 1,
    n: Annotated[int, typer.Option(min=1, help="number of held-out test problems")] = 300,
    model: Annotated[str | None, typer.Option(help="HF model id or path (default: the embedded tiny model)")] = None,
    option: Annotated[list[str], typer.Option(help="task option key=value, e.g. path=data.jsonl or levels=[1,2]")] = [],
    temperature: Annotated[float, typer.Option(min=0, help="0 means greedy")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0, max=1)] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="requests per batch (default: 512 below 200M parameters, else 128)")
    ] = None,
    seed: int = 0,
    device: str = "auto",
    url: Annotated[
        list[str],
        typer.Option(help="an OpenAI-compatible server's base URL (several: load spread); --model is its model name"),
    ] = [],
    concurrency: Annotated[int, typer.Option(min=1, help="with --url: requests in flight")] = 64,
    out: Annotated[
        Path | None, typer.Option(readable=False, help="write the result (with every response) as JSON here")
    ] = None,
    run: Annotated[Path | None, typer.Option(hidden=True, readable=False, help="deprecated: maft transfer RUN")] = None,
    iteration: Annotated[list[int], typer.Option(hidden=True, help="deprecated: maft transfer RUN --iterations")] = [],
) -> None:
    """Evaluate one model on a task's test problems: single-sample and majority-of-k accuracy.

    A finished run's agents on another task (zero-shot transfer, by debate): maft transfer."""
    if run is not None:  # the old spelling of maft transfer
        typer.echo(f"maft evaluate --run is deprecated: use maft transfer {run} --task {task} (same options)", err=True)
        if model is not None or samples != 1:
            _fail("--run evaluates the run's own agents by debate; --model and --samples do not apply")
        _transfer(run, task, n, _task_options(option), iteration, quiet=False)
        return
    from maft.engines import Engine, Sampling
    from maft.evaluation.single_agent import evaluate as run_evaluation
    from maft.tasks import DatasetUnavailableError, get_task
    from maft.tiny import default_checkpoint

    options = _task_options(option)
    if out:  # the results are written at the end: a path that cannot take them is refused before any compute
        from maft.bench import BenchError, check_out

        try:
            check_out(out, example="evaluation.json")
        except BenchError as e:
            _fail(str(e))
    try:
        the_task = get_task(task, **options)
        sampling = Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        problems = the_task.splits(n_train=0, n_test=n, seed=seed).test
    except OSError as e:
        _fail(_os_message(e))
    except (ValueError, DatasetUnavailableError) as e:
        _fail(str(e))
    start = time.perf_counter()
    if url:
        from maft.config import ConfigError, load_config
        from maft.engines.openai import OpenAIEngine
        from maft.serving import api_key, check_serving

        served = model or str(default_checkpoint())
        try:  # the server answers and serves the model, before any request
            checked = load_config(
                None,
                [
                    "model.engine=openai",
                    "model.server_kind=api",
                    "iterations=0",
                    f"execution.served_name={served}",
                    f"execution.urls={json.dumps(url)}",
                ],
            )
            check_serving(checked)
        except (ServerError, ConfigError) as e:
            _fail(str(e))
        engine: Engine = OpenAIEngine(url, served, api_key=api_key(checked), concurrency=concurrency)
        model_name = served
    else:
        engine = hf = _hf_engine(model, device=device, batch_size=batch_size)
        model_name = hf.model_name
    try:
        result = run_evaluation(
            engine, the_task, problems, samples=samples, sampling=sampling, seed=seed, progress=True
        )
    except EngineError as e:  # a server that failed mid-way (after its retries)
        _fail(str(e))
    seconds = time.perf_counter() - start
    table = Table(title=f"{task}: {n} test problems, {samples} sample(s) each, T={temperature}, top_p={top_p}")
    table.add_column("metric")
    table.add_column("accuracy % ± SE", justify="right")
    table.add_row("single sample", str(result.single))
    if samples > 1:
        table.add_row(f"majority of {samples}", str(result.majority))
        table.add_row(f"pass@{samples}", str(result.pass_at_k))
    table.add_row("abstentions", f"{100 * result.abstention_rate:.1f}%")
    console.print(table)
    console.print(f"model {model_name} | {result.generated_tokens} tokens generated in {seconds:.1f} s", markup=False)
    if out:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(result.model_dump_json(indent=2))
        except OSError as e:
            _fail(_os_message(e))
        console.print(f"wrote {out}", markup=False)


@app.command("transfer")
def transfer_command(
    run: Annotated[
        Path,
        typer.Argument(
            readable=False, help="a maft run directory (with at least iteration 0 finished)", show_default=False
        ),
    ],
    task: Annotated[
        str, typer.Option(help="the task to transfer to (" + ", ".join(task_names()) + ")", show_default=False)
    ],
    option: Annotated[
        list[str], typer.Option(help="task option key=value (YAML value), e.g. path=gsm8k.jsonl or high=35; repeatable")
    ] = [],
    n: Annotated[
        int, typer.Option(min=1, help="held-out test problems of the task, the same for every iteration")
    ] = 300,
    iterations: Annotated[
        list[str],
        typer.Option(
            "--iterations",
            "-i",
            help="iterations whose agents debate, e.g. 0,3 or -i 0 -i 3 "
            "(default: 0, the base model, and the last finished)",
        ),
    ] = [],
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Zero-shot transfer: a run's agents debate another task's held-out problems.

    The agents of each iteration debate N test problems of --task, with the run's
    own debate settings and engine. Majority, per-agent (round 1 and final round)
    and unanimous accuracy are printed and written to
    RUN/transfer/<task>[-<options hash>]/iter_<l>/.
    Finished iterations are kept: run it again to resume.
    """
    wanted: list[int] = []
    for value in iterations:
        try:
            wanted += [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            _fail(f"--iterations {value!r}: expected iteration numbers, e.g. 0,3")
    _transfer(run, task, n, _task_options(option), wanted, quiet=quiet)


def _transfer(run: Path, task: str, n: int, options: dict, iterations: list[int], *, quiet: bool) -> None:
    from maft.evaluation.transfer import transfer, transfer_dir
    from maft.store import RunDirError
    from maft.tasks import DatasetUnavailableError

    start = time.perf_counter()
    try:
        results = transfer(
            run, task, options=options, n=n, iterations=iterations or None, console=console, progress=not quiet
        )
    except OSError as e:  # an unreadable run directory or task file, a full disk
        _fail(_os_message(e))
    except (ValueError, DatasetUnavailableError, RunDirError, ServerError, EngineError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished iterations are kept: run the same command again")
        raise typer.Exit(code=130) from None
    table = Table(title=f"transfer: agents of {escape(str(run))} on {n} held-out {escape(task)} problems (debate)")
    for h in ["iteration", "majority % ± SE", "agent round 1 %", "agent final %", "unanimous %"]:
        table.add_column(h, justify="right")
    for it, m in results.items():
        table.add_row(
            str(it), str(m.majority), str(m.round_agent[0]), str(m.round_agent[-1]), f"{100 * m.unanimous:.1f}"
        )
    console.print(table)
    console.print(f"{time.perf_counter() - start:.0f} s; wrote {transfer_dir(run, task, options)}", markup=False)


def _write_report(source: Path) -> Path | None:
    """The HTML report of a finished run or comparison; a failure here never fails the finished work."""
    from maft.report.html import write_report

    try:
        return write_report(source)
    except Exception as e:  # noqa: BLE001 - the numbers are safe on disk; say why the page is missing
        console.print(
            f"[yellow]the report could not be written ({escape(str(e))}); "
            f"retry with: maft report {escape(str(source))}[/yellow]"
        )
        return None


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code=2)


def _hf_engine(model: str | None, **kwargs: Any) -> HFEngine:
    """The in-process engine, or one error line: a model that is not there, has no chat template, or a device this
    machine lacks."""
    from maft.checks import SetupError, check_device
    from maft.engines.hf import HFEngine

    try:
        check_device(kwargs.get("device", "auto"))
        return HFEngine(model, **kwargs)
    except OSError as e:
        _fail(_os_message(e) if e.filename else f"cannot load model {model}: {e}")
    except (ValueError, SetupError) as e:
        _fail(str(e))


#: OSErrors about files, not about maft: a full disk or quota, no permission, a read-only or failing filesystem.
FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _os_message(e: OSError) -> str:
    """One line: the file and what went wrong with it."""
    if e.filename is None:
        return str(e)
    other = f" -> {e.filename2}" if e.filename2 else ""
    hint = "; free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{e.filename}{other}: {e.strerror or e}{hint}"


def _notes(e: BaseException) -> str:
    """The notes added to an error (say, the other Ray tasks that failed with it), each on a line of its own."""
    return "".join(f"\n  {note}" for note in getattr(e, "__notes__", ()))


def _first_problem(e: Exception) -> str:
    """The first line of an error; of a validation error, the first field and its problem."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError) and e.errors():
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        return f"{e.title}: {where + ': ' if where else ''}{first['msg']}{more}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _note(message: str) -> None:
    console.print(f"[yellow]{escape(message)}[/yellow]")


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", readable=False, help="run config YAML (default: the embedded default run)"),
    ] = None,
    set_: Annotated[
        list[str], typer.Option("--set", "-s", help="override a config value, e.g. --set debate.agents=5")
    ] = [],
    method: Annotated[
        str | None,
        typer.Option(
            help="run a baseline or ablation instead of maft: " + ", ".join(m for m in METHODS if m != "maft")
        ),
    ] = None,
    iterations: Annotated[int | None, typer.Option(min=0, help="shorthand for --set iterations=N")] = None,
    out: Annotated[
        Path | None, typer.Option(readable=False, help="run directory (default: runs/<date>-<time>)")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(readable=False, help="continue the run in this directory; finished stages are kept"),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Multiagent finetuning: debate -> vote -> per-agent data -> finetune 2N agents, for L iterations."""
    from maft.baselines import method_conflicts, method_overrides
    from maft.config import ConfigError, load_config
    from maft.evaluation.diversity import EmbeddingsUnavailable
    from maft.loop import Society
    from maft.report.summary import iteration_table, title
    from maft.store import RunDirError, RunStore, discard_temporaries
    from maft.tasks import DatasetUnavailableError

    try:
        preset = method_overrides(method) if method else []
    except ValueError as e:
        _fail(str(e))
    overrides = [*preset, *set_, *([f"iterations={iterations}"] if iterations is not None else [])]
    try:
        if resume is not None:
            if out is not None and out != resume:
                _fail("give either --out (a new run) or --resume (an existing run), not both")
            given = None
            if config or overrides:  # overrides apply on top of the run's own config
                base = None if config else RunStore.saved_config(resume)
                given = load_config(config, overrides, base=base, saved=True)  # a saved run's config
            store = RunStore.open(resume, given, say=_note)
            for change in store.changed:
                console.print(f"[yellow]changed on resume:[/yellow] {escape(change)}")
        else:
            cfg = load_config(config, overrides)
            if method and (conflicts := method_conflicts(method, cfg)):
                _fail(
                    f"--method {method} contradicts {', '.join(conflicts)}: drop that setting, or run another "
                    "method (e.g. --method maft)"
                )
            from maft.loop import prepare

            prepare(cfg)  # bad task options or sizes fail here, before a run directory or model exists
            store = RunStore.create(out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"), cfg, say=_note)
        society = Society(store, console=console, progress=not quiet)
    except OSError as e:
        _fail(_os_message(e))
    except (ConfigError, RunDirError, ValueError, ServerError, EngineError, DatasetUnavailableError) as e:
        _fail(str(e))
    console.print(f"run directory [bold]{escape(str(store.root))}[/bold] (config hash {store.config.hash()})")
    start = time.perf_counter()
    resume_hint = f"finished stages are kept: fix the cause, then maft run --resume {escape(str(store.root))}"
    try:
        metrics = society.run()
    except KeyboardInterrupt:
        discard_temporaries()  # an interrupted finetune's .tmp-<role> folder
        console.print(
            f"[yellow]interrupted[/yellow]; finished stages are kept: maft run --resume {escape(str(store.root))}"
        )
        raise typer.Exit(code=130) from None
    except OSError as e:
        if e.filename is None and e.errno not in FILE_ERRNOS:  # not a file problem: show where it came from
            console.print(f"[red]the run stopped[/red]; {resume_hint}")
            raise
        console.print(f"[red]error:[/red] {escape(_os_message(e))}; the run stopped, {resume_hint}{escape(_notes(e))}")
        raise typer.Exit(code=1) from None
    except (ServerError, EngineError, EmbeddingsUnavailable) as e:  # its message says what to fix
        console.print(f"[red]error:[/red] {escape(str(e) + _notes(e))}")
        console.print(f"[red]the run stopped[/red]; {resume_hint}")
        raise typer.Exit(code=1) from None
    except Exception:
        console.print(f"[red]the run stopped[/red]; {resume_hint}")
        raise
    finally:
        society.close()
    console.print(iteration_table(metrics, title=title(store.config)))
    page = _write_report(store.root)
    console.print(
        f"{time.perf_counter() - start:.0f} s this invocation; "
        f"wrote {store.root / 'metrics.json'}, {store.root / 'summary.md'}"
        + (f" and the report {page}" if page else ""),
        markup=False,
    )


def _seeds(text: str | None) -> int | list[int] | None:
    """``--seeds``: a count K, or a comma-separated list of run seeds."""
    if text is None:
        return None
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        _fail(f"--seeds {text!r} is neither a count (e.g. --seeds 3) nor a list of seeds (e.g. --seeds 0,1,2)")
        return None


@app.command()
def compare(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            readable=False,
            help="compare YAML: methods and the run config (default: the default methods on the embedded default)",
        ),
    ] = None,
    set_: Annotated[
        list[str],
        typer.Option("--set", "-s", help="override a run config value for every method, e.g. --set iterations=1"),
    ] = [],
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated methods (default: the config's, else "
            + ",".join(DEFAULT_METHODS)
            + "; all: "
            + ",".join(METHODS)
            + ")"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(readable=False, help="comparison directory; run again to resume")] = Path(
        "runs/compare"
    ),
    seeds: Annotated[
        str | None,
        typer.Option(
            help="K: every method with run seeds seed+0..K-1 (in <out>/<method>/seed_<s>/), on the same problems, "
            "with 95% bootstrap intervals; or a comma-separated list of run seeds (default: the config's, else one)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run maft and the baselines on the same model and problems; write the Table-1-style comparison."""
    from maft.compare import compare as run_compare
    from maft.compare import comparison_table, load_compare_config
    from maft.config import ConfigError
    from maft.evaluation.diversity import EmbeddingsUnavailable
    from maft.store import RunDirError, discard_temporaries
    from maft.tasks import DatasetUnavailableError

    start = time.perf_counter()
    try:
        names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None  # "maft, star" too
        cfg = load_compare_config(config, set_, names, _seeds(seeds))
        results = run_compare(cfg, out, console=console, progress=not quiet)
    except OSError as e:
        _fail(_os_message(e))
    except (
        ConfigError,
        RunDirError,
        ValueError,
        ServerError,
        EngineError,
        EmbeddingsUnavailable,
        DatasetUnavailableError,
    ) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        discard_temporaries()
        console.print("[yellow]interrupted[/yellow]; finished stages are kept: run the same command again to resume")
        raise typer.Exit(code=130) from None
    console.print(comparison_table(results))
    page = _write_report(out)
    console.print(
        f"{time.perf_counter() - start:.0f} s this invocation; wrote {out / 'comparison.md'}"
        + (f" and the report {page}" if page else ""),
        markup=False,
    )


@app.command()
def report(
    source: Annotated[Path, typer.Argument(readable=False, help="a run directory or a comparison directory")],
    out: Annotated[
        Path | None, typer.Option(readable=False, help="report directory (default: <source>/report)")
    ] = None,
) -> None:
    """Plots (PNG) and a static HTML page with the tables and a browser of the debate transcripts."""
    from maft.report.html import write_report
    from maft.store import RunDirError

    try:
        if source.exists() and not source.is_dir():
            _fail(f"{source} is a file, not a run directory or a comparison directory")
        page = write_report(source, out)
    except OSError as e:  # a missing, unreadable or unwritable directory or file
        _fail(_os_message(e))
    except (ValueError, RunDirError) as e:  # a malformed metrics.json or comparison.json
        _fail(f"cannot write the report of {source}: {_first_problem(e)}")
    except (TypeError, KeyError, AttributeError, IndexError) as e:  # JSON of another shape than a run's
        _fail(
            f"cannot write the report of {source}: its metrics.json or comparison.json is not one maft writes "
            f"({type(e).__name__}: {_first_problem(e)})"
        )
    console.print(f"wrote {page} (open it in a browser)", markup=False)


@tiny_app.command("train")
def tiny_train(
    out: Annotated[Path, typer.Option(help="where to save the checkpoint")],
    steps: Annotated[int | None, typer.Option(min=1, help="training steps (default: the config's, else 7000)")] = None,
    seed: Annotated[int | None, typer.Option(help="data and init seed (default: the config's, else 0)")] = None,
    save_every: Annotated[int | None, typer.Option(help="also save step-N checkpoints")] = None,
    config: Annotated[Path | None, typer.Option(help="recipe config JSON/YAML (overrides the defaults)")] = None,
    init_from: Annotated[Path | None, typer.Option(help="continue training this checkpoint")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate (default: the recipe's)")] = None,
) -> None:
    """Pretrain the tiny model with maft's recipe (from scratch, or continuing a checkpoint)."""
    import yaml
    from pydantic import ValidationError

    from maft.tiny.recipe import RecipeConfig, pretrain

    given = {
        "steps": steps,
        "seed": seed,
        "save_every": save_every,
        "lr": lr,
        "init_from": str(init_from) if init_from else None,
    }
    try:
        base = yaml.safe_load(config.read_text()) if config else {}
        cfg = RecipeConfig(**{**(base or {}), **{k: v for k, v in given.items() if v is not None}})
    except OSError as e:
        _fail(_os_message(e))
    except (yaml.YAMLError, TypeError, ValidationError) as e:
        _fail(f"recipe config {config or '(options)'}: {e}")
    if cfg.init_from:  # before anything is written under --out
        from maft.checks import SetupError, check_model_files

        try:
            check_model_files(cfg.init_from)
        except SetupError as e:
            _fail(f"--init-from: {e}")
    start = time.perf_counter()
    pretrain(cfg, out)
    console.print(f"saved {out} after {cfg.steps} steps in {time.perf_counter() - start:.0f} s", markup=False)


@tiny_app.command("check")
def tiny_check(
    model: Annotated[str | None, typer.Option(help="checkpoint (default: the embedded one)")] = None,
    n: Annotated[int, typer.Option(min=1)] = 300,
    seed: int = 0,
) -> None:
    """Sampled, greedy, majority-of-3 and round-2 debate accuracy on held-out arithmetic problems."""
    from maft.tasks import get_task
    from maft.tiny.check import check

    task = get_task("arithmetic")
    start = time.perf_counter()
    result = check(_hf_engine(model), task, task.splits(0, n, seed=seed).test, seed=seed, progress=True)
    table = Table(title=f"tiny model on {n} held-out arithmetic problems")
    table.add_column("metric")
    table.add_column("accuracy % ± SE", justify="right")
    for name in ["single", "greedy", "majority_of_3", "debate_round2_agent", "debate_round2_majority"]:
        table.add_row(name.replace("_", " "), str(getattr(result, name)))
    console.print(table)
    console.print(f"abstentions {100 * result.abstention_rate:.1f}% | {time.perf_counter() - start:.1f} s")


# -- maft bench -----------------------------------------------------------------------------------------
bench_app = typer.Typer(
    help="Benchmarks: generation throughput of the engine paths, finetuning throughput of the training paths.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("generate")
def bench_generate_command(
    model: Annotated[
        str, typer.Option(help="tiny, a local checkpoint, or a shape with random weights (llama-1b, llama-8b)")
    ] = "tiny",
    agents: Annotated[int, typer.Option(min=1, help="agents (random seeded LoRA adapters, r=8, all-linear)")] = 3,
    prompts: Annotated[int, typer.Option(min=1, help="arithmetic task prompts per agent")] = 64,
    new_tokens: Annotated[int, typer.Option(min=1, help="tokens generated per request (end-of-sequence ignored)")] = 64,
    paths: Annotated[
        str, typer.Option(help="comma-separated: authors, hf-merged, hf-mixed, hf-cb, openai")
    ] = "authors,hf-merged,hf-mixed,hf-cb",
    out: Annotated[Path, typer.Option(help="write the result as JSON here")] = Path("bench.json"),
    device: str = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0, help="0 means greedy")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0, max=1)] = 0.9,
    seed: int = 0,
    url: Annotated[
        str | None, typer.Option(help="openai path: the server's base URL, e.g. http://127.0.0.1:8000/v1")
    ] = None,
    served_name: Annotated[
        str | None, typer.Option(help="openai path: the server's base model name (default: the model path)")
    ] = None,
    server_kind: Annotated[
        str,
        typer.Option(
            help="openai path: vllm or sglang serve the agents as adapters; transformers, api: base model only"
        ),
    ] = "api",
    concurrency: Annotated[int, typer.Option(min=1, help="openai path: requests in flight")] = 64,
    bandwidth_gbs: Annotated[
        float | None, typer.Option(help="memory bandwidth for the roofline (default: known GPUs by name)")
    ] = None,
    isolate: Annotated[bool, typer.Option(help="run each path in a fresh process (its own peak memory)")] = True,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU: torch threads of the in-process paths (default: all cores)")
    ] = None,
) -> None:
    """One debate round's generation (N agents x P prompts, a fixed number of new tokens) on each path:
    tokens/s, requests/s, seconds per round, ratio to the authors' one-at-a-time pattern, peak memory."""
    from maft.bench import (
        BenchConfig,
        BenchError,
        bench_generate,
        check_out,
        parse_paths,
        table,
        write,
    )

    try:
        cfg = BenchConfig(
            model=model,
            agents=agents,
            prompts=prompts,
            new_tokens=new_tokens,
            paths=parse_paths(paths),
            device=device,
            batch_size=batch_size,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            url=url,
            served_name=served_name,
            server_kind=server_kind,
            concurrency=concurrency,
            bandwidth_gbs=bandwidth_gbs,
            isolate=isolate,
            threads=threads,
        )
        cfg.check()
        check_out(out)
    except BenchError as e:
        _fail(str(e))
    start = time.perf_counter()
    result = bench_generate(cfg, echo=console.print)
    console.print(table(result))
    for path, reason in result["omitted"].items():
        console.print(f"[yellow]{escape(path)} omitted[/]: {escape(str(reason))}")
    for row in result["paths"]:
        console.print(f"{row['path']}: {row['note']}", markup=False)
    console.print(f"wrote {write(result, out)} | {time.perf_counter() - start:.0f} s", markup=False)


@bench_app.command("train")
def bench_train_command(
    shape: Annotated[str, typer.Option(help="tiny, or a shape with random weights (llama-1b, llama-8b)")] = "tiny",
    paths: Annotated[
        str, typer.Option(help="comma-separated: lora-sequential, lora-concurrent, full-sequential")
    ] = "lora-sequential,lora-concurrent,full-sequential",
    roles: Annotated[int, typer.Option(min=1, help="roles (half generation, half critic), each finetuned")] = 6,
    examples: Annotated[int, typer.Option(min=1, help="synthetic examples per role (one epoch)")] = 64,
    gen_tokens: Annotated[int, typer.Option(min=1, help="completion tokens of a generation example")] = 48,
    critic_tokens: Annotated[int, typer.Option(min=1, help="completion tokens of a critic example")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="train.batch_size")] = 16,
    out: Annotated[Path, typer.Option(help="write the result as JSON here")] = Path("bench-train.json"),
    device: str = "auto",
    seed: int = 0,
    peak_tflops: Annotated[
        float | None, typer.Option(help="peak dense TFLOP/s for the MFU (default: known GPUs by name)")
    ] = None,
    isolate: Annotated[bool, typer.Option(help="run each path in a fresh process (its own peak memory)")] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU: torch threads (default: all cores)")] = None,
    activation_checkpointing: Annotated[
        bool, typer.Option(help="recompute activations in the backward pass (TRL's default; a run decides by memory)")
    ] = True,
    repeats: Annotated[
        int, typer.Option(min=1, help="runs of each path, interleaved; the table shows the median run and the range")
    ] = 1,
    bf16: Annotated[
        str, typer.Option(help="train.bf16: auto (bf16 where the device computes it natively), true or false")
    ] = "auto",
) -> None:
    """One iteration's finetuning (R roles x E examples, one epoch) on each path: examples/s, tokens/s,
    set-up and training seconds, concurrent over sequential speedup, MFU on a GPU, peak memory."""
    from maft.bench import BenchError, check_out, write
    from maft.bench_train import TrainBenchConfig, bench_train, markdown, parse_paths, table

    try:
        cfg = TrainBenchConfig(
            shape=shape,
            roles=roles,
            examples=examples,
            gen_tokens=gen_tokens,
            critic_tokens=critic_tokens,
            batch_size=batch_size,
            paths=parse_paths(paths),
            device=device,
            seed=seed,
            peak_tflops=peak_tflops,
            isolate=isolate,
            threads=threads,
            activation_checkpointing=activation_checkpointing,
            repeats=repeats,
            bf16=bf16,
        )
        cfg.check()
        check_out(out)
        start = time.perf_counter()
        result = bench_train(cfg, echo=console.print)
    except BenchError as e:
        _fail(str(e))
    console.print(table(result))
    for path, reason in result["omitted"].items():
        console.print(f"[yellow]{escape(path)} omitted[/]: {escape(str(reason))}")
    console.print(markdown(result), markup=False)
    console.print(f"wrote {write(result, out)} | {time.perf_counter() - start:.0f} s", markup=False)


if __name__ == "__main__":
    app()
