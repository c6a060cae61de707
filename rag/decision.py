"""Decision stage: which passages to answer from, or say the documents do not say.

The signal is the model's own: its probability of replying NOT FOUND. First on each
passage it read alone with the question (``rag.reading.read_each``): the question is
answered from the passage with the lowest such probability when that is under
``RAG_REFUSE_AT``. When no passage alone clears that bar, the answer may need several:
the best sentences of all of them are read at once (``rag.reading.read_together``) and
answered from when P(NOT FOUND) there is under ``RAG_REFUSE_TOGETHER_AT``. Both bars are
calibrated on the gold set's tuning part and reported on its held-out part (README).

The confidence an answer carries is ``calibrated(1 - P(NOT FOUND))`` on what it was
answered from: the share of such answers that were right on the tuning part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rag.reading import Reading
from rag.types import Hit

# Platt scaling of the model's P(answer), fit on the seed gold set's tuning part (62 answers
# given, 2026-12-04; logistic regression of "right" on logit(1 - P(NOT FOUND))). The raw value
# overstates: on that part, answers the model was >= 0.9 sure of were right 79% of the time,
# and over all answers it separates right from wrong only weakly (AUC 0.64 tune, 0.57 held out).
# Held out, the Brier score falls from 0.278 to 0.240 and the values span 0.44-0.76, so no
# answer claims the 0.9 it cannot keep. Refit when the answering path changes.
_PLATT_A, _PLATT_B = -0.151, 0.327


def calibrated(p_answer: float) -> float:
    """The probability that an answer given with the model's ``p_answer`` is right.

    >>> [calibrated(p) for p in (0.5, 0.9, 0.99)]
    [0.4623, 0.6382, 0.7944]
    """
    p = min(max(p_answer, 1e-4), 1 - 1e-4)
    z = _PLATT_A + _PLATT_B * math.log(p / (1 - p))
    return round(1.0 / (1.0 + math.exp(-z)), 4)


@dataclass(frozen=True)
class Decision:
    passages: tuple[Hit, ...]  # what to answer from; () = refuse
    confidence: float  # the model's P(these passages hold an answer)
    reason: str  # why it refused ("" when it answers)

    @property
    def refused(self) -> bool:
        return not self.passages


def decide(reading: Reading, refuse_at: float) -> Decision:
    best = reading.best
    if best is None:
        return Decision((), 0.0, "no passage was read")
    confidence = round(1.0 - best.p_not_found, 4)
    if best.p_not_found >= refuse_at:
        why = (
            f"the model finds no answer in any of the {len(reading.reads)} passages it read "
            f"(lowest p(NOT FOUND)={best.p_not_found:.2f} >= {refuse_at})"
        )
        return Decision((), confidence, why)
    return Decision((best.hit,), confidence, "")


def decide_together(alone: Decision, together: Sequence[Hit], p_not_found: float | None, refuse_at: float) -> Decision:
    """The second look, after ``alone`` refused: answer from ``together`` when the model finds the answer there."""
    if p_not_found is None:
        return alone
    confidence = round(1.0 - p_not_found, 4)
    if p_not_found >= refuse_at:
        why = f"{alone.reason}, nor in the {len(together)} read together (p={p_not_found:.2f} >= {refuse_at})"
        return Decision((), max(confidence, alone.confidence), why)
    return Decision(tuple(together), confidence, "")
