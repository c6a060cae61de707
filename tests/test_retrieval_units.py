"""Fusion and merging helpers."""

from __future__ import annotations

from pathlib import Path

from rag.ingest import ingest
from rag.keyword import KeywordIndex
from rag.retrieval import Retriever, merge_overlapping, rrf_fuse
from rag.settings import Settings
from rag.store import load_index
from rag.types import Chunk, Hit
from tests.fakes import FakeEmbedder


def test_rrf_prefers_items_ranked_by_both() -> None:
    fused = rrf_fuse([[1, 2, 3], [2, 4, 9]], rrf_k=60)
    assert fused[0][0] == 2
    assert {row for row, _ in fused} == {1, 2, 3, 4, 9}


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
