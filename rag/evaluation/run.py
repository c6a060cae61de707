"""``rag eval``: the gold set through the real pipeline -> figures, a report, a pass/fail."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import InputError
from rag.evaluation.gold import GoldItem, load_gold
from rag.evaluation.metrics import compute_metrics
from rag.evaluation.report import build_report, print_baseline, print_summary, write_report
from rag.evaluation.scoring import QuestionResult, find_evidence, score_question
from rag.evaluation.thresholds import check_thresholds, load_thresholds
from rag.settings import Settings
from rag.types import Answer, QAPipeline


def evaluate(
    pipeline: QAPipeline,
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


PipelineFactory = Callable[[Settings, bool], QAPipeline]
BaselineFactory = Callable[[QAPipeline], QAPipeline]


def _plain_rag(pipeline: QAPipeline) -> QAPipeline:
    from rag.evaluation.baseline import PlainRag
    from rag.pipeline import Pipeline

    if not isinstance(pipeline, Pipeline):
        raise InputError("--baseline needs the real pipeline")
    return PlainRag(pipeline)


@dataclass(frozen=True)
class EvalOptions:
    """What one ``rag eval`` run is asked to do: its command-line flags, typed."""

    gold: Path = Path("eval/gold.jsonl")
    #: The corpus the gold set is about; None: the settings' corpus (``seeds/``).
    corpus: Path | None = None
    thresholds: Path = Path("eval/thresholds.json")
    #: Folder for report.json and report.md (and the index of a non-default corpus).
    out: Path = Path("eval")
    #: Only the questions of this split of the gold set (e.g. "tune", "heldout").
    split: str | None = None
    #: Only the first N questions (after the split).
    limit: int | None = None
    retrieval_only: bool = False
    #: The --index given on the command line, if any (then a non-default corpus uses it too).
    index: Path | None = None
    #: Also answer every question with a plain RAG prompt (``rag.evaluation.baseline``), reported beside.
    baseline: bool = False


def _prepare_pipeline(settings: Settings, retrieval_only: bool) -> QAPipeline:
    """Bring the index up to date (incremental: cheap when unchanged), then build the pipeline."""
    from rag.embedding import load_embedder
    from rag.ingest import ingest
    from rag.pipeline import build_pipeline

    embedder = load_embedder(settings)  # loaded once, shared by ingest and the pipeline
    ingest(settings.corpus_dir, settings.index_dir, embedder, settings, progress=True)
    pipeline: QAPipeline = build_pipeline(settings, with_generator=not retrieval_only, embedder=embedder)
    return pipeline


def _eval_settings(options: EvalOptions, settings: Settings) -> Settings:
    """Settings for this run: a corpus other than the default gets its own index under ``--out``."""
    if options.corpus is None:
        return settings
    corpus = Path(options.corpus)
    index_dir = settings.index_dir
    # The CLI already put --corpus into ``settings``; a fresh Settings tells what the default corpus is.
    no_overrides: dict[str, Any] = {}
    default_corpus = Settings(**no_overrides).corpus_dir
    if options.index is None and corpus.resolve() != default_corpus.resolve():
        digest = hashlib.sha256(str(corpus.resolve()).encode()).hexdigest()[:12]
        index_dir = Path(options.out) / f"index-{digest}"
    return settings.model_copy(update={"corpus_dir": corpus, "index_dir": index_dir})


def _document_texts(corpus: Path, items: Sequence[GoldItem], settings: Settings) -> dict[str, str]:
    """``Document.text`` of every document the gold set names (same loader and OCR settings as ingest, same offsets)."""
    from rag.loaders import load_file
    from rag.ocr import OcrOptions

    if not corpus.is_dir():
        raise InputError(f"Corpus folder does not exist: {corpus}. Pass --corpus DIR.")
    texts: dict[str, str] = {}
    for doc_id in sorted({i.doc_id for i in items if i.doc_id}):
        path = corpus / doc_id
        if not path.is_file():
            raise InputError(f"The gold set cites {doc_id!r}, which is not in the corpus {corpus}. Pass --corpus DIR.")
        texts[doc_id] = load_file(path, corpus, OcrOptions.from_settings(settings)).text
    return texts


def run_eval(
    options: EvalOptions,
    settings: Settings,
    *,
    make_pipeline: PipelineFactory | None = None,
    make_baseline: BaselineFactory | None = None,
) -> int:
    """``rag eval``: 0 when every threshold holds, 1 when one fails (the reason is printed).

    ``make_pipeline(settings, retrieval_only)`` and ``make_baseline(pipeline)`` are
    injectable for tests; the defaults update the index and build the real pipeline,
    and the plain RAG prompt over it.
    """
    retrieval_only = options.retrieval_only
    if options.baseline and retrieval_only:
        raise InputError("--baseline compares answers; it cannot run with --retrieval-only.")
    items = load_gold(options.gold)
    if options.split is not None:
        items = [i for i in items if i.split == options.split]
        if not items:
            raise InputError(f"No question of {options.gold} is in split {options.split!r}.")
    if options.limit is not None:
        if options.limit < 1:
            raise InputError("--limit must be at least 1.")
        items = items[: options.limit]
    thresholds = load_thresholds(options.thresholds)
    settings = _eval_settings(options, settings)
    doc_texts = _document_texts(Path(settings.corpus_dir), items, settings)
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
    baseline: dict[str, Any] | None = None
    if options.baseline:
        # Same questions, same retrieval and model, one plain prompt: the figures the pipeline is held against.
        t_base = time.perf_counter()
        plain = (make_baseline or _plain_rag)(pipeline)
        base_results = evaluate(plain, items, doc_texts, k=k)
        baseline = {
            "what": "plain RAG prompt: same retrieval and model, whole top-k passages, no gate, no verification",
            "metrics": compute_metrics(base_results, k, retrieval_only=False),
            "seconds": round(time.perf_counter() - t_base, 2),
            "correct": {r.item.id: bool(r.correct) for r in base_results},
        }

    info: Any = None
    info_fn = getattr(pipeline, "info", None)
    if callable(info_fn):
        with contextlib.suppress(NotImplementedError):
            info = info_fn()
    extra = {
        "gold": str(options.gold),
        "split": options.split,
        "corpus": str(settings.corpus_dir),
        "index_dir": str(settings.index_dir),
        "retrieve_depth": max(5, k),
        "seconds": round(time.perf_counter() - started, 2),
        "pipeline_info": info,
        **({"baseline": baseline} if baseline is not None else {}),
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
    json_path, md_path = write_report(report, thresholds, Path(options.out))

    print_summary(metrics, thresholds, failures)
    if baseline is not None:
        print_baseline(metrics, baseline["metrics"])
    print(f"\nreport: {json_path} and {md_path} ({extra['seconds']} s)")
    for line in unchecked:
        print(f"unchecked: {line}")
    if failures:
        print(f"\nFAILED {len(failures)} threshold(s) from {options.thresholds}:")
        for line in failures:
            print(f"  {line}")
        return 1
    print("all thresholds met")
    return 0
