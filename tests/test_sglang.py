"""The sglang server kind against a stand-in for SGLang's HTTP surface (SGLang does not run on these CPU-only
machines): runtime LoRA loading at the server root, ``model="<base>:<adapter>"``, and SGLang's refusal to load a
name it already holds ("already exists", as ``LoRARegistry`` answers)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from maft.agents import Agents
from maft.engines import Request, Sampling
from maft.engines.openai import OpenAIEngine
from maft.servers import ServerError
from maft.servers.sglang import SGLangServer
from maft.tiny import default_checkpoint

BASE = "base"


class StandIn:
    """Loads adapter names (refusing a name it holds), and answers a chat completion with the model's name."""

    def __init__(self) -> None:
        self.adapters: dict[str, str] = {}
        self.loads: list[str] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, answer = 200, {}
                if self.path == "/load_lora_adapter":
                    stand_in.loads.append(body["lora_name"])
                    if body["lora_name"] in stand_in.adapters:
                        status, answer = 400, {"error": f"LoRA with name {body['lora_name']} already exists"}
                    else:
                        stand_in.adapters[body["lora_name"]] = body["lora_path"]
                elif self.path == "/unload_lora_adapter":
                    stand_in.adapters.pop(body["lora_name"], None)
                elif self.path == "/v1/chat/completions":
                    base, _, adapter = body["model"].partition(":")
                    if base != BASE or (adapter and adapter not in stand_in.adapters):
                        status, answer = 400, {"error": f"no model {body['model']}"}
                    else:
                        text = f"answer of {adapter or 'the base model'}"
                        answer = {
                            "id": "x",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body["model"],
                            "choices": [
                                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
                        }
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stand_in():
    server = StandIn()
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
