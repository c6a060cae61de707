"""Scoring one question: its answer against the gold answers, its passages against the gold evidence.

Rules (kept simple so a reader can check any figure by hand):

* **Answers** (answerable questions): both texts are normalized SQuAD-style
  (lowercase, thousands commas dropped, punctuation and symbols -> spaces,
  articles a/an/the removed, whitespace collapsed). An answer is *correct* when
  it did not abstain and the tokens of some gold answer appear contiguously in
  its tokens ("6" does not match "2023"). *F1* is SQuAD token F1, best over the
  gold answers; 0 when the system abstained. ``[n]`` markers are removed first.
* **Passages** (retrieval and citations): a passage *holds the evidence* when
  its text contains the evidence (whitespace-normalized), or when it comes from
  the evidence's document and its ``[start, end)`` range covers at least half of
  the evidence's range (evidence split across two adjacent chunks).
* **Citations** (ALCE spirit): a citation counts when its passage holds the gold
  evidence; the pipeline's own verifier is not trusted here.

How these per-question verdicts become figures is in ``rag.evaluation.metrics``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rag.evaluation.gold import GoldItem
from rag.types import Answer, Chunk, Citation, Hit

# Verdicts that are not failures in report.md (answers, or retrieval alone in --retrieval-only).
PASSING_VERDICTS = frozenset({"correct", "refused (right)", "retrieved", "n/a"})
# Below this share of the evidence's characters, a passage is a neighbour, not the evidence.
EVIDENCE_OVERLAP = 0.5

_MARKERS = re.compile(r"\[\d+(?:\s*[,;]\s*\d+)*\]")
# A comma between a digit and exactly three digits is a thousands separator: "7,000" -> "7000".
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def strip_markers(text: str) -> str:
    """Remove citation markers so "[1]" cannot match a gold "1".

    >>> strip_markers("Since 2022 [1][2, 3].")
    'Since 2022   .'
    """
    return _MARKERS.sub(" ", text)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization, plus thousands commas and Unicode punctuation.

    >>> normalize_answer("The missile flew 7,000 km – farther than before!")
    'missile flew 7000 km farther than before'
    >>> normalize_answer("Japan-U.S. alliance")
    'japan u s alliance'
    """
    text = _THOUSANDS.sub("", text.lower())
    # Punctuation (P*) and symbols (S*: $, +, ...) become spaces so "U.S." and "U S" agree.
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def contains_answer(system: str, gold: str) -> bool:
    """True when the gold answer's tokens appear contiguously in the system answer.

    >>> contains_answer("It flew 7,000 kilometers [1].", "7000 km")
    False
    >>> contains_answer("It flew 7,000 kilometers [1].", "7,000 kilometers")
    True
    >>> contains_answer("Tested in 2023.", "2")
    False
    """
    hay, needle = answer_tokens(strip_markers(system)), answer_tokens(gold)
    if not needle:
        return False
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def token_f1(system: str, gold: str) -> float:
    """SQuAD token F1 between two texts.

    >>> round(token_f1("in June 2024", "June 2024"), 3)  # precision 2/3, recall 1
    0.8
    >>> token_f1("Rason", "Pyongyang")
    0.0
    """
    pred, ref = answer_tokens(strip_markers(system)), answer_tokens(gold)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- passage matching


def squash(text: str) -> str:
    return " ".join(text.split())


def find_evidence(doc_text: str, evidence: str) -> tuple[int, int] | None:
    """Character range of ``evidence`` in ``doc_text``, tolerant to whitespace differences.

    >>> find_evidence("Intro.  Since 2022,\\nNorth Korea", "Since 2022, North Korea")
    (8, 31)
    """
    words = evidence.split()
    if not words:
        return None
    match = re.search(r"\s+".join(map(re.escape, words)), doc_text)
    return (match.start(), match.end()) if match else None


def holds_evidence(passage: Chunk | Citation, item: GoldItem, span: tuple[int, int] | None) -> bool:
    """Does this passage hold ``item``'s evidence (see the module docstring for the rule)?

    >>> item = GoldItem("q", "?", ("x",), "b c d e", "a.txt", True, "t")
    >>> holds_evidence(Chunk("c1", "a.txt", "a b c", 0, 5), item, (2, 9))  # covers 3 of 7 chars
    False
    >>> holds_evidence(Chunk("c2", "a.txt", "c d e f", 4, 11), item, (2, 9))  # covers 5 of 7
    True
    """
    if not item.answerable or not item.evidence.strip():
        return False
    if squash(item.evidence) in squash(passage.text):
        return True
    if span is None or passage.doc_id != item.doc_id:
        return False
    overlap = min(passage.end, span[1]) - max(passage.start, span[0])
    return overlap >= EVIDENCE_OVERLAP * (span[1] - span[0])


@dataclass(frozen=True)
class QuestionResult:
    item: GoldItem
    retrieved: tuple[Chunk, ...]
    #: Per retrieved passage: does it hold the evidence?
    retrieved_ok: tuple[bool, ...]
    answer: Answer | None = None
    seconds: float | None = None
    #: Answerable: contains a gold answer and did not abstain. Unanswerable: abstained.
    correct: bool | None = None
    f1: float | None = None
    #: Per citation of ``answer``: its passage holds the gold evidence.
    citation_ok: tuple[bool, ...] = ()
    cites_evidence: bool = False

    @property
    def first_hit_rank(self) -> int | None:
        """1-based rank of the first evidence passage, None when none was retrieved."""
        return next((i + 1 for i, ok in enumerate(self.retrieved_ok) if ok), None)

    def verdict(self, k: int) -> str:
        """One word or two for the report; see ``PASSING_VERDICTS``."""
        if self.answer is None:
            if not self.item.answerable:
                return "n/a"
            rank = self.first_hit_rank
            if rank is None:
                return "missed"
            return "retrieved" if rank <= k else f"missed (evidence at rank {rank} > k)"
        if not self.item.answerable:
            return "refused (right)" if self.answer.abstained else "answered (hallucination)"
        if self.answer.abstained:
            return "refused (false refusal)"
        return "correct" if self.correct else "wrong"


def score_question(
    item: GoldItem,
    hits: Sequence[Hit],
    answer: Answer | None,
    seconds: float | None,
    span: tuple[int, int] | None,
) -> QuestionResult:
    """Score one question from what the pipeline returned (pure; used by ``evaluate``)."""
    chunks = tuple(h.chunk for h in hits)
    retrieved_ok = tuple(holds_evidence(c, item, span) for c in chunks)
    if answer is None:
        return QuestionResult(item, chunks, retrieved_ok)
    if item.answerable:
        answered = not answer.abstained
        correct = answered and any(contains_answer(answer.text, g) for g in item.answers)
        f1 = max(token_f1(answer.text, g) for g in item.answers) if answered else 0.0
    else:
        correct, f1 = answer.abstained, None
    evidence_ok = [holds_evidence(c, item, span) for c in answer.citations]
    # Strict on purpose: our own verifier passed every kept sentence, so counting its
    # verdict here would make precision 1.0 by construction. A citation counts only
    # when its passage holds the gold evidence.
    citation_ok = tuple(evidence_ok)
    return QuestionResult(
        item,
        chunks,
        retrieved_ok,
        answer=answer,
        seconds=seconds,
        correct=correct,
        f1=f1,
        citation_ok=citation_ok,
        cites_evidence=any(evidence_ok),
    )
