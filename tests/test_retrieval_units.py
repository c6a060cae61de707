"""Fusion and merging helpers."""

from __future__ import annotations

from rag.keyword import KeywordIndex
from rag.retrieval import merge_overlapping, rrf_fuse
from rag.types import Chunk, Hit


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
