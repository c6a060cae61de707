"""``POST /ask`` (a cited answer, as JSON or Server-Sent Events) and ``POST /search``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.answering import ClosingStreamingResponse, collect, generate, sse_events
from api.deps import ERROR_RESPONSES, GateDep, PipelineDep, StateDep, check_question, client_gone, wants_stream
from api.schemas import AnswerOut, AskRequest, SearchRequest, SearchResponse, answer_json, hit_out
from rag.types import Turn

router = APIRouter()


@router.post(
    "/ask",
    summary="Answer a question with verified citations (JSON, or Server-Sent Events when streaming).",
    description="With `stream: true` or `Accept: text/event-stream` the reply is SSE: `token` events "
    '(`{"text": ...}`), one `answer` event (the answer object), then `done`; a failure sends '
    '`error` (`{"code", "message"}`) then `done`. 503 with Retry-After when the model queue is full '
    "or the model stays busy for RAG_QUEUE_TIMEOUT_S (streams too: the stream starts once the model is ours).",
    responses={200: {"model": AnswerOut}, **ERROR_RESPONSES},
)
async def ask(body: AskRequest, request: Request, pipeline: PipelineDep, gate: GateDep, state: StateDep) -> Response:
    check_question(body.question, state.settings)
    history = tuple(Turn(role=t.role, content=t.content) for t in body.history)
    streaming = wants_stream(body.stream, request)
    if streaming:
        # A stream's status goes out before the answer starts: a model server that is down
        # must say so now, as a 503 + Retry-After, not as a 200 that ends in an error event.
        await run_in_threadpool(pipeline.check_ready)
    # Wait for the model before answering, so a stream that waits too long still gets a real
    # 503 + Retry-After rather than a 200 that ends in an error event.
    ticket = await gate.enter(request.is_disconnected)
    if ticket is None:
        return client_gone()
    if streaming:
        stream = generate(pipeline, ticket, body.question, history, body.k, state.metrics)
        return ClosingStreamingResponse(sse_events(stream), ticket.release, "text/event-stream")
    try:
        answer, _ = await collect(generate(pipeline, ticket, body.question, history, body.k, state.metrics, request))
    finally:
        ticket.release()
    if answer is None:
        return client_gone()
    return JSONResponse(answer_json(answer))


@router.post(
    "/search", summary="Hybrid (dense + keyword) search.", response_model=SearchResponse, responses=ERROR_RESPONSES
)
async def search(body: SearchRequest, pipeline: PipelineDep) -> SearchResponse:
    hits = await run_in_threadpool(pipeline.search, body.query, body.k)
    return SearchResponse(hits=[hit_out(h) for h in hits])
