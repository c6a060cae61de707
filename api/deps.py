"""What the routes share: the app's state, the dependencies that hand them the pipeline and the model gate,
and the small checks more than one route makes.

The pipeline (models + index) loads once, in a background thread the lifespan
starts, so ``/health`` answers at once and ``/ready`` says 503 until the models
are in memory. Routes reach it through ``PipelineDep``; tests pass their own
``pipeline_factory`` to ``create_app``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from api.errors import ApiError, NotReadyError
from api.gate import AnswerGate
from api.metrics import Metrics
from api.schemas import ErrorResponse
from rag.errors import RagError
from rag.settings import Settings
from rag.types import QAPipeline

log = logging.getLogger(__name__)

PipelineFactory = Callable[[Settings], QAPipeline]

#: The error statuses most routes can answer, documented with the one error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 415, 422, 503)
}


def default_factory(settings: Settings) -> QAPipeline:
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
        self.stop = threading.Event()  # set at shutdown: background work ends
        self._closing = threading.Lock()  # the loader may finish while the app shuts down: one of them closes
        self._closed = False

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
            with self._closing:
                late = self._closed
                if not late:
                    self.pipeline = pipeline
            if late:  # the app shut down while this loaded: nobody else will close it
                pipeline.close()
                return
            self.metrics.ready.set(1)
            log.info("pipeline ready in %.1f s", time.perf_counter() - started)
        finally:
            self.loaded.set()
        if self.pipeline is not None and self.settings.warm_when_idle:
            self._warm(self.pipeline)

    def _warm(self, pipeline: QAPipeline) -> None:
        """Read passages into the state cache while no question is running or waiting.

        Runs on the loader's thread once the pipeline is up. A question that arrives
        mid-read waits for that one passage (a few seconds cold), then every later
        question on a warmed passage costs only its own tokens. After the last passage
        it looks again now and then: an upload or delete starts the corpus over.
        """
        warmed = 0
        while not self.stop.is_set():
            gate = self.gate
            if gate is None or gate.admitted:
                self.stop.wait(0.2)
                continue
            try:
                more = pipeline.warm_next()
            except Exception:  # a broken cache makes answers slower, never the service down
                log.exception("warming the passage states failed; answers stay correct, only slower")
                return
            if more:
                warmed += 1
                continue
            if warmed:
                log.info("passage states warm: %d passages read while idle", warmed)
                warmed = 0
            self.stop.wait(30.0)

    def close(self) -> None:
        """At shutdown: stop the background work and close the pipeline's connections (Milvus, a model server)."""
        self.stop.set()
        with self._closing:
            self._closed = True
            pipeline = self.pipeline
        if pipeline is not None:
            pipeline.close()

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


def get_write_lock(state: Annotated[AppState, Depends(get_state)]) -> asyncio.Lock:
    if state.write_lock is None:  # only without a lifespan, as above
        raise NotReadyError("The service has not started; retry in a few seconds.")
    return state.write_lock


StateDep = Annotated[AppState, Depends(get_state)]
PipelineDep = Annotated[QAPipeline, Depends(get_pipeline)]
GateDep = Annotated[AnswerGate, Depends(get_gate)]
#: Held while the index changes: one upload or deletion at a time.
WriteLockDep = Annotated[asyncio.Lock, Depends(get_write_lock)]


def check_question(question: str, settings: Settings) -> None:
    """The question's length limit is a setting, so it is checked here rather than in the schema."""
    if len(question) > settings.max_question_chars:
        raise ApiError(
            422,
            "invalid_request",
            f"question: at most {settings.max_question_chars} characters allowed "
            f"(got {len(question)}); shorten the question.",
        )


def wants_stream(flag: bool, request: Request) -> bool:
    return flag or "text/event-stream" in request.headers.get("accept", "")


def client_gone() -> Response:
    # 499 (nginx's "client closed request"): nobody reads it, but the metrics and logs tell the story.
    return Response(status_code=499)
