"""``rag bench``'s Milvus part (``bench_milvus``) against Milvus Lite in process: the settings it is given, and the
tidying up after it (the alias, then the collections), each step whatever the one before did."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.bench import bench_milvus
from rag.errors import VectorStoreError
from rag.settings import Settings
from rag.vectors_milvus import MilvusStore
from tests.test_store import unit_rows


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[MilvusStore, list[str]]]:
    """Every store bench_milvus connects, with the drops its client was asked for, in order."""
    stores: list[tuple[MilvusStore, list[str]]] = []
    connect = MilvusStore.connect.__func__  # type: ignore[attr-defined]

    def recording(cls: type[MilvusStore], settings: Settings) -> MilvusStore:
        store: MilvusStore = connect(cls, settings)
        drops: list[str] = []
        for verb in ("drop_alias", "drop_collection"):
            setattr(store._client, verb, recorded(verb, getattr(store._client, verb), drops))
        stores.append((store, drops))
        return store

    monkeypatch.setattr(MilvusStore, "connect", classmethod(recording))
    return stores


def recorded(verb: str, real: Callable[..., Any], drops: list[str]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        drops.append(f"{verb} {args[0]}")
        return real(*args, **kwargs)

    return call


def run(settings: Settings, uri: str) -> dict[str, float]:
    rng = np.random.default_rng(0)
    vecs, qs = unit_rows(rng, 200), unit_rows(rng, 5)
    exact = [np.argsort(-(vecs @ q))[:10] for q in qs]
    return bench_milvus(settings, "lite", uri, vecs, qs, exact, "0k")


def left_over(uri: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """The bench's collections and aliases still in the .db, as a later reader sees them."""
    store = MilvusStore.connect(Settings(index_dir=tmp_path / "reader", vector_store="milvus", milvus_uri=uri))
    try:
        names = sorted(n for n in store._client.list_collections() if n.startswith("bench_"))
        listed = store._client.list_aliases()
        aliases = listed.get("aliases", []) if isinstance(listed, dict) else listed
        return names, sorted(a for a in aliases if a.startswith("bench_"))
    finally:
        store.close()


def test_bench_milvus_uses_the_settings_it_is_given_and_drops_the_alias_before_the_collections(
    tmp_path: Path, opened: list[tuple[MilvusStore, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_MILVUS_INDEX_TYPE", "FLAT")  # the environment, which the given settings override
    uri = str(tmp_path / "bench.db")
    settings = Settings(index_dir=tmp_path / "index", milvus_index_type="IVF_FLAT")
    figures = run(settings, uri)
    [(store, drops)] = opened
    assert store.index_type == "IVF_FLAT" and store.uri == uri
    assert figures["recall_at_10_lite_0k"] == 1.0  # 5 cells, nprobe 32: every cell searched
    # The alias goes first (a Milvus may refuse to drop a collection an alias names), then both versions.
    assert drops[0] == f"drop_alias {store.alias}"
    assert sorted(drops[1:]) == sorted(f"drop_collection {store.collection(v)}" for v in ("v-1", "v-2"))
    assert left_over(uri, tmp_path) == ([], [])


def test_bench_milvus_drops_its_alias_even_when_dropping_the_collections_fails(
    tmp_path: Path, opened: list[tuple[MilvusStore, list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(self: MilvusStore, live: object) -> None:
        raise VectorStoreError("Milvus at x is unreachable (could not drop a collection: no answer within 600 s)")

    monkeypatch.setattr(MilvusStore, "cleanup", unreachable)
    uri = str(tmp_path / "bench.db")
    run(Settings(index_dir=tmp_path / "index"), uri)
    [(store, _)] = opened
    names, aliases = left_over(uri, tmp_path)
    assert aliases == [] and names == sorted(store.collection(v) for v in ("v-1", "v-2"))
