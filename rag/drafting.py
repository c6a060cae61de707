"""Drafting stage: the model writes, and only verified sentences go out.

The model's raw tokens never reach a user: a sentence is sent once it is
complete and has passed verification against its passage (``rag.citations``),
so what streams is exactly what the final answer says, with its ``[n]`` markers.
The last item is the ``Verified`` result of the whole draft.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from rag.citations import Verified, verify
from rag.types import Hit

# A sentence is complete once its end mark (and any [n] markers after it, which belong to
# it) is followed by white space and the start of the next sentence.
_COMPLETE = re.compile(r"[.!?…](?:\s*\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\])*\s+(?=[^\s\[])")


@dataclass(frozen=True)
class Draft:
    """The model's whole reply and its verification."""

    raw: str
    verified: Verified


def complete_part(raw: str) -> str:
    """The leading part of ``raw`` made of complete sentences.

    >>> complete_part("Rason [1]. It fl")
    'Rason [1]. '
    >>> complete_part("Rason. [1] It")
    'Rason. [1] '
    >>> complete_part("Rason [1].")
    ''
    """
    end = 0
    for m in _COMPLETE.finditer(raw):
        end = m.end()
    return raw[:end]


def verified_stream(
    pieces: Iterable[str], question: str, passages: Sequence[Hit], *, min_support: float
) -> Iterator[str | Draft]:
    """Yield the verified answer text as each sentence completes, then one ``Draft``.

    Verification judges each sentence on its own, so the text of the sentences sent
    so far never changes when more arrive; the final text is checked to extend it.
    """
    raw = ""
    sent = ""
    checked_upto = ""
    for piece in pieces:
        raw += piece
        done = complete_part(raw)
        if done == checked_upto:
            continue
        checked_upto = done
        text = verify(done, question, passages, min_overlap=min_support).supported_text
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent) :]
            sent = text
    final = verify(raw, question, passages, min_overlap=min_support)
    text = final.supported_text
    if text.startswith(sent) and len(text) > len(sent):
        yield text[len(sent) :]
    yield Draft(raw, final)
