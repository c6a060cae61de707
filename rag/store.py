"""The on-disk index: chunks, their vectors, a FAISS index and a manifest, versioned and crash-safe.

Layout under ``index_dir``::

    CURRENT                  # one line: the live version folder, e.g. "v-20241027T101500123-3fa2c1"
    LOCK                     # flock target serializing writers (ingest, uploads)
    v-<timestamp>-<rand>/
        manifest.json        # format, embedder, chunking, documents, file sizes + hashes
        chunks.jsonl         # one Chunk per line; line i <-> row i
        vectors.npy          # float32 (n, dim), unit rows; kept so updates reuse them
        faiss.index          # flat (exact) or HNSW (approximate), inner product

(``vectors.npy`` and ``faiss.index`` are the FAISS vector store's, the default; with
``RAG_VECTOR_STORE=milvus`` the vectors live in a Milvus collection per version, which
the manifest names, and the folder holds only the manifest and the chunk store:
see ``rag.vectors``.)

A version folder (and its vectors, wherever the vector store keeps them) is written
complete under ``.tmp-...``, renamed into place, and only then named by ``CURRENT``
(replaced atomically). A crash at any point
leaves ``CURRENT`` naming a complete, older version; leftovers are removed by
the next writer.

The files of a version are written, verified and read here, side by side, so a change
to one of them cannot miss the other two sides. What a loaded version is in memory
(``Index``), the manifest's fields and JSON (``Manifest``) and the FAISS parameters live
in ``rag.index``: retrieval and ingest use those without anything of the disk layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from rag.durable import fsync_dir, locked, open_lock_file
from rag.errors import IndexFormatError, RagError, write_failed
from rag.index import FORMAT_VERSION, Index, Manifest
from rag.types import Chunk
from rag.vectors import Damaged, FaissStore, VectorStore

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
LOCK = "LOCK"
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
_VERSION_NAME = re.compile(r"^v-[0-9A-Za-z-]+$")
REBUILD_HINT = "rebuild it with `rag ingest --rebuild`"
WRITE_HINT = "run the command again (`rag ingest`, or the upload)"


# ---------------------------------------------------------------- loading


def current_version(index_dir: Path) -> str | None:
    """Name of the live version folder, or None when there is no index yet."""
    try:
        name = (Path(index_dir) / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"Cannot read {Path(index_dir) / CURRENT} ({exc}): {REBUILD_HINT}.") from exc
    # Never follow a CURRENT pointing outside the index folder.
    if not _VERSION_NAME.match(name):
        raise IndexFormatError(f"{Path(index_dir) / CURRENT} is corrupt (names {name[:60]!r}): {REBUILD_HINT}.")
    return name


def load_index(index_dir: Path, embedder_id: str | None = None, store: VectorStore | None = None) -> Index:
    """Load the live version; ``IndexFormatError`` (saying how to fix it) when missing, foreign or corrupt.

    ``store`` holds the vectors (default: FAISS files in the version folder).
    """
    index_dir = Path(index_dir)
    store = store if store is not None else FaissStore()
    for _attempt in range(3):
        version = current_version(index_dir)
        if version is None:
            raise IndexFormatError(
                f"No index in {index_dir}. Build one with `rag ingest` (it reads --corpus / RAG_CORPUS_DIR)."
            )
        try:
            return _load_version(index_dir, version, embedder_id, store)
        except (FileNotFoundError, IndexFormatError) as exc:
            # A writer may have replaced CURRENT and removed this version (its folder, its Milvus
            # collection) while we read: retry.
            if current_version(index_dir) != version:
                continue
            if isinstance(exc, IndexFormatError):
                raise
            raise IndexFormatError(
                f"Index {index_dir / version} is incomplete ({exc.filename} is missing): {REBUILD_HINT}."
            ) from exc
    raise IndexFormatError(f"Index in {index_dir} keeps changing while loading; stop other writers and retry.")


def read_manifest(index_dir: Path) -> Manifest:
    """Only the live version's manifest (cheap: no vectors are read); errors as ``load_index``."""
    index_dir = Path(index_dir)
    version = current_version(index_dir)
    if version is None:
        raise IndexFormatError(f"No index in {index_dir}. Build one with `rag ingest`.")
    try:
        return _read_manifest(index_dir / version)
    except FileNotFoundError as exc:
        raise IndexFormatError(f"Index {index_dir / version} is incomplete (no {MANIFEST}): {REBUILD_HINT}.") from exc


def _read_manifest(folder: Path) -> Manifest:
    where = f"Index {folder}"
    raw = _read_checked(folder, MANIFEST, None)
    try:
        data = json.loads(raw.decode("utf-8"))
        fmt = data["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{where} has a corrupt {MANIFEST} ({exc}): {REBUILD_HINT}.") from exc
    if fmt != FORMAT_VERSION:
        raise IndexFormatError(
            f"{where} has format version {fmt!r}, but this program reads version {FORMAT_VERSION}: {REBUILD_HINT}."
        )
    try:
        return Manifest.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexFormatError(f"{where} has a corrupt {MANIFEST} (bad field {exc}): {REBUILD_HINT}.") from exc


def _load_version(index_dir: Path, version: str, embedder_id: str | None, store: VectorStore) -> Index:
    folder = index_dir / version
    if not folder.is_dir():
        raise FileNotFoundError(2, "No such version folder", str(folder))
    where = f"Index {folder}"
    manifest = _read_manifest(folder)
    if embedder_id is not None and manifest.embedder_id != embedder_id:
        raise IndexFormatError(
            f"{where} was built with embedder {manifest.embedder_id!r}, but {embedder_id!r} is configured: "
            f"{REBUILD_HINT}."
        )
    if manifest.backend != store.backend:
        raise IndexFormatError(
            f"{where} keeps its vectors in {manifest.backend}, but RAG_VECTOR_STORE is {store.backend}: "
            f"set RAG_VECTOR_STORE={manifest.backend}, or {REBUILD_HINT}."
        )
    files = manifest.files

    try:
        lines = _read_checked(folder, CHUNKS, files.get(CHUNKS)).decode("utf-8").splitlines()
        chunks = [_chunk_from_json(json.loads(line)) for line in lines]
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexFormatError(f"{where} has a corrupt {CHUNKS} ({exc}): {REBUILD_HINT}.") from exc
    try:
        dense = store.open(manifest, lambda name: _read_checked(folder, name, files.get(name)), len(chunks))
    except Damaged as exc:
        raise IndexFormatError(f"{where} {exc}: {REBUILD_HINT}.") from exc

    expected_ids = [cid for _, e in sorted(manifest.documents.items()) for cid in e.chunk_ids]
    if [c.id for c in chunks] != expected_ids:
        problem = "chunk ids do not match the manifest's documents"
        raise IndexFormatError(f"{where} is inconsistent ({problem}): {REBUILD_HINT}.")
    return Index(folder, manifest, chunks, dense)


def _read_checked(folder: Path, name: str, expected: Mapping[str, Any] | None) -> bytes:
    """Read a file, checking its size and hash against the manifest (catches truncation and bit rot)."""
    data = (folder / name).read_bytes()
    if expected is not None:
        if len(data) != int(expected.get("bytes", -1)):
            raise IndexFormatError(
                f"Index {folder} has a truncated or altered {name} "
                f"({len(data)} bytes, manifest says {expected.get('bytes')}): {REBUILD_HINT}."
            )
        if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise IndexFormatError(f"Index {folder} has a corrupt {name} (checksum mismatch): {REBUILD_HINT}.")
    return data


def _chunk_from_json(d: Mapping[str, Any]) -> Chunk:
    page = d.get("page")
    return Chunk(
        id=str(d["id"]),
        doc_id=str(d["doc_id"]),
        text=str(d["text"]),
        start=int(d["start"]),
        end=int(d["end"]),
        page=None if page is None else int(page),
    )


def _chunk_to_json(c: Chunk) -> str:
    return json.dumps(
        {"id": c.id, "doc_id": c.doc_id, "text": c.text, "start": c.start, "end": c.end, "page": c.page},
        ensure_ascii=False,
    )


# ---------------------------------------------------------------- saving


@contextlib.contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """Hold the index's writer lock (blocks while another process or thread writes).

    Readers need no lock: they only ever see complete versions.
    """
    index_dir = Path(index_dir)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        fd = open_lock_file(index_dir / LOCK)
    except OSError as exc:
        raise write_failed(exc, f"the index in {index_dir}", WRITE_HINT) from exc
    with locked(fd):
        yield


def save_index(
    index_dir: Path,
    manifest: Manifest,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    store: VectorStore | None = None,
) -> Index:
    """Write a new version and make it live atomically; returns it loaded.

    Call under ``writer_lock`` when other writers may run. ``manifest.index_version``,
    ``created_at``, ``files`` and ``vectors`` are filled in here. Old versions and stale
    temporary folders (and their vectors in ``store``, which keeps the replaced version's
    as its ``cleanup`` says) are removed once the new one is live. A failed write (a full
    disk, say) raises ``StorageError`` after removing what it wrote, so the previous
    version stays live and byte-identical.
    """
    store = store if store is not None else FaissStore()
    index_dir = Path(index_dir)
    chunks = list(chunks)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    _check_consistent(manifest, chunks, vectors)
    if manifest.index_type not in ("flat", "hnsw"):
        raise ValueError(f"resolve index_type before saving (got {manifest.index_type!r})")

    now = datetime.now(UTC)
    version = f"v-{now.strftime('%Y%m%dT%H%M%S%f')}-{secrets.token_hex(3)}"
    tmp = index_dir / f".tmp-{version}"
    folder = index_dir / version
    pointer = index_dir / f"{CURRENT}.tmp"
    final = replace(manifest, index_version=version, created_at=now.isoformat(timespec="seconds"))
    # Read under the writer lock, so it is the version this commit replaces; a store may keep its
    # vectors a while for the processes still reading it (Milvus: until the next commit).
    replaces = None
    with contextlib.suppress(IndexFormatError):  # a corrupt CURRENT (``--rebuild``) replaces nothing readable
        replaces = current_version(index_dir)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        staged = store.stage(version, vectors, manifest.index_type, replaces)
        final = replace(final, vectors=staged.record)
        files: dict[str, dict[str, Any]] = {}
        # Files first, manifest last (it carries their sizes and hashes).
        files[CHUNKS] = _write_durably(tmp / CHUNKS, (f"{_chunk_to_json(c)}\n".encode() for c in chunks))
        for name, data in staged.files.items():
            files[name] = _write_durably(tmp / name, data)
        final = replace(final, files=files)
        _write_durably(tmp / MANIFEST, json.dumps(final.to_json(), indent=1, ensure_ascii=False).encode("utf-8"))
        fsync_dir(tmp)
        os.rename(tmp, folder)
        fsync_dir(index_dir)
        # The switch: until this replace, CURRENT still names the previous version.
        _write_durably(pointer, (version + "\n").encode("ascii"))
        os.replace(pointer, index_dir / CURRENT)
        fsync_dir(index_dir)
    except BaseException as exc:
        # Best effort; anything left behind (after a kill -9, say) is removed by the next writer's cleanup.
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(Exception):
            if current_version(index_dir) != version:
                shutil.rmtree(folder, ignore_errors=True)
                pointer.unlink(missing_ok=True)
                store.discard(final)
        if isinstance(exc, OSError):
            raise write_failed(exc, f"the index in {index_dir}", WRITE_HINT) from exc
        raise
    log.info("index version %s is live (%d chunks, %s)", version, len(chunks), manifest.index_type)
    try:
        # CURRENT is the commit; the store's own pointer (a Milvus alias) follows it, for other readers.
        store.publish(final)
        cleanup(index_dir, store)
    except RagError as exc:
        # The new version is live and complete: a stale alias or an old version left over is put
        # right by the next writer's cleanup, so this is no reason to fail the commit.
        log.warning("index version %s is live, but tidying up after it failed: %s", version, exc)
    return Index(folder, final, chunks, staged.index)


def cleanup(index_dir: Path, store: VectorStore | None = None) -> None:
    """Remove every version folder except the live one, and leftovers of interrupted writes.

    With a ``store``, also its versions other than the live one (and so those an interrupted writer left).
    """
    live = current_version(index_dir)
    if store is not None:
        try:
            live_manifest = _read_manifest(Path(index_dir) / live) if live else None
        except (IndexFormatError, OSError):
            pass  # never guess which vectors are live
        else:
            store.cleanup(live_manifest)
    for entry in Path(index_dir).iterdir():
        stale = (entry.name.startswith("v-") and entry.name != live) or entry.name.startswith(".tmp-")
        if stale and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name == f"{CURRENT}.tmp":
            entry.unlink(missing_ok=True)


def _check_consistent(manifest: Manifest, chunks: list[Chunk], vectors: np.ndarray) -> None:
    if vectors.ndim != 2 or vectors.shape[0] != len(chunks) or vectors.shape[1] != manifest.embedder_dim:
        raise ValueError(f"vectors {vectors.shape} do not fit {len(chunks)} chunks of dim {manifest.embedder_dim}")
    expected = [cid for _, e in sorted(manifest.documents.items()) for cid in e.chunk_ids]
    if [c.id for c in chunks] != expected:
        raise ValueError("chunks must be ordered by document id, in the order the manifest lists them")


def _write_durably(path: Path, data: bytes | Iterable[bytes]) -> dict[str, Any]:
    """Write ``data`` (or its parts in turn: the chunk store line by line, never whole in memory) and fsync."""
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as f:
        for part in (data,) if isinstance(data, bytes) else data:
            f.write(part)
            digest.update(part)
            size += len(part)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": size, "sha256": digest.hexdigest()}
