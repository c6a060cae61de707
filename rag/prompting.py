"""Prompt construction. Short on purpose: on a CPU, prompt processing dominates latency.

The system prompt is identical for every question, so llama.cpp's prefix cache
reuses its evaluated tokens from one question to the next.
"""

from __future__ import annotations

from collections.abc import Sequence

from rag.generation import Message
from rag.types import Hit, Turn

NOT_FOUND = "NOT FOUND"

ANSWER_SYSTEM = (
    "Answer the question using only the numbered passages. Reply with one short sentence "
    "that answers it directly and ends with the number of the passage it comes from in square brackets. "
    "Copy names, numbers and dates exactly as written. "
    f"If the passages do not state the answer, reply {NOT_FOUND}."
)

# Two worked examples after the system message: one answer, one NOT FOUND. Told only in
# words, the 1.5B replied with a bare "[1]" to most questions; shown, it answers in a few
# words with a marker. They sit in the fixed prompt prefix, so llama.cpp reads them once
# and reuses them for every question (see rag.generation_llama). Each shows the
# shape of every real prompt: one message with the passage, one with the question.
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    (
        "[1] Its steel arch, designed by Ralph Freeman, spans 503 metres and opened in March 1932.",
        "How long is the arch of the bridge?",
        "The arch spans 503 metres [1].",
    ),
    (
        "[1] The bridge opened in March 1932 after eight years of work by 1,400 men.",
        "How much did the bridge cost to build?",
        NOT_FOUND,
    ),
)

REWRITE_SYSTEM = (
    "Rewrite the user's last question as one standalone question that can be understood "
    "without the conversation. Keep names, dates and numbers. Output only the question."
)


def passage_block(hits: Sequence[Hit]) -> str:
    """Number the passages from 1, with document names when they come from several documents.

    >>> from rag.types import Chunk
    >>> a, b = Chunk("a#0", "a.txt", "Text one.", 0, 9), Chunk("b#0", "b.md", "Two.", 0, 4)
    >>> print(passage_block([Hit(a, 1.0)]))
    [1] Text one.
    >>> print(passage_block([Hit(a, 1.0), Hit(b, 0.5)]))
    [1] (a.txt) Text one.
    <BLANKLINE>
    [2] (b.md) Two.
    """
    # Names cost prompt tokens (~12 each at ~25 ms a token on 2 cores) and tell the model
    # nothing when every passage comes from the same document, so they appear only when mixed.
    named = len({hit.chunk.doc_id for hit in hits}) > 1
    lines = []
    for n, hit in enumerate(hits, 1):
        text = " ".join(hit.chunk.text.split())
        lines.append(f"[{n}] ({hit.chunk.doc_id}) {text}" if named else f"[{n}] {text}")
    return "\n\n".join(lines)


def passages_message(hits: Sequence[Hit]) -> Message:
    """The message that hands the model its passages (its state is kept apart from the question's).

    >>> from rag.types import Chunk
    >>> print(passages_message([Hit(Chunk("a#0", "a.txt", "Text one.", 0, 9), 1.0)])["content"])
    Passage:
    [1] Text one.
    """
    label = "Passage" if len(hits) == 1 else "Passages"
    return {"role": "user", "content": f"{label}:\n{passage_block(hits)}"}


def question_message(question: str) -> Message:
    return {"role": "user", "content": f"Question: {question}"}


def answer_prefix() -> list[Message]:
    """The fixed start of every answer prompt: the system message and the worked examples."""
    shots: list[Message] = []
    for passage, q, a in EXAMPLES:
        shots += [
            {"role": "user", "content": f"Passage:\n{passage}"},
            question_message(q),
            {"role": "assistant", "content": a},
        ]
    return [{"role": "system", "content": ANSWER_SYSTEM}, *shots]


def reading_messages(hits: Sequence[Hit]) -> list[Message]:
    """The fixed prefix and the passages: the part of a prompt that does not depend on the question.

    Its state is what ``Generator.keep_state`` keeps, so the message boundary (and
    nothing of the question) must come right after the passages.
    """
    return [*answer_prefix(), passages_message(hits)]


def answer_messages(question: str, hits: Sequence[Hit]) -> list[Message]:
    """The fixed prefix, this question's passages, then the question.

    >>> [m["role"] for m in answer_messages("Q?", [])]
    ['system', 'user', 'user', 'assistant', 'user', 'user', 'assistant', 'user', 'user']
    """
    return [*reading_messages(hits), question_message(question)]


def rewrite_prefix() -> list[Message]:
    """The fixed start of every rewrite prompt (kept in the KV cache like ``answer_prefix``)."""
    return [{"role": "system", "content": REWRITE_SYSTEM}]


def rewrite_messages(question: str, history: Sequence[Turn], max_turns: int = 6) -> list[Message]:
    convo = "\n".join(
        f"{'User' if t.role == 'user' else 'Assistant'}: {' '.join(t.content.split())}" for t in history[-max_turns:]
    )
    user = f"Conversation:\n{convo}\n\nLast question: {question}\n\nStandalone question:"
    return [*rewrite_prefix(), {"role": "user", "content": user}]
