"""The gold set itself: well-formed, evidence verbatim in the seed documents, a real mix of question types."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rag.evaluation import GoldItem, load_gold
from rag.loaders import load_file

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "eval" / "gold.jsonl"
SEEDS = ROOT / "seeds"

# The minimum count of each question type the eval promises to cover.
TYPE_MINIMUMS = {
    "date": 10,
    "number": 10,
    "name_place": 12,
    "paraphrase": 10,
    "multi_sentence": 8,
    "why": 8,
    "followup": 8,
    "unanswerable": 15,
}


@pytest.fixture(scope="module")
def gold() -> list[GoldItem]:
    return load_gold(GOLD)


def test_size_and_unique_ids(gold: list[GoldItem]) -> None:
    assert len(gold) >= 80
    ids = [json.loads(line)["id"] for line in GOLD.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(ids) == len(set(ids)) == len(gold)


def test_type_mix(gold: list[GoldItem]) -> None:
    counts = Counter(item.type for item in gold)
    short = {t: (counts[t], n) for t, n in TYPE_MINIMUMS.items() if counts[t] < n}
    assert not short, f"types below their minimum (have, need): {short}"
    assert set(counts) <= set(TYPE_MINIMUMS), f"unknown types: {set(counts) - set(TYPE_MINIMUMS)}"


def test_followups_carry_history(gold: list[GoldItem]) -> None:
    followups = [item for item in gold if item.type == "followup"]
    without = [item.id for item in followups if not item.history]
    assert not without, f"follow-ups without history: {without}"
    for item in followups:
        assert item.history[0].role == "user"


def test_unanswerable_are_marked(gold: list[GoldItem]) -> None:
    for item in gold:
        assert item.answerable == (item.type != "unanswerable"), item.id
        if not item.answerable:
            assert not item.answers and not item.evidence, item.id


def test_evidence_verbatim_in_its_document(gold: list[GoldItem]) -> None:
    texts: dict[str, str] = {}
    missing: list[str] = []
    for item in gold:
        if not item.answerable:
            continue
        assert item.doc_id is not None
        path = SEEDS / item.doc_id
        assert path.is_file(), f"{item.id}: {item.doc_id} is not under seeds/"
        if item.doc_id not in texts:
            # The same loader as ingest, so the evidence is found in the text chunks are cut from.
            texts[item.doc_id] = load_file(path, SEEDS).text
        if item.evidence not in texts[item.doc_id]:
            missing.append(item.id)
    assert not missing, f"evidence not found verbatim: {missing}"


def test_every_answer_is_words_of_some_kind(gold: list[GoldItem]) -> None:
    # An answer that normalizes to nothing (e.g. "the") could never be matched.
    from rag.evaluation import answer_tokens

    empty = [(item.id, a) for item in gold for a in item.answers if not answer_tokens(a)]
    assert not empty
