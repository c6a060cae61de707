"""The chat page in a real headless Chromium, against a real server with a slow fake pipeline.

Needs Debian's chromium at /usr/bin/chromium (``apt-get install -y chromium``);
never ``playwright install`` (it downloads a browser). Screenshots go to
tests/artifacts/ for a human to look at.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import FilePayload, Page, expect

from api.app import create_app
from rag.settings import Settings
from tests.api_fakes import FakePipeline, serve, wait_ready

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
TALLEST = "Which volcano is the tallest in Europe?"


class Site:
    def __init__(self, app: FastAPI, url: str, fake: FakePipeline) -> None:
        self.app = app
        self.url = url
        self.fake = fake


@contextmanager
def running_site(tmp_path: Path, fake: FakePipeline, **overrides: object) -> Iterator[Site]:
    base: dict[str, object] = {"corpus_dir": tmp_path, "index_dir": tmp_path / "index", "api_key": None}
    app = create_app(Settings(**{**base, **overrides}), lambda s: fake)  # type: ignore[arg-type]
    with serve(app) as url:
        wait_ready(app)
        yield Site(app, url, fake)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # Slow enough that the page shows the answer growing before the final render.
    fake = FakePipeline(delay=0.12, unsupported="Etna is also where Hephaestus kept his forge.")
    with running_site(tmp_path, fake) as s:
        yield s


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def ask(page: Page, question: str) -> None:
    page.get_by_label("Your question").fill(question)
    page.get_by_role("button", name="Ask", exact=True).click()


def test_answer_streams_then_citation_opens_highlighted_passage(page: Page, site: Site) -> None:
    page.set_viewport_size({"width": 1280, "height": 860})
    page.goto(site.url)
    expect(page.locator("#status")).to_have_text("Ready")
    ask(page, TALLEST)

    reply = page.locator(".msg.assistant").last
    # While streaming: partial text is visible and the pipeline has not finished yet.
    expect(reply.locator(".live")).to_contain_text("Mount Etna")
    assert "streaming" in (reply.get_attribute("class") or "")
    assert site.fake.finished == 0

    cite = reply.locator(".answer-text button.cite").first
    expect(cite).to_have_text("[1]")
    expect(reply).not_to_have_class("streaming")
    expect(reply.locator(".sentence.unsupported")).to_contain_text("Hephaestus")
    expect(reply.locator(".sentence.unsupported .flag")).to_be_visible()
    expect(reply.locator(".sentence:not(.unsupported)")).to_contain_text("tallest active volcano")

    cite.click()
    passage = page.locator("#passage")
    expect(passage).to_be_visible()
    expect(passage.locator("#passage-doc")).to_contain_text("volcanoes.md")
    expect(passage.locator("#passage-meta")).to_have_text("chars 0–90")
    expect(passage.locator("mark")).to_have_text("Mount Etna is the tallest active volcano in Europe.")
    expect(passage.locator("#passage-text")).to_contain_text("east coast of Sicily")
    shot(page, "chat-desktop.png")

    page.keyboard.press("Escape")
    expect(passage).to_be_hidden()


def test_sources_name_slides_scanned_pages_and_pages(page: Page, tmp_path: Path) -> None:
    tower, office, pier = (
        "The bell tower was repaired by the Lombardi brothers.",
        "The harbour office keeps the ferry timetable.",
        "The Capri ferry leaves from Pier 7.",
    )
    docs = {"report.pdf": f"{office}\n\n{tower}", "deck.pptx": f"Winter timetable.\n\n{pier}"}
    # The fake numbers the paragraphs of a PDF (and the slides of a deck) as pages; page 2 of the PDF was read by OCR.
    fake = FakePipeline(docs, scanned={"report.pdf": frozenset({2})})

    def chars(doc_id: str, passage: str) -> str:
        start = docs[doc_id].index(passage)
        return f"{doc_id} · chars {start}–{start + len(passage)}"

    with running_site(tmp_path, fake) as site:
        page.goto(site.url)
        for question, shown in [
            ("Who repaired the bell tower?", f"{chars('report.pdf', tower)}, scanned page 2"),
            ("Who keeps the ferry timetable office?", f"{chars('report.pdf', office)}, page 1"),
            ("Which pier does the Capri ferry leave from?", f"{chars('deck.pptx', pier)}, slide 2"),
        ]:
            ask(page, question)
            expect(page.locator(".msg.assistant").last.locator("ol.sources li")).to_have_text("[1] " + shown)


def test_follow_up_sends_the_conversation_history(page: Page, site: Site) -> None:
    site.fake.delay = 0
    page.goto(site.url)
    ask(page, "How do honey bees show where the flowers are?")
    expect(page.locator(".msg.assistant .cite").first).to_be_visible()
    ask(page, "And the queen?")
    expect(page.locator(".msg.assistant")).to_have_count(2)
    expect(page.locator(".msg.assistant").last.locator(".cite").first).to_be_visible()
    question, history, _ = site.fake.calls[-1]
    assert question == "And the queen?"
    assert [t.role for t in history] == ["user", "assistant"]
    assert history[0].content == "How do honey bees show where the flowers are?"
    assert history[1].content == site.fake.compute("How do honey bees show where the flowers are?").text

    page.get_by_role("button", name="New conversation").click()
    expect(page.locator(".msg")).to_have_count(0)
    ask(page, TALLEST)
    expect(page.locator(".msg.assistant .cite").first).to_be_visible()
    assert site.fake.calls[-1] == (TALLEST, (), None)


def test_refusal_looks_different_from_an_answer(page: Page, site: Site) -> None:
    site.fake.delay = 0
    page.goto(site.url)
    ask(page, "zzyzx quorble?")
    refusal = page.locator(".msg.assistant").nth(0)
    expect(refusal).to_have_class("msg assistant refusal")
    expect(refusal).to_contain_text("The documents don't say")
    expect(refusal.locator(".cite")).to_have_count(0)
    ask(page, TALLEST)
    answer = page.locator(".msg.assistant").nth(1)
    expect(answer.locator(".cite").first).to_be_visible()
    expect(answer).to_have_class("msg assistant")

    def look(loc: Any) -> tuple[str, str]:
        return loc.evaluate("e => [getComputedStyle(e).backgroundColor, getComputedStyle(e).borderTopStyle]")

    assert look(refusal) != look(answer)
    shot(page, "chat-refusal.png")


def test_busy_server_shows_a_clear_message(page: Page, tmp_path: Path) -> None:
    fake = FakePipeline()
    fake.release.clear()  # hold the model
    with running_site(tmp_path, fake, queue_size=1) as s:
        page.goto(s.url)
        threads = [threading.Thread(target=_ask_blocking, args=(s.url,)) for _ in range(2)]
        threads[0].start()
        assert fake.entered.wait(10)
        threads[1].start()
        gate = s.app.state.rag.gate
        for _ in range(500):
            if gate.waiting == 1:
                break
            threading.Event().wait(0.01)
        ask(page, TALLEST)
        reply = page.locator(".msg.assistant").last
        expect(reply).to_have_class("msg assistant failed busy")
        expect(reply).to_contain_text("busy")
        expect(page.get_by_label("Your question")).to_have_value(TALLEST)  # kept for a retry
        shot(page, "chat-busy.png")
        fake.release.set()
        for t in threads:
            t.join(20)


def _ask_blocking(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/ask", json={"question": "Etna?"})


def test_server_down_shows_a_clear_message(page: Page, tmp_path: Path) -> None:
    with running_site(tmp_path, FakePipeline()) as s:
        page.goto(s.url)
        expect(page.locator("#status")).to_have_text("Ready")
    # The server has stopped; the page is still open.
    ask(page, TALLEST)
    reply = page.locator(".msg.assistant").last
    expect(reply).to_contain_text("Cannot reach the server")
    expect(reply).to_have_class("msg assistant failed offline")


def test_phone_width_has_no_horizontal_scroll(page: Page, site: Site) -> None:
    site.fake.delay = 0
    site.fake.docs["a-document-with-a-really-long-file-name-that-could-overflow-a-phone-screen.md"] = (
        "Supercalifragilisticexpialidocious-and-then-some-more-unbroken-characters-to-test-wrapping."
    )
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(site.url)
    ask(page, TALLEST)
    page.locator(".msg.assistant .answer-text .cite").first.click()
    expect(page.locator("#passage mark")).to_be_visible()

    def overflow() -> int:
        return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))

    assert overflow() <= 0
    # The source sheet fits the screen width.
    box = page.locator("#passage").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360
    shot(page, "chat-phone.png")
    page.get_by_role("button", name="Close the source panel").click()
    expect(page.locator("#passage")).to_be_hidden()
    assert overflow() <= 0
    shot(page, "chat-phone-docs.png")


def test_upload_lists_the_document_and_answers_from_it(page: Page, site: Site) -> None:
    site.fake.delay = 0
    page.goto(site.url)
    expect(page.get_by_role("list", name="Indexed documents")).to_contain_text("bees.txt")
    page.get_by_label("Add a document").set_input_files(
        files=[FilePayload(name="octopus.txt", mimeType="text/plain", buffer=b"Octopuses have three hearts.")]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_contain_text("Added octopus.txt")
    expect(page.get_by_role("list", name="Indexed documents")).to_contain_text("octopus.txt")
    assert site.fake.uploads == ["octopus.txt"]

    ask(page, "How many hearts does an octopus have?")
    page.locator(".msg.assistant .answer-text .cite").first.click()
    expect(page.locator("#passage-doc")).to_contain_text("octopus.txt")

    page.get_by_label("Add a document").set_input_files(
        files=[FilePayload(name="slides.key", mimeType="application/octet-stream", buffer=b"x")]
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-status")).to_contain_text("not a supported type")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete octopus.txt").click()
    expect(page.locator("#upload-status")).to_have_text("Removed octopus.txt.")
    expect(page.get_by_role("list", name="Indexed documents")).not_to_contain_text("octopus.txt")


def test_api_key_is_asked_for_and_then_used(page: Page, tmp_path: Path) -> None:
    with running_site(tmp_path, FakePipeline(), api_key="page-key") as s:
        page.goto(s.url)
        expect(page.locator("#status")).to_have_text("Ready")  # /ready needs no key
        expect(page.get_by_role("list", name="Indexed documents")).to_contain_text("needs an API key")
        key = page.get_by_label("API key (kept in this tab only)")
        expect(key).to_be_visible()
        key.fill("page-key")
        page.get_by_role("button", name="Save key").click()
        expect(page.get_by_role("list", name="Indexed documents")).to_contain_text("bees.txt")
        ask(page, TALLEST)
        expect(page.locator(".msg.assistant .answer-text .cite").first).to_be_visible()
