"""Eval runner: the gold Q&A set through the real pipeline -> figures, a report, a pass/fail.

Scoring rules (kept simple so a reader can check any figure by hand):

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
* **Retrieval**: recall@n = share of answerable questions with an evidence
  passage among the first n retrieved; MRR = mean of 1/rank of the first one.
* **Citations** (ALCE spirit): precision = share of citations, over answerable
  questions that were answered, whose passage holds the gold evidence (the
  pipeline's own verifier is not trusted here); recall = share of answerable
  questions citing at least one evidence passage.
* **Refusals**: refusal recall (unanswerable -> abstained), false-refusal rate
  (answerable -> abstained), hallucination rate (unanswerable -> answered).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from rag.errors import InputError
from rag.settings import Settings
from rag.types import Answer, Chunk, Citation, Hit, Turn

RETRIEVAL_METRICS = ("recall@1", "recall@3", "recall@5", "recall@k", "mrr")
ANSWER_METRICS = (
    "answer_accuracy",
    "answer_f1",
    "citation_precision",
    "citation_recall",
    "refusal_recall",
    "false_refusal_rate",
    "hallucination_rate",
    "latency_p50_s",
    "latency_p95_s",
    "ttft_p50_s",
    "ttft_p95_s",
)
KNOWN_METRICS = RETRIEVAL_METRICS + ANSWER_METRICS
# Verdicts that are not failures in report.md (answers, or retrieval alone in --retrieval-only).
PASSING_VERDICTS = frozenset({"correct", "refused (right)", "retrieved", "n/a"})
# Below this share of the evidence's characters, a passage is a neighbour, not the evidence.
EVIDENCE_OVERLAP = 0.5


# --------------------------------------------------------------------------- gold set


@dataclass(frozen=True)
class GoldItem:
    id: str
    question: str
    answers: tuple[str, ...]
    evidence: str
    doc_id: str | None
    answerable: bool
    type: str
    history: tuple[Turn, ...] = ()
    #: Optional part of the set ("tune" to choose settings on, "heldout" to report); ``rag eval --split``.
    split: str | None = None


def load_gold(path: Path) -> list[GoldItem]:
    """Read a JSON-lines gold file; any malformed line is an ``InputError`` naming it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"Cannot read the gold file {path}: {exc.strerror or exc}. Pass --gold FILE.") from exc
    items: list[GoldItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _gold_error(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
        item = _gold_item(row, path, lineno)
        if item.id in seen:
            raise _gold_error(path, lineno, f"id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise InputError(f"The gold file {path} holds no questions (one JSON object per line expected).")
    return items


def _gold_error(path: Path, lineno: int, what: str) -> InputError:
    return InputError(
        f"{path}, line {lineno}: {what}. Each line needs id, question, answers, evidence, doc_id, "
        "answerable, type (and optionally history)."
    )


def _gold_item(row: object, path: Path, lineno: int) -> GoldItem:
    def bad(what: str) -> InputError:
        return _gold_error(path, lineno, what)

    if not isinstance(row, dict):
        raise bad("expected a JSON object")
    missing = [k for k in ("id", "question", "answers", "answerable", "type") if k not in row]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    for key in ("id", "question", "type"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise bad(f"{key!r} must be a non-empty string")
    answerable = row["answerable"]
    if not isinstance(answerable, bool):
        raise bad("'answerable' must be true or false")
    answers = row["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
        raise bad("'answers' must be a list of non-empty strings")
    evidence = row.get("evidence") or ""
    doc_id = row.get("doc_id")
    if not isinstance(evidence, str):
        raise bad("'evidence' must be a string")
    if doc_id is not None and not isinstance(doc_id, str):
        raise bad("'doc_id' must be a string or null")
    if answerable:
        if not answers:
            raise bad("an answerable question needs at least one answer")
        if not evidence.strip() or not doc_id:
            raise bad("an answerable question needs 'evidence' and 'doc_id'")
    history: list[Turn] = []
    raw_history = row.get("history") or []
    if not isinstance(raw_history, list):
        raise bad('\'history\' must be a list of {"role", "content"} objects')
    for turn in raw_history:
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ("user", "assistant")
            or not isinstance(turn.get("content"), str)
        ):
            raise bad('each history turn must be {"role": "user"|"assistant", "content": "..."}')
        history.append(Turn(turn["role"], turn["content"]))
    split = row.get("split")
    if split is not None and (not isinstance(split, str) or not split.strip()):
        raise bad("'split' must be a non-empty string when given")
    return GoldItem(
        id=row["id"],
        question=row["question"],
        answers=tuple(answers),
        evidence=evidence,
        doc_id=doc_id,
        answerable=answerable,
        type=row["type"],
        history=tuple(history),
        split=split,
    )


# --------------------------------------------------------------------------- answer scoring

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


def _squash(text: str) -> str:
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
    if _squash(item.evidence) in _squash(passage.text):
        return True
    if span is None or passage.doc_id != item.doc_id:
        return False
    overlap = min(passage.end, span[1]) - max(passage.start, span[0])
    return overlap >= EVIDENCE_OVERLAP * (span[1] - span[0])


# --------------------------------------------------------------------------- running


class EvalPipeline(Protocol):
    """What the runner needs from ``rag.pipeline.Pipeline`` (a fake in tests)."""

    def retrieve(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> list[Hit]: ...

    def ask(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer: ...


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


def evaluate(
    pipeline: EvalPipeline,
    items: Sequence[GoldItem],
    doc_texts: Mapping[str, str],
    *,
    k: int,
    retrieval_only: bool = False,
    progress: bool = True,
) -> list[QuestionResult]:
    """Run every question sequentially: ``retrieve`` (depth max(5, k)), then ``ask`` unless retrieval-only.

    ``doc_texts`` maps doc ids to ``Document.text``; it locates the evidence for the
    range-overlap rule (without it only full containment counts).
    """
    from tqdm import tqdm

    depth = max(5, k)
    results: list[QuestionResult] = []
    for item in tqdm(items, desc="eval", unit="q", disable=not progress, file=sys.stderr):
        text = doc_texts.get(item.doc_id or "")
        span = find_evidence(text, item.evidence) if text is not None and item.answerable else None
        hits = pipeline.retrieve(item.question, item.history, k=depth)
        answer: Answer | None = None
        seconds: float | None = None
        if not retrieval_only:
            t0 = time.perf_counter()
            answer = pipeline.ask(item.question, item.history)
            seconds = time.perf_counter() - t0
        results.append(score_question(item, hits, answer, seconds, span))
    return results


# --------------------------------------------------------------------------- metrics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method).

    >>> percentile([4.0, 1.0, 3.0, 2.0], 50)
    2.5
    >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95)
    4.8
    """
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(s[lo] + (s[hi] - s[lo]) * (pos - lo), 9)


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
    }
    for name, vals in (("latency", latencies), ("ttft", ttfts)):
        out[f"{name}_p50_s"] = percentile(vals, 50) if vals else None
        out[f"{name}_p95_s"] = percentile(vals, 95) if vals else None
    return out


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


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """Minimums for figures where higher is better, maximums for rates and latencies."""

    min: dict[str, float] = field(default_factory=dict)
    max: dict[str, float] = field(default_factory=dict)


def load_thresholds(path: Path) -> Thresholds:
    """Read ``{"min": {metric: value}, "max": {metric: value}}``; keys starting with "_" are comments."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"Cannot read the thresholds file {path}: {exc.strerror or exc}.") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}).") from exc
    if not isinstance(raw, dict):
        raise InputError(f'{path} must be a JSON object like {{"min": {{...}}, "max": {{...}}}}.')
    parts: dict[str, dict[str, float]] = {"min": {}, "max": {}}
    for key, value in raw.items():
        if key.startswith("_"):
            continue
        if key not in parts or not isinstance(value, dict):
            raise InputError(f'{path}: unexpected key {key!r}; use "min" and "max" objects of metric -> number.')
        for name, bound in value.items():
            if name not in KNOWN_METRICS:
                raise InputError(f"{path}: unknown metric {name!r} in {key!r}; known: {', '.join(KNOWN_METRICS)}.")
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise InputError(f"{path}: {key}.{name} must be a number, got {bound!r}.")
            parts[key][name] = float(bound)
    return Thresholds(min=parts["min"], max=parts["max"])


def check_thresholds(
    metrics: Mapping[str, Any], thresholds: Thresholds, *, retrieval_only: bool = False
) -> tuple[list[str], list[str]]:
    """Return (failures, unchecked) as human-readable lines.

    A figure that was not measured (None, e.g. no TTFT timings) cannot fail; it is listed as unchecked.

    >>> check_thresholds({"mrr": 0.5, "latency_p95_s": 3.0}, Thresholds({"mrr": 0.6}, {"latency_p95_s": 5}))
    (['mrr = 0.500 is below the minimum 0.600'], [])
    """
    failures: list[str] = []
    unchecked: list[str] = []
    for kind, bounds in (("min", thresholds.min), ("max", thresholds.max)):
        for name, bound in bounds.items():
            if retrieval_only and name not in RETRIEVAL_METRICS:
                continue
            value = metrics.get(name)
            if value is None:
                unchecked.append(f"{name}: not measured (threshold {kind} {bound:g})")
            elif kind == "min" and value < bound:
                failures.append(f"{name} = {value:.3f} is below the minimum {bound:.3f}")
            elif kind == "max" and value > bound:
                failures.append(f"{name} = {value:.3f} is above the maximum {bound:.3f}")
    return failures, unchecked


# --------------------------------------------------------------------------- report


def _citation_dict(c: Citation, ok: bool | None) -> dict[str, Any]:
    out = asdict(c)
    if ok is not None:
        out["counts_as_correct"] = ok
    return out


def question_record(r: QuestionResult, k: int) -> dict[str, Any]:
    """Everything about one question, JSON-ready."""
    item = r.item
    rec: dict[str, Any] = {
        "id": item.id,
        "type": item.type,
        "question": item.question,
        "history": [asdict(t) for t in item.history],
        "answerable": item.answerable,
        "gold_answers": list(item.answers),
        "evidence": item.evidence,
        "doc_id": item.doc_id,
        "verdict": r.verdict(k),
        "retrieved": [c.id for c in r.retrieved],
        "first_evidence_rank": r.first_hit_rank,
    }
    a = r.answer
    if a is not None:
        oks: list[bool | None] = list(r.citation_ok) or [None] * len(a.citations)
        rec.update(
            {
                "answer": a.text,
                "draft": a.draft,
                "confidence": a.confidence,
                "standalone_question": a.standalone_question,
                "abstained": a.abstained,
                "correct": r.correct,
                "f1": None if r.f1 is None else round(r.f1, 4),
                "citations": [_citation_dict(c, ok) for c, ok in zip(a.citations, oks, strict=True)],
                "sentences": [asdict(s) for s in a.sentences],
                "latency_s": None if r.seconds is None else round(r.seconds, 3),
                "timings": a.timings,
                "provenance": a.provenance,
                "notes": list(a.notes),
            }
        )
    return rec


def build_report(
    results: Sequence[QuestionResult],
    metrics: Mapping[str, Any],
    *,
    settings: Settings,
    retrieval_only: bool,
    thresholds: Thresholds,
    failures: Sequence[str],
    unchecked: Sequence[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    first = next((r.answer for r in results if r.answer is not None), None)
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "retrieval-only" if retrieval_only else "full",
        **(extra or {}),
        "settings": settings.model_dump(mode="json"),
        "provenance": dict(first.provenance) if first is not None else {},
        "metrics": dict(metrics),
        "by_type": metrics_by_type(results, int(metrics["k"])),
        "thresholds": asdict(thresholds),
        "threshold_failures": list(failures),
        "thresholds_unchecked": list(unchecked),
        "questions": [question_record(r, int(metrics["k"])) for r in results],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _bound(name: str, thresholds: Thresholds) -> str:
    if name in thresholds.min:
        return f">= {thresholds.min[name]:g}"
    if name in thresholds.max:
        return f"<= {thresholds.max[name]:g}"
    return ""


def summary_rows(metrics: Mapping[str, Any], thresholds: Thresholds, failures: Sequence[str]) -> list[tuple[str, ...]]:
    failed = {line.split(" ", 1)[0] for line in failures}
    rows: list[tuple[str, ...]] = []
    for name in KNOWN_METRICS:
        if name not in metrics:
            continue
        bound = _bound(name, thresholds)
        status = "FAIL" if name in failed else ("ok" if bound and metrics[name] is not None else "")
        label = f"recall@k (k={metrics['k']})" if name == "recall@k" else name
        rows.append((label, _fmt(metrics[name]), bound, status))
    return rows


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _snippet(text: str, n: int = 240) -> str:
    text = _squash(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(report: Mapping[str, Any], thresholds: Thresholds) -> str:
    m = report["metrics"]
    out = [
        f"# Eval report ({report['mode']})",
        "",
        f"{m['questions']} questions ({m['answerable']} answerable, {m['unanswerable']} unanswerable), "
        f"k = {m['k']}, created {report['created']}.",
        "",
        _md_table(
            ("metric", "value", "threshold", "status"), summary_rows(m, thresholds, report["threshold_failures"])
        ),
        "",
        "## By question type",
        "",
        _md_table(
            ("type", "count", "accuracy", "F1", "recall@k"),
            (
                (t, str(v["count"]), _fmt(v["accuracy"]), _fmt(v["f1"]), _fmt(v["recall@k"]))
                for t, v in report["by_type"].items()
            ),
        ),
        "",
        "Accuracy of `unanswerable` is the share correctly refused.",
        "",
        "## Failures",
        "",
    ]
    failures = [q for q in report["questions"] if q["verdict"] not in PASSING_VERDICTS]
    if not failures:
        out.append("None.")
    for q in failures:
        out += [f"### {q['id']} ({q['type']}): {q['verdict']}", ""]
        out += [f"- history ({t['role']}): {t['content']}" for t in q["history"]]
        out.append(f"- **Q:** {q['question']}")
        if q.get("standalone_question") and q["standalone_question"] != q["question"]:
            out.append(f"- **Rewritten as:** {q['standalone_question']}")
        out.append(f"- **Gold:** {' / '.join(q['gold_answers']) or '(unanswerable)'}")
        if "answer" in q:
            out.append(f"- **Answer:** {_snippet(q['answer'], 600)}")
        rank = q["first_evidence_rank"] or "not retrieved"
        out.append(f"- **Evidence rank:** {rank}; retrieved: {', '.join(f'`{c}`' for c in q['retrieved'])}")
        if "passages_read" in q.get("provenance", {}):  # 1 = answered or refused on the best passage alone
            out.append(f"- **Passages the model read:** {q['provenance']['passages_read']}")
        for c in q.get("citations", []):
            mark = "" if c.get("counts_as_correct", True) else " (not counted correct)"
            out.append(f"  - [{c['marker']}]{mark} {c['doc_id']} {c['start']}-{c['end']}: {_snippet(c['text'])}")
        out.append("")
    return "\n".join(out) + "\n"


def write_report(report: Mapping[str, Any], thresholds: Thresholds, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(report, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report, thresholds), encoding="utf-8")
    return json_path, md_path


def print_summary(metrics: Mapping[str, Any], thresholds: Thresholds, failures: Sequence[str]) -> None:
    rows = [("metric", "value", "threshold", ""), *summary_rows(metrics, thresholds, failures)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- CLI entry


PipelineFactory = Callable[[Settings, bool], EvalPipeline]


def _prepare_pipeline(settings: Settings, retrieval_only: bool) -> EvalPipeline:
    """Bring the index up to date (incremental: cheap when unchanged), then build the pipeline."""
    from rag.embedding import load_embedder
    from rag.ingest import ingest
    from rag.pipeline import build_pipeline

    embedder = load_embedder(settings)  # loaded once, shared by ingest and the pipeline
    ingest(settings.corpus_dir, settings.index_dir, embedder, settings, progress=True)
    pipeline: EvalPipeline = build_pipeline(settings, with_generator=not retrieval_only, embedder=embedder)
    return pipeline


def _eval_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """Settings for this run: a corpus other than the default gets its own index under ``--out``."""
    if args.corpus is None:
        return settings
    corpus = Path(args.corpus)
    index_dir = settings.index_dir
    # The CLI already put --corpus into ``settings``; a fresh Settings tells what the default corpus is.
    no_overrides: dict[str, Any] = {}
    default_corpus = Settings(**no_overrides).corpus_dir
    if getattr(args, "index", None) is None and corpus.resolve() != default_corpus.resolve():
        digest = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:12]
        index_dir = Path(args.out) / f"index-{digest}"
    return settings.model_copy(update={"corpus_dir": corpus, "index_dir": index_dir})


def _document_texts(corpus: Path, items: Sequence[GoldItem]) -> dict[str, str]:
    """``Document.text`` of every document the gold set names (same loader as ingest, same offsets)."""
    from rag.loaders import load_file

    if not corpus.is_dir():
        raise InputError(f"Corpus folder does not exist: {corpus}. Pass --corpus DIR.")
    texts: dict[str, str] = {}
    for doc_id in sorted({i.doc_id for i in items if i.doc_id}):
        path = corpus / doc_id
        if not path.is_file():
            raise InputError(f"The gold set cites {doc_id!r}, which is not in the corpus {corpus}. Pass --corpus DIR.")
        texts[doc_id] = load_file(path, corpus).text
    return texts


def run_eval_cli(args: argparse.Namespace, settings: Settings, *, make_pipeline: PipelineFactory | None = None) -> int:
    """``rag eval``: 0 when every threshold holds, 1 when one fails (the reason is printed).

    ``make_pipeline(settings, retrieval_only)`` is injectable for tests; the
    default updates the index and builds the real pipeline.
    """
    retrieval_only = bool(args.retrieval_only)
    items = load_gold(args.gold)
    split = getattr(args, "split", None)
    if split is not None:
        items = [i for i in items if i.split == split]
        if not items:
            raise InputError(f"No question of {args.gold} is in split {split!r}.")
    if args.limit is not None:
        if args.limit < 1:
            raise InputError("--limit must be at least 1.")
        items = items[: args.limit]
    thresholds = load_thresholds(args.thresholds)
    settings = _eval_settings(args, settings)
    doc_texts = _document_texts(Path(settings.corpus_dir), items)
    missing = [i.id for i in items if i.answerable and find_evidence(doc_texts[i.doc_id or ""], i.evidence) is None]
    if missing:
        print(f"warning: evidence not found verbatim for {', '.join(missing)}; only containment counts there",
              file=sys.stderr)  # fmt: skip

    pipeline = (make_pipeline or _prepare_pipeline)(settings, retrieval_only)
    k = settings.top_k
    started = time.perf_counter()
    results = evaluate(pipeline, items, doc_texts, k=k, retrieval_only=retrieval_only)
    metrics = compute_metrics(results, k, retrieval_only=retrieval_only)
    failures, unchecked = check_thresholds(metrics, thresholds, retrieval_only=retrieval_only)

    info: Any = None
    info_fn = getattr(pipeline, "info", None)
    if callable(info_fn):
        with contextlib.suppress(NotImplementedError):
            info = info_fn()
    extra = {
        "gold": str(args.gold),
        "split": split,
        "corpus": str(settings.corpus_dir),
        "index_dir": str(settings.index_dir),
        "retrieve_depth": max(5, k),
        "seconds": round(time.perf_counter() - started, 2),
        "pipeline_info": info,
    }
    report = build_report(
        results,
        metrics,
        settings=settings,
        retrieval_only=retrieval_only,
        thresholds=thresholds,
        failures=failures,
        unchecked=unchecked,
        extra=extra,
    )
    json_path, md_path = write_report(report, thresholds, Path(args.out))

    print_summary(metrics, thresholds, failures)
    print(f"\nreport: {json_path} and {md_path} ({extra['seconds']} s)")
    for line in unchecked:
        print(f"unchecked: {line}")
    if failures:
        print(f"\nFAILED {len(failures)} threshold(s) from {args.thresholds}:")
        for line in failures:
            print(f"  {line}")
        return 1
    print("all thresholds met")
    return 0
