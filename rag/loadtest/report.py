"""The run's report: counts and latencies per route, RSS, and the invariants the service broke."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rag.loadtest.client import DEFAULT_MAX_RSS_GROWTH_MIB, ROUTES, WARMUP_S, Result, RssTrace
from rag.stats import nearest_rank


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
            "p50_ms": _ms(nearest_rank(served, 50)),
            "p95_ms": _ms(nearest_rank(served, 95)),
            "max_ms": _ms(max(served, default=None)),
            "rejected_p95_ms": _ms(nearest_rank(refused, 95)),
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
