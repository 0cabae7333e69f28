"""A minimal OpenAI-compatible chat-completions server for the tests (``POST /v1/chat/completions``).

It answers the judge prompts of ``layergrad.scoring.prompts`` by a fixed rule (:func:`answer`), and
misbehaves on purpose when the instruction holds a marker:

``[[429]]``/``[[500]]`` that status on the first request (with ``retry-after-ms: 10``), then the answer;
``[[slow]]`` the first request waits ``slow_s`` seconds (longer than the client's timeout);
``[[malformed]]`` a 200 whose body is cut-off JSON; ``[[refuse]]`` a refusal (content null);
``[[garbage]]`` an answer that no parser reads; ``[[down]]`` HTTP 500 while ``down`` is set.

Every request is counted per (kind, instruction) and its body kept, so tests can check temperature,
retries and the cache. Runs in a thread of the test process (``with JudgeServer() as s: s.url``).
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = "test-key"
MODEL = "judge-1"


def answer(kind: str, instruction: str) -> str:
    """The fake judge's answer: len(words) % 4 + 1 tags; difficulty len(chars) % 10 + 1."""
    if kind == "instag":
        n = len(instruction.split()) % 4 + 1
        return json.dumps([{"tag": f"t{i}", "explanation": "x"} for i in range(n)])
    return f"{len(instruction) % 10 + 1}\nBecause it is that hard."


def expected(kind: str, instruction: str) -> float:
    return float(len(instruction.split()) % 4 + 1) if kind == "instag" else float(len(instruction) % 10 + 1)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str):
        self._send(status, json.dumps({"error": {"message": message, "type": "test", "code": status}}).encode(),
                   {"retry-after-ms": "10"})

    def do_POST(self):  # noqa: N802
        s = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}")
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._error(401, "bad key")
        if body.get("model") != MODEL:
            return self._error(404, f"model {body.get('model')!r} not found")
        user = body["messages"][-1]["content"]
        instruction = user.split("[begin]\n", 1)[1].split("\n[end]", 1)[0]
        kind = "instag" if "tagging system" in user else "difficulty"
        with s.lock:
            s.counts[(kind, instruction)] += 1
            n = s.counts[(kind, instruction)]
            s.bodies.append(body)
        if s.delay:
            time.sleep(s.delay)
        if "[[429]]" in instruction and n == 1:
            return self._error(429, "slow down")
        if "[[500]]" in instruction and n == 1:
            return self._error(500, "oops")
        if "[[down]]" in instruction and s.down:
            return self._error(500, "down")
        if "[[slow]]" in instruction and n == 1:
            time.sleep(s.slow_s)
        if "[[malformed]]" in instruction:
            return self._send(200, b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assist')
        message = {"role": "assistant", "content": answer(kind, instruction)}
        if "[[refuse]]" in instruction:
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        if "[[garbage]]" in instruction:
            message = {"role": "assistant", "content": "I think it's fine."}
        out = {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": MODEL,
               "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        try:
            self._send(200, json.dumps(out).encode())
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            pass


class JudgeServer:
    def __init__(self, delay: float = 0.0, slow_s: float = 1.5):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        st = self.httpd.state = self
        st.lock, st.counts, st.bodies = threading.Lock(), Counter(), []
        st.delay, st.slow_s, st.down = delay, slow_s, False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
