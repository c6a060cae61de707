"""The load script's own logic: loopback only, outcomes, percentiles, the report and its invariants."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from rag.loadtest import main
from rag.loadtest.client import Result, RssTrace, check_loopback, classify, read_rss_kib
from rag.loadtest.report import render, summarize
from rag.settings import Settings
from rag.stats import nearest_rank as percentile
from tests.aio import off_loop
from tests.api_fakes import serve, wait_ready
from tests.test_load import QUESTIONS, SharedFake

CONFIG = {"url": "http://127.0.0.1:1", "concurrency": 2, "timeout_s": 5.0}
MIB = 1024  # KiB


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:8000", "http://192.168.1.5", "https://example.com", "http://0.0.0.0:8000", "ftp://127.0.0.1"],
)
def test_non_loopback_urls_are_refused_with_exit_code_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert off_loop(main, ["--url", url, "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("loopback" in err or "http(s)" in err)


def test_loopback_forms_are_accepted() -> None:
    assert check_loopback("http://127.0.0.2:9/") == "http://127.0.0.2:9"
    assert check_loopback("http://localhost:8000") == "http://localhost:8000"


@pytest.mark.parametrize(
    "args",
    [
        ["--concurrency", "0"],
        ["--concurrency", "10000"],
        ["--duration", "0"],
        ["--duration", "99999"],
        ["--mix", "ask=0"],
        ["--mix", "shout=1"],
        ["--max-requests", "0"],
    ],
)
def test_unbounded_or_bad_arguments_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert off_loop(main, ["--url", "http://127.0.0.1:9", *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_unreachable_service_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) is closed on loopback: the preflight gives up after --wait-ready.
    assert off_loop(main, ["--url", "http://127.0.0.1:9", "--duration", "1", "--wait-ready", "1"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_rss_of_a_live_and_a_missing_process() -> None:
    rss = read_rss_kib(os.getpid())
    assert rss is not None and rss > 1024
    assert read_rss_kib(2**22 + 12345) is None  # above the kernel's pid limit


def _response(status: int, headers: dict[str, str] | None = None, code: str = "busy") -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": {"code": code, "message": "m"}})


def test_classify_outcomes() -> None:
    assert classify("ask", _response(503, {"Retry-After": "5"}), 0.1) == Result(
        "ask", 503, 0.1, "rejected", True, "busy"
    )
    assert not classify("ask", _response(503), 0.1).retry_after
    assert classify("ask", _response(500, code="internal"), 0.1).outcome == "server_error"
    assert classify("ask", _response(502), 0.1).outcome == "server_error"
    assert classify("ask", _response(401, code="unauthorized"), 0.1).outcome == "client_error"
    assert classify("upload", httpx.Response(201, json={}), 0.1).outcome == "ok"


def test_rag_loadtest_is_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    from rag.cli import main as rag

    assert off_loop(rag, ["loadtest", "--url", "http://10.0.0.1:8000", "--duration", "1"]) == 2
    assert "loopback" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rag(["loadtest", "--help"])
    assert capsys.readouterr().out.startswith("usage: rag loadtest")


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 100) == 100
    assert percentile(list(reversed(values)), 95) == 95  # order does not matter
    assert percentile([3.0, 1.0], 50) == 1.0


def _healthy() -> list[Result]:
    out = [Result("ask", 200, s / 1000, "ok") for s in range(100, 1100, 10)]  # 100 answers, 100..1090 ms
    out += [Result("ask", 503, 0.002, "rejected", True, "busy")] * 7
    out += [Result("search", 200, 0.02, "ok")] * 40
    out += [Result("upload", 201, 0.05, "ok"), Result("search", 200, 0.01, "ok"), Result("delete", 200, 0.01, "ok")]
    return out


def test_report_counts_routes_statuses_and_latency_of_answered_requests_only() -> None:
    report = summarize(_healthy(), None, elapsed=10.0, config=CONFIG)
    ask = report["routes"]["ask"]
    assert ask["requests"] == 107 and ask["by_status"] == {"200": 100, "503": 7}
    # The seven fast 503s do not pull the percentiles down: they cover the 100 answers only.
    assert (ask["p50_ms"], ask["p95_ms"], ask["max_ms"]) == (590.0, 1040.0, 1090.0)
    assert ask["rejected_p95_ms"] == 2.0
    assert report["routes"]["search"]["requests"] == 41
    assert report["routes"]["ask_stream"] == {
        "requests": 0,
        "by_status": {},
        "p50_ms": None,
        "p95_ms": None,
        "max_ms": None,
        "rejected_p95_ms": None,
    }
    assert report["by_status"] == {"200": 142, "201": 1, "503": 7}
    assert report["rejected"] == report["rejected_with_retry_after"] == 7
    assert report["requests"] == 150 and report["requests_per_s"] == 15.0
    assert report["violations"] == [] and report["ok"] is True
    json.dumps(report)  # the --json output is one plain JSON object
    table = render(report)
    assert "ask_stream" in table and "OK: every invariant held" in table


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (Result("ask", 503, 0.1, "rejected", False, "busy"), "1 503 responses without Retry-After"),
        (Result("search", 500, 0.1, "server_error", False, "internal"), "1 responses with a 5xx other than 503"),
        (Result("ask", 504, 0.1, "server_error"), "1 responses with a 5xx other than 503"),
        (Result("ask_stream", None, 5.0, "timeout"), "1 requests past their 5.0 s timeout"),
        (Result("ask", None, 0.1, "transport_error", code="RemoteProtocolError"), "1 requests whose connection failed"),
        (Result("ask", 401, 0.1, "client_error", code="unauthorized"), "1 4xx responses"),
        (Result("ask_stream", 200, 0.1, "stream_busy", code="busy"), "1 streams refused after a 200"),
        (Result("ask_stream", 200, 0.1, "stream_error", code="internal"), "1 streams that ended in an error event"),
        (Result("ask_stream", 200, 0.1, "stream_truncated"), "1 streams that ended without answer and done"),
        (Result("search", 200, 0.1, "upload_not_found"), "1 uploads not found"),
    ],
)
def test_each_broken_invariant_fails_the_run(bad: Result, expected: str) -> None:
    report = summarize([*_healthy(), bad], None, elapsed=10.0, config=CONFIG)
    assert report["ok"] is False
    assert len(report["violations"]) == 1 and report["violations"][0].startswith(expected), report["violations"]
    assert "FAILED:" in render(report)


def test_rss_growth_is_measured_from_the_warm_up_peak() -> None:
    # Start at 100 MiB, settle at 150 MiB during the warm-up, then stay flat: a pass.
    flat = RssTrace(1, [(0.0, 100 * MIB), (4.0, 150 * MIB), *((float(t), 151 * MIB) for t in range(5, 60))])
    report = summarize(_healthy(), flat, elapsed=60, config=CONFIG, max_rss_growth_mib=48, warmup_s=5)
    rss = report["rss"]
    assert (rss["start_mib"], rss["baseline_mib"], rss["peak_mib"], rss["end_mib"]) == (100.0, 151.0, 151.0, 151.0)
    assert rss["growth_mib"] == 0 and report["ok"]
    assert len(rss["samples"]) == 57
    assert "RSS of pid 1" in render(report)

    # The same start, then a steady climb of 1 MiB a second: a leak.
    leak = RssTrace(1, [(0.0, 100 * MIB), *((float(t), (150 + t) * MIB) for t in range(1, 60))])
    report = summarize(_healthy(), leak, elapsed=60, config=CONFIG, max_rss_growth_mib=48, warmup_s=5)
    assert report["rss"]["growth_mib"] == 54.0
    assert report["violations"] == ["RSS grew 54.0 MiB after the warm-up (bound 48 MiB)"]


def test_a_service_process_that_exits_fails_the_run() -> None:
    died = RssTrace(4242, [(0.0, 100 * MIB), (1.0, 100 * MIB)], exited=True)
    report = summarize(_healthy(), died, elapsed=2, config=CONFIG)
    assert report["violations"] == ["the service process 4242 exited during the run"]


def test_a_short_run_against_a_real_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    questions = tmp_path / "q.txt"
    questions.write_text("\n".join(QUESTIONS), encoding="utf-8")
    settings = Settings(corpus_dir=tmp_path, index_dir=tmp_path / "index", api_key="k3y", queue_size=1)
    fake = SharedFake(delay=0.01)
    app = create_app(settings, lambda s: fake)
    with serve(app) as url:
        wait_ready(app)
        argv = ["--url", url, "--concurrency", "4", "--duration", "1.5", "--max-requests", "60", "--timeout", "10"]
        extra = ["--questions", str(questions), "--api-key", "k3y", "--pid", str(os.getpid()), "--json"]
        code = off_loop(main, [*argv, *extra])
        report = json.loads(capsys.readouterr().out)
        assert code == 0, report["violations"]
        assert 0 < report["requests"] <= 60 + 4  # the budget, plus at most one clean-up delete per worker
        assert sum(r["requests"] for r in report["routes"].values()) == report["requests"]
        assert report["rss"]["pid"] == os.getpid() and report["rss"]["samples"]
        assert sorted(fake.docs) == ["bees.txt", "manual.pdf", "volcanoes.md"]  # every upload deleted again

        # A wrong key: every request is a 401, and the run fails.
        assert off_loop(main, [*argv, "--api-key", "wrong", "--duration", "0.5"]) == 1
        assert "4xx responses to valid requests" in capsys.readouterr().out
