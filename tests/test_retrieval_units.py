"""Fusion and merging helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.ingest import ingest
from rag.keyword import KeywordIndex
from rag.retrieval import Retriever, convex_fuse, merge_overlapping, rrf_fuse
from rag.settings import Settings
from rag.store import load_index
from rag.types import Chunk, Hit
from tests.fakes import FakeEmbedder


def test_rrf_prefers_items_ranked_by_both() -> None:
    fused = rrf_fuse([[1, 2, 3], [2, 4, 9]], rrf_k=60)
    assert fused[0][0] == 2
    assert {row for row, _ in fused} == {1, 2, 3, 4, 9}


def test_convex_fusion_keeps_a_wide_bm25_lead_that_rrf_loses() -> None:
    dense = [(2, 0.80), (1, 0.78), (4, 0.50)]  # cosine: close together
    bm25 = [(4, 20.0), (2, 3.0), (3, 2.0)]  # row 4 far ahead (a rare name, say)
    # Scaled over each list: dense 2 -> 1, 1 -> 0.28/0.30, 4 -> 0; BM25 4 -> 1, 2 -> 1/18, 3 -> 0.
    # Fused with weights 0.4/0.6: 4 -> 0.6, 2 -> 0.4 + 0.6/18, 1 -> 0.4 * 0.28/0.30, 3 -> 0.
    fused = convex_fuse([dense, bm25], [0.4, 0.6])
    assert [row for row, _ in fused] == [4, 2, 1, 3]
    assert [score for _, score in fused] == pytest.approx([0.6, 0.4 + 0.6 / 18, 0.4 * 0.28 / 0.30, 0.0])
    # Ranks alone put row 2 first: 1/61 + 1/62 beats 1/61 + 1/63.
    assert rrf_fuse([[2, 1, 4], [4, 2, 3]], rrf_k=60)[0][0] == 2


def test_convex_fusion_edges() -> None:
    # An empty ranking (no query word in the corpus) leaves the other's order; equal scores count fully.
    assert convex_fuse([[(5, 0.7), (6, 0.3)], []], [0.4, 0.6]) == [(5, 0.4), (6, 0.0)]
    assert convex_fuse([[(5, 0.7)], [(6, 9.0)]], [0.4, 0.6]) == [(6, 0.6), (5, 0.4)]
    # Weight 1 on the dense side gives the dense order back.
    assert [row for row, _ in convex_fuse([[(3, 0.9), (1, 0.5), (2, 0.1)], [(2, 8.0)]], [1.0, 0.0])] == [3, 1, 2]


def test_merge_keeps_exact_offsets() -> None:
    source = "alpha beta gamma delta epsilon"
    a = Hit(Chunk("d#0", "d", source[0:16], 0, 16), 0.2)
    b = Hit(Chunk("d#1", "d", source[11:30], 11, 30), 0.7)
    other = Hit(Chunk("e#0", "e", "zzz", 0, 3), 0.5)
    merged = merge_overlapping([b, other, a])
    assert len(merged) == 2
    m = merged[0].chunk
    assert source[m.start : m.end] == m.text == source
    assert merged[0].score == 0.7


def test_keyword_index_finds_exact_terms_only() -> None:
    index = KeywordIndex(["shells shipped from Rason", "missile flew far", "Putin visited in June"])
    assert index.search("Which port shipped munitions?", 3)[0][0] == 0
    assert index.search("xylophone", 3) == []


class _FixedKeyword:
    """A keyword index that always ranks the given rows first, whatever the query."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows
        self.queries: list[str] = []

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        self.queries.append(query)
        return [(row, 10.0 - i) for i, row in enumerate(self.rows[:k])]


def test_a_keyword_index_given_to_the_retriever_is_the_one_fused(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ships.txt").write_text("Shells were shipped from the port of Rason.")
    (corpus / "missile.txt").write_text("The missile flew seven thousand kilometres.")
    (corpus / "visit.txt").write_text("Putin visited Pyongyang in June.")
    embedder = FakeEmbedder()
    ingest(corpus, tmp_path / "index", embedder, Settings(), progress=False)
    index = load_index(tmp_path / "index", embedder.id)
    visit = next(row for row, c in enumerate(index.chunks) if c.doc_id == "visit.txt")
    keyword = _FixedKeyword([visit])
    # candidates=1: dense alone keeps only the shipping chunk, so the visit chunk can only come from the keyword side.
    retrieved = Retriever(index, embedder, candidates=1, keyword=keyword).retrieve("shells shipped from Rason", 4)
    assert keyword.queries == ["shells shipped from Rason"]
    assert {h.chunk.doc_id for h in retrieved.hits} == {"ships.txt", "visit.txt"}
    assert retrieved.top_keyword == 10.0
