"""The Milvus ``VectorStore``: a collection per index version behind an alias, through ``MilvusClient(uri=...)``.

One code path for both deployments; only ``RAG_MILVUS_URI`` differs: a local ``*.db``
path runs Milvus Lite inside this process (nothing to start, one process at a time),
``http://host:19530`` is a Milvus server that several processes and machines share.

What lives where: the manifest (with the per-document hashes that make ingest
incremental) and the chunk store stay in ``RAG_INDEX_DIR`` as for FAISS, and so does
the keyword index (bm25s, rebuilt in memory from the chunk store: ~3 s for 50k
passages, so it fits beside Milvus; Milvus's own BM25 retrieved no better and took ~10x
longer a query: see ``eval/keyword_milvus.py`` and the README). The
collection holds only ``(row, vector)``: row ``i`` is line ``i`` of the version's
``chunks.jsonl``, exactly as for FAISS.

Old or new, never a mix: a version's vectors go into a fresh collection
``<name>_v_<version>``, which is filled, flushed, indexed and loaded (every segment through
its built index, which a Milvus server builds in the background) before ``CURRENT``
names the version (the commit, as for FAISS). A loaded index searches the collection
its manifest names, so it can never see another version's rows; the alias ``<name>``
is then switched to it (``alter_alias``) for anything else that reads by name, and every
other ``<name>_v_*`` collection is dropped but one: the version's manifest records the
collection of the version it replaced (``replaces``), which stays until the next commit.
A process that loaded that version still searches it: the service between committing an
upload and swapping to the new version, or another process not restarted yet. A writer
killed before the commit leaves a collection nothing names; the next writer drops it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rag.errors import IndexFormatError, InputError, VectorStoreError
from rag.index import Manifest, VectorIndex
from rag.settings import Settings, without_credentials
from rag.vectors import Damaged, ReadFile, Staged

log = logging.getLogger(__name__)


def _quiet() -> None:
    """Silence the libraries' own error logs: a failure here becomes one error with the reason instead.

    pymilvus logs each failed call at ERROR with its traceback (and configures its loggers when
    imported, so this runs after that import); Milvus Lite's in-process gRPC server logs one for
    a call it does not implement (AllocTimestamp, on every create_collection).
    """
    for name in ("pymilvus", "pymilvus.milvus_client", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


ROW = "row"
VECTOR = "vector"
# Milvus's default indexNode minSegmentNumRowsToEnableIndex: smaller segments get no index (searched exhaustively).
MIN_INDEXED_SEGMENT_ROWS = 1024
# How long a built index may take to reach the loaded segments (~30 s measured at 100k vectors) before the version
# is published anyway, with a warning: a server configured to skip larger segments never gets there.
SEGMENT_SWAP_WAIT_S = 120.0
# Milvus Lite (a local .db, or `milvus-lite server` by URI) is a Python gRPC server with gRPC's default ping
# policy: it allows a client ping only every 5 minutes during a call, never while idle, and after 2 strikes it
# sends GOAWAY "too_many_pings" and drops the connection. pymilvus pings every 10 s even while idle, so every
# connection idle for ~30 s was dropped, and a request racing the drop failed (UNAVAILABLE; a CI run's connect
# did). Lite gets no idle pings and call pings 6 minutes apart; a Milvus server (allows one every 5 s) keeps
# pymilvus's defaults, which notice a connection a NAT dropped while idle.
LITE_GRPC = {"grpc.keepalive_permit_without_calls": False, "grpc.keepalive_time_ms": 360_000}
BATCH = 2000  # rows per insert or query: ~3 MB of 384-dim floats, well under gRPC's message limit
SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")

T = TypeVar("T")


def is_server(uri: str) -> bool:
    """A Milvus server (by URL), rather than a Milvus Lite ``*.db`` path run in this process.

    >>> is_server("http://127.0.0.1:19530"), is_server("index/milvus.db")
    (True, False)
    """
    return uri.startswith(SERVER_SCHEMES)


class MilvusStore:
    """Index versions' vectors in Milvus; one client (a connection) shared by every call."""

    backend = "milvus"

    def __init__(self, client: Any, settings: Settings, uri: str) -> None:
        self._client = client
        self.uri = uri
        self.alias = settings.milvus_collection
        self.index_type = settings.milvus_index_type
        self.timeout = settings.milvus_timeout_s
        self.write_timeout = settings.milvus_write_timeout_s
        self._settings = settings
        self.last_switch_s = float("nan")  # how long the last alias switch took (rag bench reports it)

    @classmethod
    def connect(cls, settings: Settings) -> MilvusStore:
        """Open Milvus at ``RAG_MILVUS_URI``; ``VectorStoreError`` with the reason when it cannot be reached."""
        try:
            from pymilvus import MilvusClient, MilvusException
        except ImportError as exc:
            raise InputError(
                "RAG_VECTOR_STORE=milvus needs pymilvus and milvus-lite: pip install -e '.[milvus]'"
            ) from exc
        _quiet()
        uri = settings.milvus_uri or str(Path(settings.index_dir) / "milvus.db")
        if not is_server(uri):
            if not uri.endswith(".db"):
                raise InputError(
                    f"RAG_MILVUS_URI={uri!r}: a local Milvus Lite path must end in .db; a server is http://host:19530."
                )
            path = Path(uri).expanduser().resolve()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"RAG_MILVUS_URI={uri!r}: cannot create {path.parent} ({exc.strerror}).") from exc
            uri = str(path)

        def open_client(grpc_options: dict[str, Any]) -> Any:
            return MilvusClient(
                uri=uri,
                token=settings.milvus_token.get_secret_value() if settings.milvus_token else "",
                timeout=settings.milvus_timeout_s,
                grpc_options=grpc_options,
            )

        try:
            # Lite's options first, for a server too: a connection opened with pymilvus's defaults to a
            # `milvus-lite server` (the same Python gRPC server as a local .db) was seen dropped while it
            # lasted, even only to ask the version. A Milvus server is then reopened with the defaults.
            client = open_client(LITE_GRPC)
            if is_server(uri):
                try:
                    version = str(client.get_server_version())
                except MilvusException:
                    client.close()  # not left open behind the error
                    raise
                if not version.startswith("milvus_lite"):
                    client.close()
                    client = open_client({})
        except MilvusException as exc:
            if is_server(uri):
                raise _unreachable(uri, "connect", exc) from None
            raise VectorStoreError(
                f"could not open Milvus Lite at {uri} ({_reason(exc)}): another process may have it open "
                "(a .db serves one process at a time; stop the other, or run a Milvus server and set "
                "RAG_MILVUS_URI to its http:// address)."
            ) from None
        return cls(client, settings, uri)

    # ------------------------------------------------------------------ the protocol

    def stage(self, version: str, vectors: np.ndarray, index_type: str, replaces: str | None = None) -> Staged:
        from pymilvus import DataType, MilvusClient

        name = self.collection(version)
        n, dim = vectors.shape
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ROW, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=int(dim))
        build = self._build_params(n)
        params = self._client.prepare_index_params()
        # Inner product on unit vectors is cosine similarity: the scores FAISS gives, so the
        # refusal gate's RAG_MIN_DENSE_SCORE means the same on either store.
        # Nested under "params" (the wire form every Milvus reads): pymilvus 3.0.2 otherwise sends each
        # build parameter as its own key, which Milvus Lite 3.2.2 ignores (its HNSW then builds with M=16).
        params.add_index(field_name=VECTOR, index_type=self.index_type, metric_type="IP", params={"params": build})
        # With index_params pymilvus also builds the (empty) index and loads the collection, within the same
        # timeout: a write's, or a standalone server busy loading takes longer than a search's few seconds.
        self._call(
            "create a collection", self._client.create_collection, name, schema=schema, index_params=params, slow=True
        )
        for start in range(0, n, BATCH):
            rows = [{ROW: start + i, VECTOR: v} for i, v in enumerate(vectors[start : start + BATCH])]
            self._call("insert vectors", self._client.insert, name, rows, slow=True)
        self._call("flush", self._client.flush, name, slow=True)
        self._call("load a collection", self._client.load_collection, name, slow=True)
        self._wait_indexed(name, n)
        record: dict[str, Any] = {
            "backend": self.backend,
            "collection": name,
            "index": {"type": self.index_type, **build},
        }
        if replaces:
            # Kept by cleanup while this version is live: see the module docstring.
            record["replaces"] = self.collection(replaces)
        return Staged(MilvusIndex(self, name, n, dim, self.index_type), record=record)

    def open(self, manifest: Manifest, read: ReadFile, rows: int) -> VectorIndex:
        name = str((manifest.vectors or {}).get("collection", ""))
        if not name or not self._call("look up a collection", self._client.has_collection, name):
            raise Damaged(
                f"names Milvus collection {name!r}, which Milvus at {without_credentials(self.uri)} does not hold "
                "(dropped, or RAG_MILVUS_URI points at another Milvus)"
            )
        # A restarted server has nothing loaded, and Milvus searches only loaded collections.
        self._call("load a collection", self._client.load_collection, name, slow=True)
        count = self.count(name)
        if count != rows:
            raise Damaged(f"is inconsistent (Milvus collection {name} holds {count} vectors for {rows} chunks)")
        # Searched as built, whatever RAG_MILVUS_INDEX_TYPE says now (the next `rag ingest` re-indexes it).
        built = str(((manifest.vectors or {}).get("index") or {}).get("type", self.index_type))
        return MilvusIndex(self, name, rows, manifest.embedder_dim, built)

    def publish(self, manifest: Manifest) -> None:
        name = str((manifest.vectors or {})["collection"])
        started = time.perf_counter()
        aliases = self._call("list aliases", self._client.list_aliases)
        if self.alias in _alias_names(aliases):
            self._call("switch the alias", self._client.alter_alias, name, self.alias)
        else:
            self._call("create the alias", self._client.create_alias, name, self.alias)
        self.last_switch_s = time.perf_counter() - started
        log.info("alias %s -> %s in %.1f ms", self.alias, name, self.last_switch_s * 1000)

    def discard(self, manifest: Manifest) -> None:
        name = self.collection(manifest.index_version)
        if self._call("look up a collection", self._client.has_collection, name):
            self._call("drop a collection", self._client.drop_collection, name, slow=True)

    def cleanup(self, live: Manifest | None) -> None:
        """Drop every ``<name>_v_*`` collection but the live version's and the one it replaced (see the module)."""
        keep: set[str] = set()
        if live is not None and live.vectors:
            keep.add(str(live.vectors["collection"]))
            described = self._call("describe the alias", self._describe_alias)
            if described != live.vectors["collection"]:  # a writer killed between CURRENT and the alias switch
                self.publish(live)
            if live.vectors.get("replaces"):
                keep.add(str(live.vectors["replaces"]))
        prefix = f"{self.alias}_v_"
        for name in self._call("list collections", self._client.list_collections):
            if name.startswith(prefix) and name not in keep:
                self._call("drop a collection", self._client.drop_collection, name, slow=True)

    def outdated(self, manifest: Manifest, rows: int) -> str | None:
        built = dict((manifest.vectors or {}).get("index") or {})
        wanted = {"type": self.index_type, **self._build_params(rows)}
        if built == wanted:
            return None
        return (
            f"its Milvus index was built as {_described(built)}, the settings now ask for {_described(wanted)} "
            "(RAG_MILVUS_INDEX_TYPE and its RAG_MILVUS_* build settings)"
        )

    def check(self) -> None:
        self._call("list collections", self._client.list_collections)

    def close(self) -> None:
        """Drop the connection; for Milvus Lite also stop its in-process server, so another process may open it."""
        self._client.close()
        if not is_server(self.uri):
            from milvus_lite import server_manager_instance

            server_manager_instance.release_server(self.uri)

    # ------------------------------------------------------------------ helpers

    def collection(self, version: str) -> str:
        return collection_name(self.alias, version)

    def count(self, name: str) -> int:
        result = self._call("count vectors", self._client.query, name, filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def _describe_alias(self, timeout: float) -> str | None:
        from pymilvus import MilvusException

        try:
            return str(self._client.describe_alias(self.alias, timeout=timeout)["collection_name"])
        except MilvusException as exc:
            if _not_found(exc):
                return None
            raise

    def _wait_indexed(self, name: str, n: int) -> None:
        """Wait until Milvus searches all ``n`` rows through the built index, within the write timeout.

        A Milvus server builds the index after the flush, in the background, and its query node
        swaps each loaded segment to it later still; until then it searches that segment through
        a coarse interim index. Measured on Milvus 2.3 at 100k vectors: recall@10 0.58-0.67 for
        the ~2 minutes the build took, and 0.94 for the ~30 s after ``describe_index`` counted
        every row (one of two segments still loaded without its index), then 0.99. So a version
        is published only once every loaded segment carries the index. Milvus Lite builds it
        within the flush. An index not built within the write timeout is an error; segments that
        stay loaded without it once it is built only cost recall: a warning after SEGMENT_SWAP_WAIT_S.
        """
        deadline = time.monotonic() + self.write_timeout
        built_at: float | None = None
        while True:
            described = self._call("describe the index", self._client.describe_index, name, VECTOR)
            indexed = described.get("indexed_rows") if isinstance(described, dict) else None
            if indexed is None or int(indexed) >= n:  # a Milvus that does not say is taken at its word
                # Under MIN_INDEXED_SEGMENT_ROWS every segment is searched exhaustively: nothing to wait for.
                if n < MIN_INDEXED_SEGMENT_ROWS or self._call("list loaded segments", self._loaded_indexed, name, n):
                    return
                built_at = built_at or time.monotonic()
                if time.monotonic() - built_at > SEGMENT_SWAP_WAIT_S:
                    log.warning("Milvus loaded %s with segments not yet searched through its index", name)
                    return
            elif time.monotonic() > deadline:
                raise VectorStoreError(
                    f"Milvus at {without_credentials(self.uri)} was still building the index of {n} vectors after "
                    f"RAG_MILVUS_WRITE_TIMEOUT_S ({self.write_timeout:g} s; {indexed} indexed); raise it for an "
                    "index this size."
                )
            time.sleep(0.5)

    def _loaded_indexed(self, name: str, n: int, timeout: float) -> bool:
        """Whether the loaded segments hold ``n`` rows, each large segment through the index."""
        import grpc

        try:
            segments = self._client.list_loaded_segments(name, timeout=timeout)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return True  # Milvus Lite, which has no segments to ask about
            raise
        # Milvus builds no index for a segment under minSegmentNumRowsToEnableIndex (1,024 rows by default):
        # it counts as indexed and is searched exhaustively, which is exact.
        indexed = all(seg.index_name or int(seg.num_rows) < MIN_INDEXED_SEGMENT_ROWS for seg in segments)
        return sum(int(seg.num_rows) for seg in segments) >= n and indexed

    def _build_params(self, n: int) -> dict[str, Any]:
        s = self._settings
        if self.index_type == "HNSW":
            return {"M": s.milvus_hnsw_m, "efConstruction": s.milvus_hnsw_ef_construction}
        if self.index_type == "IVF_FLAT":
            # k-means wants ~40 vectors a cell; a small index gets fewer cells rather than a failed build.
            return {"nlist": max(1, min(s.milvus_ivf_nlist, n // 39))}
        return {}

    def search_params(self, index_type: str, k: int) -> dict[str, Any]:
        """What a search of an ``index_type`` collection sends: that index's own knob, valued from the settings."""
        s = self._settings
        if index_type == "HNSW":
            # ef below k would return fewer than k results.
            return {"metric_type": "IP", "params": {"ef": max(s.milvus_ef_search, k)}}
        if index_type == "IVF_FLAT":
            return {"metric_type": "IP", "params": {"nprobe": s.milvus_ivf_nprobe}}
        return {"metric_type": "IP", "params": {}}

    def _call(self, what: str, fn: Callable[..., T], *args: Any, slow: bool = False, **kwargs: Any) -> T:
        """One Milvus call within the store's timeout (``slow``: a bulk write's); a failure as one error saying
        what to do."""
        import grpc
        from pymilvus import MilvusException

        timeout = self.write_timeout if slow else self.timeout
        try:
            return fn(*args, timeout=timeout, **kwargs)
        except grpc.RpcError as exc:  # some failures (a deadline, say) reach us as gRPC's own error
            code = exc.code() if isinstance(exc, grpc.Call) else None
            why = f"no answer within {timeout:g} s" if code == grpc.StatusCode.DEADLINE_EXCEEDED else str(code)
            raise _unreachable(self.uri, what, why) from None
        except MilvusException as exc:
            if _not_found(exc):
                raise IndexFormatError(
                    f"Milvus at {without_credentials(self.uri)} could not {what}: {_reason(exc)}. The index changed "
                    "since this process loaded it (another writer?): restart it, "
                    "or rebuild with `rag ingest --rebuild`."
                ) from None
            raise _unreachable(self.uri, what, exc) from None


class MilvusIndex:
    """One committed version's collection, searched directly (never through the alias, which may move on)."""

    def __init__(self, store: MilvusStore, name: str, rows: int, dim: int, index_type: str) -> None:
        self.store = store
        self.name = name
        self.rows = rows
        self.dim = dim
        self.index_type = index_type  # as the collection was built (its manifest's record), for the search knob

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.store
        found = s._call(
            "search",
            s._client.search,
            self.name,
            data=[query.tolist()],
            limit=k,
            search_params=s.search_params(self.index_type, k),
            output_fields=[ROW],
        )
        hits = list(found[0]) if found else []
        scores = np.array([float(h["distance"]) for h in hits], dtype=np.float32)
        rows = np.array([int(h[ROW]) for h in hits], dtype=np.int64)
        return scores, rows

    def count(self) -> int:
        return self.store.count(self.name)

    def fetch(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.rows)
        out = np.zeros((max(0, stop - start), self.dim), dtype=np.float32)
        seen = 0
        s = self.store
        for first in range(start, stop, BATCH):
            last = min(stop, first + BATCH)
            part = s._call(
                "read vectors",
                s._client.query,
                self.name,
                filter=f"{ROW} >= {first} and {ROW} < {last}",
                output_fields=[ROW, VECTOR],
                limit=last - first,
            )
            for item in part:
                out[int(item[ROW]) - start] = np.asarray(item[VECTOR], dtype=np.float32)
            seen += len(part)
        if seen != len(out):
            raise IndexFormatError(
                f"Milvus collection {self.name} returned {seen} of rows {start}-{stop}: "
                "rebuild it with `rag ingest --rebuild`."
            )
        return out


def collection_name(alias: str, version: str) -> str:
    """The collection of an index version (Milvus names take letters, digits and underscores).

    >>> collection_name("rag", "v-20261204T201500123456-3fa2c1")
    'rag_v_20261204T201500123456_3fa2c1'
    """
    return f"{alias}_v_{version.removeprefix('v-').replace('-', '_')}"


def _described(index: dict[str, Any]) -> str:
    """An index record as a reader would write it.

    >>> _described({"type": "HNSW", "M": 32, "efConstruction": 200}), _described({"type": "FLAT"})
    ('HNSW M=32 efConstruction=200', 'FLAT')
    """
    params = " ".join(f"{k}={v}" for k, v in index.items() if k != "type")
    return f"{index.get('type', '?')} {params}".strip()


def _alias_names(listed: Any) -> list[str]:
    names = listed.get("aliases", []) if isinstance(listed, dict) else listed
    return [str(a) for a in names]


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc).strip() or type(exc).__name__


def _not_found(exc: Exception) -> bool:
    text = _reason(exc).lower()
    return "not exist" in text or "not found" in text or "can't find" in text


def _unreachable(uri: str, what: str, exc: Exception | str) -> VectorStoreError:
    why = exc if isinstance(exc, str) else _reason(exc)
    return VectorStoreError(
        f"Milvus at {without_credentials(uri)} is unreachable (could not {what}: {why}); check that it is running "
        "and that RAG_MILVUS_URI points at it."
    )
