"""A bounded load run against a local service, checking how it behaves when overloaded.

    python -m api.loadtest --url http://127.0.0.1:8000 --concurrency 16 --duration 120 \\
        --max-requests 5000 --pid "$(pgrep -f 'rag serve' | head -1)" [--api-key KEY] [--json]

``--concurrency`` workers share one connection pool; each repeatedly picks an
action by weight (``--mix``): a plain ``/ask``, a streamed ``/ask``, a
``/search``, or what a user does with a document: upload a small generated
text file under a unique name, search for the word only it contains, delete it
again (so at most one upload per worker is in the index at any time). The run
stops starting actions after ``--duration`` seconds or ``--max-requests``
requests, whichever comes first; every request has a hard ``--timeout``.
Only loopback addresses are accepted: this is a tool for your own machine.

Reported: requests by route and status, p50/p95/max latency of the answered
(2xx) requests per route (a fast 503 would flatter the percentiles, so
rejections are counted apart), rejected requests and whether each 503 carried
``Retry-After``, and with ``--pid`` the service's RSS sampled every second.

Exit code 1 when an invariant is broken: a 5xx other than 503, a 503 without
``Retry-After``, a request past its timeout, a dropped connection, a 4xx (the
script sends only valid requests, so a 4xx means a wrong key or a broken
route), a stream that ends without ``done`` or in an error event (``busy``
included: a refusal must be a 503 with ``Retry-After``, which a stream can only
give before it starts), an upload not found by search right after it returned,
the service process exiting, or RSS growing more than ``--max-rss-growth-mib``
after the warm-up. Keep ``--timeout`` above ``RAG_QUEUE_TIMEOUT_S`` plus the
time of one answer: then a request past it is one the service left hanging.
Exit code 2 for bad arguments or a service that cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import ipaddress
import json
import math
import random
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROUTES = ("ask", "ask_stream", "search", "upload", "delete")
DEFAULT_MIX = {"ask": 3, "ask_stream": 3, "search": 5, "upload": 1}

# Questions on the shipped seeds/ corpus, plus one it does not answer (refused without generating).
DEFAULT_QUESTIONS = (
    "How many shells did North Korea reportedly send to Russia?",
    "Which port were the munitions shipped from?",
    "When did Lloyd Austin confirm that North Korea was preparing to send troops to Russia?",
    "What did North Korea test on October 30, 2024?",
    "How do I bake sourdough bread?",
)

# The service's RSS settles once every code path has run a few times (allocator arenas, caches,
# connection buffers); growth is measured from the peak of this warm-up to the end of the run.
WARMUP_S = 10.0
# A flat service stays within a few MiB after warm-up: 0.3 MiB over a two-minute run of ~6,900
# requests on the fake pipeline of tests/test_load.py. 48 MiB leaves room for allocator noise in the
# real models' native libraries, while a leak of 16 KiB per request (a small response body) crosses
# it within ~3,000 requests (under a minute of that run). Tighten it for fakes (the test uses 16).
DEFAULT_MAX_RSS_GROWTH_MIB = 48.0

MAX_CONCURRENCY = 256
MAX_DURATION_S = 1800.0


class UsageError(Exception):
    """Bad arguments or an unreachable service: exit code 2."""


# --- arguments -------------------------------------------------------------------------------------


def check_loopback(url: str) -> str:
    """The base URL without a trailing slash, if it points at this machine; else ``UsageError``.

    >>> check_loopback("http://127.0.0.1:8000/")
    'http://127.0.0.1:8000'
    >>> check_loopback("http://[::1]:8000")
    'http://[::1]:8000'
    >>> check_loopback("http://example.com:8000")
    Traceback (most recent call last):
    ...
    api.loadtest.UsageError: refusing example.com: the load test only targets loopback (127.0.0.0/8, ::1, localhost)
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not an http(s) URL; e.g. --url http://127.0.0.1:8000")
    host = parts.hostname
    if host == "localhost":
        # Follow the name, so a hosts file that points "localhost" elsewhere is caught.
        try:
            infos = socket.getaddrinfo(host, parts.port or 80, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise UsageError(f"cannot resolve localhost: {exc}") from None
        addresses = [str(info[4][0]) for info in infos]
    else:
        addresses = [host]
    for address in addresses:
        try:
            loopback = ipaddress.ip_address(address.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UsageError(f"refusing {host}: the load test only targets loopback (127.0.0.0/8, ::1, localhost)")
    return url.rstrip("/")


def parse_mix(text: str) -> dict[str, float]:
    """Action weights from ``ask=3,ask_stream=3,search=5,upload=1`` (missing actions get 0).

    >>> parse_mix("ask=1,upload=0.5")
    {'ask': 1.0, 'ask_stream': 0.0, 'search': 0.0, 'upload': 0.5}
    """
    actions = ("ask", "ask_stream", "search", "upload")
    mix = dict.fromkeys(actions, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in mix:
            raise UsageError(f"--mix: unknown action {name!r}; use {', '.join(actions)}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise UsageError(f"--mix: {part!r} needs a number, e.g. {name}=2") from None
        if mix[name] < 0:
            raise UsageError(f"--mix: {name} must not be negative")
    if not any(mix.values()):
        raise UsageError("--mix: give at least one action a positive weight")
    return mix


# --- one request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One HTTP request as the client saw it."""

    route: str
    status: int | None  # None: no response (timeout or connection error)
    seconds: float
    outcome: str  # ok | rejected | server_error | client_error | timeout | transport_error | stream_error | ...
    retry_after: bool = False
    code: str = ""  # the error code of the body or of the stream's error event


def has_retry_after(value: str | None) -> bool:
    """A usable ``Retry-After``: delay seconds or an HTTP date.

    >>> has_retry_after("5"), has_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    (True, True)
    >>> has_retry_after(""), has_retry_after(None), has_retry_after("soon")
    (False, False, False)
    """
    if not value:
        return False
    if value.strip().isdigit():
        return True
    try:
        return email.utils.parsedate_to_datetime(value) is not None
    except (TypeError, ValueError):
        return False


def _error_code(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def classify(route: str, resp: httpx.Response, seconds: float) -> Result:
    """The outcome of a finished response (the body already read)."""
    status = resp.status_code
    retry = has_retry_after(resp.headers.get("retry-after"))
    if status == 503:
        return Result(route, status, seconds, "rejected", retry, _error_code(resp))
    if status >= 500:
        return Result(route, status, seconds, "server_error", retry, _error_code(resp))
    if status >= 400:
        return Result(route, status, seconds, "client_error", retry, _error_code(resp))
    return Result(route, status, seconds, "ok")


def stream_outcome(events: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(outcome, code) of an SSE answer from its ``(event, data)`` pairs.

    >>> stream_outcome([("token", "{}"), ("answer", "{}"), ("done", "{}")])
    ('ok', '')
    >>> stream_outcome([("error", '{"code": "busy", "message": "..."}'), ("done", "{}")])
    ('stream_busy', 'busy')
    >>> stream_outcome([("token", "{}")])
    ('stream_truncated', '')
    """
    names = [name for name, _ in events]
    for name, data in events:
        if name == "error":
            try:
                code = str(json.loads(data).get("code", ""))
            except (ValueError, AttributeError):
                code = ""
            return ("stream_busy" if code == "busy" else "stream_error"), code
    if names[-2:] == ["answer", "done"]:
        return "ok", ""
    return "stream_truncated", ""


class Client:
    """The actions, each returning the results of the requests it made."""

    def __init__(self, http: httpx.AsyncClient, timeout: float, questions: Sequence[str], run_id: str) -> None:
        self.http = http
        self.timeout = timeout
        self.questions = questions
        self.run_id = run_id
        self.uploads = 0
        self.live_docs: set[str] = set()  # uploaded and not yet deleted

    async def _timed(self, route: str, method: str, path: str, **kwargs: Any) -> tuple[Result, httpx.Response | None]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self.http.request(method, path, **kwargs)
        except (TimeoutError, httpx.TimeoutException):
            return Result(route, None, time.perf_counter() - started, "timeout"), None
        except httpx.RequestError as exc:
            return Result(route, None, time.perf_counter() - started, "transport_error", code=type(exc).__name__), None
        return classify(route, resp, time.perf_counter() - started), resp

    async def ask(self, rng: random.Random) -> list[Result]:
        result, _ = await self._timed("ask", "POST", "/ask", json={"question": rng.choice(self.questions)})
        return [result]

    async def ask_stream(self, rng: random.Random) -> list[Result]:
        body = {"question": rng.choice(self.questions), "stream": True}
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout), self.http.stream("POST", "/ask", json=body) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    return [classify("ask_stream", resp, time.perf_counter() - started)]
                events: list[tuple[str, str]] = []
                name = "message"
                async for line in resp.aiter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        events.append((name, line[5:].strip()))
                        name = "message"
        except (TimeoutError, httpx.TimeoutException):
            return [Result("ask_stream", None, time.perf_counter() - started, "timeout")]
        except httpx.RequestError as exc:
            seconds = time.perf_counter() - started
            return [Result("ask_stream", None, seconds, "transport_error", code=type(exc).__name__)]
        outcome, code = stream_outcome(events)
        return [Result("ask_stream", 200, time.perf_counter() - started, outcome, code=code)]

    async def search(self, rng: random.Random) -> list[Result]:
        words = rng.choice(self.questions).rstrip("?").split()
        result, _ = await self._timed("search", "POST", "/search", json={"query": " ".join(words[-4:])})
        return [result]

    async def upload(self, rng: random.Random) -> list[Result]:
        """Upload a note, find it by its one unique word, delete it: what a user trying the service does."""
        self.uploads += 1
        marker = f"lt{self.run_id}n{self.uploads}"
        name = f"loadtest-{self.run_id}-{self.uploads:05d}.txt"
        text = (
            f"Load test note {self.uploads}.\n\nThe {marker} instrument was calibrated on a Tuesday "
            f"and read {rng.randint(100, 999)} units before the run ended.\n"
        )
        files = {"file": (name, text.encode(), "text/plain")}
        uploaded, _ = await self._timed("upload", "POST", "/documents", files=files)
        results = [uploaded]
        if uploaded.status != 201:
            return results
        self.live_docs.add(name)
        found, resp = await self._timed("search", "POST", "/search", json={"query": marker, "k": 5})
        if resp is not None and found.outcome == "ok":
            try:
                seen = any(h["doc_id"] == name for h in resp.json()["hits"])
            except (ValueError, KeyError, TypeError):
                seen = False
            if not seen:
                found = Result("search", found.status, found.seconds, "upload_not_found")
        results.append(found)
        results.append(await self.delete(name))
        return results

    async def delete(self, name: str) -> Result:
        result, _ = await self._timed("delete", "DELETE", f"/documents/{name}")
        if result.outcome == "ok":
            self.live_docs.discard(name)
        return result


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Budget:
    """Shared by the workers: no new action after the deadline or past the request budget."""

    deadline: float
    remaining: int

    def take(self, cost: int) -> bool:
        if time.monotonic() >= self.deadline or self.remaining < cost:
            return False
        self.remaining -= cost
        return True


@dataclass
class RssTrace:
    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)
    exited: bool = False


def read_rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB, or None when it is gone (or a zombie, which has no VmRSS)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


async def sample_rss(trace: RssTrace, started: float, stop: asyncio.Event, interval: float = 1.0) -> None:
    while True:
        kib = read_rss_kib(trace.pid)
        if kib is None:
            trace.exited = True
            return
        trace.samples.append((round(time.monotonic() - started, 2), kib))
        try:
            await asyncio.wait_for(stop.wait(), interval)
            trace.samples.append((round(time.monotonic() - started, 2), read_rss_kib(trace.pid) or kib))
            return
        except TimeoutError:
            pass


async def _worker(client: Client, budget: Budget, mix: dict[str, float], rng: random.Random) -> list[Result]:
    actions = [a for a, w in mix.items() if w > 0]
    weights = [mix[a] for a in actions]
    results: list[Result] = []
    while True:
        action = rng.choices(actions, weights)[0]
        cost = 3 if action == "upload" else 1  # upload, search for it, delete it
        if not budget.take(cost):
            cheaper = [a for a in actions if a != "upload"]
            if cost == 1 or not cheaper or not budget.take(1):
                return results
            action = rng.choice(cheaper)
        results.extend(await getattr(client, action)(rng))


async def _wait_until_ready(http: httpx.AsyncClient, url: str, patience: float) -> None:
    deadline = time.monotonic() + patience
    while True:
        try:
            resp = await http.get("/ready", timeout=5)
        except httpx.HTTPError as exc:
            if time.monotonic() > deadline:
                raise UsageError(f"cannot reach {url} ({type(exc).__name__}); is `rag serve` running?") from None
        else:
            if resp.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise UsageError(f"{url}/ready still answers {resp.status_code}; is the service healthy?")
        await asyncio.sleep(0.5)


async def run_load(
    url: str,
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
    timeout: float,
    mix: dict[str, float],
    questions: Sequence[str],
    api_key: str | None = None,
    pid: int | None = None,
    seed: int = 0,
    wait_ready: float = 120.0,
) -> tuple[list[Result], RssTrace | None, float]:
    """Run the load; the results, the RSS trace and the elapsed seconds."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # trust_env=False: a proxy from the environment must not sit between us and loopback.
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=timeout, limits=limits, trust_env=False
    ) as http:
        await _wait_until_ready(http, url, patience=wait_ready)
        client = Client(http, timeout, questions, uuid.uuid4().hex[:8])
        started = time.monotonic()
        stop = asyncio.Event()
        trace = RssTrace(pid) if pid is not None else None
        sampler = asyncio.create_task(sample_rss(trace, started, stop)) if trace else None
        budget = Budget(started + duration, max_requests)
        rngs = [random.Random(f"{seed}-{n}") for n in range(concurrency)]
        batches = await asyncio.gather(*(_worker(client, budget, mix, rng) for rng in rngs))
        results = [r for batch in batches for r in batch]
        # Documents whose delete failed (timeout, 503): one more try, so the run leaves the index as it was.
        for name in sorted(client.live_docs):
            results.append(await client.delete(name))
        elapsed = time.monotonic() - started
        stop.set()
        if sampler is not None:
            await sampler
    return results, trace, elapsed


# --- the report ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of the values at or below it.

    >>> percentile([4, 1, 3, 2], 50), percentile([4, 1, 3, 2], 95), percentile([7], 95)
    (2, 4, 7)
    >>> percentile([], 50) is None
    True
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def rss_summary(trace: RssTrace, max_growth_mib: float, warmup_s: float) -> dict[str, Any]:
    """Start, peak and end RSS, and the growth from the warm-up's peak to the end.

    >>> t = RssTrace(1, [(0, 100 * 1024), (1, 150 * 1024), (2, 151 * 1024), (3, 152 * 1024)])
    >>> s = rss_summary(t, 48, warmup_s=1)
    >>> s["start_mib"], s["baseline_mib"], s["peak_mib"], s["end_mib"], s["growth_mib"]
    (100.0, 150.0, 152.0, 152.0, 2.0)
    """
    samples = trace.samples
    if not samples:
        return {"pid": trace.pid, "exited": trace.exited, "samples": []}
    kib = [k for _, k in samples]
    warm = [k for t, k in samples if t <= warmup_s] or kib[:1]
    baseline = max(warm)
    return {
        "pid": trace.pid,
        "exited": trace.exited,
        "start_mib": _mib(kib[0]),
        "baseline_mib": _mib(baseline),
        "peak_mib": _mib(max(kib)),
        "end_mib": _mib(kib[-1]),
        "growth_mib": _mib(kib[-1] - baseline),
        "max_growth_mib": max_growth_mib,
        "warmup_s": warmup_s,
        "samples": [[t, _mib(k)] for t, k in samples],
    }


def summarize(
    results: Sequence[Result],
    trace: RssTrace | None,
    *,
    elapsed: float,
    config: dict[str, Any],
    max_rss_growth_mib: float = DEFAULT_MAX_RSS_GROWTH_MIB,
    warmup_s: float = WARMUP_S,
) -> dict[str, Any]:
    """The JSON report: counts, latencies, RSS, and the list of broken invariants (empty when all hold)."""
    routes: dict[str, Any] = {}
    for route in ROUTES:
        mine = [r for r in results if r.route == route]
        served = [r.seconds for r in mine if r.status is not None and 200 <= r.status < 300]
        refused = [r.seconds for r in mine if r.status == 503]
        routes[route] = {
            "requests": len(mine),
            "by_status": dict(sorted(Counter(_status_key(r) for r in mine).items())),
            "p50_ms": _ms(percentile(served, 50)),
            "p95_ms": _ms(percentile(served, 95)),
            "max_ms": _ms(max(served, default=None)),
            "rejected_p95_ms": _ms(percentile(refused, 95)),
        }
    outcomes = Counter(r.outcome for r in results)
    rejected = [r for r in results if r.status == 503]
    report: dict[str, Any] = {
        **config,
        "elapsed_s": round(elapsed, 1),
        "requests": len(results),
        "requests_per_s": round(len(results) / elapsed, 1) if elapsed > 0 else None,
        "routes": routes,
        "by_status": dict(sorted(Counter(_status_key(r) for r in results).items())),
        "rejected": len(rejected),
        "rejected_with_retry_after": sum(r.retry_after for r in rejected),
        "other_5xx": outcomes["server_error"],
        "client_errors": outcomes["client_error"],
        "timeouts": outcomes["timeout"],
        "transport_errors": outcomes["transport_error"],
        "stream_busy": outcomes["stream_busy"],
        "stream_errors": outcomes["stream_error"],
        "streams_truncated": outcomes["stream_truncated"],
        "uploads_not_found": outcomes["upload_not_found"],
        "error_codes": dict(sorted(Counter(r.code for r in results if r.code).items())),
        "rss": rss_summary(trace, max_rss_growth_mib, warmup_s) if trace else None,
    }
    report["violations"] = violations(report)
    report["ok"] = not report["violations"]
    return report


def _status_key(result: Result) -> str:
    return str(result.status) if result.status is not None else result.outcome


def violations(report: dict[str, Any]) -> list[str]:
    """What the service did wrong, one line each."""
    missing = report["rejected"] - report["rejected_with_retry_after"]
    checks = [
        (report["other_5xx"], "responses with a 5xx other than 503"),
        (missing, "503 responses without Retry-After"),
        (report["timeouts"], f"requests past their {report.get('timeout_s', '?')} s timeout"),
        (report["transport_errors"], "requests whose connection failed"),
        (report["client_errors"], "4xx responses to valid requests (wrong --api-key?)"),
        (report["stream_busy"], "streams refused after a 200 (a busy error event instead of 503 + Retry-After)"),
        (report["stream_errors"], "streams that ended in an error event"),
        (report["streams_truncated"], "streams that ended without answer and done"),
        (report["uploads_not_found"], "uploads not found by a search right after they returned"),
    ]
    found = [f"{count} {what}" for count, what in checks if count]
    rss = report.get("rss")
    if rss:
        if rss["exited"]:
            found.append(f"the service process {rss['pid']} exited during the run")
        if "growth_mib" in rss and rss["growth_mib"] > rss["max_growth_mib"]:
            found.append(f"RSS grew {rss['growth_mib']} MiB after the warm-up (bound {rss['max_growth_mib']} MiB)")
    return found


def render(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = [
        f"{report['url']}: {report['requests']} requests in {report['elapsed_s']} s "
        f"({report['requests_per_s']}/s), concurrency {report['concurrency']}, timeout {report['timeout_s']} s",
        "",
        f"{'route':<11} {'requests':>8}  {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  {'503 p95':>8}  by status",
    ]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for route, row in report["routes"].items():
        statuses = " ".join(f"{k}:{v}" for k, v in row["by_status"].items())
        lines.append(
            f"{route:<11} {row['requests']:>8}  {cell(row['p50_ms']):>8} {cell(row['p95_ms']):>8} "
            f"{cell(row['max_ms']):>8}  {cell(row['rejected_p95_ms']):>8}  {statuses}"
        )
    lines += [
        "",
        f"rejected (503): {report['rejected']}, with Retry-After: {report['rejected_with_retry_after']}; "
        f"streams refused after a 200: {report['stream_busy']}",
        f"other 5xx: {report['other_5xx']}, timeouts: {report['timeouts']}, "
        f"connection errors: {report['transport_errors']}, 4xx: {report['client_errors']}, "
        f"stream errors: {report['stream_errors']}, truncated streams: {report['streams_truncated']}, "
        f"uploads not found: {report['uploads_not_found']}",
    ]
    if report["error_codes"]:
        lines.append("error codes: " + ", ".join(f"{k}:{v}" for k, v in report["error_codes"].items()))
    rss = report["rss"]
    if rss and rss.get("samples"):
        samples = rss["samples"]
        step = max(1, len(samples) // 12)
        trail = " ".join(f"{mib:.0f}" for _, mib in samples[::step])
        lines += [
            f"RSS of pid {rss['pid']} (MiB): start {rss['start_mib']}, after warm-up {rss['baseline_mib']}, "
            f"peak {rss['peak_mib']}, end {rss['end_mib']}, growth {rss['growth_mib']} (bound {rss['max_growth_mib']})",
            f"RSS over time (MiB, every {step} s): {trail}",
        ]
    elif rss:
        lines.append(f"RSS: process {rss['pid']} not found")
    lines.append("")
    if report["violations"]:
        lines += ["FAILED:", *(f"  - {v}" for v in report["violations"])]
    else:
        lines.append("OK: every invariant held")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m api.loadtest",
        description="Bounded load on a local rag service (loopback only); exits 1 when an invariant breaks.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="base URL (loopback only)")
    p.add_argument("--concurrency", type=int, default=16, help=f"parallel workers, 1-{MAX_CONCURRENCY}")
    p.add_argument("--duration", type=float, default=60.0, help=f"seconds of load, at most {MAX_DURATION_S:g}")
    p.add_argument("--max-requests", type=int, default=5000, help="stop after this many requests")
    p.add_argument("--timeout", type=float, default=60.0, help="hard limit per request, seconds")
    p.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()), help="action weights")
    p.add_argument("--questions", type=Path, help="file of questions, one per line (default: about seeds/)")
    p.add_argument("--api-key", help="sent as Authorization: Bearer KEY (the service's RAG_API_KEY)")
    p.add_argument("--pid", type=int, help="the service's process id, to sample its RSS from /proc")
    p.add_argument("--max-rss-growth-mib", type=float, default=DEFAULT_MAX_RSS_GROWTH_MIB)
    p.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds before the RSS baseline is taken")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--wait-ready", type=float, default=120.0, help="seconds to wait for /ready (the models load) before giving up"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        url = check_loopback(args.url)
        if not 1 <= args.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"--concurrency must be 1-{MAX_CONCURRENCY}")
        if not 0 < args.duration <= MAX_DURATION_S:
            raise UsageError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds")
        if args.max_requests < 1 or args.timeout <= 0:
            raise UsageError("--max-requests and --timeout must be positive")
        mix = parse_mix(args.mix)
        questions: Sequence[str] = DEFAULT_QUESTIONS
        if args.questions:
            try:
                lines = args.questions.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise UsageError(f"--questions: {exc}") from None
            questions = [q.strip() for q in lines if q.strip()]
            if not questions:
                raise UsageError(f"--questions: {args.questions} has no questions")
        if args.pid is not None and read_rss_kib(args.pid) is None:
            raise UsageError(f"--pid {args.pid}: no such process (or no /proc); drop --pid to skip RSS")
        results, trace, elapsed = asyncio.run(
            run_load(
                url,
                concurrency=args.concurrency,
                duration=args.duration,
                max_requests=args.max_requests,
                timeout=args.timeout,
                mix=mix,
                questions=questions,
                api_key=args.api_key,
                pid=args.pid,
                seed=args.seed,
                wait_ready=args.wait_ready,
            )
        )
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = {
        "url": url,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "max_requests": args.max_requests,
        "timeout_s": args.timeout,
        "mix": mix,
    }
    report = summarize(
        results,
        trace,
        elapsed=elapsed,
        config=config,
        max_rss_growth_mib=args.max_rss_growth_mib,
        warmup_s=min(args.warmup, args.duration / 4),
    )
    print(json.dumps(report) if args.json else render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
