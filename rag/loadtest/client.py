"""The load: one HTTP client shared by the workers, each request timed and classified, RSS sampled from /proc."""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import random
import socket
import time
import uuid
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
    rag.loadtest.client.UsageError: refusing example.com: the load test only targets loopback ...
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
