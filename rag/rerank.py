"""Reranking stage: reorder fused candidates by a (question, passage) relevance model.

No cross-encoder ships as a package here, so two backends sit behind one
protocol: a user-supplied sentence-transformers CrossEncoder folder
(``RAG_RERANKER_PATH``), or the generator itself judging "does this passage
answer the question?" through its yes/no logits. Off by default: the eval
decides whether it pays for its time (see README).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from rag.errors import InputError
from rag.generation import Generator, YesNoJudge
from rag.settings import Settings
from rag.types import Hit

JUDGE_SYSTEM = "Answer Yes or No: does the passage contain the answer to the question?"


class Reranker(Protocol):
    id: str

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        """Return ``hits`` best first, each with the reranker's score."""
        ...


def _sorted(hits: Sequence[Hit], scores: Sequence[float]) -> list[Hit]:
    ranked = sorted(zip(scores, range(len(hits)), hits, strict=True), key=lambda t: (-t[0], t[1]))
    return [Hit(hit.chunk, float(score)) for score, _, hit in ranked]


class JudgeReranker:
    """The generator's probability of answering "Yes" (about 1 s a pair with the 1.5B on 2 cores)."""

    def __init__(self, judge: YesNoJudge, id_: str = "generator-yes-no") -> None:
        self.judge = judge
        self.id = id_

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        scores = [
            self.judge.yes_probability(
                [
                    {"role": "system", "content": JUDGE_SYSTEM},
                    {"role": "user", "content": f"Question: {question}\nPassage: {' '.join(h.chunk.text.split())}"},
                ]
            )
            for h in hits
        ]
        return _sorted(hits, scores)


class CrossEncoderReranker:
    """A local sentence-transformers CrossEncoder folder (nothing is downloaded)."""

    def __init__(self, path: Path) -> None:
        from sentence_transformers import CrossEncoder

        self.model: Any = CrossEncoder(str(path), device="cpu", local_files_only=True)
        self.id = f"cross-encoder:{path.name}"

    def rerank(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        if not hits:
            return []
        scores = self.model.predict([(question, h.chunk.text) for h in hits], show_progress_bar=False)
        return _sorted(hits, [float(s) for s in scores])


def load_reranker(settings: Settings, generator: Generator | None) -> Reranker | None:
    if settings.reranker == "cross-encoder":
        if settings.reranker_path is None:
            raise InputError("RAG_RERANKER=cross-encoder needs RAG_RERANKER_PATH (a CrossEncoder folder)")
        return CrossEncoderReranker(settings.reranker_path)
    if settings.reranker == "judge":
        if generator is None or not hasattr(generator, "yes_probability"):
            raise InputError("RAG_RERANKER=judge needs the llama generator (it scores passages with yes/no logits)")
        return JudgeReranker(generator)  # type: ignore[arg-type]
    return None
