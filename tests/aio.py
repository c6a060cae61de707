"""Run asyncio code from a test when the main thread may already have a running event loop."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` in a worker thread and return its result.

    pytest-playwright's sync API keeps an event loop running in the main thread for the
    whole session, so ``asyncio.run`` there fails once a browser test has run.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()
