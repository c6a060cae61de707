"""Keyword stage: BM25 over chunk texts (bm25s + Snowball stemming).

Dense retrieval misses exact names, numbers and rare words; BM25 catches them.
bm25s has no incremental add, but indexing is cheap (~50k passages in ~3 s), so
the keyword index is rebuilt from the chunk store whenever the index changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import bm25s
import numpy as np
import Stemmer

# bm25s sets its own logger to DEBUG on import, which would print on every index build.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class KeywordSearch(Protocol):
    """What retrieval needs from a keyword index: ``(row, score)`` pairs, best first, rows of the chunk store."""

    def search(self, query: str, k: int) -> list[tuple[int, float]]: ...


class KeywordIndex:
    def __init__(self, texts: Sequence[str]) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self._size = len(texts)
        self._bm25 = bm25s.BM25()
        if texts:
            tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)
            self._bm25.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """Return ``(row, score)`` pairs with a positive score, best first.

        Rows index the ``texts`` given at construction.
        """
        k = min(k, self._size)
        if k <= 0:
            return []
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False)
        if not tokens or not tokens[0]:
            return []
        rows, scores = self._bm25.retrieve(tokens, k=k, show_progress=False)
        out = []
        for row, score in zip(np.asarray(rows)[0], np.asarray(scores)[0], strict=True):
            if score > 0:
                out.append((int(row), float(score)))
        return out
