"""Reading stage: the model reads each candidate passage alone and says whether the answer is there.

For each passage, best first, the generator keeps (or restores) its state after
``fixed prefix + passage`` and then reads only the question; its probability of
replying NOT FOUND on that passage is the passage's score. Reading stops at the
first passage the model is confident about, so a warm question costs one
question's worth of tokens (~25, under a second on 2 cores) instead of every
passage's (~200 each). When no passage alone holds the answer, ``read_together``
reads the best sentences of all of them at once: a cold read, paid only then.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from rag.generation import Generator
from rag.prompting import NOT_FOUND, answer_messages, reading_messages
from rag.types import Hit


@dataclass(frozen=True)
class PassageRead:
    """One passage as the model read it alone with the question."""

    hit: Hit
    rank: int  # 1-based rank in retrieval
    p_not_found: float
    warm: bool  # its state was kept already: only the question was read
    seconds: float


@dataclass(frozen=True)
class Reading:
    """What the reading stage found: the passages read, in order, and the best one."""

    reads: tuple[PassageRead, ...]

    @property
    def best(self) -> PassageRead | None:
        """The passage the model is surest holds the answer (lowest P(NOT FOUND); the better rank on ties)."""
        return min(self.reads, key=lambda r: (r.p_not_found, r.rank), default=None)

    @property
    def warm(self) -> int:
        return sum(r.warm for r in self.reads)


def read_each(
    generator: Generator, question: str, passages: Sequence[Hit], *, stop_below: float, limit: int | None = None
) -> Reading | None:
    """Read ``passages`` one at a time (best first) until one scores P(NOT FOUND) under ``stop_below``.

    Returns None when the generator cannot tell P(NOT FOUND) (then the caller reads all
    passages at once, as a plain RAG prompt would).
    """
    reads: list[PassageRead] = []
    for rank, hit in enumerate(passages[:limit] if limit else passages, 1):
        t0 = time.perf_counter()
        warm = generator.keep_state(reading_messages([hit]))
        p = generator.start_probability(answer_messages(question, [hit]), NOT_FOUND)
        if p is None:
            return None
        reads.append(PassageRead(hit, rank, float(p), warm, time.perf_counter() - t0))
        if p < stop_below:
            break
    return Reading(tuple(reads))


def read_together(generator: Generator, question: str, passages: Sequence[Hit]) -> float | None:
    """P(NOT FOUND) with ``passages`` read at once: for a question whose answer no single passage holds.

    The passages are the question's own windows (``rag.focus.focus``), so this read is cold:
    its ~160 tokens cost ~4 s on 2 cores, paid only when reading each passage alone found nothing.
    """
    return generator.start_probability(answer_messages(question, passages), NOT_FOUND)
