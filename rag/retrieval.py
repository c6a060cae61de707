"""Retrieval stage: dense (FAISS) + keyword (BM25), fused, overlaps merged.

The two retrievers' score scales are unrelated (cosine vs. BM25). The default,
reciprocal rank fusion (``rrf_fuse``), compares ranks only. ``convex_fuse``
(``RAG_FUSION=convex``) scales each retriever's scores to [0, 1] over its own
candidates and takes a weighted sum, so a passage far ahead on BM25 (a rare name, a
number) stays ahead instead of counting as just "rank 1": on eval/squad it found the
passage first more often, held out too, but the answers over it refused fewer
near-miss unanswerables (figures at ``Settings.fusion``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rag.embedding import Embedder
from rag.index import Index
from rag.keyword import KeywordIndex, KeywordSearch
from rag.types import Chunk, Hit


@dataclass(frozen=True)
class Retrieved:
    """Fused hits plus the raw signals the refusal gate and the eval need."""

    hits: list[Hit]
    #: Best cosine similarity of the query to any chunk (dense signal for refusals).
    top_dense: float
    #: Best BM25 score (0 when no query word occurs in the corpus).
    top_keyword: float


def rrf_fuse(rankings: list[list[int]], rrf_k: int) -> list[tuple[int, float]]:
    """Reciprocal rank fusion of several rankings of row ids.

    >>> rrf_fuse([[1, 2], [2, 3]], rrf_k=60)[0][0]
    2
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking):
            scores[row] = scores.get(row, 0.0) + 1.0 / (rrf_k + rank + 1)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def convex_fuse(rankings: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float]) -> list[tuple[int, float]]:
    """Score-aware fusion: each ranking's scores min-max scaled over its own rows, then a weighted sum.

    A row a ranking does not hold gets 0 from it, as its worst row does; a ranking whose
    scores are all equal (one row, say) gives each of them 1.

    >>> convex_fuse([[(1, 0.9), (2, 0.5)], [(2, 12.0), (3, 4.0)]], [0.4, 0.6])
    [(2, 0.6), (1, 0.4), (3, 0.0)]
    """
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        low = min(score for _, score in ranking)
        span = max(score for _, score in ranking) - low
        for row, score in ranking:
            scaled = (score - low) / span if span > 0 else 1.0
            scores[row] = scores.get(row, 0.0) + weight * scaled
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def merge_overlapping(hits: list[Hit]) -> list[Hit]:
    """Merge hits from the same document whose character ranges overlap or touch.

    The merged passage keeps the best score and the earlier chunk's id; its text
    is rebuilt from the two exact substrings, so offsets stay exact.

    >>> a = Hit(Chunk("d#0", "d", "abcd", 0, 4), 0.5)
    >>> b = Hit(Chunk("d#1", "d", "cdef", 2, 6), 0.9)
    >>> [(h.chunk.text, h.chunk.start, h.chunk.end, h.score) for h in merge_overlapping([b, a])]
    [('abcdef', 0, 6, 0.9)]
    """
    merged: list[Hit] = []
    for hit in hits:
        for i, other in enumerate(merged):
            a, b = other.chunk, hit.chunk
            if a.doc_id != b.doc_id or b.start > a.end or a.start > b.end:
                continue
            first, second = (a, b) if a.start <= b.start else (b, a)
            text = (
                first.text + second.text[max(0, first.end - second.start) :] if second.end > first.end else first.text
            )
            chunk = Chunk(
                id=first.id,
                doc_id=first.doc_id,
                text=text,
                start=first.start,
                end=max(first.end, second.end),
                page=first.page,
            )
            merged[i] = Hit(chunk, max(other.score, hit.score))
            break
        else:
            merged.append(hit)
    return merged


Fusion = Literal["convex", "rrf"]


class Retriever:
    def __init__(
        self,
        index: Index,
        embedder: Embedder,
        *,
        candidates: int = 20,
        fusion: Fusion = "rrf",
        dense_weight: float = 0.4,
        rrf_k: int = 60,
        keyword: KeywordSearch | None = None,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.candidates = candidates
        self.fusion = fusion
        self.dense_weight = dense_weight
        self.rrf_k = rrf_k
        # bm25s over the chunk texts unless another keyword index over the same rows is given:
        # another keyword backend is then measured through this same fusion.
        self.keyword: KeywordSearch = keyword if keyword is not None else KeywordIndex([c.text for c in index.chunks])
        self._row_of = {c.id: row for row, c in enumerate(index.chunks)}

    def retrieve(self, query: str, k: int) -> Retrieved:
        qvec = self.embedder.embed([query])[0]
        dense = self.index.search(qvec, self.candidates)
        keyword = self.keyword.search(query, self.candidates)
        dense_ranking = [(self._row_of[h.chunk.id], h.score) for h in dense]
        if self.fusion == "convex":
            fused = convex_fuse([dense_ranking, keyword], [self.dense_weight, 1.0 - self.dense_weight])
        else:
            fused = rrf_fuse([[row for row, _ in dense_ranking], [row for row, _ in keyword]], self.rrf_k)
        hits = [Hit(self.index.chunks[row], score) for row, score in fused[: max(k * 2, k)]]
        # Merging can shrink the list, so fuse a few extra and cut after merging.
        hits = merge_overlapping(hits)[:k]
        return Retrieved(
            hits=hits,
            top_dense=dense[0].score if dense else 0.0,
            top_keyword=keyword[0][1] if keyword else 0.0,
        )
