"""The sglang server kind against a stand-in for SGLang's HTTP surface (SGLang does not run on these CPU-only
machines): runtime LoRA loading at the server root, ``model="<base>:<adapter>"``, and SGLang's refusal to load a
name it already holds ("already exists", as ``LoRARegistry`` answers); as a managed server, a crash and a restart that
holds none of the adapters (the stand-in in a process of its own: tests/sglang_standin.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from sglang_standin import BASE, StandIn
from transformers import AutoModelForCausalLM

from maft.agents import Agents
from maft.engines import Request, Sampling
from maft.engines.openai import OpenAIEngine
from maft.servers import ServerError
from maft.servers.managed import ManagedServers, free_port
from maft.servers.sglang import SGLangServer
from maft.tiny import default_checkpoint


@pytest.fixture
def stand_in():
    server = StandIn().start()
    yield server
    server.server.shutdown()


def adapter(out: Path) -> Path:
    model = AutoModelForCausalLM.from_pretrained(default_checkpoint())
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(out)
    return out


def test_a_name_the_server_already_holds_is_used_after_the_canary(stand_in, tmp_path):
    """A resumed run (or maft transfer) meets the adapters it loaded before: the same name is the same weights
    (names carry their fingerprint), so SGLang's refusal to load it again is not an error."""
    agents = Agents(1, {"gen_0": adapter(tmp_path / "iter_1" / "gen_0")})
    first = OpenAIEngine(stand_in.url, BASE, server=SGLangServer(tag="maft-run"))
    first.serve(agents)
    resumed = OpenAIEngine(stand_in.url, BASE, server=SGLangServer(tag="maft-run"))  # a new process: loaded nothing
    resumed.serve(agents)
    assert stand_in.loads == [resumed.names["gen_0"].partition(":")[2]] * 2  # asked twice, refused once
    request = Request([{"role": "user", "content": "1+1?"}], adapter="gen_0", sampling=Sampling(max_new_tokens=8))
    assert resumed.generate([request])[0].text.startswith("answer of maft-run-i1-gen_0-")


def test_any_other_refusal_still_stops_the_run(stand_in, tmp_path):
    engine = OpenAIEngine(stand_in.url, BASE, server=SGLangServer(tag="maft-run"))
    path = adapter(tmp_path / "gen_0")
    original = stand_in.server.RequestHandlerClass.do_POST

    def refuse(handler) -> None:  # a server started without --enable-lora
        if handler.path == "/load_lora_adapter":
            handler.rfile.read(int(handler.headers["content-length"]))
            handler.send_response(400)
            handler.send_header("content-length", "2")
            handler.end_headers()
            handler.wfile.write(b"{}")
            return
        original(handler)

    stand_in.server.RequestHandlerClass.do_POST = refuse
    with pytest.raises(ServerError, match="could not load the adapter of gen_0.*--enable-lora"):
        engine.serve(Agents(1, {"gen_0": path}))


def test_a_managed_server_restarted_after_a_crash_gets_the_adapters_again(tmp_path, monkeypatch):
    """A managed SGLang server that died is started again, empty, here on the port it had (the system may hand
    out a port again): the adapters this run loaded on the old process are loaded again before the next request,
    which is answered by the agent, not refused."""
    port = free_port()
    monkeypatch.setattr("maft.servers.managed.free_port", lambda: port)
    standin = Path(__file__).with_name("sglang_standin.py")
    managed = ManagedServers(
        command=lambda port: [sys.executable, str(standin), str(port)], log_dir=tmp_path, say=lambda _: None
    )
    engine = OpenAIEngine([], BASE, server=SGLangServer(tag="maft-run", managed=managed), max_retries=0)
    try:
        engine.serve(Agents(1, {"gen_0": adapter(tmp_path / "iter_1" / "gen_0")}))
        request = Request([{"role": "user", "content": "1+1?"}], adapter="gen_0", sampling=Sampling(max_new_tokens=8))
        assert engine.generate([request])[0].text.startswith("answer of maft-run-i1-gen_0-")
        managed.processes[0].kill()  # the crash
        managed.processes[0].wait()
        assert engine.generate([request])[0].text.startswith("answer of maft-run-i1-gen_0-")
        assert managed.starts == 2 and managed.urls == [f"http://127.0.0.1:{port}/v1"]
    finally:
        managed.stop()
