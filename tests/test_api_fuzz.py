"""Schemathesis against the app's own OpenAPI schema: no input may produce a 5xx.

Runs on a real uvicorn server on loopback, over the real Pipeline, index and
verification with deterministic fake models (the models are not what is fuzzed).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from api.app import create_app
from rag.ingest import ingest
from rag.pipeline import Pipeline
from rag.settings import Settings
from tests.api_fakes import serve, wait_ready
from tests.fakes import FakeEmbedder, FakeGenerator

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(SEEDS, root / "corpus")
    s = Settings(corpus_dir=root / "corpus", index_dir=root / "index", max_upload_bytes=64_000)
    embedder = FakeEmbedder()
    ingest(s.corpus_dir, s.index_dir, embedder, s, progress=False)
    pipeline = Pipeline(s, embedder, FakeGenerator(lambda m: "The shells left from the port of Rason [1]."))
    app = create_app(s, lambda _: pipeline)
    with serve(app) as url:
        wait_ready(app)
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_input_produces_a_server_error(api_schema: Any) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin, which does not
    # run under this pytest version; each operation gets its own Hypothesis run.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(timeout=30)
            statuses.append(response.status_code)
            # Requests are sequential and the app is ready, so not even a 503 (busy) is expected.
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )
            assert "Traceback" not in response.text

        check()
    # Not vacuous: many requests went out, and the bad ones were refused with a 4xx.
    assert len(statuses) >= 5 * len(operations)
    assert any(400 <= code < 500 for code in statuses)
