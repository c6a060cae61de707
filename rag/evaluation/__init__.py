"""The eval runner (``rag eval``): a gold Q&A set through the real pipeline -> figures, a report, a pass/fail.

One module per step: ``gold`` (read and check the gold set), ``scoring`` (one
question: answer and passages against the gold, with the rules), ``metrics``
(figures over all questions), ``thresholds`` (``eval/thresholds.json`` and the
check), ``report`` (``report.json``, ``report.md``, the summary) and ``run``
(the loop over the pipeline, and ``run_eval`` for the CLI).
"""

from rag.evaluation.gold import GoldItem, load_gold
from rag.evaluation.metrics import (
    ANSWER_METRICS,
    KNOWN_METRICS,
    RETRIEVAL_METRICS,
    answer_metrics,
    compute_metrics,
    metrics_by_type,
    reliability,
    retrieval_metrics,
)
from rag.evaluation.report import build_report, question_record, render_markdown, write_report
from rag.evaluation.run import EvalOptions, PipelineFactory, evaluate, run_eval
from rag.evaluation.scoring import (
    PASSING_VERDICTS,
    QuestionResult,
    answer_tokens,
    contains_answer,
    find_evidence,
    holds_evidence,
    normalize_answer,
    score_question,
    strip_markers,
    token_f1,
)
from rag.evaluation.thresholds import Thresholds, check_thresholds, load_thresholds

__all__ = [
    "ANSWER_METRICS",
    "KNOWN_METRICS",
    "PASSING_VERDICTS",
    "RETRIEVAL_METRICS",
    "EvalOptions",
    "GoldItem",
    "PipelineFactory",
    "QuestionResult",
    "Thresholds",
    "answer_metrics",
    "answer_tokens",
    "build_report",
    "check_thresholds",
    "compute_metrics",
    "contains_answer",
    "evaluate",
    "find_evidence",
    "holds_evidence",
    "load_gold",
    "load_thresholds",
    "metrics_by_type",
    "normalize_answer",
    "question_record",
    "reliability",
    "render_markdown",
    "retrieval_metrics",
    "run_eval",
    "score_question",
    "strip_markers",
    "token_f1",
    "write_report",
]
