"""Admission control for the generator: one model answers one request at a time.

A request first takes a ticket (cheap, in the event loop); when ``queue_size``
requests already wait behind the one being answered, the ticket is refused with
``BusyError`` so the client gets ``503 Retry-After`` at once instead of hanging.
A ticket holder then waits for its turn on the model lock; everything else
(search, health) never touches the gate, so it stays fast during generation.

All counters are touched from the event-loop thread only, so they need no lock.
Create the gate inside the running loop (the app's lifespan): asyncio locks
belong to the loop that first waits on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rag.errors import BusyError


class Ticket:
    """A place in the queue; ``release`` is idempotent so every exit path may call it."""

    def __init__(self, gate: AnswerGate) -> None:
        self._gate = gate
        self._released = False

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the model for the duration of the block (waiting for it first)."""
        gate = self._gate
        gate.waiting += 1
        try:
            await gate._model.acquire()
        finally:
            gate.waiting -= 1
        gate.running += 1
        try:
            yield
        finally:
            gate.running -= 1
            gate._model.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate.admitted -= 1


class AnswerGate:
    """At most ``1 + queue_size`` answer requests in flight: one running, the rest queued.

    >>> gate = AnswerGate(queue_size=1)
    >>> a, b = gate.admit(), gate.admit()
    >>> try:
    ...     gate.admit()
    ... except BusyError:
    ...     print("busy")
    busy
    >>> a.release(); a.release(); gate.admitted
    1
    """

    def __init__(self, queue_size: int) -> None:
        self.capacity = 1 + queue_size
        self.admitted = 0  # tickets not yet released (queued + running)
        self.waiting = 0  # tickets waiting for the model lock
        self.running = 0  # 0 or 1
        self._model = asyncio.Lock()

    def admit(self) -> Ticket:
        if self.admitted >= self.capacity:
            raise BusyError(
                f"The model is busy: {self.admitted} questions are being answered or waiting. Retry in a few seconds."
            )
        self.admitted += 1
        return Ticket(self)
