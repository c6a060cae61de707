"""The command line of ``rag loadtest``: arguments checked, the run, the report printed, the exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rag.loadtest.client import (
    DEFAULT_MAX_RSS_GROWTH_MIB,
    DEFAULT_MIX,
    DEFAULT_QUESTIONS,
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    WARMUP_S,
    UsageError,
    check_loopback,
    parse_mix,
    read_rss_kib,
    run_load,
)
from rag.loadtest.report import render, summarize


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
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


def main(argv: Sequence[str] | None = None, prog: str = "python -m rag.loadtest") -> int:
    args = _parser(prog).parse_args(argv)
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
