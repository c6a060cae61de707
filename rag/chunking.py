"""Chunking stage: ``Document`` -> passages that fit the embedder.

LangChain's recursive splitter picks the cut points (paragraphs, then lines,
then sentence ends, then spaces); lengths are measured in the embedder's own
tokens so no passage is silently truncated by the model. The splitter returns
bare strings, so the exact character offsets are recovered here, and a final
pass re-splits any passage whose real token count still exceeds the limit (the
splitter adds piece lengths, which is only an estimate for word pieces).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable

from rag.errors import InputError
from rag.types import Chunk, Document

# Sentence ends keep their punctuation (keep_separator="end"), so a passage
# never starts with ". ".
SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", " ", ""]
_WHITESPACE = re.compile(r"\s+")
# Places tracked per passage when the text repeats itself (e.g. "0000..."); see _thin.
_MAX_CANDIDATES = 64


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
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(
        separators=SEPARATORS,
        keep_separator="end",
        chunk_size=chunk_tokens,
        chunk_overlap=overlap_tokens,
        length_function=count_tokens,
        strip_whitespace=True,
    )
    pieces = splitter.split_text(doc.text)
    spans: list[tuple[int, int]] = []
    for start, end in locate(doc.text, pieces):
        spans.extend(_enforce_limit(doc.text, start, end, count_tokens, chunk_tokens))
    spans = _drop_contained(spans)
    spans = _absorb_fragments(doc.text, spans, count_tokens, chunk_tokens)

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


def locate(text: str, pieces: list[str]) -> list[tuple[int, int]]:
    """Character spans of consecutive, possibly overlapping ``pieces`` of ``text``.

    The splitter's passages tile the text: each starts at or after the previous
    start and no later than the previous end plus the whitespace after it; the
    first starts at the first non-space character. Repeated text can offer
    several places that fit, and the nearest is not always right, so every
    fitting place is followed (a small dynamic programme) and one chain that
    reaches the end of the text is kept.

    >>> locate("ab ab ab", ["ab ab", "ab ab"])
    [(0, 5), (3, 8)]
    >>> locate("000000", ["0000", "0000", "0000"])
    [(0, 4), (1, 5), (2, 6)]
    """
    pieces = [p for p in pieces if p]
    if not pieces:
        return []
    first = len(text) - len(text.lstrip())
    start0 = first if text.startswith(pieces[0], first) else text.find(pieces[0])
    # layers[i] maps each feasible start of piece i to the start of piece i-1 it follows.
    layers: list[dict[int, int]] = [{start0: -1}]
    for i in range(1, len(pieces)):
        piece, prev_len = pieces[i], len(pieces[i - 1])
        prevs = sorted(layers[-1])
        windows = []  # (lowest, highest) start allowed after each previous start
        for prev in prevs:
            gap = _WHITESPACE.match(text, prev + prev_len)
            windows.append((prev + 1, gap.end() if gap else prev + prev_len))
        layer: dict[int, int] = {}
        for lo, hi in _merge_intervals(windows):
            q = text.find(piece, lo, hi + len(piece))
            while q >= 0:
                k = bisect.bisect_left(prevs, q) - 1  # the latest previous start before q
                while k >= 0 and not windows[k][0] <= q <= windows[k][1]:
                    k -= 1
                if k >= 0:
                    layer[q] = prevs[k]
                q = text.find(piece, q + 1, hi + len(piece))
        if not layer:
            # Not expected for splitter output; still keep text[start:end] == piece.
            base = prevs[0]
            q = text.find(piece, base)
            layer = {q if q >= 0 else text.find(piece): base}
        layers.append(_thin(layer))
    last_end = len(text.rstrip())
    final = layers[-1]
    pick = next((q for q in sorted(final) if q + len(pieces[-1]) == last_end), max(final))
    starts = [pick]
    for i in range(len(layers) - 1, 0, -1):
        starts.append(layers[i][starts[-1]])
    starts.reverse()
    return [(s, s + len(p)) for s, p in zip(starts, pieces, strict=True)]


def _merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of closed integer intervals, sorted.

    >>> _merge_intervals([(5, 8), (1, 3), (4, 4), (7, 9)])
    [(1, 9)]
    """
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _thin(layer: dict[int, int]) -> dict[int, int]:
    """Keep at most about ``_MAX_CANDIDATES`` starts, evenly spread from the first to the last.

    Only long runs of repeated text produce many candidates; there neighbouring
    starts lead to the same places next, so an even sample keeps the range
    reachable while bounding the work.
    """
    if len(layer) <= _MAX_CANDIDATES:
        return layer
    keys = sorted(layer)
    step = max(1, (keys[-1] - keys[0]) // (_MAX_CANDIDATES - 1))
    kept = [keys[0]]
    for q in keys[1:-1]:
        if q - kept[-1] >= step:
            kept.append(q)
    kept.append(keys[-1])
    return {q: layer[q] for q in kept}


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
