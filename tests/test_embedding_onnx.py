"""The ONNX embedder's own logic with a tiny fake session and tokenizer; the export cache with a fake exporter."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import rag.embedding_onnx as eo
from rag.embedding import load_embedder
from rag.embedding_onnx import OnnxEmbedder, check_supported, ensure_onnx, model_key
from rag.errors import ModelError
from rag.settings import Settings

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "port", "ship"]
SPECIALS = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
VOCAB = {**SPECIALS, **{w: i + len(SPECIALS) for i, w in enumerate(WORDS)}}
DIM = 8


def tiny_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    # Like MiniLM's tokenizer.json: fixed padding and a truncation of its own, which the embedder must drop.
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=4)
    return tok


class FakeSession:
    """Token vector = a fixed random row per id; padding positions get huge values the mask must hide."""

    def __init__(self, inputs: Sequence[str] = ("input_ids", "attention_mask")) -> None:
        self.table = np.random.default_rng(0).standard_normal((len(SPECIALS) + len(WORDS), DIM)).astype(np.float32)
        self.inputs = inputs
        self.calls: list[dict[str, np.ndarray]] = []

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self.inputs]

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[Any]:
        assert set(input_feed) == set(self.inputs)  # only what the graph declares
        self.calls.append(input_feed)
        hidden = self.table[input_feed["input_ids"]]
        hidden[input_feed["attention_mask"] == 0] = 1e6
        return [hidden]

    def reference(self, ids: list[int]) -> np.ndarray:
        mean = self.table[ids].mean(axis=0)
        return mean / np.linalg.norm(mean)


def make_embedder(session: FakeSession, max_seq_length: int = 8, batch_size: int = 2) -> OnnxEmbedder:
    return OnnxEmbedder(
        session, tiny_tokenizer(), model_id="tiny", dim=DIM, max_seq_length=max_seq_length, batch_size=batch_size
    )


def test_vectors_are_mean_pooled_normalized_and_in_input_order() -> None:
    session = FakeSession()
    emb = make_embedder(session)
    texts = ["cat", "the dog ran far away", "a mat", "", "the cat sat on the mat", "ship"]
    vectors = emb.embed(texts)
    assert vectors.shape == (len(texts), DIM) and vectors.dtype == np.float32
    for text, row in zip(texts, vectors, strict=True):
        expected = session.reference([2, *(VOCAB[w] for w in text.split()), 3])  # [CLS] ... [SEP]
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)
    # Batching is invisible: each text alone gives the same vector as in a padded batch.
    alone = np.vstack([emb.embed([t]) for t in texts])
    np.testing.assert_allclose(vectors, alone, rtol=1e-5, atol=1e-6)


def test_batches_group_similar_lengths_longest_first() -> None:
    session = FakeSession()
    emb = make_embedder(session, batch_size=2)
    emb.embed(["a", "the dog ran far", "cat", "the cat sat", "dog ran"])
    widths = [c["input_ids"].shape[1] for c in session.calls]
    assert widths == sorted(widths, reverse=True) == [6, 4, 3]  # token counts include [CLS] and [SEP]
    assert [len(c["input_ids"]) for c in session.calls] == [2, 2, 1]


def test_truncates_like_the_model_but_counts_everything() -> None:
    session = FakeSession(inputs=("input_ids", "attention_mask", "token_type_ids"))
    emb = make_embedder(session, max_seq_length=8)
    long = " ".join(WORDS * 3)
    assert emb.max_tokens == 6  # 8 positions minus [CLS] and [SEP]
    assert emb.count_tokens(long) == 36  # neither the tokenizer file's cut at 4 nor the model's at 8
    vector = emb.embed([long])[0]
    assert session.calls[-1]["input_ids"].shape == (1, 8)
    assert not session.calls[-1]["token_type_ids"].any()
    np.testing.assert_allclose(vector, emb.embed([" ".join(WORDS[:6])])[0], rtol=1e-5, atol=1e-6)


def test_empty_input_and_unit_length() -> None:
    emb = make_embedder(FakeSession())
    assert emb.embed([]).shape == (0, DIM)
    vectors = emb.embed(["cat", "dog ran", "the the the"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- export cache


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mini-model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "tokenizer.json").write_text(tiny_tokenizer().to_str())
    (folder / "config.json").write_text(json.dumps({"hidden_size": DIM, "max_position_embeddings": 512}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"export": 0, "quantize": 0}

    def export(model_path: Path, out: Path) -> None:
        counts["export"] += 1
        time.sleep(0.2)  # long enough for a concurrent caller to arrive while we hold the lock
        out.write_bytes(b"fp32")

    def quantize(fp32: Path, out: Path) -> None:
        counts["quantize"] += 1
        out.write_bytes(fp32.read_bytes() + b"->int8")

    monkeypatch.setattr(eo, "_export_fp32", export)
    monkeypatch.setattr(eo, "_quantize", quantize)
    return counts


def test_export_happens_once_and_quantization_reuses_it(
    model_dir: Path, tmp_path: Path, fake_export: dict[str, int]
) -> None:
    cache = tmp_path / "cache"
    fp32 = ensure_onnx(model_dir, cache, quantized=False, name="mini")
    assert fp32 == cache / "onnx" / f"mini-{model_key(model_dir)}" / "model.onnx"
    assert fp32.read_bytes() == b"fp32"
    assert ensure_onnx(model_dir, cache, quantized=False, name="mini") == fp32
    int8 = ensure_onnx(model_dir, cache, quantized=True, name="mini")
    assert int8.parent == fp32.parent and int8.read_bytes() == b"fp32->int8"
    ensure_onnx(model_dir, cache, quantized=True, name="mini")
    assert fake_export == {"export": 1, "quantize": 1}
    # Nothing half-written is left beside the finished folder.
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == [f".{fp32.parent.name}.lock", fp32.parent.name]
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["model-int8.onnx", "model.onnx"]


def test_concurrent_starts_export_once(model_dir: Path, tmp_path: Path, fake_export: dict[str, int]) -> None:
    results: list[Path] = []
    workers = [
        threading.Thread(target=lambda: results.append(ensure_onnx(model_dir, tmp_path / "c", quantized=False)))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert fake_export["export"] == 1 and len(set(results)) == 1 and results[0].is_file()


def test_a_changed_model_gets_a_fresh_export(model_dir: Path, tmp_path: Path, fake_export: dict[str, int]) -> None:
    first = ensure_onnx(model_dir, tmp_path / "c", quantized=False)
    (model_dir / "config.json").write_text(json.dumps({"hidden_size": DIM, "note": "retrained"}))
    second = ensure_onnx(model_dir, tmp_path / "c", quantized=False)
    assert first != second and fake_export["export"] == 2


def test_a_failed_export_leaves_nothing_behind(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(model_path: Path, out: Path) -> None:
        out.write_bytes(b"half")
        raise ModelError("export failed")

    monkeypatch.setattr(eo, "_export_fp32", broken)
    with pytest.raises(ModelError, match="export failed"):
        ensure_onnx(model_dir, tmp_path / "c", quantized=False)
    assert [p.name for p in (tmp_path / "c" / "onnx").iterdir() if not p.name.endswith(".lock")] == []


def test_unwritable_cache_says_what_to_do(model_dir: Path, tmp_path: Path, fake_export: dict[str, int]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelError, match="RAG_CACHE_DIR"):
        ensure_onnx(model_dir, blocker, quantized=False)


# ---------------------------------------------------------------- what the backend can run


def test_reads_the_sequence_length_of_a_mean_pooled_model(model_dir: Path) -> None:
    assert check_supported(model_dir) == 128
    (model_dir / "sentence_bert_config.json").unlink()
    (model_dir / "modules.json").unlink()  # a plain transformers folder
    assert check_supported(model_dir) == 512


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("cls", "only mean-pools"),
        ("dense", "cannot run the module"),
        ("no-tokenizer", "no tokenizer.json"),
    ],
)
def test_refuses_what_it_cannot_reproduce(model_dir: Path, change: str, message: str) -> None:
    if change == "cls":
        (model_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    elif change == "dense":
        modules = json.loads((model_dir / "modules.json").read_text())
        modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
        (model_dir / "modules.json").write_text(json.dumps(modules))
    else:
        (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=message) as info:
        check_supported(model_dir)
    assert "RAG_EMBED_BACKEND=torch" in str(info.value)


def test_load_embedder_passes_the_backend_choice(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    def fake_load(model_path: Path, model_id: str, **kwargs: Any) -> str:
        seen.append({"path": model_path, "id": model_id, **kwargs})
        return "embedder"

    monkeypatch.setattr(eo, "load_onnx_embedder", fake_load)
    for backend in ("onnx", "onnx-int8"):
        settings = Settings(embedder_path=model_dir, embed_backend=backend, cache_dir=tmp_path, embed_threads=1)
        assert load_embedder(settings) == "embedder"
    assert [s["quantized"] for s in seen] == [False, True]
    assert {(s["path"], s["id"], s["cache_dir"], s["threads"]) for s in seen} == {
        (model_dir, "mini-model", tmp_path, 1)
    }
