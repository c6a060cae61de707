"""The real models answering over Milvus: Milvus Lite in process, and by URI a milvus-lite server and Milvus 2.3.

Slow: reuses the session's real embedder and generator (conftest.py); each case ingests
seeds/ into its own Milvus, then asks the question the README shows.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from rag.ingest import ingest
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.store import load_index
from rag.types import Answer
from rag.vectors_milvus import MilvusStore
from tests.milvus_procs import MilvusServer, MilvusStandalone

pytestmark = pytest.mark.slow
PORT_QUESTION = "Which port were the munitions shipped from?"


# lite: Milvus Lite in process; the others by URI, on loopback: milvus-lite server, Milvus 2.3 standalone.
SERVERS = {"lite-server": MilvusServer, "standalone": MilvusStandalone}


@pytest.mark.parametrize("where", ["lite", *SERVERS])
def test_rason_with_its_citation_over_milvus(
    real_pipeline: Any, real_settings: Settings, tmp_path: Path, where: str
) -> None:
    embedder, generator = real_pipeline.embedder, real_pipeline.generator
    with contextlib.ExitStack() as stack:
        if where in SERVERS:
            uri = stack.enter_context(SERVERS[where](tmp_path / "milvus-server")).uri
        else:
            uri = str(tmp_path / "milvus.db")
        settings = real_settings.model_copy(
            update={"index_dir": tmp_path / "index", "vector_store": "milvus", "milvus_uri": uri}
        )
        store = MilvusStore.connect(settings)
        stack.callback(store.close)
        report = ingest(settings.corpus_dir, settings.index_dir, embedder, settings, progress=False, store=store)
        assert load_index(settings.index_dir, store=store).manifest.backend == "milvus"
        pipeline = Pipeline(settings, embedder, generator, store=store)

        answer: Answer = pipeline.ask(PORT_QUESTION)
        assert not answer.abstained, answer
        assert "Rason" in answer.text and answer.citations
        for c in answer.citations:
            source = (settings.corpus_dir / c.doc_id).read_text(encoding="utf-8")
            assert source[c.start : c.end] == c.text
        assert any("Rason" in c.text for c in answer.citations)
        assert answer.provenance["index_version"] == report.index_version

        # The same passages FAISS retrieves from the same corpus and model.
        faiss_settings = real_settings.model_copy(update={"index_dir": tmp_path / "faiss-index"})
        ingest(faiss_settings.corpus_dir, faiss_settings.index_dir, embedder, faiss_settings, progress=False)
        on_faiss = Pipeline(faiss_settings, embedder)
        assert [h.chunk for h in pipeline.search(PORT_QUESTION, 8)] == [
            h.chunk for h in on_faiss.search(PORT_QUESTION, 8)
        ]
