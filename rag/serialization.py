"""The one JSON form of the library's results, shared by the CLI (``--json``), the API and the eval report.

Each function names every field it writes, so adding a field to a dataclass in
``rag.types`` is a decision: ``tests/test_serialization.py`` fails until the
field is written here and described by the matching model in ``api/schemas.py``
(the API validates every response through those models).

>>> from rag.types import Chunk, Hit
>>> hit_to_dict(Hit(Chunk("a.txt#0", "a.txt", "Etna", 0, 4), 0.5))
{'chunk_id': 'a.txt#0', 'doc_id': 'a.txt', 'start': 0, 'end': 4, 'text': 'Etna', 'score': 0.5, 'page': None}
"""

from __future__ import annotations

from typing import Any

from rag.types import Answer, Citation, DocInfo, Hit, Sentence

#: ``Answer`` fields written under another name: the answer's text is ``"answer"`` on the wire.
ANSWER_RENAMED = {"text": "answer"}


def hit_to_dict(hit: Hit) -> dict[str, Any]:
    chunk = hit.chunk
    return {
        "chunk_id": chunk.id,
        "doc_id": chunk.doc_id,
        "start": chunk.start,
        "end": chunk.end,
        "text": chunk.text,
        "score": float(hit.score),
        "page": chunk.page,
    }


def citation_to_dict(citation: Citation) -> dict[str, Any]:
    return {
        "marker": citation.marker,
        "chunk_id": citation.chunk_id,
        "doc_id": citation.doc_id,
        "start": citation.start,
        "end": citation.end,
        "text": citation.text,
        "page": citation.page,
        "span_start": citation.span_start,
        "span_end": citation.span_end,
        "scanned": citation.scanned,
    }


def sentence_to_dict(sentence: Sentence) -> dict[str, Any]:
    return {
        "text": sentence.text,
        "markers": list(sentence.markers),
        "supported": sentence.supported,
        "support": sentence.support,
        "note": sentence.note,
    }


def answer_to_dict(answer: Answer) -> dict[str, Any]:
    return {
        "question": answer.question,
        "standalone_question": answer.standalone_question,
        "answer": answer.text,
        "abstained": answer.abstained,
        "citations": [citation_to_dict(c) for c in answer.citations],
        "sentences": [sentence_to_dict(s) for s in answer.sentences],
        "timings": dict(answer.timings),
        "provenance": dict(answer.provenance),
        "notes": list(answer.notes),
        "confidence": answer.confidence,
        "draft": answer.draft,
    }


def doc_to_dict(doc: DocInfo) -> dict[str, Any]:
    return {"doc_id": doc.doc_id, "sha256": doc.sha256, "chunks": doc.chunks, "chars": doc.chars}
