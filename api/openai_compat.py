"""Shapes of the OpenAI-compatible ``/v1`` endpoints.

Citations travel twice: as ``[n]`` markers in the assistant text (any client
shows them) and in an extra top-level field ``citations`` (the same objects as
``POST /ask`` returns) on the completion, and on the final chunk of a stream,
together with ``abstained``. Clients that do not know these fields ignore them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from api.schemas import MAX_HISTORY_TURNS, ChatMessage
from rag.types import Turn

MODEL_ID = "rag-local"


def split_messages(messages: Sequence[ChatMessage]) -> tuple[str, tuple[Turn, ...]]:
    """The last message is the question; earlier user/assistant messages are the history.

    System messages are dropped: the pipeline writes its own instructions.

    >>> q, h = split_messages([ChatMessage(role="system", content="be nice"),
    ...                        ChatMessage(role="user", content="Who?"),
    ...                        ChatMessage(role="assistant", content="Ada [1]."),
    ...                        ChatMessage(role="user", content="When was she born?")])
    >>> q, [t.role for t in h]
    ('When was she born?', ['user', 'assistant'])
    """
    if not messages or messages[-1].role != "user":
        raise ValueError("the last message must come from the user: it is the question to answer.")
    question = messages[-1].plain_text()
    if not question.strip():
        raise ValueError("the last user message is empty; put the question there.")
    history = tuple(Turn(role=m.role, content=m.plain_text()) for m in messages[:-1] if m.role in ("user", "assistant"))
    return question, history[-MAX_HISTORY_TURNS:]


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def completion(
    completion_id: str, text: str, citations: list[object], abstained: bool, tokens: int
) -> dict[str, object]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        # Prompt tokens are not counted by the pipeline, so only the completion side is reported.
        "usage": {"completion_tokens": tokens},
        "citations": citations,
        "abstained": abstained,
    }


def chunk(
    completion_id: str,
    created: int,
    delta: dict[str, str],
    finish_reason: str | None = None,
    extra: dict[str, object] | None = None,
) -> str:
    """One ``data:`` line of a streamed completion."""
    body: dict[str, object] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if extra:
        body.update(extra)
    return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"


def models() -> dict[str, object]:
    return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "local"}]}
