"""The question-answering pipeline shared by the CLI, the HTTP service and the eval runner.

Built once with its heavy parts injected (embedder, generator, index); every
caller goes through these methods, so the eval measures exactly what users get.

    question -> (rewrite follow-up) -> retrieve (dense + BM25, fused) -> refusal gate
             -> generate (streamed) -> verify each sentence against its passages -> Answer
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

from rag.citations import verify
from rag.embedding import Embedder
from rag.errors import InputError, RagError, write_failed
from rag.focus import focus
from rag.generation import Generator, Message
from rag.prompting import (
    NOT_FOUND,
    answer_messages,
    answer_prefix,
    judge_messages,
    rewrite_messages,
    rewrite_prefix,
)
from rag.rerank import Reranker
from rag.retrieval import Retrieved, Retriever
from rag.settings import Settings
from rag.types import Answer, DocInfo, Hit, Turn

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
    ) -> None:
        from rag.store import load_index

        self.settings = settings
        self.embedder = embedder
        self.generator = generator
        self.reranker = reranker
        self._lock = threading.Lock()  # serializes index swaps (uploads, deletes)
        self._rewrites: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], str] = OrderedDict()
        self._rewrites_lock = threading.Lock()
        self._retriever = Retriever(
            load_index(settings.index_dir, embedder.id),
            embedder,
            candidates=settings.candidates,
            rrf_k=settings.rrf_k,
        )
        keep_prefix = getattr(generator, "keep_prefix", None)
        if keep_prefix is not None:
            # Every rewrite and every answer prompt starts the same: have the model read those
            # once, now (the answer prefix last, so that it is what the cache holds).
            keep_prefix(rewrite_prefix())
            keep_prefix(answer_prefix())

    # ------------------------------------------------------------------ retrieval

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
        """Yield answer text pieces as generated, then exactly one final ``Answer``."""
        _check_text(question, "question")
        if self.generator is None:
            raise RagError("this pipeline was built without a generator; use search instead")
        s = self.settings
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        standalone = self.standalone_question(question, history)
        timings["rewrite_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        retrieved = self._retrieve(standalone, self._k(k))
        # The model reads only the focused windows, so those are what citations point at.
        passages = focus(standalone, retrieved.hits, s.context_tokens, self.embedder.count_tokens)
        timings["retrieve_s"] = time.perf_counter() - t1
        messages = answer_messages(standalone, passages)
        t2 = time.perf_counter()
        p_missing = None
        gated = self._below_gate(retrieved) or not passages
        if not gated:
            passages, messages, p_missing = self._read(standalone, passages, messages)
            if p_missing is not None:
                timings["refusal_check_s"] = time.perf_counter() - t2
        provenance = self._provenance(messages, self._k(k), 0 if gated else len(passages))

        def finish(answer_text: str, abstained: bool, raw: str, reason: str) -> Answer:
            timings["total_s"] = time.perf_counter() - t0
            result = Answer(
                question=question,
                text=answer_text,
                abstained=abstained,
                citations=(),
                sentences=(),
                standalone_question=standalone,
                timings={k: round(v, 4) for k, v in timings.items()},
                provenance=provenance,
                notes=(reason,) if reason else (),
                draft=raw,
            )
            log.info("answer abstained=%s reason=%s raw=%r", abstained, reason, raw)
            return result

        if gated:
            yield REFUSAL
            why = (
                "no passage is close enough to the question" if passages else "no passage is usable (only instructions)"
            )
            yield finish(REFUSAL, True, "", why)
            return

        # The model's own signal first: how likely it is to reply NOT FOUND (read in the prompt
        # pass that the generation below reuses from the KV cache). Above the calibrated bar it
        # is a refusal; below it, NOT FOUND is barred so that a near-tie never reads as a refusal.
        if p_missing is not None and p_missing >= s.refuse_at:
            yield REFUSAL
            why = f"the model finds no answer in the passages (p={p_missing:.2f} >= {s.refuse_at})"
            yield replace(finish(REFUSAL, True, "", why), confidence=round(1 - p_missing, 4))
            return
        raw = ""
        # Without that signal small models sometimes answer a bare NOT FOUND; hold it back rather than stream it.
        held: str | None = ""  # None once the reply is known not to be NOT FOUND
        avoid = NOT_FOUND if p_missing is not None else ""
        for piece in self.generator.stream(messages, max_tokens=s.max_new_tokens, avoid=avoid):
            if not raw:
                timings["first_token_s"] = time.perf_counter() - t0
            raw += piece
            if held is not None:
                held += piece
                if NOT_FOUND.startswith(held.strip()) or held.strip().startswith(NOT_FOUND):
                    continue
                piece, held = held, None
            yield piece
        timings["generate_s"] = time.perf_counter() - t2

        if raw.strip().upper().startswith(NOT_FOUND) or not raw.strip():
            yield REFUSAL
            yield finish(REFUSAL, True, raw, "the model found no answer in the passages")
            return

        t3 = time.perf_counter()
        checked = verify(raw, standalone, passages, min_overlap=s.min_support)
        # Judge the verified text, not the raw draft: a bare "[1]" draft tells the model nothing.
        confidence = self._judge(messages, checked.supported_text) if checked.citations else None
        if confidence is None and p_missing is not None:
            confidence = round(1 - p_missing, 4)  # the model's own P(the passages hold an answer)
        timings["verify_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        if checked.citations and confidence is not None and s.min_judge > 0 and confidence < s.min_judge:
            why = f"the cited passages do not state the answer (judge p={confidence:.2f})"
            answer = finish(REFUSAL, True, raw, why)
            yield replace(answer, sentences=checked.sentences, confidence=confidence)
            return
        if not checked.citations:
            answer = finish(REFUSAL, True, raw, "no sentence of the draft answer is supported by the passages")
            yield replace(answer, sentences=checked.sentences, notes=(*answer.notes, *checked.notes))
            return
        yield Answer(
            question=question,
            text=checked.supported_text,
            abstained=False,
            citations=checked.citations,
            sentences=checked.sentences,
            standalone_question=standalone,
            timings={k: round(v, 4) for k, v in timings.items()},
            provenance=provenance,
            notes=checked.notes,
            draft=raw,
            confidence=confidence,
        )

    def _read(
        self, question: str, passages: list[Hit], messages: list[Message]
    ) -> tuple[list[Hit], list[Message], float | None]:
        """The passages the model answers from, their prompt, and its P(NOT FOUND) on them.

        With ``best_passage_first``, the model first reads the best passage alone, and when
        its P(NOT FOUND) there is under the refusal bar it answers from that passage: the
        other passages, about half of the prompt's new tokens, are never read. Otherwise it
        reads them all; that prompt starts with the same tokens, so llama.cpp re-reads only
        what follows the first passage (~25 tokens more than reading all at once).
        """
        if self.settings.best_passage_first and len(passages) > 1:
            first = answer_messages(question, passages[:1])
            p_first = self._p_not_found(first)
            if p_first is not None and p_first < self.settings.refuse_at:
                return passages[:1], first, p_first
        return passages, messages, self._p_not_found(messages)

    def _p_not_found(self, messages: Sequence[dict[str, str]]) -> float | None:
        """The generator's P(its reply starts NOT FOUND); None when it cannot say or the check is off."""
        scorer = getattr(self.generator, "start_probability", None)
        if scorer is None or self.settings.refuse_at >= 1:
            return None
        return float(scorer(messages, NOT_FOUND))

    def _judge(self, messages: Sequence[dict[str, str]], draft: str) -> float | None:
        """The generator's own P(yes) that its draft is stated in the passages; None when it cannot judge."""
        judge = getattr(self.generator, "yes_probability", None)
        if judge is None or self.settings.min_judge <= 0:
            return None
        return round(float(judge(judge_messages(messages, draft))), 4)

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
            "context_tokens": str(self.settings.context_tokens),
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
        from rag.ingest import add_or_update
        from rag.loaders import load_bytes
        from rag.store import WRITE_HINT, fsync_dir

        doc = load_bytes(filename, data)  # validates type and content before anything is written
        corpus = self.settings.corpus_dir
        target = _safe_path(corpus, doc.id)
        with self._lock:
            staged = _stage(target, data)
            try:
                index = add_or_update(self.settings.index_dir, doc, self.embedder, self.settings)
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
            index = remove(self.settings.index_dir, doc_id, self.settings, embedder_id=self.embedder.id)
            self._swap(index)
            path = _safe_path(self.settings.corpus_dir, doc_id)
            path.unlink(missing_ok=True)

    def _swap(self, index: object) -> None:
        from rag.store import Index

        assert isinstance(index, Index)
        self._retriever = Retriever(
            index, self.embedder, candidates=self.settings.candidates, rrf_k=self.settings.rrf_k
        )

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


def _stage(path: Path, data: bytes) -> Path:
    """Write ``data`` durably beside ``path`` under a hidden name (ingest skips hidden files); returns it.

    The name is a hash of the target's, so it never outgrows the file-name limit and
    a retry after a crash overwrites the leftover instead of adding another.
    """
    from rag.store import WRITE_HINT

    tmp = path.with_name(f".upload-{hashlib.sha256(path.name.encode()).hexdigest()[:16]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(exc, f"the upload to {path.parent}", WRITE_HINT) from exc
    return tmp


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
    return Pipeline(settings, embedder, generator, load_reranker(settings, generator))


def load_reranker(settings: Settings, generator: Generator | None) -> Reranker | None:
    from rag.rerank import CrossEncoderReranker, JudgeReranker

    if settings.reranker == "cross-encoder":
        if settings.reranker_path is None:
            raise InputError("RAG_RERANKER=cross-encoder needs RAG_RERANKER_PATH (a CrossEncoder folder)")
        return CrossEncoderReranker(settings.reranker_path)
    if settings.reranker == "judge":
        if generator is None or not hasattr(generator, "yes_probability"):
            raise InputError("RAG_RERANKER=judge needs the llama generator (it scores passages with yes/no logits)")
        return JudgeReranker(generator)  # type: ignore[arg-type]
    return None
