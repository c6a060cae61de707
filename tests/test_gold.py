"""The gold set itself: well-formed, evidence verbatim in the seed documents, a real mix of question types,
and a tune/heldout split (see eval/README.md)."""

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
SPLITS = ("tune", "heldout")
# The held-out part must stay big enough to measure on.
MIN_HELDOUT_SHARE = 0.40


@pytest.fixture(scope="module")
def gold() -> list[GoldItem]:
    return load_gold(GOLD)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """The raw lines, for the fields ``GoldItem`` doesn't carry (``split``)."""
    return [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_size_and_unique_ids(gold: list[GoldItem], rows: list[dict]) -> None:
    assert len(gold) >= 80
    ids = [row["id"] for row in rows]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert not duplicates, f"ids used more than once: {duplicates}"
    assert len(ids) == len(gold)


def test_every_item_has_a_split(rows: list[dict]) -> None:
    bad = [(row["id"], row.get("split")) for row in rows if row.get("split") not in SPLITS]
    assert not bad, f"split must be one of {SPLITS}: {bad}"


def test_heldout_is_big_and_mixed(rows: list[dict]) -> None:
    heldout = [row for row in rows if row.get("split") == "heldout"]
    share = len(heldout) / len(rows)
    assert share >= MIN_HELDOUT_SHARE, f"heldout is {share:.0%} of the gold set, under {MIN_HELDOUT_SHARE:.0%}"
    assert any(row["answerable"] for row in heldout), "heldout holds no answerable question"
    assert any(not row["answerable"] for row in heldout), "heldout holds no unanswerable question"
    # Both parts cover every type, so a figure per type can be read on heldout alone.
    for split in SPLITS:
        missing = {row["type"] for row in rows} - {row["type"] for row in rows if row.get("split") == split}
        assert not missing, f"types with no {split} item: {sorted(missing)}"


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
