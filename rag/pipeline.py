"""The question-answering pipeline shared by the CLI, the HTTP service and the eval runner.

Built once with its heavy parts injected (embedder, generator, index); every
caller goes through these methods, so the eval measures exactly what users get.
Each stage lives in its own module; this one composes them, and also holds the
document operations of the ``QAPipeline`` protocol (they swap the index the
stages read), which is why it runs a little over 400 lines.

    question -> (rewrite follow-up) -> retrieve (dense + BM25, fused) -> refusal gate
             -> read each passage alone (kept states) -> none sure? read their best sentences together
             -> decide (answer from what holds it, or refuse) -> draft, streaming each verified sentence
             -> Answer
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rag.decision import calibrated, decide, decide_together
from rag.drafting import Draft, verified_stream
from rag.durable import stage_beside
from rag.embedding import Embedder
from rag.errors import InputError, RagError, write_failed
from rag.focus import focus, readable
from rag.generation import Generator, Message
from rag.prompting import (
    NOT_FOUND,
    answer_messages,
    answer_prefix,
    reading_messages,
    rewrite_messages,
    rewrite_prefix,
)
from rag.reading import read_each, read_together
from rag.rerank import Reranker
from rag.retrieval import Retrieved, Retriever
from rag.settings import Settings
from rag.types import Answer, Citation, DocInfo, Hit, Turn
from rag.vectors import VectorStore, vector_store

if TYPE_CHECKING:
    from rag.index import Index

log = logging.getLogger(__name__)

REFUSAL = "The documents do not say."
REWRITE_CACHE_SIZE = 256  # remembered follow-up rewrites (a few hundred bytes each)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        generator: Generator | None = None,
        reranker: Reranker | None = None,
        store: VectorStore | None = None,
    ) -> None:
        from rag.store import load_index

        self.settings = settings
        # Where the vectors live (FAISS files, or a Milvus connection): opened once, used by every swap.
        self.store = store if store is not None else vector_store(settings)
        self.embedder = embedder
        self.generator = generator
        self.reranker = reranker
        self._lock = threading.Lock()  # serializes index swaps (uploads, deletes)
        self._rewrites: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], str] = OrderedDict()
        self._rewrites_lock = threading.Lock()
        self._warm_cursor = 0  # next chunk for warm_next (an index swap starts over)
        self._warmed = 0  # passages warm_next has read since then
        self._retriever = self._new_retriever(load_index(settings.index_dir, embedder.id, self.store))
        if generator is not None:
            # Every rewrite and every answer prompt starts the same: have the model read those
            # once, now (the answer prefix last, so that it is what the cache holds).
            generator.keep_state(rewrite_prefix(), pin=True)
            generator.keep_state(answer_prefix(), pin=True)

    # ------------------------------------------------------------------ retrieval

    def _new_retriever(self, index: Index) -> Retriever:
        s = self.settings
        return Retriever(
            index, self.embedder, candidates=s.candidates, fusion=s.fusion, dense_weight=s.dense_weight, rrf_k=s.rrf_k
        )

    def _k(self, k: int | None) -> int:
        return k if k is not None else self.settings.top_k

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """Hybrid search without rewriting or generation."""
        _check_text(query, "query")
        return self._retriever.retrieve(query, self._k(k)).hits

    def standalone_question(self, question: str, history: Sequence[Turn]) -> str:
        """Rewrite a follow-up into a question that stands alone (needs the generator).

        Decoding is greedy, so the same conversation always gets the same rewrite: it is
        remembered (a few seconds of generation each) for a search followed by an ask, a
        client's retry, or the eval runner's retrieve-then-ask.
        """
        if not history or self.generator is None:
            return question
        key = (question, tuple((t.role, t.content) for t in history))
        with self._rewrites_lock:
            if key in self._rewrites:
                self._rewrites.move_to_end(key)
                return self._rewrites[key]
        raw = "".join(self.generator.stream(rewrite_messages(question, history), max_tokens=60))
        rewritten = " ".join(raw.strip().strip('"').split())
        # A rewrite that came back empty or rambling is worse than the original question.
        result = rewritten if 0 < len(rewritten) <= 400 else question
        with self._rewrites_lock:
            self._rewrites[key] = result
            while len(self._rewrites) > REWRITE_CACHE_SIZE:
                self._rewrites.popitem(last=False)
        return result

    def retrieve(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> list[Hit]:
        """Passages the generator would see for this question."""
        _check_text(question, "question")
        return self._retrieve(self.standalone_question(question, history), self._k(k)).hits

    def _retrieve(self, question: str, k: int) -> Retrieved:
        if self.reranker is None:
            return self._retriever.retrieve(question, k)
        wide = self._retriever.retrieve(question, max(k, self.settings.rerank_candidates))
        return replace(wide, hits=self.reranker.rerank(question, wide.hits)[:k])

    # ------------------------------------------------------------------ answering

    def ask(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer:
        answer = None
        for piece in self.ask_stream(question, history, k):
            if isinstance(piece, Answer):
                answer = piece
        assert answer is not None
        return answer

    def ask_stream(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Iterator[str | Answer]:
        """Yield the verified answer text as each sentence passes, then exactly one final ``Answer``.

        Stages: rewrite -> retrieve -> read each passage alone (``rag.reading``) -> decide
        (``rag.decision``) -> draft from the chosen passage, streaming only verified
        sentences (``rag.drafting``). A backend that cannot score NOT FOUND reads all
        passages at once instead, as a plain RAG prompt would.
        """
        _check_text(question, "question")
        if self.generator is None:
            raise RagError("this pipeline was built without a generator; use search instead")
        generator = self.generator
        s = self.settings
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        standalone = self.standalone_question(question, history)
        timings["rewrite_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        retrieved = self._retrieve(standalone, self._k(k))
        # Whole passages, less any sentence that addresses the model (it never reaches a prompt).
        passages = readable(standalone, retrieved.hits)
        timings["retrieve_s"] = time.perf_counter() - t1
        # The signals a refusal is decided on, kept with the answer so the decision can be replayed and refit.
        signals = {"top_dense": f"{retrieved.top_dense:.4f}", "top_keyword": f"{retrieved.top_keyword:.4f}"}

        def finish(text: str, raw: str, why: str, messages: Sequence[Message], read: int, **extra: object) -> Answer:
            timings["total_s"] = time.perf_counter() - t0
            timings.setdefault("first_token_s", timings["total_s"])
            log.info("answer abstained=%s reason=%s raw=%r", not extra.get("citations"), why, raw)
            fields: dict[str, object] = {
                "question": question,
                "text": text,
                "abstained": not extra.get("citations"),
                "citations": (),
                "sentences": (),
                "standalone_question": standalone,
                "timings": {name: round(v, 4) for name, v in timings.items()},
                "provenance": {**self._provenance(messages, self._k(k), read), **signals},
                "notes": (why,) if why else (),
                "draft": raw,
                **extra,
            }
            return Answer(**fields)  # type: ignore[arg-type]

        if self._below_gate(retrieved) or not passages:
            why = (
                "no passage is close enough to the question" if passages else "no passage is usable (only instructions)"
            )
            yield REFUSAL
            yield finish(REFUSAL, "", why, [], 0)
            return

        t2 = time.perf_counter()
        reading = read_each(generator, standalone, passages, stop_below=s.stop_reading_at)
        confidence: float | None = None
        if reading is None:  # the backend cannot score NOT FOUND: one read of every passage
            answer_from, messages, avoid, read = passages, answer_messages(standalone, passages), "", len(passages)
        else:
            timings["read_s"] = time.perf_counter() - t2
            timings["passages_warm"] = reading.warm
            signals["p_not_found"] = " ".join(f"{r.rank}:{r.p_not_found:.4f}" for r in reading.reads)
            decision = decide(reading, s.refuse_at)
            read = len(reading.reads)
            if decision.refused and (together := self._together(standalone, retrieved.hits)):
                # No passage alone holds the answer: the best sentences of all of them, read at once.
                t4 = time.perf_counter()
                p_together = read_together(generator, standalone, together)
                timings["read_together_s"] = time.perf_counter() - t4
                if p_together is not None:
                    signals["p_together"] = f"{p_together:.4f}"
                decision = decide_together(decision, together, p_together, s.refuse_together_at)
            # A refusal keeps the model's own P(answer); the calibration was fit on answers given.
            confidence = decision.confidence
            if decision.refused:
                yield REFUSAL
                yield finish(
                    REFUSAL,
                    "",
                    decision.reason,
                    answer_messages(standalone, passages[:read]),
                    read,
                    confidence=confidence,
                )
                return
            # Below the bar NOT FOUND is barred, so a near-tie never reads as a refusal.
            answer_from = list(decision.passages)
            messages, avoid = answer_messages(standalone, answer_from), NOT_FOUND

        t3 = time.perf_counter()

        def timed(pieces: Iterator[str]) -> Iterator[str]:
            for piece in pieces:
                timings.setdefault("draft_first_token_s", time.perf_counter() - t0)
                yield piece

        pieces = timed(generator.stream(messages, max_tokens=s.max_new_tokens, avoid=avoid))
        draft = None
        for item in verified_stream(pieces, standalone, answer_from, min_support=s.min_support):
            if isinstance(item, Draft):
                draft = item
                break
            # What a user sees first: a sentence that passed verification.
            timings.setdefault("first_token_s", time.perf_counter() - t0)
            yield item
        assert draft is not None
        timings["generate_s"] = time.perf_counter() - t3
        checked = draft.verified
        if not checked.citations:
            found = draft.raw.strip() and not draft.raw.strip().upper().startswith(NOT_FOUND)
            why = (
                "no sentence of the draft answer is supported by the passages"
                if found
                else "the model found no answer in the passages"
            )
            yield REFUSAL
            yield finish(
                REFUSAL,
                draft.raw,
                why,
                messages,
                read,
                sentences=checked.sentences,
                notes=(why, *checked.notes),
                confidence=confidence,
            )
            return
        yield finish(
            checked.supported_text,
            draft.raw,
            "",
            messages,
            read,
            citations=self._mark_scanned(checked.citations),
            sentences=checked.sentences,
            notes=checked.notes,
            confidence=None if confidence is None else calibrated(confidence),
        )

    def check_ready(self) -> None:
        """Raise a ``RagError`` when a server answers need is out of reach now (Milvus, the model's); /ready asks."""
        self.store.check()
        # The loaded version itself: Milvus drops a version's collection at the second commit after it (by another
        # process, say), as this process has not swapped to either.
        self._retriever.index.dense.count()
        if self.generator is not None:
            self.generator.check_ready()

    def close(self) -> None:
        """Close the vector store's connection and the generator's (both no-ops in process); the service's shutdown
        calls it. The pipeline is unusable afterwards."""
        try:
            self.store.close()
        finally:  # one failing to close is no reason to leave the other open
            if self.generator is not None:
                self.generator.close()

    def warm_next(self) -> bool:
        """Have the model read the next passage (in index order) whose state is not kept yet.

        Returns False once every passage is kept, after RAG_WARM_PASSAGES reads since the last
        index swap, or without a generator that keeps states. The service calls it while idle and
        ``rag ingest --warm`` until done: later questions on those passages
        then cost only their own tokens. One call reads at most one passage (a few seconds
        cold), so a question that arrives meanwhile waits at most that long.
        """
        if self.generator is None or not self.generator.keeps_states or self._warmed >= self.settings.warm_passages:
            return False
        chunks = self._retriever.index.chunks
        while self._warm_cursor < len(chunks):
            chunk = chunks[self._warm_cursor]
            self._warm_cursor += 1
            for hit in readable("", [Hit(chunk, 0.0)]):
                if not self.generator.keep_state(reading_messages([hit])):
                    self._warmed += 1
                    return True
        return False

    def _mark_scanned(self, citations: Sequence[Citation]) -> tuple[Citation, ...]:
        """The citations, each saying whether its page was read by OCR (kept per document in the index)."""
        index = self._retriever.index
        return tuple(replace(c, scanned=index.is_scanned(c.doc_id, c.page)) for c in citations)

    def _together(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """The best sentences of the passages within RAG_TOGETHER_TOKENS; [] when that read is off or pointless."""
        budget = self.settings.together_tokens
        if budget <= 0 or len(hits) < 2:
            return []
        # Focus may keep only the top passage's window when the others match the question poorly:
        # still a different, narrower read than the whole chunk was.
        return focus(question, hits, budget, self.embedder.count_tokens)

    def _below_gate(self, retrieved: Retrieved) -> bool:
        # Both signals must be weak: a name-only question can have low cosine but a strong BM25 hit.
        s = self.settings
        return retrieved.top_dense < s.min_dense_score and retrieved.top_keyword < s.min_keyword_score

    def _provenance(self, messages: Sequence[dict[str, str]], k: int, read: int) -> dict[str, str]:
        index = self._retriever.index
        prompt_hash = hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).hexdigest()
        return {
            "index_version": index.version,
            "embedder": self.embedder.id,
            "generator": self.generator.id if self.generator else "",
            "k": str(k),
            "candidates": str(self.settings.candidates),
            "reranker": self.reranker.id if self.reranker else "none",
            "refuse_at": str(self.settings.refuse_at),
            "stop_reading_at": str(self.settings.stop_reading_at),
            "passages_read": str(read),  # 1 when the best passage alone settled it; 0 when refused unread
            "prompt_sha256": prompt_hash,
        }

    # ------------------------------------------------------------------ documents

    def documents(self) -> list[DocInfo]:
        return self._retriever.index.documents()

    def add_document(self, filename: str, data: bytes) -> DocInfo:
        """Save into the corpus folder and index incrementally; searchable and durable on return.

        Order matters for a crash (kill -9) or a full disk at any point: the file is
        staged (written and fsynced under a hidden name), the index commits, and only
        then does the file take its name. A failure before the commit leaves the corpus
        and the index as they were; the caller acknowledges the upload only after this
        returns, so an acknowledged upload is in both.
        """
        from rag.durable import fsync_dir
        from rag.ingest import add_or_update
        from rag.loaders import load_bytes
        from rag.ocr import OcrOptions
        from rag.store import WRITE_HINT

        # Validates type and content before anything is written.
        doc = load_bytes(filename, data, OcrOptions.from_settings(self.settings))
        corpus = self.settings.corpus_dir
        target = _safe_path(corpus, doc.id)
        with self._lock:
            try:
                staged = stage_beside(target, data, prefix=".upload-")
            except OSError as exc:
                raise write_failed(exc, f"the upload to {target.parent}", WRITE_HINT) from exc
            try:
                index = add_or_update(self.settings.index_dir, doc, self.embedder, self.settings, self.store)
                os.replace(staged, target)
                fsync_dir(target.parent)
            except OSError as exc:
                raise write_failed(exc, f"the upload to {corpus}", WRITE_HINT) from exc
            finally:
                staged.unlink(missing_ok=True)
            self._swap(index)
        return next(d for d in index.documents() if d.doc_id == doc.id)

    def delete_document(self, doc_id: str) -> None:
        from rag.ingest import remove

        if doc_id not in {d.doc_id for d in self.documents()}:
            raise InputError(f"no document with id {doc_id!r}")
        with self._lock:
            index = remove(
                self.settings.index_dir, doc_id, self.settings, embedder_id=self.embedder.id, store=self.store
            )
            self._swap(index)
            path = _safe_path(self.settings.corpus_dir, doc_id)
            path.unlink(missing_ok=True)

    def _swap(self, index: object) -> None:
        from rag.index import Index

        assert isinstance(index, Index)
        self._retriever = self._new_retriever(index)
        self._warm_cursor = 0  # new or changed chunks may sit anywhere in the new index
        self._warmed = 0

    def info(self) -> dict[str, object]:
        index = self._retriever.index
        docs = index.documents()
        return {
            "index_version": index.version,
            "documents": len(docs),
            "chunks": len(index.chunks),
            "embedder": self.embedder.id,
            "generator": self.generator.id if self.generator else None,
            "top_k": self.settings.top_k,
        }


def _check_text(text: str, what: str) -> None:
    if not text or not text.strip():
        raise InputError(f"the {what} is empty")


def _safe_path(root: Path, name: str) -> Path:
    """Resolve ``name`` inside ``root``; refuse anything that escapes it."""
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InputError(f"file name {name!r} points outside the corpus folder")
    return target


def build_pipeline(
    settings: Settings,
    *,
    with_generator: bool = True,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> Pipeline:
    """Load the models once and assemble the pipeline."""
    from rag.embedding import load_embedder

    if embedder is None:
        embedder = load_embedder(settings)
    if generator is None and with_generator:
        from rag.generation import load_generator

        generator = load_generator(settings)
    from rag.rerank import load_reranker

    return Pipeline(settings, embedder, generator, load_reranker(settings, generator))
