"""The OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api import openai_compat
from api.answering import ClosingStreamingResponse, collect, generate, openai_events
from api.deps import ERROR_RESPONSES, GateDep, PipelineDep, StateDep, check_question, client_gone
from api.errors import ApiError
from api.schemas import ChatCompletionRequest, citations_json

router = APIRouter()


@router.get("/v1/models", summary="OpenAI-compatible model list.")
async def v1_models() -> dict[str, object]:
    return openai_compat.models()


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completion (the last user message is the question).",
    description="Citations are `[n]` markers in the text and an extra `citations` field (and "
    "`abstained`) on the completion, or on the final chunk when `stream: true`.",
    responses=ERROR_RESPONSES,
)
async def v1_chat(
    body: ChatCompletionRequest, request: Request, pipeline: PipelineDep, gate: GateDep, state: StateDep
) -> Response:
    try:
        question, history = openai_compat.split_messages(body.messages)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"messages: {exc}") from None
    check_question(question, state.settings)
    if body.stream:  # as /ask: a model server that is down is a 503 before the stream starts
        await run_in_threadpool(pipeline.check_ready)
    ticket = await gate.enter(request.is_disconnected)
    if ticket is None:
        return client_gone()
    if body.stream:
        stream = generate(pipeline, ticket, question, history, body.k, state.metrics)
        return ClosingStreamingResponse(openai_events(stream), ticket.release, "text/event-stream")
    try:
        answer, pieces = await collect(generate(pipeline, ticket, question, history, body.k, state.metrics, request))
    finally:
        ticket.release()
    if answer is None:
        return client_gone()
    return JSONResponse(
        openai_compat.completion(
            openai_compat.new_completion_id(), answer.text, citations_json(answer), answer.abstained, pieces
        )
    )
