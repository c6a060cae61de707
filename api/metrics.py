"""Prometheus metrics, one registry per app (so two apps in one process, e.g. tests, never share counts)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Answers take seconds, searches milliseconds: buckets cover both.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rag_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "rag_http_request_duration_seconds",
            "Time from request to the last byte of the response (whole stream for SSE).",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.answers = Counter(
            "rag_answers", "Answers by outcome (answered, abstained, error, cancelled).", ["outcome"], registry=r
        )
        self.tokens = Counter("rag_generated_tokens", "Text pieces streamed by the generator.", registry=r)
        self.tokens_per_second = Gauge(
            "rag_generated_tokens_per_second", "Decode speed of the most recent answer.", registry=r
        )
        self.queue_depth = Gauge("rag_queue_depth", "Answer requests waiting for the model.", registry=r)
        self.answers_in_progress = Gauge("rag_answers_in_progress", "Answers being generated (0 or 1).", registry=r)
        self.ready = Gauge("rag_pipeline_ready", "1 once the pipeline is loaded.", registry=r)

    def track(self, *, queue_depth: Callable[[], float], in_progress: Callable[[], float]) -> None:
        """Read the gauges from live state at scrape time instead of updating them on every change."""
        self.queue_depth.set_function(queue_depth)
        self.answers_in_progress.set_function(in_progress)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every request, labelled by route template (``/documents/{doc_id:path}``,
    not the raw path, so label cardinality stays bounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before starting a response, the server answers 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = str(getattr(route, "path", "")) or "unmatched"
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - start)
