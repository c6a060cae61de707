"""Where an index version keeps its vectors: the ``VectorStore`` protocol and its FAISS backend.

An index version is committed whole (``rag.store.save_index``): its chunk store and
manifest go to a version folder, its vectors to the vector store, and only then does
``CURRENT`` name it. Adding, replacing or deleting a document is a new version built
from the previous one (``rag.ingest.compose``: kept documents' vectors are fetched from
the previous version, never re-embedded), so the store needs few verbs:

    stage(version, vectors, replaces)  # write a version's vectors where no reader looks yet
    open(folder, manifest)   # a committed version's vectors, searchable (``rag.index.VectorIndex``)
    publish(manifest)        # after CURRENT names the version: point the store's own name at it
    discard(manifest)        # a staged version that never went live
    cleanup(manifest)        # drop every version but the live one and the one it replaced
    outdated(manifest, rows) # would stage() index these vectors otherwise now (settings changed)?
    check()                  # is it reachable (a Milvus server)?
    close()                  # drop the connection (the service's shutdown)

FAISS (the default) writes ``vectors.npy`` and ``faiss.index`` into the version folder,
so CURRENT alone switches versions and ``publish``/``cleanup`` have nothing to do: the
folder layout on disk is what it always was. Milvus (``rag.vectors_milvus``) keeps a
collection per version behind an alias.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rag.errors import IndexFormatError
from rag.index import FaissIndex, Manifest, VectorIndex, build_faiss
from rag.settings import Settings

VECTORS = "vectors.npy"
FAISS = "faiss.index"


@dataclass
class Staged:
    """A version's vectors, written but not live: files for the version folder, what the manifest records."""

    index: VectorIndex
    #: Files the store writes into the version folder (and checks by size and sha256 on load), in this order.
    files: dict[str, bytes] = field(default_factory=dict)
    #: ``Manifest.vectors``: None when the version folder holds the vectors itself.
    record: Mapping[str, Any] | None = None


#: Reads a file of the version folder, checked against the size and sha256 the manifest records.
ReadFile = Callable[[str], bytes]


class VectorStore(Protocol):
    """The vectors of index versions; ``rag.store`` commits a version around these calls."""

    backend: str  # "faiss" or "milvus": an index is reopened only by the backend that wrote it

    def stage(self, version: str, vectors: np.ndarray, index_type: str, replaces: str | None = None) -> Staged:
        """Write ``version``'s vectors; ``replaces`` is the version CURRENT names until this one commits."""
        ...

    def open(self, manifest: Manifest, read: ReadFile, rows: int) -> VectorIndex:
        """A committed version's ``rows`` vectors (one per chunk); ``Damaged`` when missing or inconsistent."""
        ...

    def publish(self, manifest: Manifest) -> None: ...

    def discard(self, manifest: Manifest) -> None: ...

    def cleanup(self, live: Manifest | None) -> None: ...

    def outdated(self, manifest: Manifest, rows: int) -> str | None:
        """Why ``stage`` would now index a version's ``rows`` vectors otherwise than ``manifest`` says they were
        (its index settings changed), or None. ``rag ingest`` then stages them again, nothing re-embedded."""
        ...

    def check(self) -> None:
        """Raise ``VectorStoreError`` with the reason when the store does not answer (``/ready`` asks)."""
        ...

    def close(self) -> None:
        """Drop the connection, if any; a second call does nothing. Nothing may use the store afterwards."""
        ...


class FaissStore:
    """Vectors as files in the version folder: ``vectors.npy`` (kept so updates reuse them) and ``faiss.index``."""

    backend = "faiss"

    def stage(self, version: str, vectors: np.ndarray, index_type: str, replaces: str | None = None) -> Staged:
        import faiss

        index = build_faiss(vectors, index_type)
        npy = io.BytesIO()
        np.save(npy, vectors, allow_pickle=False)
        files = {VECTORS: npy.getvalue(), FAISS: faiss.serialize_index(index).tobytes()}
        return Staged(FaissIndex(vectors, index, index_type), files)

    def open(self, manifest: Manifest, read: ReadFile, rows: int) -> VectorIndex:
        import faiss

        try:
            vectors = np.load(io.BytesIO(read(VECTORS)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _corrupt(VECTORS, str(exc)) from exc
        try:
            index = faiss.deserialize_index(np.frombuffer(read(FAISS), dtype=np.uint8))
        except RuntimeError as exc:  # faiss reports every decoding problem as RuntimeError
            raise _corrupt(FAISS, str(exc).splitlines()[0]) from exc
        dim = manifest.embedder_dim
        problems = []
        if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != dim:
            problems.append(f"vectors are {vectors.dtype} {vectors.shape}, expected float32 (n, {dim})")
        elif vectors.shape[0] != rows:
            problems.append(f"{vectors.shape[0]} vectors for {rows} chunks")
        if index.ntotal != rows or index.d != dim:
            problems.append(f"FAISS holds {index.ntotal} vectors of dim {index.d} for {rows} chunks")
        if problems:
            raise Damaged(f"is inconsistent ({'; '.join(problems)})")
        return FaissIndex(vectors, index, manifest.index_type)

    # The version folder is the whole FAISS version: CURRENT switches it, rag.store removes it.
    def publish(self, manifest: Manifest) -> None:
        pass

    def discard(self, manifest: Manifest) -> None:
        pass

    def cleanup(self, live: Manifest | None) -> None:
        pass

    def outdated(self, manifest: Manifest, rows: int) -> str | None:
        return None  # FAISS's one setting is the manifest's index_type, which ingest compares itself

    def check(self) -> None:
        pass  # files in this process: nothing to reach

    def close(self) -> None:
        pass  # nor anything to let go of


class Damaged(IndexFormatError):
    """What ``open`` found wrong, said of the version ("has a corrupt ..."); ``rag.store`` adds which and the fix."""


def _corrupt(name: str, why: str) -> Damaged:
    return Damaged(f"has a corrupt {name} ({why})")


def vector_store(settings: Settings) -> VectorStore:
    """The store ``RAG_VECTOR_STORE`` names; build it once and pass it on (Milvus holds a connection)."""
    if settings.vector_store == "milvus":
        from rag.vectors_milvus import MilvusStore

        return MilvusStore.connect(settings)
    return FaissStore()
