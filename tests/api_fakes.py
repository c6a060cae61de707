"""A fake pipeline and a loopback server for the HTTP and browser tests.

``FakePipeline`` really computes its answers from its documents (word-overlap
search over paragraphs with exact offsets; the answer quotes the first sentence
of the best passage and cites it), so the tests can check what the service
passes through against what the pipeline produced. Knobs make it slow, make it
block, or make it fail, and counters show whether its generator was closed.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from rag.errors import InputError
from rag.types import Answer, Chunk, Citation, DocInfo, Hit, Sentence, Turn

REFUSAL = "The documents do not say."

DOCS = {
    "volcanoes.md": (
        "Mount Etna is the tallest active volcano in Europe. It stands on the east coast of Sicily.\n\n"
        "Etna erupts often; its lava flows have shaped the towns around it for centuries."
    ),
    "bees.txt": (
        "Honey bees communicate the direction of flowers with a waggle dance. "
        "The angle of the dance points relative to the sun.\n\n"
        "A colony keeps one queen, who can lay two thousand eggs a day."
    ),
    "manual.pdf": (
        "Page one explains installation of the pump.\n\n"
        "Page two: the pump must be primed with water before the first start."
    ),
}

_WORD = re.compile(r"\w+")
_STOP = frozenset("a an the is of to in on what who how does do did it its with and or for by be".split())


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def paragraphs(doc_id: str, text: str) -> list[Chunk]:
    """Chunks at blank lines, with exact offsets: ``text[c.start:c.end] == c.text``."""
    chunks = []
    for n, m in enumerate(re.finditer(r"[^\n]+(?:\n(?!\n)[^\n]+)*", text)):
        page = n + 1 if doc_id.endswith((".pdf", ".pptx")) else None
        chunks.append(Chunk(f"{doc_id}#{n}", doc_id, m.group(), m.start(), m.end(), page))
    return chunks


class FakePipeline:
    def __init__(
        self,
        docs: dict[str, str] | None = None,
        *,
        delay: float = 0.0,
        unsupported: str = "",
        fail_with: Exception | None = None,
        scanned: dict[str, frozenset[int]] | None = None,
    ) -> None:
        self.docs = dict(DOCS if docs is None else docs)
        self.scanned = dict(scanned or {})  # doc id -> pages read by OCR (their citations say so)
        self.delay = delay  # seconds before each streamed piece
        self.unsupported = unsupported  # an extra sentence the "verifier" rejects
        self.fail_with = fail_with  # raised after the first piece
        self.unreachable: Exception | None = None  # raised by check_ready (a model server that is down)
        # Cleared: generation waits before its first piece until set (to hold the model busy).
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()  # a generation has started
        self.calls: list[tuple[str, tuple[Turn, ...], int | None]] = []
        self.search_calls: list[tuple[str, int | None]] = []
        self.uploads: list[str] = []
        self.opened = 0
        self.finished = 0
        self.closed_early = 0  # generator closed (GeneratorExit) before it finished
        self.closed = threading.Event()
        self.warmed = 0  # warm_next calls
        self.warm_passages = 0  # how many passages warm_next pretends to read before all are kept
        self.shutdowns = 0  # close calls (the app's shutdown)

    # --- search
    def search(self, query: str, k: int | None = None) -> list[Hit]:
        self.search_calls.append((query, k))
        if not query.strip():
            raise InputError("the query is empty")
        wanted = words(query)
        hits = []
        for doc_id, text in self.docs.items():
            for chunk in paragraphs(doc_id, text):
                overlap = len(wanted & words(chunk.text))
                if overlap:
                    hits.append(Hit(chunk, overlap / len(wanted)))
        hits.sort(key=lambda h: (-h.score, h.chunk.id))
        return hits[: k or 4]

    def standalone(self, question: str, history: Sequence[Turn]) -> str:
        last_user = next((t.content for t in reversed(history) if t.role == "user"), "")
        return f"{last_user} {question}".strip()

    # --- answering
    def compute(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer:
        """The answer ``ask_stream`` ends with (computed, not canned)."""
        standalone = self.standalone(question, history)
        hits = self.search(standalone, k)
        if not hits:
            return Answer(question, REFUSAL, True, (), (), standalone, notes=("no passage matches",))
        chunk = hits[0].chunk
        doc_text = self.docs[chunk.doc_id]
        first = re.match(r"[^.;]+[.;]?", chunk.text)
        assert first is not None
        quote = first.group().strip()
        span_start = doc_text.index(quote, chunk.start)
        citation = Citation(
            1,
            chunk.id,
            chunk.doc_id,
            chunk.start,
            chunk.end,
            chunk.text,
            chunk.page,
            span_start,
            span_start + len(quote),
            chunk.page in self.scanned.get(chunk.doc_id, frozenset()),
        )
        sentences = [Sentence(f"{quote} [1]", (1,), True, 1.0)]
        text = f"{quote} [1]"
        if self.unsupported:
            sentences.append(Sentence(self.unsupported, (), False, 0.0, "no cited passage supports this"))
            text += " " + self.unsupported
        return Answer(question, text, False, (citation,), tuple(sentences), standalone)

    def ask(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer:
        return self.compute(question, history, k)

    def ask_stream(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Iterator[str | Answer]:
        self.calls.append((question, tuple(history), k))
        self.opened += 1
        self.entered.set()
        done = False
        try:
            answer = self.compute(question, history, k)
            self.release.wait()
            for n, piece in enumerate(re.findall(r"\S+\s*", answer.text)):
                if self.delay:
                    time.sleep(self.delay)
                if n == 1 and self.fail_with is not None:
                    raise self.fail_with
                yield piece
            yield answer
            done = True
        finally:
            if done:
                self.finished += 1
            else:
                self.closed_early += 1
            self.closed.set()

    # --- documents
    def documents(self) -> list[DocInfo]:
        return [
            DocInfo(doc_id, hashlib.sha256(text.encode()).hexdigest(), len(paragraphs(doc_id, text)), len(text))
            for doc_id, text in sorted(self.docs.items())
        ]

    def add_document(self, filename: str, data: bytes) -> DocInfo:
        self.uploads.append(filename)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{filename} is not UTF-8 text") from None
        if not text.strip():
            raise InputError(f"{filename} has no text")
        self.docs[filename] = text
        return next(d for d in self.documents() if d.doc_id == filename)

    def delete_document(self, doc_id: str) -> None:
        if doc_id not in self.docs:
            raise InputError(f"no document with id {doc_id!r}")
        del self.docs[doc_id]

    def check_ready(self) -> None:
        if self.unreachable is not None:
            raise self.unreachable

    def warm_next(self) -> bool:
        # Counts the calls (the idle warmer's test); there is nothing to keep.
        self.warmed += 1
        time.sleep(0.005)  # a read takes time; a warmer that spins would show in the busy test
        return self.warmed < self.warm_passages

    def close(self) -> None:
        self.shutdowns += 1

    def info(self) -> dict[str, object]:
        return {
            "documents": len(self.docs),
            "chunks": sum(len(paragraphs(d, t)) for d, t in self.docs.items()),
            "generator": "fake",
        }


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves this very socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def wait_ready(app: FastAPI, timeout: float = 10.0) -> None:
    assert app.state.rag.wait_ready(timeout), app.state.rag.load_error


def parse_sse(text: str) -> list[tuple[str, object]]:
    """``[(event, data)]`` from a Server-Sent-Events body (``data`` JSON-decoded)."""
    import json

    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events
