"""A loaded index in memory, and the manifest that describes it.

``Index`` holds one version's chunks and the vectors over them (a ``VectorIndex``: FAISS in
memory, or a Milvus collection), and answers searches; ``Manifest`` (with ``DocEntry``) says
what a version holds and how it was built, and maps to and from its JSON. ``FaissIndex`` is
the FAISS ``VectorIndex``; ``build_faiss`` makes it from the vectors, with the HNSW
parameters measured below.

Apart from ``rag.store`` (the folders, files and checks on disk: ``load_index``,
``save_index``) because retrieval and ingest work with a loaded ``Index`` and need
nothing of how versions are written, switched and verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.formats import is_image
from rag.types import Chunk, DocInfo, Hit

FORMAT_VERSION = 1  # of the manifest and the version folder (rag.store refuses others)

# Measured at 100k synthetic clustered vectors, 2 cores (M=32, efConstruction=200, build 101 s):
# efSearch 64 -> recall@10 0.62 (p95 1.4 ms); 256 -> 0.946 (3.6 ms); 512 -> 0.988 (6.8 ms);
# 1024 -> 0.998 (10.6 ms). 512 is the first to clear 0.95 with room, well under 20 ms.
HNSW_M = 32
HNSW_EF_SEARCH = 512
HNSW_EF_CONSTRUCTION = 200


@dataclass(frozen=True)
class DocEntry:
    """What the manifest records per document."""

    sha256: str
    chunk_ids: tuple[str, ...]
    chars: int
    page_count: int | None = None
    #: Pages read by OCR (``Document.scanned_pages``), sorted; None in a manifest written before they were
    #: recorded (the next ``rag ingest`` records them, without re-embedding).
    scanned_pages: tuple[int, ...] | None = None
    #: ``Document.ocr``: the OCR options its text was read with ("" if no page needed OCR); None in a manifest
    #: written before it was recorded (the next ``rag ingest`` records it, without re-embedding).
    ocr: str | None = None


@dataclass(frozen=True)
class Manifest:
    embedder_id: str
    embedder_dim: int
    chunk_tokens: int
    overlap_tokens: int
    index_type: str  # "flat" or "hnsw"; "auto" is resolved before saving
    documents: Mapping[str, DocEntry]
    format_version: int = FORMAT_VERSION
    index_version: str = ""  # the version folder's name, set by save_index
    created_at: str = ""  # ISO 8601 UTC, set by save_index
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> {bytes, sha256}
    #: Where the vectors live when not in the version folder (``{"backend": "milvus", "collection": ...}``);
    #: None for FAISS, whose manifests stay as they always were.
    vectors: Mapping[str, Any] | None = None

    @property
    def backend(self) -> str:
        return str(self.vectors["backend"]) if self.vectors else "faiss"

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "created_at": self.created_at,
            "index_version": self.index_version,
            "embedder": {"id": self.embedder_id, "dim": self.embedder_dim},
            "chunking": {"chunk_tokens": self.chunk_tokens, "overlap_tokens": self.overlap_tokens},
            "index_type": self.index_type,
            "hnsw": {"m": HNSW_M, "ef_search": HNSW_EF_SEARCH} if self.index_type == "hnsw" else None,
            "documents": {
                doc_id: {
                    "sha256": e.sha256,
                    "chunk_ids": list(e.chunk_ids),
                    "chars": e.chars,
                    "page_count": e.page_count,
                    "scanned_pages": None if e.scanned_pages is None else list(e.scanned_pages),
                    "ocr": e.ocr,
                }
                for doc_id, e in sorted(self.documents.items())
            },
            "files": {name: dict(info) for name, info in sorted(self.files.items())},
            **({"vectors": dict(self.vectors)} if self.vectors else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest whose ``format_version`` was already checked; KeyError/TypeError on bad shape."""
        docs = {
            str(doc_id): DocEntry(
                sha256=str(e["sha256"]),
                chunk_ids=tuple(str(c) for c in e["chunk_ids"]),
                chars=int(e["chars"]),
                page_count=None if e.get("page_count") is None else int(e["page_count"]),
                scanned_pages=None if e.get("scanned_pages") is None else tuple(int(p) for p in e["scanned_pages"]),
                ocr=None if e.get("ocr") is None else str(e["ocr"]),
            )
            for doc_id, e in data["documents"].items()
        }
        return cls(
            embedder_id=str(data["embedder"]["id"]),
            embedder_dim=int(data["embedder"]["dim"]),
            chunk_tokens=int(data["chunking"]["chunk_tokens"]),
            overlap_tokens=int(data["chunking"]["overlap_tokens"]),
            index_type=str(data["index_type"]),
            documents=docs,
            format_version=int(data["format_version"]),
            index_version=str(data["index_version"]),
            created_at=str(data["created_at"]),
            files={str(k): dict(v) for k, v in data.get("files", {}).items()},
            vectors=dict(data["vectors"]) if data.get("vectors") else None,
        )


def resolve_index_type(index_type: str, n_chunks: int, hnsw_threshold: int) -> str:
    """Concrete FAISS flavour for a setting.

    >>> resolve_index_type("auto", 10, 50_000), resolve_index_type("auto", 60_000, 50_000)
    ('flat', 'hnsw')
    """
    if index_type == "auto":
        return "hnsw" if n_chunks > hnsw_threshold else "flat"
    if index_type not in ("flat", "hnsw"):
        raise ValueError(f"unknown index type {index_type!r}")
    return index_type


class VectorIndex(Protocol):
    """One committed version's vectors, searchable; row ``i`` is line ``i`` of the version's chunk store."""

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows of the ``k`` rows most similar to one unit query (1-D arrays), best first."""
        ...

    def count(self) -> int: ...

    def fetch(self, rows: slice) -> np.ndarray:
        """The vectors of ``rows`` (float32, unit rows), for the next version to reuse without re-embedding."""
        ...


class FaissIndex:
    """The FAISS ``VectorIndex``: the vectors and a FAISS index over them, in memory."""

    def __init__(self, vectors: np.ndarray, faiss_index: Any, index_type: str) -> None:
        self.vectors = vectors
        self.faiss = faiss_index
        self.index_type = index_type

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self.index_type == "hnsw":
            # efSearch below k would return fewer than k results; pass it per call (thread-safe).
            params = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))  # type: ignore[attr-defined]
            scores, rows = self.faiss.search(query.reshape(1, -1), k, params=params)
        else:
            scores, rows = self.faiss.search(query.reshape(1, -1), k)
        return scores[0], rows[0]

    def count(self) -> int:
        return int(self.faiss.ntotal)

    def fetch(self, rows: slice) -> np.ndarray:
        return self.vectors[rows]


class Index:
    """A loaded index version: chunks, and the vectors over them (FAISS or Milvus), read-only."""

    def __init__(self, path: Path, manifest: Manifest, chunks: list[Chunk], dense: VectorIndex):
        self.path = path
        self.manifest = manifest
        self.chunks = chunks
        self.dense = dense
        self._rows = {c.id: i for i, c in enumerate(chunks)}

    @property
    def version(self) -> str:
        return self.manifest.index_version

    @property
    def vectors(self) -> np.ndarray:
        """Every chunk's vector, row for row (for FAISS the array in memory; Milvus fetches them)."""
        return self.dense.fetch(slice(0, len(self.chunks)))

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, query_vec: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` chunks most similar to a unit query vector, best first.

        Inner product of unit vectors is their cosine similarity, so scores lie in [-1, 1].
        """
        k = min(int(k), len(self.chunks))
        if k <= 0:
            return []
        query = np.ascontiguousarray(np.asarray(query_vec, dtype=np.float32).reshape(-1))
        if query.shape[0] != self.manifest.embedder_dim:
            raise ValueError(f"query has dimension {query.shape[0]}, index has {self.manifest.embedder_dim}")
        scores, rows = self.dense.search(query, k)
        return [Hit(chunk=self.chunks[int(r)], score=float(s)) for s, r in zip(scores, rows, strict=True) if r >= 0]

    def chunk(self, chunk_id: str) -> Chunk:
        """The chunk with this id; KeyError if the index does not hold it."""
        return self.chunks[self._rows[chunk_id]]

    def row(self, chunk_id: str) -> int:
        """Row of ``chunk_id`` in ``chunks`` and ``vectors``."""
        return self._rows[chunk_id]

    def has_chunk(self, chunk_id: str) -> bool:
        return chunk_id in self._rows

    def is_scanned(self, doc_id: str, page: int | None) -> bool:
        """Whether ``page`` of ``doc_id`` was read by OCR, so a citation of it says "scanned page".

        Kept per document in the manifest rather than per chunk: one list a document, and the chunks
        (and an older index's chunks.jsonl) stay as they are. A manifest from before the list was
        recorded knows only that an image is OCR'd on every page.
        """
        entry = self.manifest.documents.get(doc_id)
        if page is None or entry is None:
            return False
        if entry.scanned_pages is None:
            return is_image(doc_id)
        return page in entry.scanned_pages

    def documents(self) -> list[DocInfo]:
        return [
            DocInfo(doc_id=doc_id, sha256=e.sha256, chunks=len(e.chunk_ids), chars=e.chars)
            for doc_id, e in sorted(self.manifest.documents.items())
        ]


def build_faiss(vectors: np.ndarray, index_type: str) -> Any:
    import faiss

    dim = int(vectors.shape[1])
    index: Any
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        # Exact search; inner product equals cosine similarity on unit vectors.
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(vectors)
    return index
