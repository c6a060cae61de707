"""Chunking stage: ``Document`` -> passages that fit the embedder.

LangChain's recursive splitter picks the cut points (paragraphs, then lines,
then sentence ends, then spaces) and does the merging with overlap; lengths are
measured in the embedder's own tokens so no passage is silently truncated by
the model.

Offsets are exact by construction, not found by searching: the splitter's
``split_text`` returns bare strings, and in repeated text (boilerplate
sentences, runs of "0 0 0") a search can pick the wrong copy and leave a gap.
So each piece carries its document offset through LangChain's own merge step
(``_OffsetSplitter``), and ``doc.text[start:end] == text`` is checked anyway.
A last pass re-splits any passage whose real token count still exceeds the
limit: the splitter adds piece lengths, which is only an estimate for word pieces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from langchain_text_splitters import RecursiveCharacterTextSplitter

from rag.errors import InputError
from rag.formats import is_slides
from rag.types import Chunk, Document

# Sentence ends keep their punctuation (keep_separator="end"), so a passage
# never starts with ". ".
SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", " ", ""]


def chunk_document(
    doc: Document,
    count_tokens: Callable[[str], int],
    chunk_tokens: int,
    overlap_tokens: int,
) -> list[Chunk]:
    """Split ``doc`` into passages of at most ``chunk_tokens`` tokens.

    ``doc.text[c.start:c.end] == c.text`` holds for every chunk; ids are
    ``"<doc id>#<first 8 hex of the doc hash>-<n>"``, so they are stable for an
    unchanged document and new for a changed one.

    >>> doc = Document("a.txt", "a.txt", "One two three.\\n\\nFour five six.", "0123456789abcdef")
    >>> [(c.id, c.text, c.start) for c in chunk_document(doc, lambda s: len(s.split()), 4, 0)]
    [('a.txt#01234567-0', 'One two three.', 0), ('a.txt#01234567-1', 'Four five six.', 16)]
    """
    if chunk_tokens < 1:
        raise InputError(f"chunk_tokens must be positive, got {chunk_tokens}.")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise InputError(
            f"Chunk overlap ({overlap_tokens}) must be smaller than the chunk size ({chunk_tokens}): "
            "lower RAG_CHUNK_OVERLAP or raise RAG_CHUNK_TOKENS."
        )
    splitter = _OffsetSplitter(
        separators=SEPARATORS,
        keep_separator="end",
        chunk_size=chunk_tokens,
        chunk_overlap=overlap_tokens,
        length_function=count_tokens,
        strip_whitespace=True,
    )
    # A slide stands alone (its bullets belong to it), so a passage never spans two slides and
    # its slide number holds for every word; a PDF's page break falls mid-paragraph, so pages merge.
    if is_slides(doc.id) and doc.page_starts:
        regions = list(zip(doc.page_starts, [*doc.page_starts[1:], len(doc.text)], strict=True))
    else:
        regions = [(0, len(doc.text))]
    spans: list[tuple[int, int]] = []
    for first, last in regions:
        region: list[tuple[int, int]] = []
        for start, end in splitter.split_spans(doc.text[first:last]):
            region.extend(_enforce_limit(doc.text, first + start, first + end, count_tokens, chunk_tokens))
        spans.extend(_absorb_fragments(doc.text, _drop_contained(region), count_tokens, chunk_tokens))

    prefix = f"{doc.id}#{doc.sha256[:8]}-"
    return [
        Chunk(
            id=f"{prefix}{i}",
            doc_id=doc.id,
            text=doc.text[start:end],
            start=start,
            end=end,
            page=doc.page_at(start),
        )
        for i, (start, end) in enumerate(spans)
    ]


class _Piece(str):
    """A piece of the document that remembers where it starts."""

    start: int
    end: int


def _piece(text: str, start: int) -> _Piece:
    p = _Piece(text)
    p.start, p.end = start, start + len(text)
    return p


def split_keeping_end(text: str, separator: str) -> list[str]:
    """Split after each ``separator`` (kept at the piece's end); the pieces concatenate back to ``text``.

    >>> split_keeping_end("a. b. c", ". ")
    ['a. ', 'b. ', 'c']
    """
    if not separator:
        return list(text)
    parts = re.split(f"({re.escape(separator)})", text)
    pieces = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)] + [parts[-1]]
    return [p for p in pieces if p]


class _OffsetSplitter(RecursiveCharacterTextSplitter):
    """LangChain's recursive splitter whose pieces carry their offsets in the document.

    ``_split_at`` mirrors ``RecursiveCharacterTextSplitter._split_text``
    (langchain-text-splitters 1.1) but builds ``_Piece``s; the merging with
    overlap is LangChain's ``_merge_splits`` unchanged, and ``_join_docs`` turns
    each window of consecutive pieces into a located, stripped passage.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        count = self._length_function
        # Pieces are str subclasses; hand the tokenizer a plain str.
        self._length_function = lambda s: count(str.__str__(s))

    def split_spans(self, text: str) -> list[tuple[int, int]]:
        spans = [(p.start, p.end) for p in self._split_at(text, 0, self._separators)]
        for start, end in spans:
            # Cheap guard on the invariant everything downstream relies on.
            if not (0 <= start < end <= len(text)) or text[start:end] != text[start:end].strip():
                raise AssertionError(f"bad span ({start}, {end})")
        return spans

    def _split_at(self, text: str, base: int, separators: list[str]) -> list[_Piece]:
        separator, rest = separators[-1], []
        for i, candidate in enumerate(separators):
            if not candidate:
                separator = candidate
                break
            if candidate in text:
                separator, rest = candidate, separators[i + 1 :]
                break
        splits: list[_Piece] = []
        offset = base
        for s in split_keeping_end(text, separator):
            splits.append(_piece(s, offset))
            offset += len(s)

        out: list[_Piece] = []
        good: list[_Piece] = []
        for s in splits:
            if self._length_function(s) < self._chunk_size:
                good.append(s)
                continue
            if good:
                out.extend(self._merged(good))
                good = []
            if rest:
                out.extend(self._split_at(str.__str__(s), s.start, rest))
            else:
                joined = self._join_docs([s], "")
                if joined is not None:
                    out.append(joined)  # type: ignore[arg-type]
        if good:
            out.extend(self._merged(good))
        return out

    def _merged(self, good: list[_Piece]) -> list[_Piece]:
        # The pieces concatenate exactly (separators stay on the pieces), hence "".
        return self._merge_splits(good, "")  # type: ignore[return-value]

    def _join_docs(self, docs: list[str], separator: str) -> str | None:
        pieces: list[_Piece] = docs  # type: ignore[assignment]
        text = "".join(str.__str__(p) for p in pieces)
        stripped = text.strip()
        if not stripped:
            return None
        lead = len(text) - len(text.lstrip())
        return _piece(stripped, pieces[0].start + lead)


def _drop_contained(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sort spans and drop any that lies inside another (it would only repeat text).

    >>> _drop_contained([(5, 9), (0, 6), (5, 7), (6, 9)])
    [(0, 6), (5, 9)]
    """
    out: list[tuple[int, int]] = []
    for start, end in sorted(set(spans), key=lambda se: (se[0], -se[1])):
        if out and end <= out[-1][1]:
            continue
        out.append((start, end))
    return out


def _absorb_fragments(
    text: str, spans: list[tuple[int, int]], count_tokens: Callable[[str], int], limit: int
) -> list[tuple[int, int]]:
    """Join a tiny passage (a heading, a one-line paragraph) onto a neighbour when the result still fits.

    The splitter flushes its buffer before a long paragraph, which can leave a
    heading alone; as its own passage it would match questions by its few words
    yet carry no answer. Forward first, because a heading belongs to what follows.
    """
    small = max(1, limit // 4)
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(spans):
        start, end = spans[i]
        if count_tokens(text[start:end]) < small:
            if i + 1 < len(spans):
                nxt_end = spans[i + 1][1]
                if count_tokens(text[start:nxt_end]) <= limit:
                    spans[i + 1] = (start, nxt_end)
                    i += 1
                    continue
            if out:
                prev_start, prev_end = out[-1]
                if count_tokens(text[prev_start:end]) <= limit:
                    out[-1] = (prev_start, max(prev_end, end))
                    i += 1
                    continue
        out.append((start, end))
        i += 1
    return out


def _enforce_limit(
    text: str, start: int, end: int, count_tokens: Callable[[str], int], limit: int
) -> list[tuple[int, int]]:
    """Split ``text[start:end]`` until every part has at most ``limit`` tokens.

    Usually returns the span unchanged (one token count). Otherwise it keeps the
    longest prefix that fits, found by binary search and preferably cut at
    whitespace, and repeats on the rest.
    """
    out: list[tuple[int, int]] = []
    while start < end:
        if count_tokens(text[start:end]) <= limit:
            out.append((start, end))
            break
        lo, hi = start + 1, end - 1  # the longest fitting end lies in [lo, hi]
        best = start + 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if count_tokens(text[start:mid]) <= limit:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        cut = best
        space = text.rfind(" ", start + 1, best)
        newline = text.rfind("\n", start + 1, best)
        soft = max(space, newline)
        if soft > start and text[start:soft].strip():
            cut = soft
        piece_end = cut
        while piece_end > start and text[piece_end - 1].isspace():
            piece_end -= 1
        out.append((start, piece_end))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    return out
