"""Admission control for the generator: one model answers one request at a time.

A request first takes a ticket (cheap, in the event loop); when ``queue_size``
requests already wait behind the one being answered, the ticket is refused with
``BusyError`` so the client gets ``503 Retry-After`` at once instead of hanging.
A ticket holder then waits for the model lock, at most ``timeout`` seconds (then
``BusyError`` too: a full queue of slow answers must not hold a client for
minutes), and gives its place up early when the client disconnects. Everything
else (search, health) never touches the gate, so it stays fast during generation.

All counters are touched from the event-loop thread only, so they need no lock.
Create the gate inside the running loop (the app's lifespan): asyncio locks
belong to the loop that first waits on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio

from rag.errors import BusyError

ClientGone = Callable[[], Awaitable[bool]]

# How often a queued request checks whether its client is still there.
_POLL_S = 0.25


async def _cancel_when_gone(client_gone: ClientGone, scope: anyio.CancelScope) -> None:
    while not await client_gone():
        await anyio.sleep(_POLL_S)
    scope.cancel()


class Ticket:
    """A place in the queue, then the model; ``release`` frees both and is idempotent (every exit path calls it)."""

    def __init__(self, gate: AnswerGate) -> None:
        self._gate = gate
        self._released = False
        self.holding = False  # the model lock is ours

    async def wait(self, client_gone: ClientGone | None = None) -> bool:
        """Wait for the model: True once it is ours (at once if it already is), False if the client left first.

        Raises ``BusyError`` when the model stays busy for the gate's ``timeout``.
        The caller releases the ticket in every case.
        """
        if self.holding:
            return True
        if self._released:
            raise RuntimeError("this ticket was released; take a new one")
        gate = self._gate
        gate.waiting += 1
        try:
            # One waiter on the lock for the whole wait keeps the lock's FIFO order (polling with
            # short timeouts would send the waiter to the back of the line each time).
            with anyio.move_on_after(gate.timeout) as waited:
                async with anyio.create_task_group() as group:
                    if client_gone is not None:
                        group.start_soon(_cancel_when_gone, client_gone, group.cancel_scope)
                    await gate._model.acquire()
                    # No await between acquiring and recording it, so no cancellation can fall in
                    # between: whatever happens next, release() frees the lock.
                    self.holding = True
                    gate.running += 1
                    group.cancel_scope.cancel()
        finally:
            gate.waiting -= 1
        if self.holding:
            return True
        if waited.cancelled_caught:
            raise BusyError(
                f"The model stayed busy for {gate.timeout:g} s with the questions ahead of yours. "
                "Retry in a few seconds."
            )
        return False

    def release(self) -> None:
        if self.holding:
            self.holding = False
            self._gate.running -= 1
            self._gate._model.release()
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

    def __init__(self, queue_size: int, timeout: float | None = None) -> None:
        self.capacity = 1 + queue_size
        self.timeout = timeout  # longest wait for the model, seconds (None: no limit)
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

    async def enter(self, client_gone: ClientGone | None = None) -> Ticket | None:
        """A ticket that holds the model, or None when the client left while queued.

        Raises ``BusyError`` when the queue is full or the wait exceeds ``timeout``.
        """
        ticket = self.admit()
        try:
            if await ticket.wait(client_gone):
                return ticket
        except BaseException:
            ticket.release()
            raise
        ticket.release()
        return None
