"""Run one answer on the model without blocking the event loop, and stop it when the client leaves.

The pipeline's ``ask_stream`` is a plain (blocking) iterator. Each ``next`` runs
in a worker thread, so the event loop keeps serving /search and /health while
the model writes. Between pieces the coroutine is a normal await point: when
the client disconnects, Starlette cancels it there, and the ``finally`` closes
the pipeline's iterator (raising ``GeneratorExit`` inside it), which frees the
model after at most the piece being computed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api import openai_compat
from api.errors import rag_error_status
from api.gate import Ticket
from api.metrics import Metrics
from api.schemas import answer_json, citations_json
from rag.errors import RagError
from rag.types import Answer, QAPipeline, Turn

log = logging.getLogger(__name__)

_END = object()


def _close(it: Iterator[object]) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


async def generate(
    pipeline: QAPipeline,
    ticket: Ticket,
    question: str,
    history: Sequence[Turn],
    k: int | None,
    metrics: Metrics,
    request: Request | None = None,
) -> AsyncIterator[str | Answer]:
    """Yield the pipeline's pieces and final ``Answer`` while holding the model.

    The routes hand over a ticket that already holds the model
    (``AnswerGate.enter``); any other ticket waits for it here first.
    ``request`` is given for non-streamed answers only: then nobody else listens
    for the disconnect, so it is polled between pieces. (A streaming response
    listens itself and cancels this coroutine.)
    """
    try:
        if await ticket.wait(request.is_disconnected if request is not None else None):
            pieces = 0
            first = last = 0.0
            outcome = "cancelled"
            it: Iterator[str | Answer] = iter(await run_in_threadpool(pipeline.ask_stream, question, history, k))
            try:
                while True:
                    if request is not None and await request.is_disconnected():
                        break
                    item = await anyio.to_thread.run_sync(next, it, _END)
                    if item is _END:
                        break
                    if isinstance(item, Answer):
                        outcome = "abstained" if item.abstained else "answered"
                    else:
                        last = time.perf_counter()
                        first = first or last
                        pieces += 1
                    yield item  # type: ignore[misc]
            except Exception:
                outcome = "error"
                raise
            finally:
                # Shielded: when the client has gone this block runs inside a cancelled scope,
                # and the model must still be released.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_close, it)
                metrics.answers.labels(outcome).inc()
                metrics.tokens.inc(pieces)
                if pieces >= 2 and last > first:
                    metrics.tokens_per_second.set((pieces - 1) / (last - first))
    finally:
        ticket.release()


async def collect(stream: AsyncIterator[str | Answer]) -> tuple[Answer | None, int]:
    """The final answer (None if the client left first) and the number of streamed pieces."""
    answer = None
    pieces = 0
    async with aclosing(stream) as items:  # type: ignore[type-var]
        async for item in items:
            if isinstance(item, Answer):
                answer = item
            else:
                pieces += 1
    return answer, pieces


def _sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error_data(exc: Exception) -> dict[str, str]:
    if isinstance(exc, RagError):
        _, code, _ = rag_error_status(exc)
        return {"code": code, "message": str(exc)}
    log.error("internal error while streaming an answer", exc_info=exc)
    return {"code": "internal", "message": "Internal error; the server log has the details."}


async def sse_events(stream: AsyncIterator[str | Answer]) -> AsyncIterator[str]:
    """``token`` events, one ``answer`` event, then ``done`` (``error`` then ``done`` on failure)."""
    async with aclosing(stream) as items:  # type: ignore[type-var]
        try:
            async for item in items:
                if isinstance(item, Answer):
                    yield _sse("answer", answer_json(item))
                else:
                    yield _sse("token", {"text": item})
        except Exception as exc:
            yield _sse("error", _error_data(exc))
    yield _sse("done", {})


async def openai_events(stream: AsyncIterator[str | Answer]) -> AsyncIterator[str]:
    """``chat.completion.chunk`` lines; the final one carries ``citations``; then ``[DONE]``."""
    completion_id = openai_compat.new_completion_id()
    created = int(time.time())
    yield openai_compat.chunk(completion_id, created, {"role": "assistant", "content": ""})
    streamed = False
    async with aclosing(stream) as items:  # type: ignore[type-var]
        try:
            async for item in items:
                if isinstance(item, Answer):
                    if not streamed and item.text:
                        # Nothing was generated (e.g. an abstention decided before generation):
                        # the client must still see the answer text.
                        yield openai_compat.chunk(completion_id, created, {"content": item.text})
                    extra = {"citations": citations_json(item), "abstained": item.abstained}
                    yield openai_compat.chunk(completion_id, created, {}, "stop", extra)
                else:
                    streamed = True
                    yield openai_compat.chunk(completion_id, created, {"content": item})
        except Exception as exc:
            yield "data: " + json.dumps({"error": _error_data(exc)}, ensure_ascii=False) + "\n\n"
    yield "data: [DONE]\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body and runs ``on_close``, however it ends.

    Starlette may stop iterating the body (client gone) without closing the
    async generator; closing it here releases the model and the queue slot now
    rather than whenever the garbage collector gets to it.
    """

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], media_type: str) -> None:
        super().__init__(
            content,
            media_type=media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            self._on_close()
