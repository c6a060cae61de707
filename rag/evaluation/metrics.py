"""Figures over all questions.

* **Retrieval**: recall@n = share of answerable questions with an evidence
  passage among the first n retrieved; MRR = mean of 1/rank of the first one.
* **Citations**: precision = share of citations, over answerable questions that
  were answered, whose passage holds the gold evidence; recall = share of
  answerable questions citing at least one evidence passage.
* **Refusals**: refusal recall (unanswerable -> abstained), false-refusal rate
  (answerable -> abstained), hallucination rate (unanswerable -> answered).
* **Confidence**: the reliability table puts the answers given (not refusals) in
  bins of the confidence they carried and says how many of each bin were right; an
  answer to an unanswerable question is wrong. ``confident_precision`` is the
  share right of those carrying at least ``CONFIDENT`` (the promise: ≥ 0.9).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from rag.evaluation.scoring import QuestionResult
from rag.stats import percentile

RETRIEVAL_METRICS = ("recall@1", "recall@3", "recall@5", "recall@k", "mrr")
ANSWER_METRICS = (
    "answer_accuracy",
    "answer_f1",
    "citation_precision",
    "citation_recall",
    "refusal_recall",
    "false_refusal_rate",
    "hallucination_rate",
    "confident_precision",
    "latency_p50_s",
    "latency_p95_s",
    "ttft_p50_s",
    "ttft_p95_s",
)
KNOWN_METRICS = RETRIEVAL_METRICS + ANSWER_METRICS
CONFIDENT = 0.9
#: Lower edges of the reliability table's bins.
CONFIDENCE_BINS = (0.0, 0.5, 0.7, CONFIDENT)


def _mean(values: Iterable[float]) -> float | None:
    vals = list(values)
    return sum(vals) / len(vals) if vals else None


def retrieval_metrics(results: Sequence[QuestionResult], k: int) -> dict[str, float | None]:
    """recall@1/3/5/k and MRR over answerable questions."""
    scored = [r for r in results if r.item.answerable]
    out: dict[str, float | None] = {}
    for name, n in (("recall@1", 1), ("recall@3", 3), ("recall@5", 5), ("recall@k", k)):
        out[name] = _mean(float(any(r.retrieved_ok[:n])) for r in scored)
    out["mrr"] = _mean(1.0 / r.first_hit_rank if r.first_hit_rank else 0.0 for r in scored)
    return out


def answer_metrics(results: Sequence[QuestionResult]) -> dict[str, float | None]:
    """Answer, citation, refusal and latency figures (questions without an answer are ignored)."""
    done = [r for r in results if r.answer is not None]
    answerable = [r for r in done if r.item.answerable]
    unanswerable = [r for r in done if not r.item.answerable]
    answered = [r for r in answerable if r.answer is not None and not r.answer.abstained]
    citation_oks = [ok for r in answered for ok in r.citation_ok]
    latencies = [r.seconds for r in done if r.seconds is not None]
    ttfts = [
        r.answer.timings["first_token_s"] for r in done if r.answer is not None and "first_token_s" in r.answer.timings
    ]
    out: dict[str, float | None] = {
        "answer_accuracy": _mean(float(bool(r.correct)) for r in answerable),
        "answer_f1": _mean(r.f1 or 0.0 for r in answerable),
        "citation_precision": _mean(float(ok) for ok in citation_oks),
        "citation_recall": _mean(float(r.cites_evidence) for r in answerable),
        "refusal_recall": _mean(float(r.answer is not None and r.answer.abstained) for r in unanswerable),
        "false_refusal_rate": _mean(float(r.answer is not None and r.answer.abstained) for r in answerable),
        "hallucination_rate": _mean(float(r.answer is not None and not r.answer.abstained) for r in unanswerable),
        "confident_precision": _mean(float(right) for conf, right in _given(done) if conf >= CONFIDENT),
    }
    for name, vals in (("latency", latencies), ("ttft", ttfts)):
        out[f"{name}_p50_s"] = percentile(vals, 50) if vals else None
        out[f"{name}_p95_s"] = percentile(vals, 95) if vals else None
    return out


def _given(results: Sequence[QuestionResult]) -> list[tuple[float, bool]]:
    """(confidence, right) of each answer given with a confidence; right is False for an unanswerable one."""
    return [
        (r.answer.confidence, bool(r.correct) and r.item.answerable)
        for r in results
        if r.answer is not None and not r.answer.abstained and r.answer.confidence is not None
    ]


def reliability(results: Sequence[QuestionResult]) -> list[dict[str, Any]]:
    """Answers given, by confidence bin: how many, their mean confidence, and the share right.

    A calibrated confidence has each bin's share right close to its mean confidence.
    """
    given = _given(results)
    edges = (*CONFIDENCE_BINS, 1.0 + 1e-9)
    rows: list[dict[str, Any]] = []
    for low, high in itertools.pairwise(edges):
        group = [(c, ok) for c, ok in given if low <= c < high]
        rows.append(
            {
                "from": low,
                "to": min(high, 1.0),
                "answers": len(group),
                "mean_confidence": _mean(c for c, _ in group),
                "right": _mean(float(ok) for _, ok in group),
            }
        )
    return rows


def compute_metrics(results: Sequence[QuestionResult], k: int, *, retrieval_only: bool = False) -> dict[str, Any]:
    """All figures plus counts; answer figures only when answers were generated."""
    metrics: dict[str, Any] = {
        "questions": len(results),
        "answerable": sum(r.item.answerable for r in results),
        "unanswerable": sum(not r.item.answerable for r in results),
        "k": k,
        **retrieval_metrics(results, k),
    }
    if not retrieval_only:
        metrics.update(answer_metrics(results))
    return metrics


def metrics_by_type(results: Sequence[QuestionResult], k: int) -> dict[str, dict[str, Any]]:
    """Per question type: count, accuracy (unanswerable: share refused), F1, recall@k."""
    out: dict[str, dict[str, Any]] = {}
    for qtype in sorted({r.item.type for r in results}):
        group = [r for r in results if r.item.type == qtype]
        answered = [r for r in group if r.answer is not None]
        answerable = [r for r in group if r.item.answerable]
        out[qtype] = {
            "count": len(group),
            "accuracy": _mean(float(bool(r.correct)) for r in answered),
            "f1": _mean(r.f1 or 0.0 for r in answered if r.item.answerable),
            "recall@k": _mean(float(any(r.retrieved_ok[:k])) for r in answerable),
        }
    return out
