"""Eval runner: scoring helpers on worked examples, metrics on a fake pipeline, thresholds, gold validation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.evaluation import (
    EvalOptions,
    GoldItem,
    Thresholds,
    answer_tokens,
    check_thresholds,
    compute_metrics,
    contains_answer,
    evaluate,
    find_evidence,
    holds_evidence,
    load_gold,
    load_thresholds,
    metrics_by_type,
    normalize_answer,
    reliability,
    run_eval,
    token_f1,
)
from rag.settings import Settings
from rag.stats import percentile
from rag.types import Answer, Chunk, Citation, Hit, QAPipeline, Sentence, Turn

# --------------------------------------------------------------------------- normalization and matching


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Port of Rason.", "port of rason"),
        ("7,000 kilometers", "7000 kilometers"),
        ("1,234,567 shells", "1234567 shells"),
        ("October 23,2024", "october 23 2024"),  # not a thousands separator: two numbers stay two tokens
        ("$30 million", "30 million"),
        ("Japanese-American alliance", "japanese american alliance"),
        ("Putin’s visit – an “enthronement”", "putin s visit enthronement"),
        ("  A  an THE  ", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("system", "gold", "expected"),
    [
        ("It was tested in 2023.", "2", False),  # token containment, not substring
        ("It was tested in 2023.", "2023", True),
        ("Six officers [6] were killed.", "6", False),  # citation markers are not answer text
        ("It flew 7000 km.", "7,000 km", True),
        ("It flew 7,000 km.", "7000 km", True),
        ("It flew 7,000 kilometers.", "7000 km", False),
        ("From the port of Rason [2].", "Rason", True),
        ("The mutual-assistance clause.", "mutual assistance clause", True),
        ("assistance mutual clause", "mutual assistance", False),  # order matters
        ("anything", "the", False),  # nothing left to find
    ],
)
def test_contains_answer(system: str, gold: str, expected: bool) -> None:
    assert contains_answer(system, gold) is expected


def test_token_f1_worked_examples() -> None:
    # "it was tested on october 30 2024" (7 tokens) vs "october 30 2024" (3): p = 3/7, r = 1 -> F1 = 0.6
    assert token_f1("It was tested on October 30, 2024 [1].", "October 30, 2024") == pytest.approx(0.6)
    # "it flew 7000 kilometers" vs "7000 km": one common token, p = 1/4, r = 1/2 -> F1 = 1/3
    assert token_f1("It flew 7,000 kilometers.", "7,000 km") == pytest.approx(1 / 3)
    assert token_f1("Rason", "Rason") == 1.0
    assert token_f1("Nothing shared", "Rason") == 0.0
    assert token_f1("", "Rason") == 0.0
    # Counts are multisets: repeating a correct word does not raise recall above 1.
    assert token_f1("june june", "june 2024") == pytest.approx(0.5)


def test_answer_tokens_split_on_normalized_text() -> None:
    assert answer_tokens("The 3,000 soldiers!") == ["3000", "soldiers"]


def test_percentile() -> None:
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([0.1, 0.3, 0.2], 95) == pytest.approx(0.29)


# --------------------------------------------------------------------------- a tiny corpus and fake pipeline

S1 = "North Korea tested a missile on October 30, 2024."
S2 = "The missile flew 7,000 kilometers, farther than before."
S3 = "Putin visited Pyongyang in June 2024 and signed a partnership."
DOC = f"{S1} {S2}\n{S3}"
DOC_ID = "doc.txt"


def chunk(cid: str, start: int, end: int) -> Chunk:
    return Chunk(cid, DOC_ID, DOC[start:end], start, end)


s2_start = DOC.index(S2)
s3_start = DOC.index(S3)
C1 = chunk("c1", 0, len(S1))
C2 = chunk("c2", s2_start, s2_start + len(S2))
C3 = chunk("c3", s3_start, len(DOC))
# Ends 60% of the way into S2: holds the evidence by the range rule although its text lacks the end of S2.
C2_HEAD = chunk("c2-head", 0, s2_start + int(0.6 * len(S2)))
# Starts 70% of the way into S3: covers only 30% of it, a neighbour, not the evidence.
C3_TAIL = chunk("c3-tail", s3_start + int(0.7 * len(S3)), len(DOC))


def cite(marker: int, c: Chunk) -> Citation:
    return Citation(marker, c.id, c.doc_id, c.start, c.end, c.text)


GOLD = [
    GoldItem("q1", "When was the missile tested?", ("October 30, 2024",), S1, DOC_ID, True, "date"),
    GoldItem("q2", "How far did it fly?", ("7,000 km", "7,000 kilometers"), S2, DOC_ID, True, "number",
             (Turn("user", "What was tested?"), Turn("assistant", "A missile."))),
    GoldItem("q3", "When did Putin visit?", ("June 2024",), S3, DOC_ID, True, "date"),
    GoldItem("q4", "Who won the war?", (), "", None, False, "unanswerable"),
]  # fmt: skip

RETRIEVED = {
    "q1": [C1, C3, C2],  # evidence at rank 1
    "q2": [C3, C1, C2_HEAD, C2],  # first evidence at rank 3 (by the range rule)
    "q3": [C1, C3_TAIL],  # never
    "q4": [C1],
}

ANSWERS = {
    # Correct; cites the evidence [1] and, in a supported sentence, a non-evidence passage [2].
    "q1": Answer(
        "When was the missile tested?",
        "It was tested on October 30, 2024 [1][2].",
        False,
        (cite(1, C1), cite(2, C3)),
        (Sentence("It was tested on October 30, 2024 [1][2].", (1, 2), True),),
        timings={"first_token_s": 0.1},
        provenance={"index": "v-test", "generator": "fake"},
        confidence=0.95,
    ),
    # Correct; [1] is not the evidence and its sentence is unsupported, [2] is the evidence.
    "q2": Answer(
        "How far did it fly?",
        "It flew 7,000 kilometers [1][2].",
        False,
        (cite(1, C3), cite(2, C2)),
        (Sentence("It flew 7,000 kilometers [1][2].", (1, 2), False),),
        timings={"first_token_s": 0.3},
        confidence=0.6,
    ),
    # False refusal; the gold words in an abstention earn neither accuracy nor F1.
    "q3": Answer(
        "When did Putin visit?",
        "The documents do not say if it was June 2024.",
        True,
        (),
        (),
        provenance={"passages_read": "4"},
    ),
    # Hallucination: an unanswerable question answered (its citations never count for precision).
    "q4": Answer(
        "Who won the war?",
        "Nobody won [1].",
        False,
        (cite(1, C1),),
        (Sentence("Nobody won [1].", (1,), True),),
        timings={"first_token_s": 0.2},
        confidence=0.92,
    ),
}


class FakePipeline:
    def __init__(self) -> None:
        self.retrieve_calls: list[tuple[str, tuple[Turn, ...], int | None]] = []
        self.ask_calls: list[str] = []
        self._ids = {item.question: item.id for item in GOLD}

    def retrieve(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> list[Hit]:
        self.retrieve_calls.append((question, tuple(history), k))
        chunks = RETRIEVED[self._ids[question]]
        return [Hit(c, 1.0 / (i + 1)) for i, c in enumerate(chunks[:k])]

    def ask(self, question: str, history: Sequence[Turn] = (), k: int | None = None) -> Answer:
        self.ask_calls.append(question)
        return ANSWERS[self._ids[question]]


def test_evidence_location_and_range_rule() -> None:
    assert find_evidence(DOC, S2) == (s2_start, s2_start + len(S2))
    assert find_evidence(DOC.replace(" ", "\n  "), "Putin visited Pyongyang") is not None
    assert find_evidence(DOC, "not in there") is None
    span = find_evidence(DOC, S2)
    q2 = GOLD[1]
    assert holds_evidence(C2, q2, span)  # contains it
    assert holds_evidence(C2_HEAD, q2, span)  # covers 60%
    assert not holds_evidence(C2_HEAD, q2, None)  # without the document only containment counts
    assert not holds_evidence(C1, q2, span)
    other_doc = Chunk("x", "other.txt", C2_HEAD.text, C2_HEAD.start, C2_HEAD.end)
    assert not holds_evidence(other_doc, q2, span)  # same offsets in another file mean nothing
    assert not holds_evidence(C3_TAIL, GOLD[2], find_evidence(DOC, S3))  # covers 30%
    # Whitespace differences do not matter for containment.
    reflowed = Chunk("r", "other.txt", S2.replace(" ", "\n"), 0, len(S2))
    assert holds_evidence(reflowed, q2, None)


def test_metrics_on_fake_pipeline() -> None:
    pipeline = FakePipeline()
    results = evaluate(pipeline, GOLD, {DOC_ID: DOC}, k=2, progress=False)
    # Retrieval runs at depth max(5, k) with the gold history; ask once per question.
    assert [c[2] for c in pipeline.retrieve_calls] == [5, 5, 5, 5]
    assert pipeline.retrieve_calls[1][1] == GOLD[1].history
    assert len(pipeline.ask_calls) == 4

    m = compute_metrics(results, k=2)
    assert (m["questions"], m["answerable"], m["unanswerable"]) == (4, 3, 1)
    # Ranks of the first evidence passage: q1 -> 1, q2 -> 3, q3 -> none.
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@k"] == pytest.approx(1 / 3)  # k = 2
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    # q1 and q2 correct, q3 refused.
    assert m["answer_accuracy"] == pytest.approx(2 / 3)
    # F1: q1 0.6; q2 best of "7000 km" (1/3) and "7000 kilometers" (p 2/4, r 1 -> 2/3); q3 0.
    assert m["answer_f1"] == pytest.approx((0.6 + 2 / 3 + 0) / 3)
    # Citations of answered answerable questions: q1 [evidence, supported but no evidence], q2 [no, evidence].
    # The verifier's "supported" does not count: only passages holding the gold evidence do.
    assert m["citation_precision"] == pytest.approx(2 / 4)
    assert m["citation_recall"] == pytest.approx(2 / 3)  # q1 and q2 cite the evidence, q3 does not
    assert m["false_refusal_rate"] == pytest.approx(1 / 3)
    assert m["refusal_recall"] == 0.0
    assert m["hallucination_rate"] == 1.0
    # TTFT from the answers' timings: [0.1, 0.3, 0.2] (q3 has none).
    assert m["ttft_p50_s"] == pytest.approx(0.2)
    assert m["ttft_p95_s"] == pytest.approx(0.29)
    assert m["latency_p50_s"] is not None and m["latency_p50_s"] <= m["latency_p95_s"]

    # Answers given with confidence >= 0.9: q1 (right) and q4 (an unanswerable question answered: wrong).
    assert m["confident_precision"] == 0.5
    table = {row["from"]: (row["answers"], row["mean_confidence"], row["right"]) for row in reliability(results)}
    assert table == {
        0.0: (0, None, None),
        0.5: (1, 0.6, 1.0),
        0.7: (0, None, None),
        0.9: (2, pytest.approx(0.935), 0.5),
    }

    verdicts = [r.verdict(2) for r in results]
    assert verdicts == ["correct", "correct", "refused (false refusal)", "answered (hallucination)"]

    by_type = metrics_by_type(results, k=2)
    assert by_type["date"] == {"count": 2, "accuracy": 0.5, "f1": pytest.approx(0.3), "recall@k": 0.5}
    assert by_type["number"] == {"count": 1, "accuracy": 1.0, "f1": pytest.approx(2 / 3), "recall@k": 0.0}
    assert by_type["unanswerable"] == {"count": 1, "accuracy": 0.0, "f1": None, "recall@k": None}


def test_retrieval_only_never_asks() -> None:
    pipeline = FakePipeline()
    results = evaluate(pipeline, GOLD, {DOC_ID: DOC}, k=4, retrieval_only=True, progress=False)
    assert pipeline.ask_calls == []
    m = compute_metrics(results, k=4, retrieval_only=True)
    assert m["recall@k"] == pytest.approx(2 / 3)
    assert "answer_accuracy" not in m and "false_refusal_rate" not in m
    assert [r.verdict(4) for r in results] == ["retrieved", "retrieved", "missed", "n/a"]
    assert results[1].verdict(2) == "missed (evidence at rank 3 > k)"


def test_check_thresholds() -> None:
    metrics = {"mrr": 0.5, "recall@k": 0.9, "false_refusal_rate": 0.2, "ttft_p95_s": None}
    t = Thresholds(min={"mrr": 0.6, "recall@k": 0.9}, max={"false_refusal_rate": 0.1, "ttft_p95_s": 1.0})
    failures, unchecked = check_thresholds(metrics, t)
    assert failures == [
        "mrr = 0.500 is below the minimum 0.600",
        "false_refusal_rate = 0.200 is above the maximum 0.100",
    ]
    assert unchecked == ["ttft_p95_s: not measured (threshold max 1)"]
    failures, unchecked = check_thresholds(metrics, t, retrieval_only=True)
    assert failures == ["mrr = 0.500 is below the minimum 0.600"] and unchecked == []


# --------------------------------------------------------------------------- the CLI entry point


def write_gold(path: Path, items: Sequence[GoldItem]) -> None:
    rows = []
    for it in items:
        row: dict[str, object] = {
            "id": it.id, "question": it.question, "answers": list(it.answers), "evidence": it.evidence,
            "doc_id": it.doc_id, "answerable": it.answerable, "type": it.type,
        }  # fmt: skip
        if it.history:
            row["history"] = [{"role": t.role, "content": t.content} for t in it.history]
        rows.append(json.dumps(row))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / DOC_ID).write_text(DOC, encoding="utf-8")
    gold = tmp_path / "gold.jsonl"
    write_gold(gold, GOLD)
    return {"corpus": corpus, "gold": gold, "out": tmp_path / "out", "thresholds": tmp_path / "thresholds.json"}


def run(
    ws: dict[str, Path], thresholds: dict[str, object], *, retrieval_only: bool = False, limit: int | None = None
) -> tuple[int, list[tuple[Settings, bool]]]:
    ws["thresholds"].write_text(json.dumps(thresholds), encoding="utf-8")
    options = EvalOptions(
        gold=ws["gold"], corpus=ws["corpus"], thresholds=ws["thresholds"], out=ws["out"],
        limit=limit, retrieval_only=retrieval_only,
    )  # fmt: skip
    seen: list[tuple[Settings, bool]] = []

    def make_pipeline(settings: Settings, only_retrieval: bool) -> FakePipeline:
        seen.append((settings, only_retrieval))
        return FakePipeline()

    # As rag.cli does: --corpus lands in the settings.
    settings = Settings(corpus_dir=ws["corpus"], top_k=2)
    code = run_eval(options, settings, make_pipeline=make_pipeline)
    return code, seen


def test_cli_passes_and_writes_reports(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, seen = run(workspace, {"min": {"answer_accuracy": 0.6, "recall@3": 0.6}, "max": {"false_refusal_rate": 0.5}})
    assert code == 0
    out = capsys.readouterr().out
    assert "answer_accuracy" in out and "all thresholds met" in out
    # A corpus other than the default gets its own index under --out.
    settings, only_retrieval = seen[0]
    assert only_retrieval is False
    assert settings.corpus_dir == workspace["corpus"]
    assert settings.index_dir.parent == workspace["out"] and settings.index_dir.name.startswith("index-")

    report = json.loads((workspace["out"] / "report.json").read_text(encoding="utf-8"))
    assert [q["id"] for q in report["questions"]] == ["q1", "q2", "q3", "q4"]
    assert report["metrics"]["answer_accuracy"] == pytest.approx(2 / 3)
    assert report["provenance"] == {"index": "v-test", "generator": "fake"}
    q2 = report["questions"][1]
    assert q2["retrieved"] == ["c3", "c1", "c2-head", "c2"]
    assert q2["first_evidence_rank"] == 3
    assert [(c["marker"], c["chunk_id"], c["counts_as_correct"]) for c in q2["citations"]] == [
        (1, "c3", False),
        (2, "c2", True),
    ]
    assert {"start", "end", "doc_id", "text"} <= set(q2["citations"][0])
    assert q2["latency_s"] is not None
    assert report["questions"][2]["provenance"] == {"passages_read": "4"}
    md = (workspace["out"] / "report.md").read_text(encoding="utf-8")
    assert "## By question type" in md
    assert "| 0.9-1.0 | 2 | 0.935 | 0.500 |" in md  # the reliability table: q1 right, q4 a hallucination
    assert "### q3 (date): refused (false refusal)" in md
    assert "- **Passages the model read:** 4" in md  # how the refusal was reached
    assert "### q4 (unanswerable): answered (hallucination)" in md
    assert "### q1" not in md  # correct answers are not failures
    assert f"[1] (not counted correct) doc.txt 0-{len(S1)}: {S1}" in md  # a failure shows the passages it cited


def test_cli_fails_on_a_threshold(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(workspace, {"min": {"answer_accuracy": 0.9}, "max": {"hallucination_rate": 0.5}})
    assert code == 1
    out = capsys.readouterr().out
    assert "answer_accuracy = 0.667 is below the minimum 0.900" in out
    assert "hallucination_rate = 1.000 is above the maximum 0.500" in out
    report = json.loads((workspace["out"] / "report.json").read_text(encoding="utf-8"))
    assert len(report["threshold_failures"]) == 2


def test_cli_retrieval_only_checks_retrieval_thresholds_only(workspace: dict[str, Path]) -> None:
    code, seen = run(workspace, {"min": {"answer_accuracy": 0.9, "recall@3": 0.6}}, retrieval_only=True)
    assert code == 0
    assert seen[0][1] is True  # no generator needed
    md = (workspace["out"] / "report.md").read_text(encoding="utf-8")
    # k = 2: q2's evidence at rank 3 and q3's never retrieved are the failures.
    assert "### q2 (number): missed (evidence at rank 3 > k)" in md
    assert "### q3 (date): missed" in md
    assert "### q1" not in md and "### q4" not in md
    code, _ = run(workspace, {"min": {"answer_accuracy": 0.9, "mrr": 0.9}}, retrieval_only=True)
    assert code == 1


def test_cli_limit(workspace: dict[str, Path]) -> None:
    code, _ = run(workspace, {}, limit=2)
    assert code == 0
    report = json.loads((workspace["out"] / "report.json").read_text(encoding="utf-8"))
    assert [q["id"] for q in report["questions"]] == ["q1", "q2"]


def test_cli_split_then_limit(workspace: dict[str, Path]) -> None:
    rows = [json.loads(line) for line in workspace["gold"].read_text(encoding="utf-8").splitlines()]
    for row, split in zip(rows, ("tune", "heldout", "tune", "heldout"), strict=True):
        row["split"] = split
    workspace["gold"].write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    assert [i.split for i in load_gold(workspace["gold"])] == ["tune", "heldout", "tune", "heldout"]
    settings = Settings(corpus_dir=workspace["corpus"], top_k=2)
    workspace["thresholds"].write_text("{}", encoding="utf-8")

    def questions(split: str, limit: int | None) -> list[str]:
        options = EvalOptions(
            gold=workspace["gold"], corpus=workspace["corpus"], thresholds=workspace["thresholds"],
            out=workspace["out"], limit=limit, retrieval_only=True, split=split,
        )  # fmt: skip
        assert run_eval(options, settings, make_pipeline=lambda s, r: FakePipeline()) == 0
        report = json.loads((workspace["out"] / "report.json").read_text(encoding="utf-8"))
        assert report["split"] == split
        return [q["id"] for q in report["questions"]]

    assert questions("heldout", None) == ["q2", "q4"]
    assert questions("tune", 1) == ["q1"]  # --limit counts within the split
    with pytest.raises(InputError, match="split 'dev'"):
        questions("dev", None)


def test_cli_gold_names_a_missing_document(workspace: dict[str, Path]) -> None:
    (workspace["corpus"] / DOC_ID).unlink()
    with pytest.raises(InputError, match=r"doc\.txt"):
        run(workspace, {})


def test_runs_on_the_real_pipeline_with_fake_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The runner against the real ingest + Pipeline (fake embedder and generator): same seams as production."""
    import re

    from rag.ingest import ingest
    from rag.pipeline import build_pipeline
    from rag.prompting import REWRITE_SYSTEM
    from tests.fakes import FakeEmbedder, FakeGenerator

    def reply(messages: Sequence[dict[str, str]]) -> str:
        if messages[0]["content"] == REWRITE_SYSTEM:
            return messages[-1]["content"].split("Last question:")[1].split("\n")[0]
        # Echo the first sentence of passage [1], cited: always supported by that passage.
        passages = "\n".join(m["content"] for m in messages[-2:])
        first = re.search(r"^\[1\] (?:\([^)]*\) )?(.+?[.!?])(?:\s|$)", passages, re.M)
        return f"{first.group(1)} [1]" if first else "NOT FOUND"

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    filler = " ".join(f"Paragraph {i} talks about weather and farming in the north." for i in range(6))
    (corpus / DOC_ID).write_text(f"{filler}\n\n{DOC}\n\n{filler}", encoding="utf-8")
    write_gold(tmp_path / "gold.jsonl", GOLD)
    (tmp_path / "t.json").write_text('{"min": {"recall@5": 0}}', encoding="utf-8")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index", chunk_tokens=24, chunk_overlap=4, top_k=2)
    embedder = FakeEmbedder()
    built: list[bool] = []

    def make_pipeline(s: Settings, retrieval_only: bool) -> QAPipeline:
        built.append(retrieval_only)
        ingest(s.corpus_dir, s.index_dir, embedder, s, progress=False)
        return build_pipeline(s, with_generator=not retrieval_only, embedder=embedder, generator=FakeGenerator(reply))

    for retrieval_only in (True, False):
        options = EvalOptions(
            gold=tmp_path / "gold.jsonl", thresholds=tmp_path / "t.json", out=tmp_path / "out",
            retrieval_only=retrieval_only,
        )  # fmt: skip
        assert run_eval(options, settings, make_pipeline=make_pipeline) == 0
        report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
        assert [q["id"] for q in report["questions"]] == ["q1", "q2", "q3", "q4"]
        assert all(q["retrieved"] for q in report["questions"])
    assert built == [True, False]
    text = (corpus / DOC_ID).read_text(encoding="utf-8")
    assert report["provenance"]["index_version"] == report["pipeline_info"]["index_version"]
    for q in report["questions"]:
        assert isinstance(q["abstained"], bool) and q["latency_s"] is not None
        for c in q["citations"]:
            assert text[c["start"] : c["end"]] == c["text"]  # the report's offsets point into the source
    assert 0.0 <= report["metrics"]["citation_precision"] <= 1.0
    assert "latency_p95_s" in capsys.readouterr().out


# --------------------------------------------------------------------------- malformed inputs

GOOD = {"id": "a", "question": "Q?", "answers": ["x"], "evidence": "e", "doc_id": "d.txt",
        "answerable": True, "type": "date"}  # fmt: skip


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        (json.dumps([1, 2]), "line 2: expected a JSON object"),
        (json.dumps({**GOOD, "id": "b", "question": None}), "line 2: 'question' must be a non-empty string"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "answers"} | {"id": "b"}), "line 2: missing key"),
        (json.dumps({**GOOD, "id": "b", "answerable": "yes"}), "line 2: 'answerable' must be true or false"),
        (json.dumps({**GOOD, "id": "b", "answers": "x"}), "line 2: 'answers' must be a list"),
        (json.dumps({**GOOD, "id": "b", "evidence": ""}), "line 2: an answerable question needs 'evidence'"),
        (json.dumps({**GOOD, "id": "b", "answers": []}), "line 2: an answerable question needs at least one"),
        (json.dumps(GOOD), "line 2: id 'a' already used on line 1"),
        (json.dumps({**GOOD, "id": "b", "history": [{"role": "bot", "content": "hi"}]}), "line 2: each history"),
        (json.dumps({**GOOD, "id": "b", "split": 3}), "line 2: 'split' must be a non-empty string"),
    ],
)
def test_malformed_gold_names_the_line(tmp_path: Path, second_line: str, message: str) -> None:
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + second_line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_gold(path)


def test_gold_loads_history_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "gold.jsonl"
    row = {**GOOD, "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    unanswerable = {"id": "u", "question": "?", "answers": [], "evidence": "", "doc_id": None,
                    "answerable": False, "type": "unanswerable"}  # fmt: skip
    path.write_text(json.dumps(row) + "\n\n" + json.dumps(unanswerable) + "\n", encoding="utf-8")
    items = load_gold(path)
    assert items[0].history == (Turn("user", "hi"), Turn("assistant", "yo"))
    assert items[1].doc_id is None and not items[1].answerable


def test_empty_or_missing_gold_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="no questions"):
        load_gold(empty)
    with pytest.raises(InputError, match="Cannot read the gold file"):
        load_gold(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"min": {"recall@k": "high"}}', "must be a number"),
        ('{"min": {"accuracy": 0.5}}', "unknown metric 'accuracy'"),
        ('{"minimum": {}}', "unexpected key 'minimum'"),
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_malformed_thresholds(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_thresholds(path)


def test_thresholds_comments_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"_note": "why", "min": {"mrr": 0.5}, "max": {"latency_p95_s": 9}}', encoding="utf-8")
    assert load_thresholds(path) == Thresholds(min={"mrr": 0.5}, max={"latency_p95_s": 9.0})


def test_baseline_answers_the_same_questions_with_a_plain_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--baseline: the raw reply of one plain prompt, beside the pipeline, which verifies and refuses."""
    from rag.ingest import ingest
    from rag.pipeline import build_pipeline
    from rag.prompting import REWRITE_SYSTEM
    from tests.fakes import FakeEmbedder, FakeGenerator

    prompts: list[list[dict[str, str]]] = []

    def reply(messages: Sequence[dict[str, str]]) -> str:
        if messages[0]["content"] == REWRITE_SYSTEM:
            return messages[-1]["content"].split("Last question:")[1].split("\n")[0]
        prompts.append(list(messages))
        return "The war was won by Zorbaville [1]."  # invented: no passage says so

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / DOC_ID).write_text(DOC, encoding="utf-8")
    write_gold(tmp_path / "gold.jsonl", GOLD)
    (tmp_path / "t.json").write_text('{"min": {"recall@5": 0}}', encoding="utf-8")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index", chunk_tokens=24, chunk_overlap=4, top_k=2)
    embedder = FakeEmbedder()

    def make_pipeline(s: Settings, retrieval_only: bool) -> QAPipeline:
        ingest(s.corpus_dir, s.index_dir, embedder, s, progress=False)
        return build_pipeline(s, embedder=embedder, generator=FakeGenerator(reply))

    options = EvalOptions(
        gold=tmp_path / "gold.jsonl", thresholds=tmp_path / "t.json", out=tmp_path / "out", baseline=True
    )
    assert run_eval(options, settings, make_pipeline=make_pipeline) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    ours, plain = report["metrics"], report["baseline"]["metrics"]
    # The pipeline's verifier drops the invented sentence: every question refused. The plain
    # prompt says it: the unanswerable question is "answered" (a hallucination), no refusal.
    assert ours["refusal_recall"] == 1.0 and ours["hallucination_rate"] == 0.0
    assert plain["refusal_recall"] == 0.0 and plain["hallucination_rate"] == 1.0
    assert plain["false_refusal_rate"] == 0.0 and set(report["baseline"]["correct"]) == {"q1", "q2", "q3", "q4"}
    # The baseline's prompts hold the top-k passages whole, in one message.
    plain_prompts = prompts[len(prompts) // 2 :]
    assert all(m[-2]["content"].startswith("Passages:\n[1] ") for m in plain_prompts)
    out = capsys.readouterr().out
    assert "against a plain RAG prompt" in out and "hallucination_rate" in out.split("against a plain RAG prompt")[1]
    with pytest.raises(InputError, match="--baseline"):
        run_eval(dataclasses.replace(options, retrieval_only=True), settings, make_pipeline=make_pipeline)


def test_a_report_never_carries_the_milvus_credentials() -> None:
    # build_report dumps the settings into report.json, a CI artifact.
    settings = Settings(milvus_uri="http://root:pw123@db.local:19530", milvus_token="root:hunter2")
    dumped = json.dumps(settings.model_dump(mode="json"))
    assert "pw123" not in dumped and "hunter2" not in dumped
    assert settings.model_dump(mode="json")["milvus_uri"] == "http://db.local:19530"
    assert settings.milvus_uri == "http://root:pw123@db.local:19530"  # the store still gets the real URI
