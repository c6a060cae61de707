"""``rag loadtest`` (also ``python -m rag.loadtest``): a bounded load run against a local service,
checking how it behaves when overloaded.

    rag loadtest --url http://127.0.0.1:8000 --concurrency 16 --duration 120 \\
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

The parts: ``client`` (the requests, the workers, the run), ``report`` (the
figures and the invariants), ``command`` (the command line). It is a client of
the service, over HTTP only: nothing here imports the server (``api``).
"""

from rag.loadtest.command import main

__all__ = ["main"]
