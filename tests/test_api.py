"""Every route of the HTTP service through TestClient, with a fake pipeline (no model loads).

Every response is checked against the app's own OpenAPI schema (``tests/openapi_contract.py``),
and the bodies against what the pipeline returned, field by field.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from rag.errors import InputError
from rag.settings import Settings
from rag.types import Answer, Citation, Turn
from tests.api_fakes import DOCS, FakePipeline, parse_sse, wait_ready
from tests.openapi_contract import ContractClient as TestClient


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "corpus_dir": tmp_path / "corpus",
        "index_dir": tmp_path / "index",
        "api_key": None,
        "max_question_chars": 200,
        "max_upload_bytes": 2000,
        "queue_size": 1,
    }
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakePipeline:
    return FakePipeline()


@pytest.fixture
def client(tmp_path: Path, fake: FakePipeline) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(app)
        yield c


def assert_error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    return str(body["error"]["message"])


def assert_same_citations(sent: Any, citations: Sequence[Citation]) -> None:
    assert sent == [
        {
            "marker": c.marker,
            "chunk_id": c.chunk_id,
            "doc_id": c.doc_id,
            "start": c.start,
            "end": c.end,
            "text": c.text,
            "page": c.page,
            "span_start": c.span_start,
            "span_end": c.span_end,
            "scanned": c.scanned,
        }
        for c in citations
    ]


def assert_same_answer(sent: Any, answer: Answer) -> None:
    """The answer object carries the pipeline's ``Answer`` (its shape is checked by the OpenAPI schema)."""
    assert sent["question"] == answer.question and sent["standalone_question"] == answer.standalone_question
    assert sent["answer"] == answer.text and sent["abstained"] is answer.abstained
    assert_same_citations(sent["citations"], answer.citations)
    assert [(s["text"], tuple(s["markers"]), s["supported"]) for s in sent["sentences"]] == [
        (s.text, s.markers, s.supported) for s in answer.sentences
    ]
    assert sent["notes"] == list(answer.notes) and sent["draft"] == answer.draft
    assert sent["confidence"] == answer.confidence and sent["provenance"] == answer.provenance


# --- lifecycle -----------------------------------------------------------------------------------


def test_health_answers_while_loading_and_ready_turns_200_once_loaded(tmp_path: Path) -> None:
    gate = threading.Event()
    fake = FakePipeline()

    def slow_factory(settings: Settings) -> FakePipeline:
        gate.wait(10)
        return fake

    app = create_app(make_settings(tmp_path), slow_factory)
    with TestClient(app) as c:
        assert c.get("/health").json() == {"status": "ok"}
        resp = c.get("/ready")
        assert_error(resp, 503, "not_ready")
        assert resp.headers["retry-after"].isdigit()
        assert_error(c.post("/ask", json={"question": "Where is Etna?"}), 503, "not_ready")
        gate.set()
        wait_ready(app)
        assert c.get("/ready").json() == {"status": "ready"}
        assert c.post("/ask", json={"question": "Where is Etna?"}).status_code == 200


def test_failed_load_is_reported_by_ready_and_routes(tmp_path: Path) -> None:
    def broken(settings: Settings) -> FakePipeline:
        raise InputError("no index in /nowhere; run `rag ingest` first")

    app = create_app(make_settings(tmp_path), broken)
    with TestClient(app) as c:
        assert app.state.rag.loaded.wait(10)
        assert "rag ingest" in assert_error(c.get("/ready"), 503, "load_failed")
        assert "rag ingest" in assert_error(c.post("/search", json={"query": "bees"}), 503, "load_failed")
        assert c.get("/health").status_code == 200


def test_factory_runs_once_and_not_at_create_time(tmp_path: Path) -> None:
    calls: list[Settings] = []
    settings = make_settings(tmp_path)

    def factory(s: Settings) -> FakePipeline:
        calls.append(s)
        return FakePipeline()

    app = create_app(settings, factory)
    assert calls == []
    with TestClient(app) as c:
        wait_ready(app)
        c.get("/info")
        c.get("/documents")
    with TestClient(app) as c:  # a second lifespan reuses the loaded pipeline
        assert c.get("/ready").status_code == 200
    assert calls == [settings]


def test_info(client: TestClient, fake: FakePipeline) -> None:
    assert client.get("/info").json() == fake.info()


# --- /ask ------------------------------------------------------------------------------------------


def test_ask_returns_the_pipeline_answer_with_citation_offsets(client: TestClient, fake: FakePipeline) -> None:
    resp = client.post("/ask", json={"question": "Which volcano is the tallest in Europe?", "k": 2})
    assert resp.status_code == 200
    body = resp.json()
    expected = fake.compute("Which volcano is the tallest in Europe?", (), 2)
    assert_same_answer(body, expected)
    assert not body["abstained"] and "[1]" in body["answer"]
    cite = body["citations"][0]
    source = DOCS[cite["doc_id"]]
    assert source[cite["start"] : cite["end"]] == cite["text"]
    assert source[cite["span_start"] : cite["span_end"]] == "Mount Etna is the tallest active volcano in Europe."
    assert fake.calls[-1] == ("Which volcano is the tallest in Europe?", (), 2)


def test_ask_passes_history_for_follow_ups(client: TestClient, fake: FakePipeline) -> None:
    history = [
        {"role": "user", "content": "How do honey bees show where flowers are?"},
        {"role": "assistant", "content": "With a waggle dance [1]."},
    ]
    body = client.post("/ask", json={"question": "And the queen?", "history": history}).json()
    assert fake.calls[-1][1] == (Turn("user", history[0]["content"]), Turn("assistant", history[1]["content"]))
    assert body["citations"][0]["doc_id"] == "bees.txt"


def test_ask_abstains_when_nothing_matches(client: TestClient) -> None:
    body = client.post("/ask", json={"question": "zzyzx quorble?"}).json()
    assert body["abstained"] is True and body["citations"] == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"question": ""}, "question"),
        ({"question": "   \n"}, "question"),
        ({"question": "x" * 201}, "question"),
        ({"question": "ok?", "k": 0}, "k"),
        ({"question": "ok?", "k": 21}, "k"),
        ({"question": "ok?", "k": "many"}, "k"),
        ({"question": "ok?", "history": [{"role": "system", "content": "obey"}]}, "history.0.role"),
        ({"question": "ok?", "history": [{"role": "user", "content": "hi"}] * 21}, "history"),
        ({"question": "ok?", "colour": "blue"}, "colour"),
        ({"question": 42}, "question"),
        ({}, "question"),
    ],
)
def test_ask_rejects_bad_bodies_with_422(client: TestClient, fake: FakePipeline, payload: object, field: str) -> None:
    message = assert_error(client.post("/ask", json=payload), 422, "invalid_request")
    assert message.startswith(field) or f"; {field}" in message, message
    assert fake.calls == []


def test_ask_rejects_non_json_body(client: TestClient) -> None:
    resp = client.post("/ask", content=b"question=hi", headers={"content-type": "application/json"})
    assert_error(resp, 422, "invalid_request")


def test_input_error_from_pipeline_is_400(tmp_path: Path) -> None:
    fake = FakePipeline(fail_with=InputError("the question has no words; ask in words"))
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app) as c:
        wait_ready(app)
        assert "ask in words" in assert_error(c.post("/ask", json={"question": "Etna?"}), 400, "bad_input")
        # The model is free again afterwards: the failed generator was closed and its slot released.
        assert fake.closed_early == 1
        assert app.state.rag.gate.admitted == 0


def test_unexpected_error_is_500_without_traceback(tmp_path: Path) -> None:
    fake = FakePipeline(fail_with=RuntimeError("secret internals at /home/x/model.py line 3"))
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app, raise_server_exceptions=False) as c:
        wait_ready(app)
        resp = c.post("/ask", json={"question": "Etna?"})
        message = assert_error(resp, 500, "internal")
        assert "secret" not in resp.text and "Traceback" not in resp.text and "secret" not in message


def test_ask_streams_sse_tokens_then_answer_then_done(client: TestClient, fake: FakePipeline) -> None:
    question = "What do honey bees use the waggle dance for?"
    resp = client.post("/ask", json={"question": question, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(resp.text)
    names = [name for name, _ in events]
    assert names[-2:] == ["answer", "done"] and set(names[:-2]) == {"token"}
    expected = fake.compute(question)
    assert "".join(d["text"] for n, d in events if n == "token") == expected.text  # type: ignore[index]
    assert_same_answer(events[-2][1], expected)


def test_accept_header_selects_streaming(client: TestClient) -> None:
    resp = client.post("/ask", json={"question": "Etna?"}, headers={"accept": "text/event-stream"})
    assert [n for n, _ in parse_sse(resp.text)][-2:] == ["answer", "done"]


def test_stream_error_becomes_error_event(tmp_path: Path) -> None:
    fake = FakePipeline(fail_with=InputError("that question cannot be answered; rephrase it"))
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app) as c:
        wait_ready(app)
        events = parse_sse(c.post("/ask", json={"question": "Etna?", "stream": True}).text)
    assert [n for n, _ in events] == ["token", "error", "done"]
    assert events[1][1] == {"code": "bad_input", "message": "that question cannot be answered; rephrase it"}


# --- /search -----------------------------------------------------------------------------------------


def test_search_returns_hits_with_offsets(client: TestClient, fake: FakePipeline) -> None:
    body = client.post("/search", json={"query": "pump primed water", "k": 3}).json()
    expected = fake.search("pump primed water", 3)
    assert [h["chunk_id"] for h in body["hits"]] == [h.chunk.id for h in expected]
    top = body["hits"][0]
    assert set(top) == {"chunk_id", "doc_id", "start", "end", "text", "score", "page"}
    assert DOCS[top["doc_id"]][top["start"] : top["end"]] == top["text"]
    assert top["page"] == 2


@pytest.mark.parametrize("payload", [{"query": ""}, {"query": "  "}, {"query": "x", "k": 0}, {"query": "x", "k": 51}])
def test_search_rejects_bad_bodies(client: TestClient, payload: object) -> None:
    assert_error(client.post("/search", json=payload), 422, "invalid_request")


# --- documents ---------------------------------------------------------------------------------


def test_documents_lists_index(client: TestClient, fake: FakePipeline) -> None:
    assert client.get("/documents").json() == [
        {"doc_id": d.doc_id, "sha256": d.sha256, "chunks": d.chunks, "chars": d.chars} for d in fake.documents()
    ]


def test_upload_then_searchable_then_delete(client: TestClient, fake: FakePipeline) -> None:
    text = "Octopuses have three hearts and blue blood."
    resp = client.post("/documents", files={"file": ("octopus.txt", text.encode(), "text/plain")})
    assert resp.status_code == 201, resp.text
    assert resp.json()["doc_id"] == "octopus.txt" and resp.json()["chars"] == len(text)
    hits = client.post("/search", json={"query": "how many hearts does an octopus have"}).json()["hits"]
    assert hits[0]["doc_id"] == "octopus.txt"
    assert "octopus.txt" in [d["doc_id"] for d in client.get("/documents").json()]

    assert client.delete("/documents/octopus.txt").json() == {"deleted": "octopus.txt"}
    assert "octopus.txt" not in [d["doc_id"] for d in client.get("/documents").json()]
    assert_error(client.delete("/documents/octopus.txt"), 404, "not_found")


def test_delete_doc_id_with_slashes_and_traversal(client: TestClient, fake: FakePipeline) -> None:
    fake.docs["sub/dir/notes.md"] = "Nested notes."
    assert client.delete("/documents/sub/dir/notes.md").status_code == 200
    assert "sub/dir/notes.md" not in fake.docs
    assert_error(client.delete("/documents/../../etc/passwd"), 404, "not_found")
    assert_error(client.delete("/documents/%2E%2E%2Fbees.txt"), 404, "not_found")
    assert "bees.txt" in fake.docs


@pytest.mark.parametrize(
    ("name", "stored"),
    [("C:\\Users\\me\\win.md", "win.md"), ("/abs/path/page.HTML", "page.HTML"), ("cafe\u0301.txt", "caf\u00e9.txt")],
)
def test_upload_keeps_only_the_basename(client: TestClient, fake: FakePipeline, name: str, stored: str) -> None:
    resp = client.post("/documents", files={"file": (name, b"Some text.", "text/plain")})
    assert resp.status_code == 201, resp.text
    assert fake.uploads == [stored]


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.txt",
        "..",
        "../../evil.txt",
        "..\\..\\win.md",
        "sub/.env.md",
        "bad\u202ename.txt",
        "dir/",
        "x" * 300 + ".txt",
        "CON.txt",
        "lpt1.md",
    ],
)
def test_upload_rejects_bad_names(client: TestClient, fake: FakePipeline, name: str) -> None:
    assert_error(client.post("/documents", files={"file": (name, b"text", "text/plain")}), 400, "bad_input")
    assert fake.uploads == []


@pytest.mark.parametrize("raw_name", [b"", b"a\x01b.txt", b"tab\there.txt", b"../.."])
def test_upload_rejects_raw_bad_names(client: TestClient, fake: FakePipeline, raw_name: bytes) -> None:
    # Built by hand: httpx would percent-encode control characters in the name.
    body = b'--B\r\nContent-Disposition: form-data; name="file"; filename="' + raw_name + b'"\r\n\r\ntext\r\n--B--\r\n'
    resp = client.post("/documents", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert_error(resp, 400, "bad_input")
    assert fake.uploads == []


@pytest.mark.parametrize("name", ["report.xlsx", "image.gif", "noext"])
def test_upload_rejects_unsupported_types(client: TestClient, fake: FakePipeline, name: str) -> None:
    assert_error(client.post("/documents", files={"file": (name, b"data", "x/y")}), 415, "unsupported_media_type")
    assert fake.uploads == []


def test_upload_over_the_limit_is_413(client: TestClient, fake: FakePipeline) -> None:
    # Just over the 2000-byte limit: caught after parsing, by the real size.
    assert_error(client.post("/documents", files={"file": ("a.txt", b"a" * 2001)}), 413, "too_large")
    # Far over: refused from Content-Length before the body is parsed.
    assert_error(client.post("/documents", files={"file": ("b.txt", b"b" * 200_000)}), 413, "too_large")
    assert client.post("/documents", files={"file": ("c.txt", b"c" * 2000)}).status_code == 201
    assert fake.uploads == ["c.txt"]


def test_upload_without_file_field_is_422(client: TestClient) -> None:
    assert_error(client.post("/documents", data={"name": "x.txt"}), 422, "invalid_request")
    assert_error(client.post("/documents", json={"file": "x"}), 422, "invalid_request")


def test_upload_pipeline_input_error_is_400(client: TestClient) -> None:
    assert "no text" in assert_error(client.post("/documents", files={"file": ("e.txt", b"   ")}), 400, "bad_input")


# --- errors for unknown routes --------------------------------------------------------------------


def test_unknown_route_and_method(client: TestClient) -> None:
    assert "/nope" in assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/ask"), 405, "method_not_allowed")


# --- concurrency -------------------------------------------------------------------------------------


def _wait_for(check: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_service_warms_passages_while_idle_and_never_while_answering(tmp_path: Path) -> None:
    fake = FakePipeline()
    fake.warm_passages = 10**9  # more than the test will ever see: warming never runs out
    fake.release.clear()
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app) as c:
        wait_ready(app)
        assert _wait_for(lambda: fake.warmed >= 3)  # idle: it reads passage after passage
        asking = threading.Thread(target=lambda: c.post("/ask", json={"question": "Etna?"}))
        asking.start()
        try:
            assert fake.entered.wait(10)
            busy_from = fake.warmed
            time.sleep(0.3)  # ~60 reads' worth of time if it did not stop
            busy_to = fake.warmed
        finally:
            fake.release.set()  # never leave the question hanging, even when an assert failed
            asking.join(10)
        assert busy_to <= busy_from + 1  # at most the read that was under way when the question came
        assert _wait_for(lambda: fake.warmed > busy_from + 3)  # idle again: it carries on


def test_the_warmer_stops_once_every_passage_is_kept_and_can_be_turned_off(tmp_path: Path) -> None:
    fake = FakePipeline()
    fake.warm_passages = 3
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app):
        wait_ready(app)
        assert _wait_for(lambda: fake.warmed == 3)
        time.sleep(0.2)
        assert fake.warmed == 3  # all kept: it waits (30 s) before looking again
    off = FakePipeline()
    off.warm_passages = 3
    app = create_app(make_settings(tmp_path, warm_when_idle=False), lambda s: off)
    with TestClient(app):
        wait_ready(app)
        time.sleep(0.2)
        assert off.warmed == 0


def test_shutdown_closes_the_pipeline_and_one_that_finished_loading_after_it(tmp_path: Path) -> None:
    fake = FakePipeline()
    app = create_app(make_settings(tmp_path), lambda s: fake)
    with TestClient(app) as c:
        wait_ready(app)
        assert c.post("/search", json={"query": "Etna"}).status_code == 200
        assert fake.shutdowns == 0
    assert fake.shutdowns == 1
    # Still loading at shutdown: the loader closes what it built, and nothing serves it.
    gate = threading.Event()
    late = FakePipeline()

    def slow_factory(settings: Settings) -> FakePipeline:
        gate.wait(10)
        return late

    app = create_app(make_settings(tmp_path), slow_factory)
    with TestClient(app):
        pass
    gate.set()
    assert app.state.rag.loaded.wait(10)
    assert late.shutdowns == 1 and app.state.rag.pipeline is None


def test_queue_full_is_503_with_retry_after(tmp_path: Path) -> None:
    fake = FakePipeline()
    fake.release.clear()  # the first answer holds the model until released
    app = create_app(make_settings(tmp_path, queue_size=1), lambda s: fake)
    results: dict[str, int] = {}
    with TestClient(app) as c:
        wait_ready(app)
        gate = app.state.rag.gate

        def ask(name: str) -> None:
            results[name] = c.post("/ask", json={"question": "Etna?"}).status_code

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        assert fake.entered.wait(10)
        second = threading.Thread(target=ask, args=("second",))
        second.start()
        for _ in range(500):  # until the second request waits for the model
            if gate.waiting == 1:
                break
            threading.Event().wait(0.01)
        assert gate.waiting == 1
        metrics = c.get("/metrics").text
        assert "rag_queue_depth 1.0" in metrics and "rag_answers_in_progress 1.0" in metrics

        resp = c.post("/ask", json={"question": "Etna?"})
        assert_error(resp, 503, "busy")
        assert int(resp.headers["retry-after"]) > 0
        assert_error(
            c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Etna?"}]}), 503, "busy"
        )
        # Search does not queue behind the model.
        assert c.post("/search", json={"query": "Etna"}).status_code == 200

        fake.release.set()
        first.join(10)
        second.join(10)
        assert results == {"first": 200, "second": 200}
        assert gate.admitted == 0
        assert c.post("/ask", json={"question": "Etna?"}).status_code == 200


# --- API key ------------------------------------------------------------------------------------------


def test_api_key_required_accepted_and_wrong(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, api_key="s3cret-key"), lambda s: FakePipeline())
    with TestClient(app) as c:
        wait_ready(app)
        for path in ("/health", "/ready", "/", "/static/app.js", "/static/style.css"):
            assert c.get(path).status_code == 200, path
        resp = c.get("/documents")
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/documents", headers={"authorization": "Bearer wrong"}), 401, "unauthorized")
        assert_error(c.get("/documents", headers={"authorization": "s3cret-key"}), 401, "unauthorized")
        assert_error(c.post("/ask", json={"question": "Etna?"}), 401, "unauthorized")
        assert_error(c.get("/metrics"), 401, "unauthorized")
        assert_error(c.get("/v1/models"), 401, "unauthorized")
        auth = {"authorization": "Bearer s3cret-key"}
        assert c.get("/documents", headers=auth).status_code == 200
        assert c.post("/ask", json={"question": "Etna?"}, headers=auth).status_code == 200
        assert c.get("/metrics", headers=auth).status_code == 200


# --- OpenAI-compatible ---------------------------------------------------------------------------------


def test_v1_models(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["rag-local"]


def test_v1_chat_completion(client: TestClient, fake: FakePipeline) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "How do honey bees show where flowers are?"},
        {"role": "assistant", "content": "With a waggle dance [1]."},
        {"role": "user", "content": [{"type": "text", "text": "Relative to what?"}]},
    ]
    resp = client.post("/v1/chat/completions", json={"model": "rag-local", "messages": messages, "temperature": 0})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    question, history, _ = fake.calls[-1]
    assert question == "Relative to what?"
    assert history == (Turn("user", messages[1]["content"]), Turn("assistant", "With a waggle dance [1]."))
    expected = fake.compute(question, history)
    assert body["object"] == "chat.completion" and body["model"] == "rag-local"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "[1]" in expected.text
    assert_same_citations(body["citations"], expected.citations)
    assert body["abstained"] is False


def test_v1_chat_completion_stream(client: TestClient, fake: FakePipeline) -> None:
    question = "Where does Etna stand?"
    resp = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": question}], "stream": True}
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    lines = [ln[len("data: ") :] for ln in resp.text.split("\n\n") if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(ln) for ln in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    expected = fake.compute(question)
    assert content == expected.text
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert_same_citations(final["citations"], expected.citations)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "  "}],
        [{"role": "tool", "content": "x"}],
    ],
)
def test_v1_bad_messages_are_422(client: TestClient, fake: FakePipeline, messages: object) -> None:
    assert_error(client.post("/v1/chat/completions", json={"messages": messages}), 422, "invalid_request")
    assert fake.calls == []


# --- metrics, page, openapi --------------------------------------------------------------------------


def _sample(metrics: str, name: str, **labels: str) -> float:
    for line in metrics.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line) or re.fullmatch(rf"{name} (\S+)", line)
        if not m:
            continue
        if len(m.groups()) == 1:
            if not labels:
                return float(m.group(1))
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if found == labels:
            return float(m.group(2))
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_count_requests_and_tokens(client: TestClient, fake: FakePipeline) -> None:
    client.post("/ask", json={"question": "Where does Etna stand?"})
    client.post("/ask", json={"question": ""})
    client.post("/search", json={"query": "bees"})
    client.delete("/documents/none.txt")
    text = client.get("/metrics").text
    assert _sample(text, "rag_http_requests_total", method="POST", route="/ask", status="200") == 1
    assert _sample(text, "rag_http_requests_total", method="POST", route="/ask", status="422") == 1
    assert _sample(text, "rag_http_requests_total", method="POST", route="/search", status="200") == 1
    assert (
        _sample(text, "rag_http_requests_total", method="DELETE", route="/documents/{doc_id:path}", status="404") == 1
    )
    assert _sample(text, "rag_http_request_duration_seconds_count", method="POST", route="/ask") == 2
    pieces = len(fake.compute("Where does Etna stand?").text.split())
    assert _sample(text, "rag_generated_tokens_total") == pieces
    assert _sample(text, "rag_answers_total", outcome="answered") == 1
    assert _sample(text, "rag_generated_tokens_per_second") >= 0
    assert _sample(text, "rag_queue_depth") == 0
    assert _sample(text, "rag_pipeline_ready") == 1


def test_each_app_has_its_own_metrics(tmp_path: Path) -> None:
    a = create_app(make_settings(tmp_path), lambda s: FakePipeline())
    b = create_app(make_settings(tmp_path), lambda s: FakePipeline())
    with TestClient(a) as ca, TestClient(b) as cb:
        ca.get("/health")
        ca.get("/health")
        assert (
            _sample(ca.get("/metrics").text, "rag_http_requests_total", method="GET", route="/health", status="200")
            == 2
        )
        with pytest.raises(AssertionError):
            _sample(cb.get("/metrics").text, "rag_http_requests_total", method="GET", route="/health", status="200")


def test_page_and_static_files_are_served_without_external_resources(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text
    static = Path(__file__).parent.parent / "api" / "static"
    for name in ("index.html", "app.js", "style.css"):
        served = client.get("/" if name == "index.html" else f"/static/{name}")
        assert served.status_code == 200
        assert served.text == (static / name).read_text(encoding="utf-8")
        # No http(s) or protocol-relative URL: the page must work with the network cut.
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", served.text, re.I), name


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/ask", "/search", "/documents", "/documents/{doc_id}", "/v1/chat/completions", "/ready"):
        assert path in paths, path
