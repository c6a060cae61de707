"""The real models end to end: pipeline, HTTP on loopback, and the chat page in Chromium.

Slow: loads MiniLM and the 1.5B generator once per session (see conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from api.app import create_app
from rag.settings import Settings
from rag.types import Answer, Turn
from tests.api_fakes import parse_sse, serve, wait_ready

pytestmark = pytest.mark.slow
PORT_QUESTION = "Which port were the munitions shipped from?"
ARTIFACTS = Path(__file__).parent / "artifacts"


def test_answer_names_rason_and_cites_the_exact_source(real_pipeline: Any, real_settings: Settings) -> None:
    answer: Answer = real_pipeline.ask(PORT_QUESTION)
    assert not answer.abstained, answer
    assert "Rason" in answer.text
    assert answer.citations
    for c in answer.citations:
        source = (real_settings.corpus_dir / c.doc_id).read_text(encoding="utf-8")
        assert source[c.start : c.end] == c.text
    assert any("Rason" in c.text for c in answer.citations)
    assert answer.provenance["generator"].startswith("qwen2.5-coder-1.5b")


def test_off_topic_question_is_refused(real_pipeline: Any) -> None:
    answer: Answer = real_pipeline.ask("How do I bake sourdough bread?")
    assert answer.abstained and answer.citations == ()


def test_follow_up_is_answered_from_history(real_pipeline: Any) -> None:
    first = real_pipeline.ask("What did North Korea test on October 30, 2024?")
    history = [Turn("user", "What did North Korea test on October 30, 2024?"), Turn("assistant", first.text)]
    answer = real_pipeline.ask("And how far did it fly?", history)
    assert "missile" in answer.standalone_question.lower()
    assert not answer.abstained and "7,000" in answer.text


def test_http_stream_on_loopback(real_pipeline: Any, real_settings: Settings) -> None:
    app = create_app(real_settings, lambda s: real_pipeline)
    with serve(app) as url:
        wait_ready(app, timeout=30)
        with httpx.Client(timeout=120) as client:
            r = client.post(f"{url}/ask", json={"question": PORT_QUESTION, "stream": True})
        assert r.status_code == 200
        events = parse_sse(r.text)
        names = [name for name, _ in events]
        assert names[0] == "token" and names[-2:] == ["answer", "done"]
        final = events[-2][1]
        assert isinstance(final, dict) and "Rason" in final["answer"] and final["citations"]


def test_the_official_openai_client_receives_only_verified_sentences(
    real_pipeline: Any, real_settings: Settings
) -> None:
    from openai import OpenAI

    # Issue 13: streamed, this question once sent a claim the article never makes, while the
    # same request unstreamed refused. What streams must be what the final answer says.
    questions = (PORT_QUESTION, "What did Kim Jong Un say about the missile test?")
    app = create_app(real_settings.model_copy(update={"warm_when_idle": False}), lambda s: real_pipeline)
    with serve(app) as url:
        wait_ready(app, timeout=30)
        client = OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=180)
        for question in questions:
            messages: list[Any] = [{"role": "user", "content": question}]
            stream = client.chat.completions.create(model="rag-local", messages=messages, stream=True)
            pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
            whole = client.chat.completions.create(model="rag-local", messages=messages)
            with httpx.Client(timeout=180) as http:
                asked = http.post(f"{url}/ask", json={"question": question}).json()
            assert "".join(pieces) == whole.choices[0].message.content == asked["answer"], question
            if asked["abstained"]:
                assert pieces == ["The documents do not say."]
            else:
                assert "[1]" in "".join(pieces) and asked["citations"]


@pytest.mark.browser
def test_page_with_real_models(page: Page, real_pipeline: Any, real_settings: Settings) -> None:
    app = create_app(real_settings, lambda s: real_pipeline)
    with serve(app) as url:
        wait_ready(app, timeout=30)
        page.set_viewport_size({"width": 1280, "height": 860})
        page.goto(url)
        page.get_by_label("Your question").fill(PORT_QUESTION)
        page.get_by_role("button", name="Ask", exact=True).click()
        reply = page.locator(".msg.assistant").last
        cite = reply.locator(".answer-text button.cite").first
        expect(cite).to_be_visible(timeout=120_000)
        expect(reply).to_contain_text("Rason")
        cite.click()
        expect(page.locator("#passage mark")).to_contain_text("Rason")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-real-models.png"), full_page=True)
