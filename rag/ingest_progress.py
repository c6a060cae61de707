"""Progress of an ingest on stderr: documents and chunks done, rate, time left.

Apart from ``rag.ingest`` (what gets chunked, embedded, reused and saved) because it is
only presentation: ``rag.ingest`` hands it counts as groups of documents are embedded,
and it decides when and how to show them (quiet for a short ingest, one rewritten line
on a terminal, a line every few seconds in a log).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

# An ingest shorter than this shows no progress at all.
PROGRESS_AFTER_S = 2.0


class IngestProgress:
    """Progress of chunking + embedding on stderr: documents and chunks done, rate, time left.

    Nothing is shown before ``after_s`` (a short ingest stays quiet). On a terminal one line is
    rewritten in place; elsewhere (CI logs, a pipe) a line is printed every ``every_s`` seconds.
    Time left is extrapolated from the share of the documents' characters done so far, since
    the chunk total is only known at the end.

    >>> import io
    >>> clock = iter([0.0, 12.0, 30.0]).__next__
    >>> out = io.StringIO()
    >>> p = IngestProgress(4, 1000, stream=out, clock=clock, after_s=1.0, every_s=10.0)
    >>> p.update(documents=1, chunks=50, chars=250)
    >>> p.finish()
    >>> print(out.getvalue(), end="")
    ingest: 1/4 documents, 50 chunks, 4.2 chunks/s, 36 s left
    ingest: 1/4 documents, 50 chunks in 30 s (1.7 chunks/s)
    """

    def __init__(
        self,
        documents: int,
        chars: int,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        after_s: float | None = None,
        every_s: float | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 10.0)
        self.after_s = after_s if after_s is not None else PROGRESS_AFTER_S
        self.clock = clock
        self.total_docs, self.total_chars = documents, max(1, chars)
        self.docs = self.chunks = self.chars = 0
        self.started = clock()
        self.shown_at: float | None = None

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.chunks / elapsed
        left = elapsed * (self.total_chars - self.chars) / self.chars if self.chars else None
        eta = f", {_duration(left)} left" if left is not None else ""
        return f"ingest: {self.docs}/{self.total_docs} documents, {self.chunks} chunks, {rate:.1f} chunks/s{eta}"

    def _write(self, line: str, *, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, *, documents: int, chunks: int, chars: int) -> None:
        self.docs += documents
        self.chunks += chunks
        self.chars += chars
        now = self.clock()
        due = self.shown_at is None or now - self.shown_at >= self.every_s
        if now - self.started >= self.after_s and due:
            self.shown_at = now
            self._write(self._line(now))

    def finish(self) -> None:
        """A last line with the totals, if anything was shown (a quick ingest prints nothing)."""
        if self.shown_at is None:
            return
        elapsed = self.clock() - self.started
        rate = self.chunks / max(elapsed, 1e-9)
        self._write(
            f"ingest: {self.docs}/{self.total_docs} documents, {self.chunks} chunks in {_duration(elapsed)} "
            f"({rate:.1f} chunks/s)",
            final=True,
        )


def _duration(seconds: float) -> str:
    """Human time: "42 s", "3 min 05 s", "2 h 07 min".

    >>> _duration(42.4), _duration(185), _duration(7620)
    ('42 s', '3 min 05 s', '2 h 07 min')
    """
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
