"""The SQuAD 2.0 gold set (eval/squad/): well-formed, balanced, split, evidence verbatim in its article."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rag.evaluation import GoldItem, load_gold, load_thresholds
from rag.loaders import load_corpus

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT / "eval" / "squad"


@pytest.fixture(scope="module")
def gold() -> list[GoldItem]:
    return load_gold(SQUAD / "gold.jsonl")


def test_size_split_and_balance(gold: list[GoldItem]) -> None:
    counts = Counter((item.split, item.answerable) for item in gold)
    assert set(counts) == {("tune", True), ("tune", False), ("heldout", True), ("heldout", False)}
    assert all(140 <= n <= 160 for n in counts.values()), counts
    for item in gold:
        assert item.answerable == (item.type != "unanswerable"), item.id
        if not item.answerable:
            assert not item.answers and not item.evidence, item.id


def test_heldout_subset_for_answers_is_balanced(gold: list[GoldItem]) -> None:
    # `--split heldout --limit 60` is the fixed subset the full pipeline runs on.
    first = [item for item in gold if item.split == "heldout"][:60]
    assert sum(item.answerable for item in first) == 30


def test_corpus_is_one_titled_file_per_article(gold: list[GoldItem]) -> None:
    docs, warnings = load_corpus(SQUAD / "corpus")
    assert not warnings and len(docs) >= 10
    for doc in docs:
        assert doc.text.split("\n", 1)[0] == doc.id.removesuffix(".txt").replace("_", " ")
    texts = {doc.id: doc.text for doc in docs}
    # The same loader as ingest, so evidence and answers are found in the text chunks are cut from.
    assert {item.doc_id for item in gold} <= set(texts)
    for item in gold:
        if item.answerable:
            assert item.doc_id is not None and item.evidence in texts[item.doc_id], item.id
            assert any(answer in item.evidence for answer in item.answers), item.id


def test_thresholds_load() -> None:
    thresholds = load_thresholds(SQUAD / "thresholds.json")
    assert {"recall@1", "recall@5", "mrr"} <= set(thresholds.min)
