"""Decision stage: answer from the best passage, or say the documents do not say.

The signal is the model's own: its probability of replying NOT FOUND on each
passage it read alone with the question (``rag.reading``). The question is
answered from the passage with the lowest such probability when that is under
``RAG_REFUSE_AT``, a bar calibrated on the gold set's tuning part and reported on
its held-out part (see README and eval/README.md).

The confidence an answer carries is ``1 - P(NOT FOUND)`` on its passage.
"""

from __future__ import annotations

from dataclasses import dataclass

from rag.reading import PassageRead, Reading


@dataclass(frozen=True)
class Decision:
    read: PassageRead | None  # the passage to answer from; None = refuse
    confidence: float  # the model's P(the passage holds an answer)
    reason: str  # why it refused ("" when it answers)


def decide(reading: Reading, refuse_at: float) -> Decision:
    best = reading.best
    if best is None:
        return Decision(None, 0.0, "no passage was read")
    confidence = round(1.0 - best.p_not_found, 4)
    if best.p_not_found >= refuse_at:
        why = (
            f"the model finds no answer in any of the {len(reading.reads)} passages it read "
            f"(lowest p(NOT FOUND)={best.p_not_found:.2f} >= {refuse_at})"
        )
        return Decision(None, confidence, why)
    return Decision(best, confidence, "")
