"""Servers that maft starts and stops itself (``execution.server: managed``).

One server process per entry of ``execution.server_devices`` (each sees only its GPU through
``CUDA_VISIBLE_DEVICES``; no entries: one server that sees what maft sees), each on a free loopback
port, its output appended to ``<run>/server-<i>.log``. ``start`` waits until every server lists its
models at ``/v1/models`` (or stops with the log's last lines when one exits first).

No orphans: a server runs in a process group of its own, and the whole group (children included) is
asked to end (SIGTERM, then SIGKILL for what is left after 30 s) when maft stops it, exits or is
interrupted (``atexit``); and the kernel sends it a signal if maft itself dies without cleaning up
(``PR_SET_PDEATHSIG``, Linux): SIGTERM, or SIGKILL for a server whose SIGTERM would wait for every
request in flight (``parent_death_signal``).

``stop_for_training``: on a single GPU the server holds most of its memory, so it is stopped while
the 2N agents are finetuned and started again for the next debate (vLLM's sleep mode would keep the
process but needs a development-mode endpoint; a restart is what every server kind supports).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from maft.servers.errors import ServerError

_RUNNING: list[ManagedServers] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when maft dies (``PR_SET_PDEATHSIG``)."""

    def arm() -> None:  # pragma: no cover - runs in the child between fork and exec
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
        except OSError:
            pass

    return arm


def _alive(process: subprocess.Popen) -> Callable[[], bool]:
    """Whether ``process`` still runs (asked while waiting for its server to answer)."""
    return lambda: process.poll() is None


@dataclass
class ManagedServers:
    """``command(port)`` is the server's command line; ``env`` is added to maft's environment."""

    command: Callable[[int], list[str]]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    devices: Sequence[str | None] = (None,)
    stop_for_training: bool = False
    #: what the server gets if maft dies without cleaning up: SIGTERM lets vLLM/SGLang stop their engine
    #: processes; a single-process server whose SIGTERM waits for every request in flight (``transformers
    #: serve``: uvicorn's graceful shutdown has no time limit) is better killed
    parent_death_signal: int = signal.SIGTERM
    startup_timeout: float = 600.0
    api_key: str | None = None  # the key a server started with --api-key wants (execution.api_key_env)
    say: Callable[[str], None] = print
    processes: list[subprocess.Popen] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    starts: int = 0

    @property
    def running(self) -> bool:
        return bool(self.processes) and all(p.poll() is None for p in self.processes)

    def start(self) -> list[str]:
        """Start the servers unless they run; returns their base URLs (``http://127.0.0.1:<port>/v1``)."""
        if self.running:
            return self.urls
        self.stop()
        from maft.engines.openai import EngineError, wait_until_ready

        self.log_dir.mkdir(parents=True, exist_ok=True)
        begin = time.perf_counter()
        for i, device in enumerate(self.devices):
            port = free_port()
            command = self.command(port)
            env = {**os.environ, **self.env}
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(device)
            log = open(self.log_dir / f"server-{i}.log", "a")
            log.write(f"\n=== maft starts: {' '.join(command)} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            log.flush()
            try:
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(self.parent_death_signal),
                )
            except OSError as e:
                raise ServerError(
                    f"could not start the server ({command[0]}: {e}); check execution.server_python"
                ) from None
            else:
                log.write(f"=== server pid {process.pid}\n")
            finally:
                log.close()
            self.processes.append(process)
            self.urls.append(f"http://127.0.0.1:{port}/v1")
        if self not in _RUNNING:
            _RUNNING.append(self)
        for i, (url, process) in enumerate(zip(self.urls, self.processes)):
            try:
                wait_until_ready(url, timeout=self.startup_timeout, alive=_alive(process), api_key=self.api_key)
            except EngineError as e:
                tail = self.log_tail(i)
                self.stop()
                raise ServerError(f"the managed server did not come up: {e}\n{tail}") from None
        self.starts += 1
        self.say(f"managed server(s) up in {time.perf_counter() - begin:.0f} s: {', '.join(self.urls)}")
        return self.urls

    def stop(self, why: str | None = None) -> None:
        """End every server process and every process of its group (children such as vLLM's engine core
        and multiprocessing's resource tracker outlive their parent by a moment); a no-op when none runs."""
        if not self.processes:
            return
        for p in self.processes:
            _signal_group(p.pid, self.parent_death_signal)  # what the server gets if maft dies (module docstring)
        deadline = time.monotonic() + 30
        for p in self.processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if not _group_ended(p.pid, deadline):
                _signal_group(p.pid, signal.SIGKILL)
                _group_ended(p.pid, time.monotonic() + 5)
            p.wait()
        self.processes, self.urls = [], []
        if why:
            self.say(f"managed server(s) stopped: {why}")

    def log_tail(self, i: int, lines: int = 15) -> str:
        path = self.log_dir / f"server-{i}.log"
        text = path.read_text(errors="replace").splitlines() if path.is_file() else []
        return f"last lines of {path}:\n" + "\n".join(text[-lines:])


def _signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone (or, on BSDs, left with zombies only) is
    not an error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in process group ``pgid``; where ``/proc`` is missing,
    whether the group can still be signalled."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _group_ended(pgid: int, deadline: float) -> bool:
    """Wait until no live process is left in process group ``pgid``, or until ``deadline`` (monotonic);
    whether the group ended."""
    while _group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@atexit.register
def _stop_all() -> None:
    for servers in _RUNNING:
        servers.stop()
