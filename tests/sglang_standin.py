"""A stand-in for SGLang's HTTP surface (SGLang does not run on these CPU-only machines), in the test process
(:class:`StandIn`) or as a server process of its own (``python sglang_standin.py PORT``, as a managed server):
runtime LoRA loading at the server root, ``model="<base>:<adapter>"``, SGLang's refusal to load a name it already
holds ("already exists", as ``LoRARegistry`` answers), and ``/v1/models`` listing the base model only."""

from __future__ import annotations

import http.server
import json
import sys
import threading

BASE = "base"


class StandIn:
    """Loads adapter names (refusing a name it holds), and answers a chat completion with the model's name."""

    def __init__(self, port: int = 0) -> None:
        self.adapters: dict[str, str] = {}
        self.loads: list[str] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # what a managed server's start waits for
                payload = json.dumps({"object": "list", "data": [{"id": BASE, "object": "model"}]}).encode()
                self.send_response(200 if self.path == "/v1/models" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

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

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> StandIn:
        """Serve from a thread of this process."""
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self


if __name__ == "__main__":
    StandIn(int(sys.argv[1])).server.serve_forever()
