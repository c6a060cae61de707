from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rag.store
from rag.errors import IndexFormatError, StorageError
from rag.index import HNSW_EF_SEARCH, DocEntry, Index, Manifest, resolve_index_type
from rag.store import CURRENT, current_version, load_index, read_manifest, save_index
from rag.types import Chunk

DIM = 16
ROOT = Path(__file__).resolve().parents[1]


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def corpus(
    n_docs: int, per_doc: int, seed: int = 0, index_type: str = "flat"
) -> tuple[Manifest, list[Chunk], np.ndarray]:
    rng = np.random.default_rng(seed)
    chunks: list[Chunk] = []
    docs: dict[str, DocEntry] = {}
    for d in range(n_docs):
        doc_id = f"doc{d:02d}.txt"
        ids = []
        for i in range(per_doc):
            cid = f"{doc_id}#abcd{d:04d}-{i}"
            chunks.append(Chunk(cid, doc_id, f"text {d} {i} é", i * 10, i * 10 + 9, page=i % 3 + 1 if d % 2 else None))
            ids.append(cid)
        docs[doc_id] = DocEntry(
            sha256=f"{d:064x}", chunk_ids=tuple(ids), chars=per_doc * 10, page_count=3 if d % 2 else None
        )
    manifest = Manifest("test-embedder", DIM, 64, 8, index_type, docs)
    return manifest, chunks, unit_rows(rng, len(chunks))


def ranked(index: Index, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    return [[(h.chunk.id, round(h.score, 5)) for h in index.search(q, k)] for q in queries]


@settings(max_examples=15, deadline=None)
@given(
    n_docs=st.integers(1, 6),
    per_doc=st.integers(1, 12),
    k=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    index_type=st.sampled_from(["flat", "hnsw"]),
)
def test_save_then_load_gives_the_same_search_results(
    tmp_path_factory: pytest.TempPathFactory, n_docs: int, per_doc: int, k: int, seed: int, index_type: str
) -> None:
    index_dir = tmp_path_factory.mktemp("idx")
    manifest, chunks, vectors = corpus(n_docs, per_doc, seed, index_type)
    saved = save_index(index_dir, manifest, chunks, vectors)
    loaded = load_index(index_dir, "test-embedder")
    queries = unit_rows(np.random.default_rng(seed + 1), 5)
    assert ranked(loaded, queries, k) == ranked(saved, queries, k)
    assert loaded.chunks == chunks
    assert np.array_equal(loaded.vectors, vectors)
    assert loaded.version == saved.version == current_version(index_dir)
    assert loaded.manifest.documents == manifest.documents


def test_flat_search_is_exact_cosine_ranking(tmp_path: Path) -> None:
    manifest, chunks, vectors = corpus(3, 10)
    index = save_index(tmp_path, manifest, chunks, vectors)
    query = unit_rows(np.random.default_rng(7), 1)[0]
    hits = index.search(query, 5)
    expected = np.argsort(-(vectors @ query))[:5]
    assert [h.chunk.id for h in hits] == [chunks[i].id for i in expected]
    assert hits[0].score == pytest.approx(float(vectors[expected[0]] @ query), abs=1e-5)
    # Searching for a stored vector finds its own chunk first with cosine 1.
    own = index.search(vectors[12], 1)[0]
    assert own.chunk.id == chunks[12].id and own.score == pytest.approx(1.0, abs=1e-5)


def test_hnsw_finds_the_exact_neighbours_on_a_small_index(tmp_path: Path) -> None:
    manifest, chunks, vectors = corpus(12, 50, seed=3, index_type="hnsw")
    hnsw = save_index(tmp_path / "h", manifest, chunks, vectors)
    flat_manifest, _, _ = corpus(12, 50, seed=3, index_type="flat")
    flat = save_index(tmp_path / "f", flat_manifest, chunks, vectors)
    queries = unit_rows(np.random.default_rng(11), 20)
    recall = np.mean(
        [len({h.chunk.id for h in hnsw.search(q, 10)} & {h.chunk.id for h in flat.search(q, 10)}) / 10 for q in queries]
    )
    assert recall >= 0.9
    assert HNSW_EF_SEARCH < 560 <= len(chunks)
    assert len(hnsw.search(queries[0], 560)) == 560  # k above efSearch still returns k


def test_lookup_helpers_and_edge_cases(tmp_path: Path) -> None:
    manifest, chunks, vectors = corpus(2, 3)
    index = save_index(tmp_path, manifest, chunks, vectors)
    assert index.chunk(chunks[4].id) == chunks[4]
    with pytest.raises(KeyError):
        index.chunk("nope")
    assert [(d.doc_id, d.chunks, d.chars) for d in index.documents()] == [("doc00.txt", 3, 30), ("doc01.txt", 3, 30)]
    assert len(index.search(vectors[0], 100)) == 6
    assert index.search(vectors[0], 0) == []
    empty = save_index(tmp_path / "empty", Manifest("test-embedder", DIM, 64, 8, "flat", {}), [], np.zeros((0, DIM)))
    assert load_index(tmp_path / "empty").search(vectors[0], 3) == [] and empty.documents() == []
    assert read_manifest(tmp_path).documents == manifest.documents


def test_save_rejects_inconsistent_input(tmp_path: Path) -> None:
    manifest, chunks, vectors = corpus(2, 3)
    with pytest.raises(ValueError):
        save_index(tmp_path, manifest, chunks[:-1], vectors[:-1])
    with pytest.raises(ValueError):
        save_index(tmp_path, manifest, chunks, vectors[:, :8])
    with pytest.raises(ValueError):
        save_index(tmp_path, Manifest("e", DIM, 64, 8, "auto", manifest.documents), chunks, vectors)
    assert current_version(tmp_path) is None


def test_resolve_index_type() -> None:
    assert resolve_index_type("auto", 100, 50) == "hnsw"
    assert resolve_index_type("auto", 50, 50) == "flat"
    assert resolve_index_type("flat", 10**9, 50) == "flat"
    assert resolve_index_type("hnsw", 1, 50) == "hnsw"


# ------------------------------------------------------------ bad indexes


@pytest.fixture
def saved(tmp_path: Path) -> Index:
    manifest, chunks, vectors = corpus(3, 4)
    return save_index(tmp_path, manifest, chunks, vectors)


def test_missing_index_says_run_ingest(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="rag ingest"):
        load_index(tmp_path / "nothing")
    with pytest.raises(IndexFormatError, match="rag ingest"):
        load_index(tmp_path)


def test_truncated_vectors_are_detected(saved: Index) -> None:
    path = saved.path / "vectors.npy"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(IndexFormatError, match=r"vectors\.npy.*rag ingest --rebuild"):
        load_index(saved.path.parent)


def test_vectors_not_matching_the_chunks_are_detected_even_without_checksums(saved: Index) -> None:
    # Rewrite a valid .npy with one row missing and drop the recorded sizes: the row count check must catch it.
    np.save(saved.path / "vectors.npy", saved.vectors[:-1])
    manifest_path = saved.path / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["files"] = {}
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="11 vectors for 12 chunks"):
        load_index(saved.path.parent)


@pytest.mark.parametrize("name", ["chunks.jsonl", "faiss.index"])
def test_corrupt_data_files_are_detected(saved: Index, name: str) -> None:
    path = saved.path / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=name.replace(".", r"\.")):
        load_index(saved.path.parent)


def test_corrupt_manifest_is_detected(saved: Index) -> None:
    (saved.path / "manifest.json").write_text('{"format_version": 1, "embedder": ')
    with pytest.raises(IndexFormatError, match=r"manifest\.json.*--rebuild"):
        load_index(saved.path.parent)


def test_manifest_with_missing_fields_is_detected(saved: Index) -> None:
    (saved.path / "manifest.json").write_text('{"format_version": 1}')
    with pytest.raises(IndexFormatError, match="manifest"):
        load_index(saved.path.parent)


def test_unknown_format_version_is_detected(saved: Index) -> None:
    path = saved.path / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match=r"format version 99.*rag ingest --rebuild"):
        load_index(saved.path.parent)


def test_other_embedder_is_refused(saved: Index) -> None:
    with pytest.raises(IndexFormatError, match=r"'test-embedder'.*'other-model'.*--rebuild"):
        load_index(saved.path.parent, "other-model")
    assert load_index(saved.path.parent, "test-embedder").version == saved.version


def test_current_pointing_outside_is_refused(saved: Index) -> None:
    (saved.path.parent / CURRENT).write_text("../../etc\n")
    with pytest.raises(IndexFormatError, match="corrupt"):
        load_index(saved.path.parent)


def test_current_naming_a_missing_version_is_reported(saved: Index) -> None:
    (saved.path.parent / CURRENT).write_text("v-20000101T000000000000-abcdef\n")
    with pytest.raises(IndexFormatError, match="incomplete"):
        load_index(saved.path.parent)


# ------------------------------------------------------------ crash safety


def test_stale_tmp_folders_are_ignored_then_cleaned(saved: Index) -> None:
    index_dir = saved.path.parent
    stale = index_dir / ".tmp-v-19990101T000000000000-dead00"
    stale.mkdir()
    (stale / "vectors.npy").write_bytes(b"half")
    orphan = index_dir / "v-19990101T000000000000-beef00"  # renamed but never made live
    orphan.mkdir()
    assert load_index(index_dir).version == saved.version
    manifest, chunks, vectors = corpus(1, 2, seed=5)
    new = save_index(index_dir, manifest, chunks, vectors)
    names = sorted(p.name for p in index_dir.iterdir())
    assert names == sorted([CURRENT, new.version])


def test_simulated_crash_mid_write_leaves_the_old_index_loadable(saved: Index) -> None:
    index_dir = saved.path.parent
    queries = unit_rows(np.random.default_rng(3), 4)
    before = ranked(saved, queries, 5)
    # A writer died after writing part of a new version and half of the new pointer.
    tmp = index_dir / ".tmp-v-20990101T000000000000-abcdef"
    tmp.mkdir()
    (tmp / "chunks.jsonl").write_text('{"id": "x"')
    (index_dir / "CURRENT.tmp").write_text("v-2099")
    loaded = load_index(index_dir)
    assert loaded.version == saved.version
    assert ranked(loaded, queries, 5) == before


def test_failure_while_saving_keeps_the_previous_version_and_cleans_up(
    saved: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = saved.path.parent
    real = rag.store._write_durably
    calls = {"n": 0}

    def flaky(path: Path, data: bytes) -> dict[str, object]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(rag.store, "_write_durably", flaky)
    manifest, chunks, vectors = corpus(2, 2, seed=9)
    with pytest.raises(StorageError, match=r"disk full.*No space"):
        save_index(index_dir, manifest, chunks, vectors)
    assert load_index(index_dir).version == saved.version
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".tmp-")]


_KILL_LOOP = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from tests.test_store import corpus
from rag.store import save_index
seed = 100
while True:
    manifest, chunks, vectors = corpus(20, 100, seed=seed)
    save_index(sys.argv[1], manifest, chunks, vectors)
    print(seed, flush=True)
    seed += 1
"""


def test_kill_9_during_repeated_saves_always_leaves_a_loadable_index(tmp_path: Path) -> None:
    manifest, chunks, vectors = corpus(3, 4)
    save_index(tmp_path, manifest, chunks, vectors)
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_LOOP, str(tmp_path), str(ROOT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # at least one save completed: imports are done, writes are under way
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        index = load_index(tmp_path)
        assert len(index.chunks) in (12, 2000)
        assert index.search(index.vectors[0], 1)[0].chunk.id == index.chunks[0].id
