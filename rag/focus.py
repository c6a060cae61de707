"""Context focusing: keep only the sentences of each passage that bear on the question.

On a 2-core CPU the generator reads prompts at ~40 tokens/s (1.5B), so every
passage sentence costs ~25 ms before the first answer token. Retrieval works
best on ~160-token chunks; the model needs far less. This stage narrows each
retrieved chunk to a window of its best-matching sentences under a token
budget. Windows are exact substrings, so citations still carry exact offsets
(and point at the narrower text the model actually read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rag.citations import key_terms, sentence_spans, terms
from rag.injection import looks_like_instruction
from rag.types import Chunk, Hit


def _score(sentence: str, q_terms: set[str], q_keys: set[str]) -> float:
    shared = terms(sentence) & q_terms
    # Names and numbers from the question are the strongest evidence a sentence is the one.
    return sum(2.0 if t in q_keys else 1.0 for t in shared)


def focus(question: str, hits: Sequence[Hit], budget: int, count_tokens: Callable[[str], int]) -> list[Hit]:
    """Narrow each hit to its best sentences so that all windows fit in ``budget`` tokens (0 = no limit).

    Every passage first gets its best sentence (in rank order), then windows
    grow by neighbouring sentences, best passage first, while the budget lasts.
    A passage whose best sentence scores under half the best passage's is
    dropped (the top-ranked passage is always kept). Sentences that address the
    model (``rag.injection``) are walls: no window includes or crosses one, and a
    passage made only of them is dropped.
    """
    if not hits:
        return []
    unlimited = budget <= 0  # whole passages, but still without the sentences that address the model
    q_terms = terms(question)
    q_keys = key_terms(question) | {t for t in q_terms if t[0].isdigit()}
    plans: list[tuple[Hit, list[tuple[int, int]], list[float], int]] = []
    walls: list[set[int]] = []
    for hit in hits:
        spans = sentence_spans(hit.chunk.text)
        blocked = {i for i, (a, b) in enumerate(spans) if looks_like_instruction(hit.chunk.text[a:b])}
        if len(blocked) == len(spans):
            continue
        scores = [_score(hit.chunk.text[a:b], q_terms, q_keys) for a, b in spans]
        best = max((i for i in range(len(spans)) if i not in blocked), key=lambda i: (scores[i], -i))
        plans.append((hit, spans, scores, best))
        walls.append(blocked)
    top = max((plan[2][plan[3]] for plan in plans), default=0.0)
    kept = [r for r, plan in enumerate(plans) if unlimited or r == 0 or plan[2][plan[3]] >= max(top / 2, 0.5)]
    plans, walls = [plans[r] for r in kept], [walls[r] for r in kept]

    used = 0
    windows: dict[int, tuple[int, int]] = {}  # plan index -> (first, last) sentence index
    cost: dict[tuple[int, int], int] = {}

    def tokens(p: int, i: int) -> int:
        if (p, i) not in cost:
            a, b = plans[p][1][i]
            cost[(p, i)] = count_tokens(plans[p][0].chunk.text[a:b]) + 1
        return cost[(p, i)]

    for p, (_, _, _, best) in enumerate(plans):
        if unlimited or used + tokens(p, best) <= budget or p == 0:
            windows[p] = (best, best)
            used += tokens(p, best)
    grown = True
    while grown:
        grown = False
        for p in sorted(windows):
            first, last = windows[p]
            spans, scores = plans[p][1], plans[p][2]
            # Grow toward the more relevant neighbour first; the following sentence on ties
            # (it usually completes the thought the best sentence starts).
            options = [i for i in (last + 1, first - 1) if 0 <= i < len(spans) and i not in walls[p]]
            options.sort(key=lambda i: -scores[i])
            for i in options:
                if unlimited or used + tokens(p, i) <= budget:
                    windows[p] = (min(first, i), max(last, i))
                    used += tokens(p, i)
                    grown = True
                    break
    out = []
    for p in sorted(windows):
        hit, spans = plans[p][0], plans[p][1]
        first, last = windows[p]
        a, b = spans[first][0], spans[last][1]
        c = hit.chunk
        out.append(Hit(Chunk(c.id, c.doc_id, c.text[a:b], c.start + a, c.start + b, c.page), hit.score))
    return out


def readable(question: str, hits: Sequence[Hit]) -> list[Hit]:
    """Each hit whole, unless some of its sentences address the model (``rag.injection``).

    A passage without such sentences is returned as it is, the same for every question,
    so the model's state after reading it can be kept and reused (``rag.states``). One
    with them is narrowed to the run of sentences between them that best matches the
    question; one made only of them is dropped.
    """
    out: list[Hit] = []
    for hit in hits:
        spans = sentence_spans(hit.chunk.text)
        if not any(looks_like_instruction(hit.chunk.text[a:b]) for a, b in spans):
            out.append(hit)
        else:
            out.extend(focus(question, [hit], 0, lambda text: 0))
    return out
