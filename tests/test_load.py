"""The service under mixed load at concurrency 16, driven by ``python -m rag.loadtest``.

The server runs in its own process (so its RSS is its own, not pytest's) with a
fake pipeline whose answers take ~0.3 s: with one model, a queue of 12 and a
1 s queue timeout, 16 clients overflow it both ways (queue full at once, and a
wait that runs out), and the load script's invariants must all hold. The
client's 5 s timeout is far above what a request needs when the queue timeout
works (about 1.5 s) and below what twelve queued answers take without it.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from rag.settings import Settings
from rag.types import DocInfo, Hit
from tests.api_fakes import FakePipeline

ROOT = Path(__file__).resolve().parents[1]

QUESTIONS = (
    "Which volcano is the tallest in Europe?",
    "How do honey bees communicate the direction of flowers?",
    "What must be done before the first start of the pump?",
    "How many eggs can the queen lay a day?",
)


class SharedFake(FakePipeline):
    """The fake made safe for concurrent readers and writers, as the real pipeline is: searches run in
    worker threads while an upload changes the documents. Its call logs are capped so that the
    fake's own bookkeeping does not show up as service memory growth."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay=delay)
        self._docs_lock = threading.RLock()
        self.calls = deque(maxlen=64)  # type: ignore[assignment]
        self.search_calls = deque(maxlen=64)  # type: ignore[assignment]
        self.uploads = deque(maxlen=64)  # type: ignore[assignment]

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        with self._docs_lock:
            return super().search(query, k)

    def documents(self) -> list[DocInfo]:
        with self._docs_lock:
            return super().documents()

    def add_document(self, filename: str, data: bytes) -> DocInfo:
        with self._docs_lock:
            return super().add_document(filename, data)

    def delete_document(self, doc_id: str) -> None:
        with self._docs_lock:
            super().delete_document(doc_id)


def serve_fake(port_out: Connection, root: str, delay: float, queue_size: int, queue_timeout_s: float) -> None:
    """Child process: the app with a ``SharedFake`` under uvicorn on a free loopback port."""
    import uvicorn

    settings = Settings(
        corpus_dir=Path(root) / "corpus",
        index_dir=Path(root) / "index",
        api_key=None,
        queue_size=queue_size,
        queue_timeout_s=queue_timeout_s,
    )
    app = create_app(settings, lambda s: SharedFake(delay))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port_out.send(sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on")).run(sockets=[sock])


@contextmanager
def fake_server_process(
    root: Path, *, delay: float, queue_size: int, queue_timeout_s: float
) -> Iterator[tuple[str, int]]:
    """``(base URL, pid)`` of a server process; stopped (SIGTERM, then SIGKILL) on exit."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no pytest threads or state inherited
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=serve_fake, args=(sender, str(root), delay, queue_size, queue_timeout_s), daemon=True)
    proc.start()
    try:
        if not receiver.poll(60):
            raise RuntimeError("the server process did not report its port")
        port = receiver.recv()
        assert proc.pid is not None
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def run_loadtest(url: str, pid: int, questions: Path, *extra: str, timeout: float = 120) -> dict[str, object]:
    cmd = [
        sys.executable,
        "-m",
        "rag.loadtest",
        "--url",
        url,
        "--pid",
        str(pid),
        "--questions",
        str(questions),
        "--json",
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    assert (proc.returncode == 0) == (report["ok"] is True), report["violations"]
    return report


@pytest.mark.slow
def test_overload_gives_503_with_retry_after_and_nothing_hangs_errs_or_leaks(tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("\n".join(QUESTIONS), encoding="utf-8")
    with fake_server_process(tmp_path, delay=0.03, queue_size=12, queue_timeout_s=1.0) as (url, pid):
        report = run_loadtest(
            url,
            pid,
            questions,
            *("--concurrency", "16", "--duration", "25", "--max-requests", "20000", "--timeout", "5"),
            *("--warmup", "5", "--max-rss-growth-mib", "16"),
        )
        # Afterwards the service is idle and back to its own documents: nothing is stuck in the
        # queue, and every upload of the run was deleted again.
        with httpx.Client(base_url=url, timeout=5, trust_env=False) as client:
            metrics = client.get("/metrics").text
            docs = sorted(d["doc_id"] for d in client.get("/documents").json())
    print(json.dumps({k: v for k, v in report.items() if k != "rss"}, indent=1))

    # Not one 503 without Retry-After, other 5xx, hung request, dropped connection, broken stream,
    # lost upload or leak (the script's own invariants, each named in its list).
    assert report["violations"] == [], report["violations"]
    routes = report["routes"]
    assert isinstance(routes, dict)
    for route, ok in (("ask", "200"), ("ask_stream", "200"), ("search", "200"), ("upload", "201"), ("delete", "200")):
        assert routes[route]["by_status"].get(ok, 0) > 0, f"no successful {route} requests: {routes[route]}"
    # Overload happened, on both answer routes, and every refusal said when to come back.
    assert routes["ask"]["by_status"].get("503") and routes["ask_stream"]["by_status"].get("503")
    assert report["rejected"] == report["rejected_with_retry_after"]
    assert report["error_codes"] == {"busy": report["rejected"]}
    assert report["other_5xx"] == report["timeouts"] == report["transport_errors"] == 0
    rss = report["rss"]
    assert isinstance(rss, dict) and not rss["exited"]
    assert len(rss["samples"]) >= 20  # sampled every second for the whole run
    assert rss["growth_mib"] <= 16

    assert "rag_queue_depth 0.0" in metrics and "rag_answers_in_progress 0.0" in metrics
    assert docs == ["bees.txt", "manual.pdf", "volcanoes.md"]
