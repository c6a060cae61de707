"""The answer gate: queue limit, the wait timeout, FIFO order, and places given up by departed clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from api.app import create_app
from api.gate import AnswerGate, Ticket
from rag.errors import BusyError
from rag.settings import Settings
from tests.aio import off_loop
from tests.api_fakes import FakePipeline, serve, wait_ready

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return off_loop(asyncio.run, main())


async def _never_gone() -> bool:
    return False


def test_a_wait_longer_than_the_timeout_is_busy_and_frees_its_place() -> None:
    async def scenario() -> tuple[float, int, int, bool]:
        gate = AnswerGate(queue_size=2, timeout=0.2)
        first = await gate.enter()
        assert first is not None and first.holding
        started = time.monotonic()
        with pytest.raises(BusyError, match=r"0\.2 s"):
            await gate.enter(_never_gone)
        waited = time.monotonic() - started
        counts = (gate.admitted, gate.waiting)
        first.release()
        # The model is free again: the timed-out waiter left nothing behind on the lock.
        second = await asyncio.wait_for(gate.enter(), 1)
        assert second is not None
        second.release()
        return waited, *counts, gate.admitted == 0 and gate.running == 0

    waited, admitted, waiting, clean = run(scenario)
    assert 0.2 <= waited < 1.0
    assert (admitted, waiting) == (1, 0)
    assert clean


def test_a_client_that_leaves_the_queue_gives_its_place_up_at_once() -> None:
    async def scenario() -> tuple[Ticket | None, int, float]:
        gate = AnswerGate(queue_size=1, timeout=30)
        first = await gate.enter()
        assert first is not None
        gone = asyncio.Event()

        async def client_gone() -> bool:
            return gone.is_set()

        waiter = asyncio.create_task(gate.enter(client_gone))
        await asyncio.sleep(0.05)
        assert gate.waiting == 1 and gate.admitted == 2
        with pytest.raises(BusyError):  # the queue is full
            gate.admit()
        gone.set()
        started = time.monotonic()
        result = await asyncio.wait_for(waiter, 2)
        left_after = time.monotonic() - started
        admitted = gate.admitted  # the first answer still runs
        first.release()
        return result, admitted, left_after

    result, admitted, left_after = run(scenario)
    assert result is None
    assert admitted == 1
    assert left_after < 1.0  # noticed within a poll or two, not when the model became free


def test_waiters_get_the_model_in_arrival_order() -> None:
    async def scenario() -> list[int]:
        gate = AnswerGate(queue_size=4, timeout=5)
        order: list[int] = []

        async def ask(n: int) -> None:
            ticket = await gate.enter(_never_gone)
            assert ticket is not None
            try:
                order.append(n)
                await asyncio.sleep(0.3)  # longer than the disconnect poll, so every waiter polls meanwhile
            finally:
                ticket.release()

        tasks = []
        for n in range(4):
            tasks.append(asyncio.create_task(ask(n)))
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks)
        assert gate.admitted == gate.waiting == gate.running == 0
        return order

    assert run(scenario) == [0, 1, 2, 3]


def test_a_cancelled_waiter_leaves_the_lock_and_counters_consistent() -> None:
    # What a streaming response does when its client leaves: it cancels the task waiting in the gate.
    async def scenario() -> tuple[int, int, int]:
        gate = AnswerGate(queue_size=2, timeout=None)
        first = await gate.enter()
        assert first is not None
        ticket = gate.admit()
        task = asyncio.create_task(ticket.wait())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ticket.release()
        first.release()
        after = await asyncio.wait_for(gate.enter(), 1)
        assert after is not None
        after.release()
        return gate.admitted, gate.waiting, gate.running

    assert run(scenario) == (0, 0, 0)


def test_a_released_ticket_cannot_wait_again() -> None:
    async def scenario() -> None:
        gate = AnswerGate(queue_size=1)
        ticket = gate.admit()
        ticket.release()
        with pytest.raises(RuntimeError):
            await ticket.wait()

    run(scenario)


# --- through a real server ---------------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {"corpus_dir": tmp_path, "index_dir": tmp_path / "index", "api_key": None}
    return Settings(**{**base, **overrides})  # type: ignore[arg-type]


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("stream", [False, True])
def test_queue_timeout_is_503_with_retry_after_for_plain_and_streamed_answers(tmp_path: Path, stream: bool) -> None:
    fake = FakePipeline()
    fake.release.clear()  # the first answer holds the model
    app = create_app(_settings(tmp_path, queue_size=2, queue_timeout_s=0.5), lambda s: fake)

    def hold(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            c.post("/ask", json={"question": "Etna?"})

    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        wait_ready(app)
        holder = threading.Thread(target=hold, args=(url,))
        holder.start()
        assert fake.entered.wait(10)
        started = time.monotonic()
        resp = client.post("/ask", json={"question": "Etna?", "stream": stream})
        waited = time.monotonic() - started
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "busy"
        assert int(resp.headers["retry-after"]) > 0
        assert 0.5 <= waited < 5
        gate = app.state.rag.gate
        assert gate.admitted == 1 and gate.waiting == 0
        fake.release.set()
        holder.join(20)
        assert _until(lambda: gate.admitted == 0)


def test_a_queued_client_that_disconnects_frees_its_place_while_the_model_is_still_busy(tmp_path: Path) -> None:
    fake = FakePipeline()
    fake.release.clear()
    app = create_app(_settings(tmp_path, queue_size=1, queue_timeout_s=60), lambda s: fake)

    def hold(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            c.post("/ask", json={"question": "Etna?"})

    with serve(app) as url:
        wait_ready(app)
        gate = app.state.rag.gate
        holder = threading.Thread(target=hold, args=(url,))
        holder.start()
        assert fake.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=url, timeout=0.5) as quitter:
            quitter.post("/ask", json={"question": "Etna?"})
        # Its place comes back although the first answer still holds the model...
        assert _until(lambda: gate.admitted == 1 and gate.waiting == 0, timeout=5)
        with httpx.Client(base_url=url, timeout=30) as c:
            follower = threading.Thread(target=lambda: c.post("/ask", json={"question": "Etna?"}))
            follower.start()
            # ...so the next client queues instead of being refused.
            assert _until(lambda: gate.waiting == 1)
            fake.release.set()
            follower.join(20)
        holder.join(20)
        assert _until(lambda: gate.admitted == 0)
        assert len(fake.calls) == 2  # the departed client never reached the model
