"""The HTTP service: JSON API, Server-Sent-Event answers, OpenAI-compatible /v1, metrics and the chat page.

``create_app(settings)`` builds the app: middleware, error handlers, the
lifespan that starts loading the pipeline, and the routes (``api.routes``).
Run it with ``rag serve`` (or ``uvicorn --factory`` around ``create_app``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.deps import AppState, PipelineFactory, default_factory
from api.errors import install_error_handlers
from api.gate import AnswerGate
from api.metrics import Metrics, MetricsMiddleware
from api.routes import documents, openai, page, questions, status
from api.security import ApiKeyMiddleware, SecurityHeadersMiddleware
from rag.settings import Settings


def create_app(settings: Settings, pipeline_factory: PipelineFactory | None = None) -> FastAPI:
    metrics = Metrics()
    state = AppState(settings, pipeline_factory or default_factory, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.gate = AnswerGate(settings.queue_size, settings.queue_timeout_s)
        state.write_lock = asyncio.Lock()
        state.start_loading()
        yield
        state.close()

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

    for routes in (status, questions, documents, openai, page):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")
    return app
