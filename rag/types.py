"""Small frozen contracts passed between the pipeline stages.

Pydantic stays at the edges (settings, HTTP schemas); inside the library the
stages exchange these plain dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Document:
    """One source file. ``id`` is its path relative to the corpus root."""

    id: str
    path: str
    text: str
    sha256: str
    # Character offset where each page starts (PDF, image, .pptx); page n (1-based) starts at page_starts[n-1].
    page_starts: tuple[int, ...] = ()
    # Pages (1-based) whose text came from OCR of the page's image (rag/ocr.py), not a text layer.
    scanned_pages: frozenset[int] = frozenset()
    # The OCR options its text depends on (``OcrOptions.signature``: the languages, or "off") when some page
    # had no text layer; "" when none needed OCR. Another value on a later ingest means the text may differ.
    ocr: str = ""

    def page_at(self, offset: int) -> int | None:
        """1-based page holding ``offset``, or None for documents without pages.

        >>> Document("a", "a", "xxyy", "h", (0, 2)).page_at(3)
        2
        """
        if not self.page_starts:
            return None
        page = 1
        for i, start in enumerate(self.page_starts):
            if start <= offset:
                page = i + 1
        return page


@dataclass(frozen=True)
class Chunk:
    """A passage: ``document.text[start:end] == text`` always holds."""

    id: str
    doc_id: str
    text: str
    start: int
    end: int
    page: int | None = None


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its score (higher is better; the scale depends on the stage)."""

    chunk: Chunk
    score: float


@dataclass(frozen=True)
class Citation:
    """A passage cited by an answer as ``[marker]``; ``span_*`` locate the supporting words in the source."""

    marker: int
    chunk_id: str
    doc_id: str
    start: int
    end: int
    text: str
    page: int | None = None
    span_start: int | None = None
    span_end: int | None = None
    #: The cited page was read by OCR (an image, or a PDF page without a text layer): "scanned page N".
    scanned: bool = False


@dataclass(frozen=True)
class Sentence:
    """One sentence of the answer, the markers it cites, and whether the cited passages support it."""

    text: str
    markers: tuple[int, ...]
    supported: bool
    support: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True)
class Answer:
    question: str
    text: str
    abstained: bool
    citations: tuple[Citation, ...]
    sentences: tuple[Sentence, ...]
    standalone_question: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: The model's probability that the passages it answered from hold the answer: 1 minus its probability
    #: of replying NOT FOUND on them; None when the backend cannot tell.
    confidence: float | None = None
    #: The model's unverified output, kept so anyone can see what verification changed.
    draft: str = ""


@dataclass(frozen=True)
class DocInfo:
    """A document as the index knows it."""

    doc_id: str
    sha256: str
    chunks: int
    chars: int


class QAPipeline(Protocol):
    """The pipeline as its callers see it (the API, the eval runner): ``rag.pipeline.Pipeline``, or a fake in tests.

    ``ask_stream`` yields the answer's text pieces as the model writes them, then the final ``Answer``.
    """

    def search(self, query: str, k: int | None = None) -> list[Hit]: ...

    def retrieve(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> list[Hit]: ...

    def ask(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer: ...

    def ask_stream(
        self, question: str, history: Sequence[Turn] = (), k: int | None = None
    ) -> Iterator[str | Answer]: ...

    def documents(self) -> list[DocInfo]: ...

    def add_document(self, filename: str, data: bytes) -> DocInfo: ...

    def delete_document(self, doc_id: str) -> None: ...

    def info(self) -> dict[str, object]: ...

    def check_ready(self) -> None:
        """Raise a ``RagError`` saying what is out of reach now (a Milvus or model server that is down)."""
        ...

    def warm_next(self) -> bool:
        """Read one more passage into the state cache; False once all are kept (or nothing to warm)."""
        ...

    def close(self) -> None:
        """Release the connections it holds (a Milvus server's, a model server's); the service's shutdown calls it."""
        ...
