"""The service under a real uvicorn on loopback: streaming, disconnects, and a busy model."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from rag.settings import Settings
from tests.api_fakes import FakePipeline, serve, wait_ready

LONG = " ".join(f"word{n}" for n in range(120)) + "."


def settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {"corpus_dir": tmp_path, "index_dir": tmp_path / "index", "api_key": None}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


def wait_for(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def slow() -> FakePipeline:
    return FakePipeline(delay=0.03, unsupported="Etna is also the home of the god Hephaestus.")


@pytest.fixture
def server(tmp_path: Path, slow: FakePipeline) -> Iterator[str]:
    app = create_app(settings(tmp_path), lambda s: slow)
    with serve(app) as url:
        wait_ready(app)
        yield url


def test_sse_tokens_arrive_before_the_answer(server: str, slow: FakePipeline) -> None:
    question = "Which volcano is the tallest in Europe?"
    seen: list[str] = []
    finished_at_first_token = None
    with (
        httpx.Client(base_url=server, timeout=20) as client,
        client.stream("POST", "/ask", json={"question": question, "stream": True}) as resp,
    ):
        assert resp.status_code == 200
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if event == "token" and finished_at_first_token is None:
                    finished_at_first_token = slow.finished
                seen.append(event)
            elif line.startswith("data: ") and event == "answer":
                answer = json.loads(line[6:])
    # The first token reached us while the pipeline was still generating: really streamed, not buffered.
    assert finished_at_first_token == 0
    assert seen.count("answer") == 1 and seen[-2:] == ["answer", "done"]
    assert seen.index("answer") > seen.index("token")
    assert answer["answer"] == slow.compute(question).text
    assert [s["supported"] for s in answer["sentences"]] == [True, False]


def test_openai_stream_over_http(server: str, slow: FakePipeline) -> None:
    question = "Where does Etna stand?"
    chunks = []
    finished_at_first_content = None
    body = {"model": "rag-local", "stream": True, "messages": [{"role": "user", "content": question}]}
    with (
        httpx.Client(base_url=server, timeout=20) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                chunks.append("[DONE]")
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["delta"].get("content") and finished_at_first_content is None:
                finished_at_first_content = slow.finished
            chunks.append(chunk)
    assert finished_at_first_content == 0
    assert chunks[-1] == "[DONE]"
    final = chunks[-2]
    assert isinstance(final, dict) and final["choices"][0]["finish_reason"] == "stop"
    assert [c["doc_id"] for c in final["citations"]] == ["volcanoes.md"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if isinstance(c, dict))
    assert text == slow.compute(question).text


def test_client_disconnect_mid_stream_frees_the_model(tmp_path: Path) -> None:
    fake = FakePipeline(delay=0.05, unsupported=LONG)  # ~6 s of tokens if nobody stops it
    app = create_app(settings(tmp_path, queue_size=1), lambda s: fake)
    with serve(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        wait_ready(app)
        tokens = 0
        with client.stream("POST", "/ask", json={"question": "Where does Etna stand?", "stream": True}) as resp:
            for line in resp.iter_lines():
                if line == "event: token":
                    tokens += 1
                    if tokens == 3:
                        break  # leaving the block closes the connection mid-answer
        assert fake.closed.wait(10), "the pipeline's generator was never closed"
        assert fake.closed_early == 1 and fake.finished == 0
        gate = app.state.rag.gate
        assert wait_for(lambda: gate.admitted == 0)

        fake.delay = 0
        resp = client.post("/ask", json={"question": "Where does Etna stand?"})
        assert resp.status_code == 200 and not resp.json()["abstained"]
        assert fake.finished == 1
        metrics = client.get("/metrics").text
        assert 'rag_answers_total{outcome="cancelled"} 1.0' in metrics


def test_client_giving_up_on_a_plain_answer_stops_generation(tmp_path: Path) -> None:
    fake = FakePipeline(delay=0.05, unsupported=LONG)
    app = create_app(settings(tmp_path), lambda s: fake)
    with serve(app) as url:
        wait_ready(app)
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=url, timeout=0.5) as client:
            client.post("/ask", json={"question": "Where does Etna stand?"})
        assert fake.closed.wait(10)
        assert fake.closed_early == 1 and fake.finished == 0


def test_busy_model_queues_then_refuses_while_search_stays_available(tmp_path: Path) -> None:
    fake = FakePipeline()
    fake.release.clear()  # the first answer holds the model
    app = create_app(settings(tmp_path, queue_size=1), lambda s: fake)
    statuses: list[int] = []

    def ask(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            statuses.append(c.post("/ask", json={"question": "Etna?", "stream": True}).status_code)

    with serve(app) as url, httpx.Client(base_url=url, timeout=5) as client:
        wait_ready(app)
        gate = app.state.rag.gate
        first = threading.Thread(target=ask, args=(url,))
        first.start()
        assert fake.entered.wait(10)
        second = threading.Thread(target=ask, args=(url,))
        second.start()
        assert wait_for(lambda: gate.waiting == 1)

        busy = client.post("/ask", json={"question": "Etna?"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
        assert int(busy.headers["retry-after"]) > 0
        # The event loop is free while the model works.
        assert client.get("/health").status_code == 200
        assert client.post("/search", json={"query": "bees"}).json()["hits"]
        assert fake.finished == 0

        fake.release.set()
        first.join(20)
        second.join(20)
    assert statuses == [200, 200]
    assert fake.finished == 2
