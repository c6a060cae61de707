"""A small OpenAI-compatible server on loopback, for the fast tests of ``rag.generation_openai``.

It speaks what llama-cpp-python's server speaks (``/v1/models``, ``/v1/chat/completions``
streamed as Server-Sent Events or not, ``logprobs``/``top_logprobs``, ``/extras/tokenize``
and ``/extras/detokenize``) over a real socket, so the client's HTTP, SSE parsing,
retries and timeouts run for real. Its replies come from knobs, and it records every
request so a test can check what the client sent.

Its tokenizer is word-level: every run of non-blanks with its leading space is one
token (``"NOT FOUND"`` is ``["NOT", " FOUND"]``), ids handed out in order of first sight.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PIECE = re.compile(r"\s*\S+")


@dataclass
class Knobs:
    reply: str = "The door code is 4417 [1]."
    #: The first token's alternatives (token text, probability); the first is the one "chosen".
    top: list[tuple[str, float]] = field(default_factory=lambda: [("The", 0.6), ("NOT", 0.3), (" NOT", 0.05)])
    logprobs: bool = True  # False: the server returns "logprobs": null, as servers without them do
    tokenizer: bool = True  # False: /extras/* answer 404
    fail_first: int = 0  # answer this many requests to /v1/* with ``fail_status`` first
    fail_status: int = 503
    delay_s: float = 0.0  # wait before answering /v1/chat/completions
    die_after_pieces: int | None = None  # close the connection mid-stream after this many pieces
    models: list[str] = field(default_factory=lambda: ["tiny-model", "other-model"])


class FakeOpenAIServer:
    def __init__(self, knobs: Knobs | None = None) -> None:
        self.knobs = knobs or Knobs()
        self.requests: list[tuple[str, str, dict[str, Any] | None, dict[str, str]]] = []
        self.vocab: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    # --- the tokenizer
    def encode(self, text: str) -> list[int]:
        with self._lock:
            return [self.vocab.setdefault(p, len(self.vocab) + 1) for p in _PIECE.findall(text)]

    def decode(self, ids: list[int]) -> str:
        pieces = {i: p for p, i in self.vocab.items()}
        return "".join(pieces[i] for i in ids)

    def paths(self, method: str = "POST") -> list[str]:
        return [p for m, p, _, _ in self.requests if m == method]

    def chats(self) -> list[dict[str, Any]]:
        return [b for _, p, b, _ in self.requests if p == "/v1/chat/completions" and b is not None]

    # --- serving
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        self.requests.append((method, h.path, body, dict(h.headers)))
        k = self.knobs
        if h.path.startswith("/v1/") and k.fail_first > 0:
            k.fail_first -= 1
            return self._json(h, k.fail_status, {"error": {"message": "model is loading"}})
        if method == "GET" and h.path == "/v1/models":
            return self._json(h, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in k.models]})
        if method == "POST" and h.path == "/extras/tokenize" and k.tokenizer:
            return self._json(h, 200, {"tokens": self.encode(body["input"])})
        if method == "POST" and h.path == "/extras/detokenize" and k.tokenizer:
            return self._json(h, 200, {"text": self.decode(body["tokens"])})
        if method == "POST" and h.path == "/v1/chat/completions":
            time.sleep(k.delay_s)
            if body.get("stream"):
                return self._stream(h, body)
            return self._json(h, 200, self._completion(body))
        return self._json(h, 404, {"detail": "Not Found"})

    def _json(self, h: BaseHTTPRequestHandler, status: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        k = self.knobs
        first = k.top[0][0]
        logprobs = None
        if k.logprobs and body.get("logprobs"):
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in k.top[: body["top_logprobs"]]]
            logprobs = {"content": [{"token": first, "logprob": top[0]["logprob"], "top_logprobs": top}]}
        return {
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": first}, "logprobs": logprobs}],
        }

    def _stream(self, h: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        k = self.knobs
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Connection", "close")
        h.end_headers()
        pieces = _PIECE.findall(k.reply)[: body.get("max_tokens")]

        def event(data: Any) -> None:
            h.wfile.write(f"data: {json.dumps(data)}\r\n\r\n".encode())
            h.wfile.flush()

        h.wfile.write(b": ping - 2026-12-04\r\n\r\n")
        event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for n, piece in enumerate(pieces):
            if k.die_after_pieces is not None and n == k.die_after_pieces:
                h.wfile.write(b'data: {"choices": [{"delta": {"content": "tru')  # cut mid-event
                h.wfile.flush()
                h.close_connection = True
                h.connection.shutdown(2)
                return
            event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length" if pieces else "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            event({"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": len(pieces)}})
        h.wfile.write(b"data: [DONE]\r\n\r\n")
        h.close_connection = True


@contextmanager
def fake_openai_server(knobs: Knobs | None = None) -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(knobs)
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
