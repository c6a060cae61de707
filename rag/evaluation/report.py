"""The run's report: ``report.json`` (everything, per question), ``report.md`` (figures and failures), a summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rag.evaluation.metrics import ANSWER_METRICS, KNOWN_METRICS, metrics_by_type, reliability
from rag.evaluation.scoring import PASSING_VERDICTS, QuestionResult, squash
from rag.evaluation.thresholds import Thresholds
from rag.serialization import answer_to_dict
from rag.settings import Settings


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
    if r.answer is not None:
        # The answer object as the API and `rag ask --json` write it (its question is the item's),
        # plus how it scored; each citation says whether it counts as correct.
        answer = {key: value for key, value in answer_to_dict(r.answer).items() if key != "question"}
        for citation, ok in zip(answer["citations"], r.citation_ok, strict=False):
            citation["counts_as_correct"] = ok
        rec.update(answer)
        rec["correct"] = r.correct
        rec["f1"] = None if r.f1 is None else round(r.f1, 4)
        rec["latency_s"] = None if r.seconds is None else round(r.seconds, 3)
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
        "reliability": [] if retrieval_only else reliability(results),
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
    text = squash(text)
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
        *_reliability_section(report.get("reliability", [])),
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


def _reliability_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    table = _md_table(
        ("confidence", "answers", "mean confidence", "right"),
        (
            (f"{r['from']:.1f}-{r['to']:.1f}", str(r["answers"]), _fmt(r["mean_confidence"]), _fmt(r["right"]))
            for r in rows
        ),
    )
    note = (
        "Answers given (refusals left out), by the confidence they carried; "
        "an answer to an unanswerable question counts as not right."
    )
    return ["## Confidence reliability", "", table, "", note, ""]


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


# TTFT is left out: the plain prompt does not stream verified sentences, so it would not mean the same.
BASELINE_FIGURES = tuple(name for name in ANSWER_METRICS if not name.startswith("ttft_"))


def print_baseline(metrics: Mapping[str, Any], baseline: Mapping[str, Any]) -> None:
    """The pipeline's answer figures beside the plain RAG prompt's, on the same questions."""
    print("\nagainst a plain RAG prompt (same retrieval and model, same questions):")
    rows = [("metric", "pipeline", "plain RAG")]
    rows += [(name, _fmt(metrics.get(name)), _fmt(baseline.get(name))) for name in BASELINE_FIGURES]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
