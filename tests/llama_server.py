"""A real OpenAI-compatible server on loopback: llama-cpp-python's own (``python -m llama_cpp.server``).

Started by the slow tests (``tests/test_generation_server.py``) on the shipped GGUF, on a
free port, and always stopped again: the context manager terminates it (then kills it)
however the block ends. Needs the ``llama-cpp-python[server]`` extra (a dev dependency).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

#: The name the server gives the model (its /v1/models id), instead of the file's full path.
ALIAS = "qwen2.5-coder-1.5b-instruct-q4_k_m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """A running server: its base URL (``http://127.0.0.1:PORT/v1``) and a way to stop it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url
        self.where = url.removeprefix("http://").removesuffix("/v1")  # host:port, as generator ids name it

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it after 10 s; returns once it is gone (twice is fine)."""
        proc = self.proc
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@contextmanager
def llama_server(
    gguf: Path, log: Path, *, n_ctx: int = 4096, threads: int = 2, wait_s: float = 180.0
) -> Iterator[LlamaServer]:
    """Serve ``gguf`` on 127.0.0.1; yields the server once its /v1/models answers, and stops it at the end."""
    port = free_port()
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf), "--model_alias", ALIAS,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--seed", "0",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        # Its own process group, so the cleanup reaches anything it starts and nothing else.
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    running = LlamaServer(proc, url)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer within {wait_s:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield running
    finally:
        running.stop()
