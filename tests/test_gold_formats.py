"""The everyday-formats gold set (eval/formats/): every answer sits in one file, found as the loader reads it.

Reads the committed corpus with the ingest loader (real Tesseract for the scanned PDF and the image).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rag.evaluation import GoldItem, load_gold, load_thresholds
from rag.evaluation.scoring import contains_answer, find_evidence
from rag.loaders import load_corpus
from rag.types import Document

FORMATS = Path(__file__).resolve().parents[1] / "eval" / "formats"
# The places an answer can sit that the set exists to cover (issue 16), and the file type each is read from.
PLACES = {
    "docx_table": ".docx",
    "slide": ".pptx",
    "slide_notes": ".pptx",
    "scanned_pdf": ".pdf",
    "image": ".png",
    "csv_row": ".csv",
    "odt": ".odt",
}


@pytest.fixture(scope="module")
def gold() -> list[GoldItem]:
    return load_gold(FORMATS / "gold.jsonl")


@pytest.fixture(scope="module")
def docs() -> dict[str, Document]:
    found, warnings = load_corpus(FORMATS / "corpus")
    assert not warnings
    return {doc.id: doc for doc in found}


@pytest.fixture(scope="module")
def texts(docs: dict[str, Document]) -> dict[str, str]:
    return {doc_id: doc.text for doc_id, doc in docs.items()}


def test_every_place_is_asked_about_and_unanswerables_have_no_answer(gold: list[GoldItem]) -> None:
    types = Counter(item.type for item in gold)
    assert set(PLACES) <= set(types) and types["docx_table"] >= 2 and 2 <= types["unanswerable"] <= 3, types
    assert set(types) <= {*PLACES, "unanswerable"}, types
    for item in gold:
        assert item.answerable == (item.type != "unanswerable"), item.id
        if item.answerable:
            assert item.doc_id is not None and item.doc_id.endswith(PLACES[item.type]), item.id
        else:
            assert not item.answers and not item.evidence and item.doc_id is None, item.id


def test_each_evidence_is_in_its_file_only_and_holds_an_answer(gold: list[GoldItem], texts: dict[str, str]) -> None:
    assert {item.doc_id for item in gold if item.doc_id} == set(texts), "each file is asked about"
    for item in gold:
        if not item.answerable:
            continue
        holders = [doc_id for doc_id, text in texts.items() if find_evidence(text, item.evidence)]
        assert holders == [item.doc_id], (item.id, holders)
        assert any(contains_answer(item.evidence, answer) for answer in item.answers), item.id


def test_scanned_files_are_read_by_ocr_on_every_page(docs: dict[str, Document]) -> None:
    for name in ("wall-inspection.pdf", "parking-permit.png"):
        doc = docs[name]
        assert doc.scanned_pages == frozenset(range(1, len(doc.page_starts) + 1)), name


def test_thresholds_load() -> None:
    thresholds = load_thresholds(FORMATS / "thresholds.json")
    assert {"answer_accuracy", "citation_precision", "recall@k"} <= set(thresholds.min)
