"""Liveness, readiness, what the service holds, and its Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from api.deps import ERROR_RESPONSES, PipelineDep, StateDep
from api.errors import RETRY_AFTER_SECONDS, error_json, rag_error_status
from api.metrics import CONTENT_TYPE
from rag.errors import RagError

router = APIRouter()


@router.get("/health", summary="Liveness: the process answers.")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: 503 until the models and index are loaded, and while a model server is unreachable.",
    responses=ERROR_RESPONSES,
)
async def ready(state: StateDep) -> Response:
    if state.pipeline is not None:
        try:
            # Loaded, but a server it depends on (Milvus, the model's) may have gone away since. Cheap in
            # process; one short request to each server otherwise.
            await run_in_threadpool(state.pipeline.check_ready)
        except RagError as exc:
            status, code, headers = rag_error_status(exc)
            return error_json(status, code, f"The service is loaded but cannot answer: {exc}", headers)
        return JSONResponse({"status": "ready"})
    if state.load_error is not None:
        return error_json(503, "load_failed", f"The service could not load: {state.load_error}")
    return error_json(
        503,
        "not_ready",
        "The models and the index are still loading; retry in a few seconds.",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@router.get("/info", summary="Documents, chunks, model ids, index version.", responses=ERROR_RESPONSES)
async def info(pipeline: PipelineDep) -> dict[str, Any]:
    data = await run_in_threadpool(pipeline.info)
    encoded: dict[str, Any] = jsonable_encoder(data)
    return encoded


@router.get("/metrics", summary="Prometheus metrics.", response_class=Response)
async def metrics_route(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
