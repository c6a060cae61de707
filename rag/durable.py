"""Files that survive a crash: the writer lock and the directory flush, one home for both.

Used by the index (``rag.store``), the model cache (``rag.models``,
``rag.embedding_onnx``) and uploads (``rag.pipeline``, which stages them with ``stage_beside``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path


def open_lock_file(path: Path) -> int:
    """Open (creating it) a lock file; the descriptor is what ``locked`` holds."""
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def locked(fd: int) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``fd`` (blocking until it is ours), then release and close it.

    flock is released by the kernel if the holder dies, so a crashed process never leaves the
    lock held; the lock file itself stays (removing it would race with the next writer).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """One process or thread at a time in the block, across processes."""
    with locked(open_lock_file(lock_file)):
        yield


def fsync_dir(path: Path) -> None:
    """Flush a directory: a rename or a new file in it is durable only after this."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stage_beside(path: Path, data: bytes, *, prefix: str) -> Path:
    """Write ``data`` durably beside ``path`` under a hidden name (ingest skips hidden files); returns it.

    The name is a hash of the target's, so it never outgrows the file-name limit and
    a retry after a crash overwrites the leftover instead of adding another. On an
    ``OSError`` nothing is left behind.
    """
    tmp = path.with_name(f"{prefix}{hashlib.sha256(path.name.encode()).hexdigest()[:16]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
