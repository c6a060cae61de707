from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_document
from rag.errors import InputError
from rag.types import Chunk, Document

_WORD_OR_PUNCT = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> int:
    """Words and punctuation marks, like a word-piece tokenizer's pre-split."""
    return len(_WORD_OR_PUNCT.findall(text))


def pieces(text: str) -> int:
    """A sub-word counter: every 3 letters of a word cost a token (not additive across a split)."""
    return sum((len(w) + 2) // 3 for w in _WORD_OR_PUNCT.findall(text))


def make_doc(text: str, doc_id: str = "d.txt", page_starts: tuple[int, ...] = ()) -> Document:
    return Document(doc_id, doc_id, text, hashlib.sha256(text.encode()).hexdigest(), page_starts)


def check_invariants(doc: Document, chunks: list[Chunk], count: Callable[[str], int], limit: int) -> None:
    assert len({c.id for c in chunks}) == len(chunks)
    covered = bytearray(len(doc.text))
    prev_start = -1
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.text and c.text == c.text.strip()
        assert count(c.text) <= limit, (count(c.text), c.text)
        assert c.start > prev_start  # in reading order
        prev_start = c.start
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    missing = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
    assert not missing, f"uncovered text at {missing[:5]}: {doc.text[missing[0] : missing[0] + 20]!r}"


_texts = st.lists(
    st.one_of(
        st.sampled_from(["\n\n", "\n", ". ", "? ", "! ", " ", "  ", "\t", ","]),
        st.text(alphabet="abc", min_size=1, max_size=12),  # repetitive text stresses offset search
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30),
    ),
    min_size=0,
    max_size=120,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_texts, limit=st.integers(4, 40), overlap_frac=st.floats(0, 0.9), subword=st.booleans())
def test_offsets_coverage_and_limit_hold_for_any_text(
    text: str, limit: int, overlap_frac: float, subword: bool
) -> None:
    count = pieces if subword else words
    overlap = min(limit - 1, int(limit * overlap_frac))
    doc = make_doc(text)
    chunks = chunk_document(doc, count, limit, overlap)
    check_invariants(doc, chunks, count, limit)
    if not text.strip():
        assert chunks == []


def test_prose_splits_at_paragraphs_and_overlaps() -> None:
    sentences = [f"Sentence number {i} talks about topic {i % 7} in some detail." for i in range(60)]
    paragraphs = ["  ".join(sentences[i : i + 6]) for i in range(0, 60, 6)]
    text = "\n\n".join(paragraphs)
    doc = make_doc(text)
    chunks = chunk_document(doc, words, 40, 15)  # a sentence is 11 tokens: one fits in the overlap
    check_invariants(doc, chunks, words, 40)
    assert len(chunks) > 5
    # Chunks end at sentence ends, never mid-word.
    assert all(c.text.endswith(".") for c in chunks)
    # Long paragraphs are split with overlap; short ones merge without crossing into half sentences.
    overlapping = [a for a, b in itertools.pairwise(chunks) if b.start < a.end]
    assert overlapping


def test_ids_are_stable_and_change_with_the_content() -> None:
    text = "Alpha beta gamma.\n\nDelta epsilon zeta.\n\nEta theta iota."
    a = chunk_document(make_doc(text), words, 5, 0)
    again = chunk_document(make_doc(text), words, 5, 0)
    changed = chunk_document(make_doc(text + " Kappa."), words, 5, 0)
    assert [c.id for c in a] == [c.id for c in again]
    assert a[0].id.startswith("d.txt#") and a[0].id.endswith("-0")
    assert not {c.id for c in a} & {c.id for c in changed}


def test_pages_follow_the_chunk_start() -> None:
    page1 = "First page words here. " * 10
    text = page1.strip() + "\n\n" + ("Second page words here. " * 10).strip()
    doc = make_doc(text, "r.pdf", page_starts=(0, len(page1.strip()) + 2))
    chunks = chunk_document(doc, words, 20, 0)
    assert {c.page for c in chunks} == {1, 2}
    for c in chunks:
        assert c.page == (1 if c.start < doc.page_starts[1] else 2)
    assert all(c.page is None for c in chunk_document(make_doc(text), words, 20, 0))


def test_an_unbreakable_run_is_cut_to_the_limit() -> None:
    text = "x" * 500  # no separator at all: only the character fallback can cut it
    doc = make_doc(text)
    chunks = chunk_document(doc, pieces, 10, 0)
    check_invariants(doc, chunks, pieces, 10)
    assert len(chunks) >= 17


def test_a_lone_heading_joins_the_passage_after_it() -> None:
    intro = " ".join(f"intro{i}" for i in range(33)) + "."  # 34 tokens: full, the heading cannot join it
    section = " ".join(" ".join(f"s{j}w{i}" for i in range(9)) + "." for j in range(5))  # 50 tokens
    text = f"{intro}\n\nHeading\n\n{section}"
    doc = make_doc(text)
    chunks = chunk_document(doc, words, 34, 0)
    check_invariants(doc, chunks, words, 34)
    assert chunks[0].text == intro
    assert not any(c.text == "Heading" for c in chunks)
    assert chunks[1].text.startswith("Heading\n\ns0w0")


def test_overlap_must_be_smaller_than_the_chunk() -> None:
    with pytest.raises(InputError, match="overlap"):
        chunk_document(make_doc("text"), words, 16, 16)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 3000,
        "0 " * 1500,
        ("ab " * 300 + "\n") * 5,
        "Lorem ipsum dolor sit amet. " * 200,
        "Same line.\n" * 300,
    ],
    ids=["one-char-run", "zeros", "repeated-lines", "boilerplate", "same-line"],
)
@pytest.mark.parametrize("count", [words, pieces], ids=["words", "subwords"])
def test_repeated_text_keeps_exact_offsets_and_full_coverage(text: str, count: Callable[[str], int]) -> None:
    # Searching for each passage's text would find an earlier copy here; offsets must not depend on search.
    doc = make_doc(text)
    chunks = chunk_document(doc, count, 24, 8)
    check_invariants(doc, chunks, count, 24)
