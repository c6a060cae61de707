"""The HTTP service: JSON API, Server-Sent-Event answers, OpenAI-compatible /v1, metrics and the chat page.

``create_app(settings)`` builds the app; the pipeline (models + index) loads
once, in a background thread started by the lifespan, so ``/health`` answers
at once and ``/ready`` says 503 until the models are in memory. Routes reach
the pipeline through a dependency; tests pass their own ``pipeline_factory``.

Run it with ``rag serve`` (or ``uvicorn --factory`` around ``create_app``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api import openai_compat
from api.answering import ClosingStreamingResponse, collect, generate, openai_events, sse_events
from api.errors import RETRY_AFTER_SECONDS, ApiError, NotReadyError, error_json, install_error_handlers
from api.gate import AnswerGate
from api.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from api.schemas import (
    AnswerOut,
    AskRequest,
    ChatCompletionRequest,
    DeletedOut,
    DocInfoOut,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from api.security import (
    SUPPORTED_SUFFIXES,
    ApiKeyMiddleware,
    SecurityHeadersMiddleware,
    is_supported,
    safe_filename,
)
from rag.cli import answer_to_dict
from rag.errors import RagError
from rag.settings import Settings
from rag.types import Answer, DocInfo, Hit, Turn

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Multipart framing around the file (boundaries, part headers) on top of the file itself.
_MULTIPART_SLACK = 64 * 1024


class QAPipeline(Protocol):
    """What the HTTP layer needs from ``rag.pipeline.Pipeline`` (kept structural so fakes fit)."""

    def search(self, query: str, k: int | None = None) -> list[Hit]: ...

    def ask_stream(
        self, question: str, history: Sequence[Turn] = (), k: int | None = None
    ) -> Iterator[str | Answer]: ...

    def documents(self) -> list[DocInfo]: ...

    def add_document(self, filename: str, data: bytes) -> DocInfo: ...

    def delete_document(self, doc_id: str) -> None: ...

    def info(self) -> dict[str, object]: ...


PipelineFactory = Callable[[Settings], QAPipeline]


def _default_factory(settings: Settings) -> QAPipeline:
    # Imported here: importing the API must not pull in torch, let alone load a model.
    from rag.pipeline import build_pipeline

    return build_pipeline(settings)


class AppState:
    """Everything one app instance owns: settings, the pipeline once loaded, the gate, the metrics."""

    def __init__(self, settings: Settings, factory: PipelineFactory, metrics: Metrics) -> None:
        self.settings = settings
        self.factory = factory
        self.metrics = metrics
        self.pipeline: QAPipeline | None = None
        self.load_error: str | None = None
        self.loaded = threading.Event()  # set when loading ended, successfully or not
        self._loader: threading.Thread | None = None
        # Created in the lifespan, inside the serving event loop (asyncio primitives bind to a loop).
        self.gate: AnswerGate | None = None
        self.write_lock: asyncio.Lock | None = None

    def start_loading(self) -> None:
        if self._loader is None:
            self._loader = threading.Thread(target=self._load, name="rag-pipeline-loader", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            pipeline = self.factory(self.settings)
        except Exception as exc:
            if isinstance(exc, RagError):  # a message written for the user: no traceback needed
                log.error("loading the pipeline failed: %s", exc)
            else:
                log.exception("loading the pipeline failed")
            self.load_error = str(exc) or type(exc).__name__
        else:
            self.pipeline = pipeline
            self.metrics.ready.set(1)
            log.info("pipeline ready in %.1f s", time.perf_counter() - started)
        finally:
            self.loaded.set()

    def wait_ready(self, timeout: float) -> bool:
        """Block until loading ended; True when the pipeline is usable (for tests and scripts)."""
        return self.loaded.wait(timeout) and self.pipeline is not None


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.rag
    return state


def get_pipeline(state: Annotated[AppState, Depends(get_state)]) -> QAPipeline:
    if state.pipeline is not None:
        return state.pipeline
    if state.load_error is not None:
        raise ApiError(503, "load_failed", f"The service could not load its models or index: {state.load_error}")
    raise NotReadyError("The models and the index are still loading; retry in a few seconds.")


def get_gate(state: Annotated[AppState, Depends(get_state)]) -> AnswerGate:
    if state.gate is None:  # only without a lifespan (a TestClient used outside `with`)
        raise NotReadyError("The service has not started; retry in a few seconds.")
    return state.gate


StateDep = Annotated[AppState, Depends(get_state)]
PipelineDep = Annotated[QAPipeline, Depends(get_pipeline)]
GateDep = Annotated[AnswerGate, Depends(get_gate)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)
}


def hit_to_dict(hit: Hit) -> dict[str, object]:
    return {
        "chunk_id": hit.chunk.id,
        "doc_id": hit.chunk.doc_id,
        "start": hit.chunk.start,
        "end": hit.chunk.end,
        "text": hit.chunk.text,
        "score": float(hit.score),
        "page": hit.chunk.page,
    }


def doc_to_dict(doc: DocInfo) -> dict[str, object]:
    return {"doc_id": doc.doc_id, "sha256": doc.sha256, "chunks": doc.chunks, "chars": doc.chars}


def _check_question(question: str, settings: Settings) -> None:
    if len(question) > settings.max_question_chars:
        raise ApiError(
            422,
            "invalid_request",
            f"question: at most {settings.max_question_chars} characters allowed "
            f"(got {len(question)}); shorten the question.",
        )


def _wants_stream(flag: bool, request: Request) -> bool:
    return flag or "text/event-stream" in request.headers.get("accept", "")


def _client_gone() -> Response:
    # 499 (nginx's "client closed request"): nobody reads it, but the metrics and logs tell the story.
    return Response(status_code=499)


def create_app(settings: Settings, pipeline_factory: PipelineFactory | None = None) -> FastAPI:
    metrics = Metrics()
    state = AppState(settings, pipeline_factory or _default_factory, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.gate = AnswerGate(settings.queue_size, settings.queue_timeout_s)
        state.write_lock = asyncio.Lock()
        state.start_loading()
        yield

    app = FastAPI(
        title="rag: local question answering",
        version="0.1.0",
        description="Answers questions from your documents with verified citations. Errors are "
        '`{"error": {"code", "message"}}`.',
        lifespan=lifespan,
        # The interactive docs pages load their scripts from a CDN, which an offline machine cannot
        # reach; /openapi.json stays available.
        docs_url=None,
        redoc_url=None,
    )
    app.state.rag = state
    metrics.track(
        queue_depth=lambda: state.gate.waiting if state.gate else 0,
        in_progress=lambda: state.gate.running if state.gate else 0,
    )
    install_error_handlers(app)
    # Added innermost first: metrics see every response, including a 401 from the key check.
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    # --- liveness, readiness, info, metrics -------------------------------------------------

    @app.get("/health", summary="Liveness: the process answers.")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 503 until the models and index are loaded.", responses=_ERRORS)
    async def ready() -> Response:
        if state.pipeline is not None:
            return JSONResponse({"status": "ready"})
        if state.load_error is not None:
            return error_json(503, "load_failed", f"The service could not load: {state.load_error}")
        return error_json(
            503,
            "not_ready",
            "The models and the index are still loading; retry in a few seconds.",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @app.get("/info", summary="Documents, chunks, model ids, index version.", responses=_ERRORS)
    async def info(pipeline: PipelineDep) -> dict[str, Any]:
        data = await run_in_threadpool(pipeline.info)
        encoded: dict[str, Any] = jsonable_encoder(data)
        return encoded

    @app.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # --- questions -----------------------------------------------------------------------------

    @app.post(
        "/ask",
        summary="Answer a question with verified citations (JSON, or Server-Sent Events when streaming).",
        description="With `stream: true` or `Accept: text/event-stream` the reply is SSE: `token` events "
        '(`{"text": ...}`), one `answer` event (the answer object), then `done`; a failure sends '
        '`error` (`{"code", "message"}`) then `done`. 503 with Retry-After when the model queue is full '
        "or the model stays busy for RAG_QUEUE_TIMEOUT_S (streams too: the stream starts once the model is ours).",
        responses={200: {"model": AnswerOut}, **_ERRORS},
    )
    async def ask(body: AskRequest, request: Request, pipeline: PipelineDep, gate: GateDep) -> Response:
        _check_question(body.question, settings)
        history = tuple(Turn(role=t.role, content=t.content) for t in body.history)
        # Wait for the model before answering, so a stream that waits too long still gets a real
        # 503 + Retry-After rather than a 200 that ends in an error event.
        ticket = await gate.enter(request.is_disconnected)
        if ticket is None:
            return _client_gone()
        if _wants_stream(body.stream, request):
            stream = generate(pipeline, ticket, body.question, history, body.k, metrics)
            return ClosingStreamingResponse(sse_events(stream), ticket.release, "text/event-stream")
        try:
            answer, _ = await collect(generate(pipeline, ticket, body.question, history, body.k, metrics, request))
        finally:
            ticket.release()
        if answer is None:
            return _client_gone()
        return JSONResponse(answer_to_dict(answer))

    @app.post("/search", summary="Hybrid (dense + keyword) search.", response_model=SearchResponse, responses=_ERRORS)
    async def search(body: SearchRequest, pipeline: PipelineDep) -> dict[str, Any]:
        hits = await run_in_threadpool(pipeline.search, body.query, body.k)
        return {"hits": [hit_to_dict(h) for h in hits]}

    # --- documents ----------------------------------------------------------------------------

    @app.get("/documents", summary="Indexed documents.", response_model=list[DocInfoOut], responses=_ERRORS)
    async def list_documents(pipeline: PipelineDep) -> list[dict[str, object]]:
        docs = await run_in_threadpool(pipeline.documents)
        return [doc_to_dict(d) for d in docs]

    @app.post(
        "/documents",
        status_code=201,
        summary=f"Upload a document ({', '.join(SUPPORTED_SUFFIXES)}); it is searchable when this returns.",
        response_model=DocInfoOut,
        responses={**_ERRORS, 507: {"model": ErrorResponse}},  # 507: the disk is full
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def upload_document(request: Request, pipeline: PipelineDep, app_state: StateDep) -> dict[str, object]:
        limit = settings.max_upload_bytes
        too_large = ApiError(
            413,
            "too_large",
            f"The file is larger than {limit:,} bytes (RAG_MAX_UPLOAD_BYTES); split it or raise the limit.",
        )
        # Refuse before reading the body when the client announces its size.
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
            raise too_large
        form = await request.form(max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    422,
                    "invalid_request",
                    "file: send the document as multipart/form-data in a field named 'file', with its file name "
                    '(filename="notes.txt").',
                )
            name = safe_filename(upload.filename)
            if not is_supported(name):
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"{name!r} is not a supported type; upload one of {', '.join(SUPPORTED_SUFFIXES)}.",
                )
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise too_large
        finally:
            await form.close()
        assert app_state.write_lock is not None
        async with app_state.write_lock:  # one index update at a time
            doc = await run_in_threadpool(pipeline.add_document, name, data)
        log.info("indexed upload %s (%d chunks)", doc.doc_id, doc.chunks)
        return doc_to_dict(doc)

    @app.delete(
        "/documents/{doc_id:path}",
        summary="Remove a document from the index.",
        response_model=DeletedOut,
        responses=_ERRORS,
    )
    async def delete_document(doc_id: str, pipeline: PipelineDep, app_state: StateDep) -> dict[str, str]:
        assert app_state.write_lock is not None
        async with app_state.write_lock:
            known = {d.doc_id for d in await run_in_threadpool(pipeline.documents)}
            if doc_id not in known:
                raise ApiError(404, "not_found", f"No document {doc_id!r}; GET /documents lists them.")
            await run_in_threadpool(pipeline.delete_document, doc_id)
        return {"deleted": doc_id}

    # --- OpenAI-compatible ----------------------------------------------------------------------

    @app.get("/v1/models", summary="OpenAI-compatible model list.")
    async def v1_models() -> dict[str, object]:
        return openai_compat.models()

    @app.post(
        "/v1/chat/completions",
        summary="OpenAI-compatible chat completion (the last user message is the question).",
        description="Citations are `[n]` markers in the text and an extra `citations` field (and "
        "`abstained`) on the completion, or on the final chunk when `stream: true`.",
        responses=_ERRORS,
    )
    async def v1_chat(body: ChatCompletionRequest, request: Request, pipeline: PipelineDep, gate: GateDep) -> Response:
        try:
            question, history = openai_compat.split_messages(body.messages)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", f"messages: {exc}") from None
        _check_question(question, settings)
        ticket = await gate.enter(request.is_disconnected)
        if ticket is None:
            return _client_gone()
        if body.stream:
            stream = generate(pipeline, ticket, question, history, body.k, metrics)
            return ClosingStreamingResponse(openai_events(stream), ticket.release, "text/event-stream")
        try:
            answer, pieces = await collect(generate(pipeline, ticket, question, history, body.k, metrics, request))
        finally:
            ticket.release()
        if answer is None:
            return _client_gone()
        citations = answer_to_dict(answer)["citations"]
        assert isinstance(citations, list)
        return JSONResponse(
            openai_compat.completion(
                openai_compat.new_completion_id(), answer.text, citations, answer.abstained, pieces
            )
        )

    # --- the chat page --------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
