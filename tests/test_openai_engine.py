"""OpenAIEngine against a real `transformers serve` on 127.0.0.1 (and a fault proxy in front of it).

The server loads the shipped tiny model (and merged agents) by path, as a user's server would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from interrupt import sigint_default
from servers import FaultProxy, transformers_serve

from maft.agents import Agents, agents_at, fingerprint
from maft.config import load_config
from maft.debate.transcript import Turn
from maft.engines import Request, Sampling
from maft.engines.openai import EngineError, OpenAIEngine
from maft.loop import Society
from maft.servers import ServerError, TransformersServer  # noqa: F401
from maft.serving import check_serving
from maft.store import RunStore, read_jsonl
from maft.tiny import default_checkpoint

pytestmark = pytest.mark.slow
TINY = str(default_checkpoint().resolve())
SAMPLED = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=48)
GREEDY = Sampling(temperature=0, max_new_tokens=48)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = transformers_serve(tmp_path_factory.mktemp("serve") / "server.log").start()
    yield s
    s.stop()


@pytest.fixture
def proxy(server):
    p = FaultProxy(server.url.removesuffix("/v1"))
    yield p
    p.close()


def ask(arithmetic, n, sampling=SAMPLED, seed=7):
    return [
        Request([{"role": "user", "content": arithmetic.prompt(p)}], sampling=sampling)
        for p in arithmetic.splits(0, n, seed=seed).test
    ]


def texts(engine, requests, seed=0):
    return [g.text for g in engine.generate(requests, seed=seed)]


def test_ordered_seeded_results_with_usage(server, arithmetic):
    # transformers serve seeds one global generator per request: reproducible one request at a time
    # (vLLM seeds each request on its own: tests/test_vllm.py checks seeds under concurrency)
    engine = OpenAIEngine(server.url, TINY, concurrency=1)
    requests = ask(arithmetic, 6)
    first = engine.generate(requests, seed=3)
    assert all(g.prompt_tokens > 0 and g.completion_tokens > 0 for g in first)
    assert [g.text for g in first] == texts(engine, requests, seed=3)  # same seed, same texts
    assert [g.text for g in first] != texts(engine, requests, seed=4)
    # a request's text depends on its own content-derived seed, not on the other requests or their order
    reversed_texts = texts(engine, requests[::-1], seed=3)
    alone = [engine.generate([r], seed=3)[0].text for r in requests[:1]]
    assert alone[0] == first[0].text
    assert reversed_texts[::-1] == [g.text for g in first]
    # greedy answers equal the in-process engine's (same model, same chat template)
    from maft.engines.hf import HFEngine

    greedy = ask(arithmetic, 3, GREEDY)
    assert texts(engine, greedy) == [g.text for g in HFEngine(batch_size=8).generate(greedy)]


def test_truncation_is_reported(server, arithmetic):
    engine = OpenAIEngine(server.url, TINY)
    [g] = engine.generate(ask(arithmetic, 1, Sampling(temperature=0, max_new_tokens=5)))
    assert g.truncated and g.completion_tokens == 5
    [g] = engine.generate(ask(arithmetic, 1, GREEDY.__class__(temperature=0, max_new_tokens=400)))
    assert not g.truncated


def test_concurrency_bound_and_retries_through_faults(proxy, arithmetic):
    engine = OpenAIEngine(proxy.url, TINY, concurrency=3, backoff=0.01)
    proxy.delay = 0.2
    requests = ask(arithmetic, 9, GREEDY)
    expected = texts(OpenAIEngine(proxy.url, TINY), requests, seed=5)
    proxy.in_flight_max = 0
    proxy.fail(429, 2, retry_after="0")
    proxy.fail(503, 1)
    proxy.drop(1)
    assert texts(engine, requests, seed=5) == expected  # every request answered, in order
    assert proxy.in_flight_max <= 3
    assert engine.retries["RateLimitError"] == 2 and engine.retries["InternalServerError"] == 1
    assert engine.retries["APIConnectionError"] == 1


def test_client_errors_stop_with_the_servers_message(proxy, arithmetic):
    engine = OpenAIEngine(proxy.url, TINY, backoff=0.01)
    proxy.fail(400)
    with pytest.raises(EngineError, match="HTTP 400.*injected fault"):
        engine.generate(ask(arithmetic, 1))
    engine = OpenAIEngine(proxy.url, TINY, max_retries=1, backoff=0.01)
    proxy.fail(500, 2)
    with pytest.raises(EngineError, match="failed 2 times"):
        engine.generate(ask(arithmetic, 1))


def test_unknown_model_stops_after_the_retries(server, arithmetic):
    # transformers serve answers 500 for a model it cannot load (on a busy machine it has also dropped the
    # connection instead, once in four CI runs): either way retried, then one clear error naming the endpoint
    engine = OpenAIEngine(server.url, "/no/such/model", max_retries=1, backoff=0.01)
    with pytest.raises(
        EngineError, match=r"failed 2 times \((InternalServerError|APIConnectionError).*endpoints: http"
    ):
        engine.generate(ask(arithmetic, 1))


def test_several_endpoints_share_the_load_and_cover_a_dead_one(server, arithmetic):
    a, b = FaultProxy(server.url.removesuffix("/v1")), FaultProxy(server.url.removesuffix("/v1"))
    try:
        a.delay = b.delay = 0.05
        engine = OpenAIEngine([a.url, b.url, "http://127.0.0.1:9/v1"], TINY, concurrency=4, backoff=0.01)
        requests = ask(arithmetic, 8, GREEDY)
        assert texts(engine, requests, seed=2) == texts(OpenAIEngine(server.url, TINY), requests, seed=2)
        counts = engine.endpoint_counts()
        assert counts[a.url]["requests"] >= 3 and counts[b.url]["requests"] >= 3
        assert counts["http://127.0.0.1:9/v1"]["failures"] == counts["http://127.0.0.1:9/v1"]["requests"] >= 1
    finally:
        a.close()
        b.close()


def test_generate_inside_a_running_event_loop(server, arithmetic):
    engine = OpenAIEngine(server.url, TINY)
    requests = ask(arithmetic, 2, GREEDY)  # greedy: transformers serve's seeds are not per request

    async def inside():
        return texts(engine, requests, seed=1)

    assert asyncio.run(inside()) == texts(engine, requests, seed=1)


def test_server_killed_and_restarted_mid_round(tmp_path, arithmetic):
    """The server is killed (SIGKILL: no graceful drain of the requests in flight) once the round's first answer
    is in, and restarted: the lost requests are retried and every text is the one an undisturbed round gives."""
    s = transformers_serve(tmp_path / "server.log").start()
    engine = OpenAIEngine(s.url, TINY, concurrency=2, max_retries=30, backoff=0.5)
    requests = ask(arithmetic, 16, GREEDY)
    expected = texts(engine, requests, seed=9)

    def answered() -> int:
        return s.log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')

    before = answered()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(texts=texts(engine, requests, seed=9)))
    try:
        worker.start()
        deadline = time.monotonic() + 120
        while answered() == before and time.monotonic() < deadline:
            time.sleep(0.01)
        s.kill()  # mid-round: after this round's first answer, with the rest to come
        assert before < answered() < before + len(requests)
        s.start()
        worker.join(timeout=300)
    finally:
        s.stop()
    assert result["texts"] == expected
    assert engine.retries["APIConnectionError"] >= 1


def lora_agent(out, *, seed, scale):
    """A rank-4 LoRA adapter of the tiny model saved at ``out``, its B weights drawn from N(0, scale) after seeding
    with ``seed`` (scale 0: all zero, an adapter that answers as the base model)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(TINY), LoraConfig(r=4, target_modules="all-linear"))
    torch.manual_seed(seed)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, scale) if scale else p.data.zero_()
    model.save_pretrained(out)
    return out


def test_merged_agents_served_by_path_and_checked_by_the_canary(server, tmp_path, arithmetic, capsys):
    root = tmp_path / "run"
    for role, scale in [("gen_0", 0.3), ("critic_0", 0.0)]:  # critic_0's adapter equals the base model
        lora_agent(root / "iter_1" / "agents" / role, seed=1, scale=scale)
    kind = TransformersServer(base_model=TINY)
    engine = OpenAIEngine(server.url, TINY, server=kind)
    agents = Agents(1, {"gen_0": root / "iter_1/agents/gen_0"})
    who = engine.serve(agents)
    assert who(0, 1) == "gen_0" and who(0, 2) is None
    first = root / "iter_1/served" / f"gen_0-{fingerprint(root / 'iter_1/agents/gen_0')}"
    assert engine.names["gen_0"] == str(first) and (first / "config.json").is_file()
    request = ask(arithmetic, 1, GREEDY)[0]
    base, agent = texts(engine, [request, Request(request.messages, adapter="gen_0", sampling=GREEDY)])
    assert base != agent
    # the role retrained (a resume redoing its stage): served from a new path, never the server's copy of the old
    lora_agent(root / "iter_1" / "agents" / "gen_0", seed=2, scale=0.6)
    engine.serve(agents)
    assert engine.names["gen_0"] != str(first) and not first.exists()  # the old copy is gone
    retrained = texts(engine, [Request(request.messages, adapter="gen_0", sampling=GREEDY)])[0]
    assert retrained != agent
    # a fully finetuned agent is served from its own folder, through a link named for its weights
    import shutil
    from pathlib import Path

    shutil.copytree(TINY, root / "iter_1" / "agents" / "gen_1")  # a full checkpoint (here: the base model's weights)
    engine.serve(Agents(1, {"gen_1": root / "iter_1/agents/gen_1"}))
    link = Path(engine.names["gen_1"])
    assert link.is_symlink() and link.resolve() == (root / "iter_1/agents/gen_1").resolve()
    assert not Path(os.readlink(link)).is_absolute()  # it still reaches the checkpoint when the run folder moves
    assert texts(engine, [Request(request.messages, adapter="gen_1", sampling=GREEDY)])[0] == base
    # transformers serve gives text only: an agent that answers as the base model is reported, not refused
    engine.serve(Agents(1, {"critic_0": root / "iter_1/agents/critic_0"}))
    assert "critic_0 answer the canary as the base model" in capsys.readouterr().out


def test_unreachable_url_refused_before_a_run_directory(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maft.cli",
            "run",
            "--out",
            str(out),
            "--set",
            "model.engine=openai",
            "--set",
            "execution.urls=[http://127.0.0.1:9/v1]",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no answer from http://127.0.0.1:9/v1" in " ".join(result.stdout.split())
    assert not out.exists()


def test_api_kind_refuses_finetuning_up_front():
    with pytest.raises(Exception, match="without adapters"):
        load_config(None, ["model.engine=openai", "model.server_kind=api", "execution.urls=[http://x/v1]"])
    cfg = load_config(
        None, ["model.engine=openai", "model.server_kind=api", "execution.urls=[http://127.0.0.1:9/v1]", "iterations=0"]
    )
    with pytest.raises(ServerError, match="no answer"):
        check_serving(cfg)


def test_a_managed_servers_python_may_be_a_command_on_the_path(monkeypatch):
    """execution.server_python=python3.11 (a name the shell finds) is checked where it is found, not refused as a
    missing file."""
    import shutil
    from pathlib import Path

    python = Path(sys.executable)
    monkeypatch.setenv("PATH", f"{python.parent}:{os.environ.get('PATH', '')}")
    assert shutil.which(python.name) is not None
    managed = ["model.engine=openai", "model.server_kind=transformers", "execution.server=managed", "iterations=0"]
    check_serving(load_config(None, [*managed, f"execution.server_python={python.name}"]))  # transformers serve
    with pytest.raises(ServerError, match="needs transformers installed in no-such-python3"):
        check_serving(load_config(None, [*managed, "execution.server_python=no-such-python3"]))


def test_maft_run_on_transformers_serve(server, tmp_path):
    """One iteration of the loop through the server: transcripts and metrics as with the hf engine."""
    cfg = load_config(
        None,
        [
            "model.engine=openai",
            "model.server_kind=transformers",
            f"execution.urls=[{server.url}]",
            "iterations=1",
            "debate.agents=2",
            "task.n_train=12",
            "task.n_test=8",
            "diversity.embeddings=off",
            "debate.max_new_tokens=96",
            "train.batch_size=4",
        ],
    )
    store = RunStore.create(tmp_path / "run", cfg)
    society = Society(store, progress=False)
    metrics = society.run()
    society.close()
    assert [m.iteration for m in metrics] == [0, 1]
    turns = read_jsonl(store.root / "iter_1/debate_test.jsonl", Turn)
    assert {(t.round, t.adapter) for t in turns} == {(1, f"gen_{n}") for n in range(2)} | {
        (2, f"critic_{n}") for n in range(2)
    }
    assert metrics[1].test.majority.n == 8 and metrics[0].diversity is not None
    assert metrics[0].diversity.cross_nll is None  # transformers serve gives no prompt log-probabilities
    stage = json.loads((store.root / "manifest.json").read_text())["stages"]["iter_1/debate_test"]
    assert stage["endpoints"][server.url]["requests"] == 8 * 2 * 2
    assert agents_at(cfg, store.root, 1).models["gen_0"].is_dir()
    assert all(len(list((store.root / "iter_1/served").glob(f"gen_{n}-*/config.json"))) == 1 for n in range(2))
    # resume redoes nothing
    again = Society(RunStore.open(store.root), progress=False)
    assert [m.test.majority for m in again.run()] == [m.test.majority for m in metrics]


def test_a_server_lost_mid_stage_stops_the_run_and_resume_redoes_only_that_stage(server, tmp_path):
    proxy = FaultProxy(server.url.removesuffix("/v1"))
    try:
        cfg = load_config(
            None,
            [
                "model.engine=openai",
                "model.server_kind=transformers",
                f"execution.urls=[{proxy.url}]",
                "execution.max_retries=1",
                "iterations=1",
                "debate.agents=2",
                "task.n_train=6",
                "task.n_test=4",
                "diversity.embeddings=off",
                "debate.max_new_tokens=64",
                "train.batch_size=4",
            ],
        )
        # iter_0/debate_test is 4 problems x 2 agents x 2 rounds = 16 requests; the server dies 5 requests
        # into iter_1/debate_train
        proxy.down_after(16 + 5)
        store = RunStore.create(tmp_path / "run", cfg)
        with pytest.raises(EngineError, match="failed 2 times"):
            Society(store, progress=False).run()
        before = json.loads((store.root / "manifest.json").read_text())["stages"]
        assert "iter_0/debate_test" in before and "iter_0/metrics" in before
        assert not any(k.startswith("iter_1/") for k in before)
        assert not (store.root / "iter_1" / "debate_train.jsonl").exists()

        proxy.down_after(None)  # the server is back
        society = Society(RunStore.open(store.root), progress=False)
        metrics = society.run()
        after = json.loads((store.root / "manifest.json").read_text())["stages"]
        assert after["iter_0/debate_test"] == before["iter_0/debate_test"]  # kept, not redone
        assert len(read_jsonl(store.root / "iter_1" / "debate_train.jsonl", Turn)) == 6 * 2 * 2
        assert [m.iteration for m in metrics] == [0, 1]
    finally:
        proxy.close()


def test_maft_evaluate_against_a_server_equals_the_hf_engine_greedy(server, tmp_path):
    from typer.testing import CliRunner

    from maft.cli import app

    outputs = []
    for extra in (["--url", server.url], []):
        out = tmp_path / f"eval{len(outputs)}.json"
        result = CliRunner().invoke(
            app,
            [
                "evaluate",
                "--n",
                "4",
                "--temperature",
                "0",
                "--max-new-tokens",
                "96",
                "--model",
                TINY,
                "--out",
                str(out),
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        outputs.append([r["response"] for r in json.loads(out.read_text())["records"]])
    assert outputs[0] == outputs[1]
    refused = CliRunner().invoke(app, ["evaluate", "--n", "2", "--url", "http://127.0.0.1:9/v1"])
    assert refused.exit_code == 2 and "no answer from http://127.0.0.1:9/v1" in " ".join(refused.output.split())


def test_maft_compare_runs_one_managed_server_at_a_time(tmp_path, monkeypatch):
    """Each method's run has its own server engine; the previous one's managed server stops before the next
    starts (two vLLM servers on one GPU would not both fit)."""
    from maft.compare import CompareConfig, compare
    from maft.servers.managed import ManagedServers

    running: list[ManagedServers] = []
    overlaps: list[int] = []
    start = ManagedServers.start

    def started(self):
        if not self.running:
            overlaps.append(sum(other.running for other in running))
            running.append(self)
        return start(self)

    monkeypatch.setattr(ManagedServers, "start", started)
    run = {
        "model": {"engine": "openai", "server_kind": "transformers"},
        "execution": {"server": "managed"},
        "task": {"n_test": 4},
        "debate": {"max_new_tokens": 32},
        "diversity": {"enabled": False},
    }
    compare(CompareConfig(methods=["single", "majority"], run=run), tmp_path / "cmp", progress=False)
    assert overlaps == [0, 0]  # two servers started, never beside another
    assert len(running) == 2 and not any(server.running for server in running)  # both stopped at the end


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_managed_server_ends_with_maft(tmp_path, how):
    """No orphan: Ctrl-C ends the server through maft's exit handler, kill -9 through the parent-death signal."""
    import re

    out = tmp_path / "run"
    maft = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maft.cli",
            "run",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "model.engine=openai",
            "--set",
            "model.server_kind=transformers",
            "--set",
            "execution.server=managed",
            "--set",
            "iterations=0",
            "--set",
            "task.n_test=300",
            "--set",
            "diversity.enabled=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=sigint_default,  # Ctrl-C must reach it however the suite was launched
    )
    log = out / "server-0.log"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not (log.is_file() and "/v1/chat/completions" in log.read_text()):
            assert maft.poll() is None, "maft exited before its server answered a request"
            time.sleep(0.5)
        pid = int(re.search(r"=== server pid (\d+)", log.read_text()).group(1))
        os.kill(pid, 0)  # the server runs, mid-debate
        maft.send_signal(how)
        maft.wait(timeout=60)
        # after kill -9 the kernel sends SIGKILL: a SIGTERM would let transformers serve (uvicorn's graceful
        # shutdown) finish every request in flight first, minutes on a busy machine
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.5)
        assert not _alive(pid), f"the managed server outlived maft ({how!r})"
    finally:
        if maft.poll() is None:
            maft.kill()


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_server_that_wants_an_api_key_is_sent_it(proxy, server, tmp_path, arithmetic, monkeypatch):
    """A server started with an API key (vLLM's --api-key) answers 401 without it, to the OpenAI client and to
    maft's own requests (model lists, adapter serving, the canary) alike: with the key in execution.api_key_env,
    every request carries it; without, the run is refused up front, naming the setting."""
    from maft.serving import make_engine

    proxy.key = "sk-maft-test"
    settings = [
        "model.engine=openai",
        "model.server_kind=transformers",
        f"model.name={TINY}",
        f"execution.urls={json.dumps([proxy.url])}",
        "execution.api_key_env=MAFT_TEST_KEY",
    ]
    config = load_config(None, settings)
    monkeypatch.delenv("MAFT_TEST_KEY", raising=False)
    with pytest.raises(ServerError, match="wants an API key.*execution.api_key_env"):
        check_serving(config)
    monkeypatch.setenv("MAFT_TEST_KEY", "sk-maft-test")
    check_serving(config)
    lora_agent(tmp_path / "iter_1" / "agents" / "gen_0", seed=1, scale=0.3)
    engine = make_engine(config, tmp_path)
    engine.serve(Agents(1, {"gen_0": tmp_path / "iter_1/agents/gen_0"}))  # the canary asks through the proxy
    request = ask(arithmetic, 1, GREEDY)[0]
    base, agent = texts(engine, [request, Request(request.messages, adapter="gen_0", sampling=GREEDY)])
    assert base != agent and proxy.unauthorized == 1  # only the up-front check without the key was refused
