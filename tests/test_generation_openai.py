"""The generator over HTTP (``rag.generation_openai``) against a small OpenAI-compatible server on loopback.

The server (``tests/fake_openai_server.py``) is real HTTP on a real socket, so streaming,
SSE parsing, retries and timeouts run as they do against llama.cpp's or vLLM's server;
``tests/test_generation_server.py`` (slow) runs the same backend against the real one.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.errors import InputError, ModelError, UnreachableError
from rag.generation import load_generator
from rag.generation_openai import OpenAIGenerator
from rag.prompting import NOT_FOUND, answer_messages
from rag.settings import Settings
from rag.types import Chunk, Hit
from tests.fake_openai_server import FakeOpenAIServer, closed_port_url, fake_openai_server

PASSAGE = Hit(Chunk("d#0", "d.txt", "The Blue Harbor library opens at 7:15; its door code is 4417.", 0, 61), 1.0)
MESSAGES = answer_messages("What is the door code?", [PASSAGE])


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with fake_openai_server() as s:
        yield s


def generator(url: str, **kwargs: object) -> OpenAIGenerator:
    options: dict[str, object] = {"timeout_s": 5.0, "retries": 2, "backoff_s": 0.01, **kwargs}
    return OpenAIGenerator(url, **options)  # type: ignore[arg-type]


def test_streams_the_reply_greedy_and_asks_the_first_listed_model(server: FakeOpenAIServer) -> None:
    gen = generator(server.url)
    pieces = list(gen.stream(MESSAGES, max_tokens=64))
    assert pieces == ["The", " door", " code", " is", " 4417", " [1]."]
    assert gen.id == f"openai:tiny-model@127.0.0.1:{server.port}"
    (sent,) = server.chats()
    assert sent["model"] == "tiny-model" and sent["messages"] == MESSAGES and sent["stream"] is True
    assert sent["temperature"] == 0 and sent["max_tokens"] == 64 and "logit_bias" not in sent
    assert gen.last_prompt_tokens == 42 and gen.last_completion_tokens == 6  # from the server's usage chunk
    # max_tokens reaches the server: it cuts the same reply
    assert "".join(gen.stream(MESSAGES, max_tokens=2)) == "The door"


def test_a_configured_model_is_used_without_asking(server: FakeOpenAIServer) -> None:
    gen = generator(server.url, model="other-model")
    assert gen.id == f"openai:other-model@127.0.0.1:{server.port}"
    list(gen.stream(MESSAGES, max_tokens=8))
    assert server.chats()[0]["model"] == "other-model"
    assert "/v1/models" not in server.paths("GET")


def test_not_found_probability_is_the_visible_mass_of_its_first_tokens(server: FakeOpenAIServer) -> None:
    server.knobs.top = [("The", 0.55), ("NOT", 0.3), (" NOT", 0.05), ("N", 0.04), ("NOTE", 0.03)]
    gen = generator(server.url)
    p = gen.start_probability(MESSAGES, NOT_FOUND)
    # The server tokenizes: exactly the first tokens of "NOT FOUND" and " NOT FOUND" count.
    assert p == pytest.approx(0.35)
    scored = server.chats()[-1]
    assert scored["max_tokens"] == 1 and scored["logprobs"] is True and scored["top_logprobs"] == 20
    assert gen.start_probability(MESSAGES, "Yes") == 0.0  # not among the top entries: no visible mass


def test_without_a_tokenizer_every_start_of_the_reply_counts(server: FakeOpenAIServer) -> None:
    server.knobs.tokenizer = False
    server.knobs.top = [("The", 0.55), ("NOT", 0.3), (" NOT", 0.05), ("N", 0.04), ("NOTE", 0.03)]
    gen = generator(server.url)
    assert gen.start_probability(MESSAGES, NOT_FOUND) == pytest.approx(0.39)  # "N" counts too, "NOTE" does not
    assert gen.count_tokens("a b c d e f g h") == 4  # 15 characters at ~4 a token


def test_a_server_without_logprobs_gives_none_and_is_not_asked_again(
    server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.knobs.logprobs = False
    gen = generator(server.url)
    with caplog.at_level(logging.WARNING, logger="rag.generation_openai"):
        assert gen.start_probability(MESSAGES, NOT_FOUND) is None
        assert gen.start_probability(MESSAGES, NOT_FOUND) is None
    assert len(server.chats()) == 1
    assert sum("returns no logprobs" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ModelError, match="RAG_RERANKER=judge"):
        gen.yes_probability(MESSAGES)


def test_yes_probability_from_the_top_alternatives(server: FakeOpenAIServer) -> None:
    server.knobs.top = [("Yes", 0.6), ("No", 0.2), (" yes", 0.1), ("Maybe", 0.1)]
    gen = generator(server.url)
    assert gen.yes_probability(MESSAGES) == pytest.approx(0.7 / 0.9)
    server.knobs.top = [("Maybe", 0.9), ("Perhaps", 0.1)]
    assert gen.yes_probability(MESSAGES) == 0.5  # neither visible: the judge cannot tell


def test_avoid_bars_the_first_tokens_by_id_when_the_server_tokenizes(server: FakeOpenAIServer) -> None:
    gen = generator(server.url)
    list(gen.stream(MESSAGES, max_tokens=8, avoid=NOT_FOUND))
    bias = server.chats()[-1]["logit_bias"]
    barred = {server.decode([int(i)]) for i in bias}
    assert barred == {"NOT", " NOT"} and set(bias.values()) == {-100.0}
    assert gen.count_tokens("NOT FOUND at all") == len(server.encode("NOT FOUND at all")) == 4


def test_avoid_is_dropped_without_a_tokenizer(server: FakeOpenAIServer) -> None:
    server.knobs.tokenizer = False
    gen = generator(server.url)
    assert "".join(gen.stream(MESSAGES, max_tokens=8, avoid=NOT_FOUND))
    assert "logit_bias" not in server.chats()[-1]


def test_503s_while_the_server_starts_are_retried(server: FakeOpenAIServer) -> None:
    server.knobs.fail_first = 2
    gen = generator(server.url, retries=2)
    assert "".join(gen.stream(MESSAGES, max_tokens=3)) == "The door code"
    assert server.paths("GET") == ["/v1/models"] * 3


def test_retries_run_out_into_unreachable(server: FakeOpenAIServer) -> None:
    server.knobs.fail_first = 3
    with pytest.raises(UnreachableError, match="unavailable \\(503: model is loading\\)"):
        list(generator(server.url, retries=2).stream(MESSAGES, max_tokens=3))
    assert len(server.paths("GET")) == 3


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [(400, InputError, "refused the request"), (401, ModelError, "RAG_GENERATOR_API_KEY"), (404, ModelError, "/v1")],
)
def test_client_errors_are_not_retried(server: FakeOpenAIServer, status: int, error: type, words: str) -> None:
    server.knobs.fail_first, server.knobs.fail_status = 1, status
    with pytest.raises(error, match=words):
        list(generator(server.url, model="tiny-model").stream(MESSAGES, max_tokens=8))
    assert len(server.chats()) == 1


@pytest.mark.parametrize("status", [400, 500])
def test_a_server_that_refuses_logprobs_is_read_without_them(
    server: FakeOpenAIServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """llama-cpp-python's server without logits_all answers 500 to a logprobs request (checked by hand)."""
    server.knobs.fail_first, server.knobs.fail_status = 2, status
    gen = generator(server.url, model="tiny-model")
    with caplog.at_level(logging.WARNING, logger="rag.generation_openai"):
        assert gen.start_probability(MESSAGES, NOT_FOUND) is None
        assert gen.start_probability(MESSAGES, NOT_FOUND) is None
    assert sum("refused a request for logprobs" in r.getMessage() for r in caplog.records) == 1
    # Not remembered: once the server gives them, they are used.
    assert gen.start_probability(MESSAGES, NOT_FOUND) == pytest.approx(0.35)
    assert len(server.chats()) == 3 and all(c["logprobs"] for c in server.chats())


def test_a_closed_port_is_unreachable_after_the_retries() -> None:
    gen = generator(closed_port_url(), retries=1)
    with pytest.raises(UnreachableError, match="cannot be reached"):
        list(gen.stream(MESSAGES, max_tokens=3))
    with pytest.raises(UnreachableError):
        gen.check_ready()


def test_a_server_slower_than_the_timeout_is_unreachable_and_not_retried(server: FakeOpenAIServer) -> None:
    server.knobs.delay_s = 1.0
    gen = generator(server.url, model="tiny-model", timeout_s=0.2, retries=2)
    with pytest.raises(UnreachableError, match="RAG_GENERATOR_TIMEOUT_S"):
        gen.start_probability(MESSAGES, NOT_FOUND)
    assert len(server.chats()) == 1


def test_a_server_that_dies_mid_reply_is_unreachable(server: FakeOpenAIServer) -> None:
    server.knobs.die_after_pieces = 2
    gen = generator(server.url)
    got: list[str] = []
    with pytest.raises(UnreachableError):
        for piece in gen.stream(MESSAGES, max_tokens=64):
            got.append(piece)
    assert got == ["The", " door"]
    assert len(server.chats()) == 1  # what was streamed is not asked for again


def test_the_key_is_sent_and_never_shown(server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-very-secret-4417"
    server.knobs.fail_first, server.knobs.fail_status = 1, 401
    gen = generator(server.url, api_key=key)
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelError) as refused:
        gen.check_ready()
    assert server.requests[-1][3]["Authorization"] == f"Bearer {key}"
    assert key not in str(refused.value) and key not in caplog.text and key not in gen.id
    settings = Settings(generator="openai", generator_url=server.url, generator_api_key=key)  # type: ignore[arg-type]
    assert key not in repr(settings) and key not in str(settings.model_dump())


def test_load_generator_builds_it_from_the_settings(server: FakeOpenAIServer) -> None:
    with pytest.raises(InputError, match="RAG_GENERATOR_URL"):
        load_generator(Settings(generator="openai"))
    with pytest.raises(InputError, match="RAG_GENERATOR_API_KEY"):
        load_generator(Settings(generator="openai", generator_url="http://me:pw@127.0.0.1:1/v1"))
    with pytest.raises(InputError, match="not an http"):
        load_generator(Settings(generator="openai", generator_url="127.0.0.1:8080"))
    gen = load_generator(Settings(generator="openai", generator_url=server.url + "/", generator_server_model="m"))
    assert isinstance(gen, OpenAIGenerator) and gen.id == f"openai:m@127.0.0.1:{server.port}"
    assert gen.keep_state(MESSAGES) is False and gen.keep_state(MESSAGES, pin=True) is False
    assert server.requests == []  # nothing asked of the server until the first call
    gen.check_ready()
    assert server.paths("GET") == ["/v1/models"]


def test_count_tokens_through_the_llama_cpp_style_tokenize_endpoint() -> None:
    """llama.cpp's server answers /tokenize at its root (beside /v1) and /detokenize with "content"."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            out = {"tokens": [7] * len(body["content"].split())} if self.path == "/tokenize" else {"detail": "x"}
            raw = json.dumps(out).encode()
            self.send_response(200 if self.path == "/tokenize" else 404)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        gen = generator(f"http://127.0.0.1:{httpd.server_address[1]}/v1", model="m")
        assert gen.count_tokens("one two three") == 3
        assert seen[-1]["add_special"] is False and seen[-1]["content"] == "one two three"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_visible_mass_is_a_lower_bound_of_the_true_one() -> None:
    """Against a full distribution: what the top 20 show never exceeds the whole, and misses little."""
    import random

    rng = random.Random(0)
    for _ in range(50):
        logits = [rng.gauss(0, 3) for _ in range(500)]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        probs = [w / total for w in weights]
        tokens = [f"t{i}" for i in range(500)]
        wanted = set(rng.sample(tokens, 5))
        true = sum(p for t, p in zip(tokens, probs, strict=True) if t in wanted)
        ranked = sorted(zip(tokens, probs, strict=True), key=lambda tp: -tp[1])[:20]
        from rag.generation_openai import visible_mass

        seen = visible_mass([(t, math.log(p)) for t, p in ranked], wanted.__contains__)
        assert seen <= true + 1e-12
        assert true - seen <= 1 - sum(p for _, p in ranked) + 1e-12


# ---------------------------------------------------------------- through the pipeline, the API and the CLI

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


@pytest.fixture
def indexed(tmp_path: Path) -> Settings:
    from rag.ingest import ingest
    from tests.fakes import FakeEmbedder

    shutil.copytree(SEEDS, tmp_path / "corpus")
    settings = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index", warm_when_idle=False)
    ingest(settings.corpus_dir, settings.index_dir, FakeEmbedder(), settings, progress=False)
    return settings


def test_without_logprobs_the_pipeline_reads_all_passages_at_once_and_refuses_a_not_found_draft(
    server: FakeOpenAIServer, indexed: Settings
) -> None:
    from rag.pipeline import build_pipeline
    from tests.fakes import FakeEmbedder

    server.knobs.logprobs = False
    server.knobs.reply = "NOT FOUND"
    pipeline = build_pipeline(indexed, embedder=FakeEmbedder(), generator=generator(server.url))
    answer = pipeline.ask("Which port were the munitions shipped from?")
    assert answer.abstained and answer.notes[0] == "the model found no answer in the passages"
    assert answer.confidence is None and answer.provenance["generator"] == f"openai:tiny-model@127.0.0.1:{server.port}"
    scored, drafted = server.chats()
    assert scored["max_tokens"] == 1 and drafted["stream"] is True
    # one prompt with every retrieved passage (top_k of them), nothing barred: the model's own NOT FOUND refused
    passages = drafted["messages"][-2]["content"]
    assert passages.startswith("Passages:\n[1] ") and f"\n\n[{indexed.top_k}] " in passages
    assert "logit_bias" not in drafted


def _pipeline_factory(url: str) -> object:
    def make(s: Settings) -> object:
        from rag.pipeline import build_pipeline
        from tests.fakes import FakeEmbedder

        return build_pipeline(
            s.model_copy(update={"generator": "openai", "generator_url": url}), embedder=FakeEmbedder()
        )

    return make


def test_a_down_model_server_is_a_503_with_retry_after(indexed: Settings) -> None:
    from api.app import create_app
    from tests.api_fakes import wait_ready
    from tests.openapi_contract import ContractClient as TestClient

    url = closed_port_url()
    app = create_app(indexed.model_copy(update={"generator_retries": 0}), _pipeline_factory(url))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(app)
        ready = client.get("/ready")
        asked = client.post("/ask", json={"question": "Which port were the munitions shipped from?"})
        streamed = client.post("/ask", json={"question": "Which port were the munitions shipped from?", "stream": True})
        chat = client.post(
            "/v1/chat/completions", json={"model": "rag", "messages": [{"role": "user", "content": "Which port?"}]}
        )
    for resp in (ready, asked, streamed, chat):
        assert resp.status_code == 503, resp.text
        assert resp.headers["Retry-After"] == "5"
        error = resp.json()["error"]
        assert error["code"] == "server_unreachable" and url in error["message"], error


def test_ready_again_once_the_model_server_answers(indexed: Settings, server: FakeOpenAIServer) -> None:
    from api.app import create_app
    from tests.api_fakes import wait_ready
    from tests.openapi_contract import ContractClient as TestClient

    server.knobs.fail_first = 1
    app = create_app(indexed.model_copy(update={"generator_retries": 0}), _pipeline_factory(server.url))  # type: ignore[arg-type]
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(app)
        assert client.get("/ready").status_code == 503  # the model server says 503: so do we, for now
        assert client.get("/ready").json() == {"status": "ready"}


def test_cli_ask_with_the_model_server_down_exits_2_with_one_line(
    indexed: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rag import cli
    from tests.fakes import FakeEmbedder

    monkeypatch.setattr("rag.embedding.load_embedder", lambda settings: FakeEmbedder())
    url = closed_port_url()
    monkeypatch.setenv("RAG_GENERATOR", "openai")
    monkeypatch.setenv("RAG_GENERATOR_URL", url)
    monkeypatch.setenv("RAG_GENERATOR_RETRIES", "1")  # a retry happens, and still one line
    code = cli.main(["ask", "Which port were the munitions shipped from?", "--index", str(indexed.index_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out.strip() == ""
    assert err.count("\n") == 1 and err.startswith(f"error: The model server at {url} cannot be reached")
