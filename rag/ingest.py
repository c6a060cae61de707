"""Ingest stage: corpus folder -> index on disk, incrementally.

Documents are matched by id (path in the corpus), content hash and OCR options
(``Document.ocr``): unchanged documents keep their chunks and vectors without
being parsed again (their files are only hashed), new and changed ones are
chunked and embedded in one batch, deleted ones disappear. Every write goes through
``store.save_index`` (a new version, switched atomically) under the writer
lock, so the CLI and HTTP uploads can run side by side. The progress shown while
documents are embedded is ``rag.ingest_progress``'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rag.chunking import chunk_document
from rag.embedding import Embedder
from rag.errors import IndexFormatError, InputError
from rag.index import DocEntry, Index, Manifest, resolve_index_type
from rag.ingest_progress import IngestProgress
from rag.loaders import Known, read_corpus
from rag.ocr import OcrOptions
from rag.settings import Settings
from rag.store import REBUILD_HINT, cleanup, current_version, load_index, read_manifest, save_index, writer_lock
from rag.types import Chunk, Document
from rag.vectors import VectorStore, vector_store

log = logging.getLogger(__name__)

# Chunks embedded per call: enough for the embedder's length-sorted batches, few enough that
# progress moves every few seconds and a document counts as done soon after it is embedded.
EMBED_GROUP_CHUNKS = 256


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did; document counts compare the corpus with the previous index."""

    added: int
    updated: int
    removed: int
    unchanged: int
    chunks_embedded: int
    chunks_total: int
    documents_total: int
    index_version: str
    seconds: float
    warnings: tuple[str, ...] = ()
    #: Why every document was re-embedded (``--rebuild``, another embedder, new chunk sizes); None if incremental.
    rebuild_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data


def chunk_params(settings: Settings, embedder: Embedder) -> tuple[int, int]:
    """Effective (chunk_tokens, overlap_tokens): chunks never exceed what the embedder reads."""
    chunk_tokens = min(settings.chunk_tokens, embedder.max_tokens)
    if chunk_tokens < settings.chunk_tokens:
        log.warning(
            "chunk_tokens %d exceeds what %s reads (%d tokens); using %d",
            settings.chunk_tokens,
            embedder.id,
            embedder.max_tokens,
            chunk_tokens,
        )
    if settings.chunk_overlap >= chunk_tokens:
        raise InputError(
            f"Chunk overlap ({settings.chunk_overlap} tokens) must be smaller than the chunk size "
            f"({chunk_tokens} tokens): lower RAG_CHUNK_OVERLAP or raise RAG_CHUNK_TOKENS."
        )
    return chunk_tokens, settings.chunk_overlap


def ingest(
    corpus: Path,
    index_dir: Path,
    embedder: Embedder,
    settings: Settings,
    *,
    rebuild: bool = False,
    progress: bool = True,
    store: VectorStore | None = None,
) -> IngestReport:
    """Bring the index in ``index_dir`` up to date with the documents in ``corpus``.

    Raises ``InputError`` (nothing written) for a missing or empty corpus and
    ``IndexFormatError`` for an unreadable existing index unless ``rebuild``.
    ``store`` keeps the vectors (default: the one ``RAG_VECTOR_STORE`` names).
    """
    started = time.perf_counter()
    chunk_tokens, overlap = chunk_params(settings, embedder)
    store = store if store is not None else vector_store(settings)
    # Read and validate everything before touching the index folder; a file the index holds is only hashed.
    known = {} if rebuild else known_documents(index_dir, embedder, chunk_tokens, overlap, store.backend)
    read = read_corpus(corpus, OcrOptions.from_settings(settings), known)
    docs, warnings = read.documents, read.warnings

    with writer_lock(index_dir):
        previous: Index | None = None
        old_docs: Mapping[str, DocEntry] = {}
        reason: str | None = None
        if rebuild:
            reason = "rebuild requested"
            # Only for the added/updated counts; an unreadable old index is simply replaced.
            with contextlib.suppress(IndexFormatError):
                old_docs = read_manifest(index_dir).documents
        elif current_version(index_dir) is not None:
            elsewhere = read_manifest(index_dir)
            if elsewhere.backend != store.backend:
                # Its vectors are in another store: the documents count as kept, their vectors are made again.
                old_docs = elsewhere.documents
                reason = f"the vectors were in {elsewhere.backend}, now {store.backend} (RAG_VECTOR_STORE)"
            else:
                loaded = load_index(index_dir, store=store)  # IndexFormatError says to run `rag ingest --rebuild`
                old_docs = loaded.manifest.documents
                reason = incompatibility(loaded.manifest, embedder, chunk_tokens, overlap)
                if reason is None:
                    previous = loaded
        if reason:
            log.warning("re-embedding every document: %s", reason)

        reusable = previous.manifest.documents if previous is not None else {}
        # Files left unparsed that this index cannot reuse after all (it was rebuilt or changed since they
        # were compared with it): read them now.
        late = [i for i, k in read.unchanged.items() if not _holds(reusable.get(i), k.sha256, k.ocr, migrated=True)]
        if late:
            more, late_warnings = read.read(late)
            docs, warnings = sorted([*docs, *more], key=lambda d: d.id), [*warnings, *late_warnings]
        files = {d.id: (d.sha256, d.ocr) for d in docs} | {
            i: (k.sha256, k.ocr) for i, k in read.unchanged.items() if i not in late
        }
        # An entry from before the OCR options were recorded fills them in from the document just read,
        # but only if that read gives the text it indexed: the same bytes OCR'd by another Tesseract (or
        # with other languages) can read differently, and its chunks would then be stale.
        reread = {d.id for d in docs if _reads_otherwise(old_docs.get(d.id), d)}
        added = sum(1 for doc_id in files if doc_id not in old_docs)
        updated = sum(
            1
            for doc_id in files
            if doc_id in old_docs and (doc_id in reread or not _holds(old_docs[doc_id], *files[doc_id]))
        )
        unchanged = len(files) - added - updated
        removed = sum(1 for doc_id in old_docs if doc_id not in files)

        reuse = [
            doc_id for doc_id in sorted(files) if doc_id not in reread and _holds(reusable.get(doc_id), *files[doc_id])
        ]
        reuse_set = set(reuse)
        fresh = [d for d in docs if d.id not in reuse_set]

        def report(index_version: str, embedded: int, chunks_total: int) -> IngestReport:
            return IngestReport(
                added=added,
                updated=updated,
                removed=removed,
                unchanged=unchanged,
                chunks_embedded=embedded,
                chunks_total=chunks_total,
                documents_total=len(files),
                index_version=index_version,
                seconds=round(time.perf_counter() - started, 3),
                warnings=tuple(warnings),
                rebuild_reason=reason,
            )

        # A manifest written before scanned pages (or OCR options) were recorded gets them from the documents
        # just read (same bytes and, see `reread`, the same text): a new version, nothing re-embedded.
        unrecorded = any(_unrecorded(reusable[doc_id]) for doc_id in reuse)
        if previous is not None and not fresh and removed == 0 and not unrecorded:
            kept = len(previous.chunks)
            kind = resolve_index_type(settings.index_type, kept, settings.hnsw_threshold)
            # An index setting changed (FAISS's kind, Milvus's index type or build parameters): the same
            # vectors, read back, are indexed again as a new version below; nothing is re-embedded.
            if kind != previous.manifest.index_type:
                restage: str | None = f"the index type changed from {previous.manifest.index_type} to {kind}"
            else:
                restage = store.outdated(previous.manifest, kept)
            if restage is None:
                log.info("index %s is up to date", previous.version)
                # Nothing to write, but what a killed writer left goes now (a Milvus collection holds memory).
                cleanup(index_dir, store)
                return report(previous.version, 0, kept)
            log.info("indexing the vectors again (none re-embedded): %s", restage)

        manifest, chunks, vectors, embedded = compose(
            previous, reuse, fresh, embedder, chunk_tokens, overlap, settings, progress=progress, read=docs
        )
        index = save_index(index_dir, manifest, chunks, vectors, store)
        return report(index.version, embedded, len(chunks))


def add_or_update(
    index_dir: Path, doc: Document, embedder: Embedder, settings: Settings, store: VectorStore | None = None
) -> Index:
    """Index one document (new or changed) next to the others; atomic, returns the new live index.

    Creates the index if there is none. An unchanged document returns the current index untouched.
    """
    chunk_tokens, overlap = chunk_params(settings, embedder)
    store = store if store is not None else vector_store(settings)
    with writer_lock(index_dir):
        previous: Index | None = None
        if current_version(index_dir) is not None:
            previous = load_index(index_dir, store=store)
            reason = incompatibility(previous.manifest, embedder, chunk_tokens, overlap)
            if reason:
                raise IndexFormatError(f"Cannot add {doc.id} to the index in {index_dir}: {reason}; {REBUILD_HINT}.")
            if _holds(previous.manifest.documents.get(doc.id), doc.sha256, doc.ocr):
                return previous
        reuse = [d for d in (previous.manifest.documents if previous else {}) if d != doc.id]
        manifest, chunks, vectors, _ = compose(
            previous, reuse, [doc], embedder, chunk_tokens, overlap, settings, progress=False
        )
        return save_index(index_dir, manifest, chunks, vectors, store)


def remove(
    index_dir: Path,
    doc_id: str,
    settings: Settings,
    *,
    embedder_id: str | None = None,
    store: VectorStore | None = None,
) -> Index:
    """Drop one document's chunks from the index; atomic, returns the new live index."""
    store = store if store is not None else vector_store(settings)
    with writer_lock(index_dir):
        previous = load_index(index_dir, embedder_id, store)
        if doc_id not in previous.manifest.documents:
            raise InputError(f"No document named {doc_id!r} in the index.")
        reuse = [d for d in previous.manifest.documents if d != doc_id]
        m = previous.manifest
        manifest, chunks, vectors, _ = compose(
            previous, reuse, [], None, m.chunk_tokens, m.overlap_tokens, settings, progress=False
        )
        return save_index(index_dir, manifest, chunks, vectors, store)


def known_documents(
    index_dir: Path, embedder: Embedder, chunk_tokens: int, overlap: int, backend: str
) -> dict[str, Known]:
    """What the live index holds that an ingest may reuse without parsing the file again; {} if nothing.

    Read without the writer lock (a manifest is switched atomically): ``ingest`` checks again under the
    lock and parses whatever no longer matches. Entries from before ``DocEntry.scanned_pages`` or
    ``DocEntry.ocr`` were recorded are left out: the document itself fills them in.
    """
    try:
        if current_version(index_dir) is None:
            return {}
        manifest = read_manifest(index_dir)
    except IndexFormatError:
        return {}  # the ingest says what is wrong, under the lock
    if manifest.backend != backend or incompatibility(manifest, embedder, chunk_tokens, overlap) is not None:
        return {}  # every document is embedded again, so every file is read
    return {
        doc_id: Known(e.sha256, e.ocr)
        for doc_id, e in manifest.documents.items()
        if e.scanned_pages is not None and e.ocr is not None  # spelled out, so mypy knows e.ocr is a str
    }


def _unrecorded(entry: DocEntry) -> bool:
    """Whether an entry is from before ``DocEntry.scanned_pages`` or ``DocEntry.ocr`` was recorded."""
    return entry.scanned_pages is None or entry.ocr is None


def _holds(entry: DocEntry | None, sha256: str, ocr: str, *, migrated: bool = False) -> bool:
    """Whether an index entry holds the document with these bytes and ``Document.ocr``.

    An entry from before the OCR options were recorded is taken to hold it (as before they were), unless
    ``migrated`` asks for an entry with every field recorded (a file left unparsed cannot fill them in).
    """
    if entry is None or entry.sha256 != sha256:
        return False
    if _unrecorded(entry):
        return not migrated
    return entry.ocr == ocr


def _reads_otherwise(entry: DocEntry | None, doc: Document) -> bool:
    """Whether an entry from before ``DocEntry.ocr`` was recorded holds these bytes but another text.

    Its character count is all that such an entry says of the text it was chunked from.
    """
    if entry is None or entry.sha256 != doc.sha256 or not _unrecorded(entry):
        return False
    return entry.chars != len(doc.text)


def incompatibility(manifest: Manifest, embedder: Embedder, chunk_tokens: int, overlap: int) -> str | None:
    """Why an index's vectors cannot be reused with this embedder and chunking, or None if they can."""
    if manifest.embedder_id != embedder.id or manifest.embedder_dim != embedder.dim:
        return (
            f"it was built with embedder {manifest.embedder_id!r} ({manifest.embedder_dim} dims), "
            f"now {embedder.id!r} ({embedder.dim} dims)"
        )
    if (manifest.chunk_tokens, manifest.overlap_tokens) != (chunk_tokens, overlap):
        return (
            f"chunking changed from {manifest.chunk_tokens}/{manifest.overlap_tokens} "
            f"to {chunk_tokens}/{overlap} tokens (size/overlap)"
        )
    return None


def compose(
    previous: Index | None,
    reuse: Sequence[str],
    fresh: Sequence[Document],
    embedder: Embedder | None,
    chunk_tokens: int,
    overlap: int,
    settings: Settings,
    *,
    progress: bool,
    read: Sequence[Document] = (),
) -> tuple[Manifest, list[Chunk], np.ndarray, int]:
    """Manifest, chunks and vectors for ``reuse`` (taken from ``previous``) plus ``fresh`` (embedded now).

    ``read`` are documents just loaded from the corpus: a reused entry whose manifest predates
    ``DocEntry.scanned_pages`` or ``DocEntry.ocr`` takes them from there. Returns the number of chunks
    embedded as the last element.
    """
    if previous is None and reuse:
        raise ValueError("cannot reuse documents without a previous index")
    if embedder is not None:
        embedder_id, dim = embedder.id, embedder.dim
    elif previous is not None and not fresh:
        embedder_id, dim = previous.manifest.embedder_id, previous.manifest.embedder_dim
    else:
        raise ValueError("an embedder is needed for new documents")

    new_chunks: dict[str, list[Chunk]] = {}
    new_vectors = np.zeros((0, dim), dtype=np.float32)
    if embedder is not None and fresh:
        reporter = IngestProgress(len(fresh), sum(len(d.text) for d in fresh)) if progress else None
        new_chunks, new_vectors = chunk_and_embed(fresh, embedder, chunk_tokens, overlap, reporter)

    # Gather per-document blocks, then lay them out sorted by document id.
    blocks: dict[str, tuple[DocEntry, list[Chunk], np.ndarray]] = {}
    loaded = {d.id: d for d in read}
    if previous is not None and reuse:
        # One read of every vector (free for FAISS, one paged query for Milvus), then a slice per document.
        kept = previous.vectors
        for doc_id in reuse:
            entry = previous.manifest.documents[doc_id]
            if _unrecorded(entry) and doc_id in loaded:
                doc = loaded[doc_id]
                entry = replace(entry, scanned_pages=tuple(sorted(doc.scanned_pages)), ocr=doc.ocr)
            # A document's chunks are contiguous rows (the layout below), so one slice takes them.
            first = previous.row(entry.chunk_ids[0]) if entry.chunk_ids else 0
            rows = slice(first, first + len(entry.chunk_ids))
            blocks[doc_id] = (entry, previous.chunks[rows], kept[rows])
    offset = 0
    for doc in fresh:
        doc_chunks = new_chunks[doc.id]
        entry = DocEntry(
            sha256=doc.sha256,
            chunk_ids=tuple(c.id for c in doc_chunks),
            chars=len(doc.text),
            page_count=len(doc.page_starts) or None,
            scanned_pages=tuple(sorted(doc.scanned_pages)),
            ocr=doc.ocr,
        )
        blocks[doc.id] = (entry, doc_chunks, new_vectors[offset : offset + len(doc_chunks)])
        offset += len(doc_chunks)

    order = sorted(blocks)
    chunks = [c for doc_id in order for c in blocks[doc_id][1]]
    vectors = (
        np.concatenate([blocks[doc_id][2] for doc_id in order]).astype(np.float32, copy=False)
        if order
        else np.zeros((0, dim), dtype=np.float32)
    )
    manifest = Manifest(
        embedder_id=embedder_id,
        embedder_dim=dim,
        chunk_tokens=chunk_tokens,
        overlap_tokens=overlap,
        index_type=resolve_index_type(settings.index_type, len(chunks), settings.hnsw_threshold),
        documents={doc_id: blocks[doc_id][0] for doc_id in order},
    )
    return manifest, chunks, vectors, len(new_vectors)


def chunk_and_embed(
    docs: Sequence[Document],
    embedder: Embedder,
    chunk_tokens: int,
    overlap: int,
    reporter: IngestProgress | None = None,
) -> tuple[dict[str, list[Chunk]], np.ndarray]:
    """Chunk ``docs`` and embed their chunks, a group of whole documents (~EMBED_GROUP_CHUNKS chunks) at a time.

    Returns the chunks by document id and their vectors, rows in the order of ``docs``.
    """
    chunks: dict[str, list[Chunk]] = {}
    parts: list[np.ndarray] = []
    group: list[Document] = []

    def flush() -> None:
        texts = [c.text for d in group for c in chunks[d.id]]
        vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
        if vectors.shape != (len(texts), embedder.dim):
            raise ValueError(f"embedder returned {vectors.shape}, expected {(len(texts), embedder.dim)}")
        parts.append(vectors)
        if reporter is not None:
            reporter.update(documents=len(group), chunks=len(texts), chars=sum(len(d.text) for d in group))
        group.clear()

    pending = 0
    for doc in docs:
        chunks[doc.id] = chunk_document(doc, embedder.count_tokens, chunk_tokens, overlap)
        group.append(doc)
        pending += len(chunks[doc.id])
        if pending >= EMBED_GROUP_CHUNKS:
            flush()
            pending = 0
    if group:
        flush()
    if reporter is not None:
        reporter.finish()
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)
    return chunks, vectors
