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
    "You answer questions using only the numbered passages. "
    "Reply in one or two short sentences. "
    "End every sentence with the number of the passage it comes from, like [1]. "
    "Copy names, numbers and dates exactly as written in the passages. "
    f"If the passages do not contain the answer, reply only: {NOT_FOUND}"
)

REWRITE_SYSTEM = (
    "Rewrite the user's last question as one standalone question that can be understood "
    "without the conversation. Keep names, dates and numbers. Output only the question."
)


def passage_block(hits: Sequence[Hit]) -> str:
    """Number the passages from 1, each with its document name.

    >>> from rag.types import Chunk
    >>> print(passage_block([Hit(Chunk("a#0", "a.txt", "Text one.", 0, 9), 1.0)]))
    [1] (a.txt) Text one.
    """
    lines = []
    for n, hit in enumerate(hits, 1):
        text = " ".join(hit.chunk.text.split())
        lines.append(f"[{n}] ({hit.chunk.doc_id}) {text}")
    return "\n\n".join(lines)


def answer_messages(question: str, hits: Sequence[Hit]) -> list[Message]:
    user = f"Passages:\n{passage_block(hits)}\n\nQuestion: {question}"
    return [{"role": "system", "content": ANSWER_SYSTEM}, {"role": "user", "content": user}]


def rewrite_messages(question: str, history: Sequence[Turn], max_turns: int = 6) -> list[Message]:
    convo = "\n".join(
        f"{'User' if t.role == 'user' else 'Assistant'}: {' '.join(t.content.split())}" for t in history[-max_turns:]
    )
    user = f"Conversation:\n{convo}\n\nLast question: {question}\n\nStandalone question:"
    return [{"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": user}]
