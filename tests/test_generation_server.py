"""RAG_GENERATOR=openai against a real OpenAI-compatible server: llama-cpp-python's, serving the shipped GGUF.

Slow: the server loads the 1.5B in its own process (``tests/llama_server.py``), beside the
in-process model of ``real_pipeline`` (conftest.py), and a few seed questions are answered
through both. The server is stopped when the module ends, or when a test fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag.generation_openai import OpenAIGenerator
from rag.settings import Settings
from rag.types import Answer
from tests.llama_server import ALIAS, LlamaServer, llama_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PORT_QUESTION = "Which port were the munitions shipped from?"


def subset() -> list[dict[str, Any]]:
    """Six seed gold questions, four answerable and two not: every 20th and every 12th (no history), from the start.

    The first six of the ten the README's comparison measured (q001 q021 q041 q061, q084 q096): near
    the refusal bars too (q041 and q096 go to the read-together second look).
    """
    rows = [json.loads(line) for line in (ROOT / "eval" / "gold.jsonl").read_text(encoding="utf-8").splitlines()]
    answerable = [r for r in rows if r["answerable"] and not r.get("history")][::20]
    unanswerable = [r for r in rows if not r["answerable"]][::12]
    return answerable[:4] + unanswerable[:2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    from rag.models import ensure_generator_gguf

    gguf = ensure_generator_gguf(Settings().cache_dir)
    with llama_server(gguf, tmp_path_factory.mktemp("llama-server") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def server_settings(real_settings: Settings, real_pipeline: Any, server: LlamaServer) -> Settings:
    # real_pipeline first: it builds the index both pipelines read.
    return real_settings.model_copy(
        update={"generator": "openai", "generator_url": server.url, "generator_retries": 1, "warm_when_idle": False}
    )


@pytest.fixture(scope="module")
def server_pipeline(server_settings: Settings, real_pipeline: Any) -> Any:
    from rag.pipeline import build_pipeline

    return build_pipeline(server_settings, embedder=real_pipeline.embedder)


def rag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m rag ...`` in a child process, configured by environment variables as a user would."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "RAG_GENERATOR": "openai",
        "RAG_GENERATOR_URL": str(settings.generator_url),
        "RAG_GENERATOR_RETRIES": "1",
        "RAG_INDEX_DIR": str(settings.index_dir),
        "RAG_CORPUS_DIR": str(settings.corpus_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "rag", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


def test_rag_ask_answers_rason_with_its_citation_through_the_server(
    server: LlamaServer, server_settings: Settings
) -> None:
    done = rag(server_settings, "ask", PORT_QUESTION, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert not answer["abstained"] and "Rason" in answer["answer"], answer
    assert any("Rason" in c["text"] for c in answer["citations"])
    for c in answer["citations"]:
        source = (server_settings.corpus_dir / c["doc_id"]).read_text(encoding="utf-8")
        assert source[c["start"] : c["end"]] == c["text"]
    assert answer["provenance"]["generator"] == f"openai:{ALIAS}@{server.where}"
    assert "p_not_found" in answer["provenance"]  # the server returned logprobs: passages were read one by one


def test_not_found_probability_matches_the_in_process_model(real_pipeline: Any, server_pipeline: Any) -> None:
    """The server's top-20 logprobs give the in-process P(NOT FOUND) (the same model and prompt).

    Not bit for bit: llama.cpp's CPU kernels round differently with the size of the batch a
    prompt is read in, and the two sides split prompts differently (the server reuses its last
    request's prefix, the in-process model its kept states); on the seed questions that moved
    P(NOT FOUND) by up to 0.02.
    """
    from rag.prompting import NOT_FOUND, answer_messages
    from rag.types import Chunk, Hit

    text = "The Blue Harbor library opens at 7:15; its door code is 4417."
    passage = Hit(Chunk("d#0", "d.txt", text, 0, len(text)), 1.0)
    remote: OpenAIGenerator = server_pipeline.generator
    for question in ("What is the door code of the Blue Harbor library?", "Who founded the Blue Harbor library?"):
        messages = answer_messages(question, [passage])
        local = real_pipeline.generator.start_probability(messages, NOT_FOUND)
        served = remote.start_probability(messages, NOT_FOUND)
        assert served == pytest.approx(local, abs=0.03), (question, local, served)
    assert remote.count_tokens("The door code is 4417.") == real_pipeline.generator.count_tokens(
        "The door code is 4417."
    )


def test_a_seed_subset_gets_the_same_answers_in_process_and_through_the_server(
    real_pipeline: Any, server_pipeline: Any
) -> None:
    """Same model, same prompts, greedy: the same decisions and citations, and nearly always the same words.

    The server keeps no passage states: it reuses the fixed prefix its last request shared and
    reads passage and question in one batch. With passage states the in-process model reads the
    question in a batch of its own, and llama.cpp's kernels round differently by batch size:
    measured on q158, P(NOT FOUND) 0.348 with states against 0.283 without and 0.293 on the
    server, and another draft. So the in-process side here keeps none, as the server does.
    Even so, the server reads the prompt in other batches than the in-process model, and a
    greedy near-tie can fall the other way: on q021 (P(NOT FOUND) 0.106 here, 0.117 served) one
    side's draft leaves out "nearly three million shells and", same passage, same citation. So
    the refusal and the cited passages must match on every question, the words on all but one.
    """
    generator = real_pipeline.generator
    kept, generator.states = generator.states, None
    try:
        decided, worded = [], []
        for row in subset():
            local: Answer = real_pipeline.ask(row["question"])
            served: Answer = server_pipeline.ask(row["question"])
            signals = [a.provenance.get("p_not_found") for a in (local, served)]
            cited = [(a.abstained, sorted({c.chunk_id for c in a.citations})) for a in (local, served)]
            if cited[0] != cited[1]:
                decided.append((row["id"], *cited, *signals))
            if local.text != served.text:
                worded.append((row["id"], local.text, served.text, *signals))
    finally:
        generator.states = kept
    assert not decided, decided
    assert len(worded) <= 1, worded


def test_a_stopped_server_is_503_with_retry_after_and_exit_2(
    server: LlamaServer, server_settings: Settings, server_pipeline: Any
) -> None:
    """Last in the module: it stops the server the others use."""
    from api.app import create_app
    from tests.api_fakes import wait_ready
    from tests.openapi_contract import ContractClient as TestClient

    app = create_app(server_settings, lambda s: server_pipeline)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(app)
        assert client.get("/ready").status_code == 200
        server.stop()
        ready = client.get("/ready")
        asked = client.post("/ask", json={"question": PORT_QUESTION})
    for resp in (ready, asked):
        assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
        assert resp.json()["error"]["code"] == "server_unreachable"
        assert server.url in resp.json()["error"]["message"]
    done = rag(server_settings, "ask", PORT_QUESTION)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: The model server at {server.url} cannot be reached"), done.stderr
    assert done.stderr.count("\n") == 1  # one line, no traceback
