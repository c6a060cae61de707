"""``rag bench``: speed figures measured in one run on this machine (a benchmark, not a test).

Prints a table (or one JSON object with ``--json``) and checks each figure
against ``eval/bench_targets.json``; ``--check`` makes a missed target exit 1.
Retrieval at scale uses synthetic unit vectors (the scale, not the text, is
what the index type changes); everything else runs the real models.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rag.settings import Settings
from rag.stats import percentile


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def _timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def synthetic_passages(settings: Settings, passages: int) -> list[str]:
    """``passages`` texts of ~100 words: shifted windows of the seed text (realistic words, no two alike)."""
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(settings.corpus_dir.glob("*.txt"))).split()
    out = []
    for i in range(passages):
        start = (i * 37) % max(1, len(words) - 100)
        out.append(f"Passage {i}. " + " ".join(words[start : start + 100]))
    return out


def bench_ingest(settings: Settings, embedder: Any, passages: int) -> dict[str, float]:
    """Embed ``passages`` seed-derived passages of ~100 words, then build and load an index."""
    from rag.ingest import ingest
    from rag.store import load_index

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, text in enumerate(synthetic_passages(settings, passages)):
            (corpus / f"p{i:05d}.txt").write_text(text)
        local = settings.model_copy(update={"corpus_dir": corpus, "index_dir": Path(tmp) / "index"})
        t = time.perf_counter()
        report = ingest(corpus, local.index_dir, embedder, local, progress=False)
        seconds = time.perf_counter() - t
        load = _timed(lambda: load_index(local.index_dir, embedder.id), 3)
    return {
        "ingest_passages_per_s": report.chunks_embedded / seconds,
        "ingest_chunks": float(report.chunks_embedded),
        "index_load_s": min(load),
    }


def encoder_flops_per_token(config: dict[str, Any], tokens: int) -> float:
    """FLOPs to encode one token of a ``tokens``-long passage with a BERT-like encoder (its config.json).

    Per layer: the Q, K, V and output projections (4 d^2 multiply-adds), the feed-forward
    (2 d f), and attention over the passage (2 n d); 2 FLOPs a multiply-add. For
    all-MiniLM-L6-v2 (d 384, f 1536, 6 layers) at 160 tokens: ~22.7 MFLOP.

    >>> minilm = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
    >>> round(encoder_flops_per_token(minilm, 160) / 1e6, 1)
    22.7
    """
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    return 2.0 * layers * (4 * d * d + 2 * d * f + 2 * tokens * d)


def sgemm_flops(n: int = 1024, rounds: int = 5) -> float:
    """The machine's fp32 matrix-multiply rate (FLOP/s, numpy's BLAS on its default threads), best of ``rounds``."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: threads started, pages touched
    best = min(_timed(lambda: a @ b, rounds))
    return 2.0 * n**3 / best


def bench_roofline(settings: Settings, embedder: Any, passages_per_s: float) -> dict[str, float]:
    """Ingest's embedding rate against what these cores can compute in fp32 (a roofline ratio)."""
    import json

    from rag.embedding import embedder_folder

    model_dir, _ = embedder_folder(settings)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    texts = synthetic_passages(settings, 50)
    tokens = sum(min(embedder.count_tokens(t) + 2, embedder.max_tokens) for t in texts) / len(texts)
    needed = encoder_flops_per_token(config, round(tokens)) * tokens * passages_per_s
    peak = sgemm_flops()
    return {
        "ingest_tokens_per_passage": tokens,
        "ingest_gflops": needed / 1e9,
        "sgemm_gflops": peak / 1e9,
        "ingest_roofline_ratio": needed / peak,
    }


def bench_backends(settings: Settings, passages: int, loaded: dict[str, Any], rounds: int = 2) -> dict[str, float]:
    """Ingest speed of every embedding backend on the same passages, interleaved so each round
    sees the same machine load; the best round counts. ``loaded`` maps backend -> embedder to reuse."""
    from rag.embedding import load_embedder

    backends = ("torch", "onnx", "onnx-int8")
    embedders = {b: loaded.get(b) or load_embedder(settings.model_copy(update={"embed_backend": b})) for b in backends}
    best = dict.fromkeys(backends, 0.0)
    for _ in range(rounds):
        for b in backends:
            best[b] = max(best[b], bench_ingest(settings, embedders[b], passages)["ingest_passages_per_s"])
    out = {}
    for b in backends:
        key = b.replace("-", "_")
        out[f"ingest_passages_per_s_{key}"] = best[b]
        if b != "torch":
            out[f"ingest_speedup_{key}"] = best[b] / best["torch"]
    # The int8 path's own figure: against fp32 on the same runtime and passages, not against torch.
    out["ingest_speedup_int8_over_onnx"] = best["onnx-int8"] / best["onnx"]
    return out


def bench_scale(
    settings: Settings, sizes: list[int], dim: int, queries: int = 200, milvus: dict[str, str] | None = None
) -> dict[str, float]:
    """Search latency, recall@10 against exact search and insert rate on synthetic unit vectors.

    FAISS flat (exact: the reference) and HNSW always; ``milvus`` adds a Milvus store per
    ``{name: uri}`` (a ``*.db`` path is Milvus Lite in this process, ``http://...`` a server),
    with the index and timeouts of ``settings``.
    """
    from rag.index import build_faiss

    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    for n in sizes:
        # Clustered rather than uniform vectors: real embeddings are far from uniform on the sphere.
        centers = rng.standard_normal((max(1, n // 100), dim)).astype(np.float32)
        vecs = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        qs = vecs[rng.integers(0, n, queries)] + 0.3 * rng.standard_normal((queries, dim)).astype(np.float32)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
        label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
        results = {}
        for kind in ("flat", "hnsw"):
            t = time.perf_counter()
            index = build_faiss(vecs, kind)
            out[f"build_s_{kind}_{label}"] = time.perf_counter() - t
            out[f"insert_per_s_{kind}_{label}"] = n / out[f"build_s_{kind}_{label}"]
            lat, ids = [], []
            for q in qs:
                t = time.perf_counter()
                _, found = index.search(q[None, :], 10)
                lat.append((time.perf_counter() - t) * 1000)
                ids.append(found[0])
            results[kind] = ids
            out[f"retrieval_ms_p50_{kind}_{label}"] = _p(lat, 50)
            out[f"retrieval_ms_p95_{kind}_{label}"] = _p(lat, 95)
        recall = [len(set(a) & set(b)) / 10 for a, b in zip(results["flat"], results["hnsw"], strict=True)]
        out[f"hnsw_recall_at_10_{label}"] = statistics.fmean(recall)
        for name, uri in (milvus or {}).items():
            out.update(bench_milvus(settings, name, uri, vecs, qs, results["flat"], label))
    return out


def bench_milvus(
    settings: Settings, name: str, uri: str, vecs: np.ndarray, qs: np.ndarray, exact: list[np.ndarray], label: str
) -> dict[str, float]:
    """The Milvus store as ingest and search use it: one version staged (insert, flush, index, load),
    then searched; recall@10 against ``exact``; then the alias switched from one version to another."""
    import secrets

    from rag.index import Manifest
    from rag.vectors_milvus import MilvusStore

    update = {"vector_store": "milvus", "milvus_uri": uri, "milvus_collection": f"bench_{secrets.token_hex(4)}"}
    store = MilvusStore.connect(settings.model_copy(update=update))
    out: dict[str, float] = {}
    try:
        t = time.perf_counter()
        staged = store.stage("v-1", vecs, "hnsw")
        out[f"insert_per_s_{name}_{label}"] = len(vecs) / (time.perf_counter() - t)
        lat, recall = [], []
        for q, truth in zip(qs, exact, strict=True):
            t = time.perf_counter()
            _, rows = staged.index.search(q, 10)
            lat.append((time.perf_counter() - t) * 1000)
            recall.append(len(set(rows.tolist()) & set(truth.tolist())) / 10)
        out[f"retrieval_ms_p50_{name}_{label}"] = _p(lat, 50)
        out[f"retrieval_ms_p95_{name}_{label}"] = _p(lat, 95)
        out[f"recall_at_10_{name}_{label}"] = statistics.fmean(recall)
        # The commit's switch: the alias moved from one version's collection to the next.
        versions = [Manifest("bench", vecs.shape[1], 0, 0, "hnsw", {}, vectors=staged.record)]
        versions.append(
            Manifest("bench", vecs.shape[1], 0, 0, "hnsw", {}, vectors=store.stage("v-2", vecs[:10], "hnsw").record)
        )
        store.publish(versions[0])
        switches = []
        for i in range(10):
            store.publish(versions[(i + 1) % 2])
            switches.append(store.last_switch_s * 1000)
        out[f"alias_switch_ms_p50_{name}_{label}"] = _p(switches, 50)
    finally:
        # The figures count more than tidying up, but each step is tried on its own: one failing must not
        # skip the next. The alias first: a Milvus may refuse to drop a collection an alias names.
        with contextlib.suppress(Exception):
            store._client.drop_alias(store.alias)
        with contextlib.suppress(Exception):
            store.cleanup(None)  # drops this run's collections (its own name) and nothing else
        store.close()
    return out


def _decode_rate(timings: dict[str, float], tokens: int) -> float | None:
    """Tokens/s after the first token: generation time minus the wait for the first token."""
    if tokens < 2 or "draft_first_token_s" not in timings:
        return None
    before_generation = timings["total_s"] - timings["generate_s"] - timings.get("verify_s", 0.0)
    decode_s = timings["generate_s"] - (timings["draft_first_token_s"] - before_generation)
    return (tokens - 1) / decode_s if decode_s > 0 else None


def _ask_timed(pipeline: Any, question: str) -> tuple[float | None, float, Any]:
    """Seconds to the first streamed text (None if none came), seconds to the end, and the ``Answer``."""
    from rag.types import Answer

    t = time.perf_counter()
    first = None
    answer = None
    for piece in pipeline.ask_stream(question):  # read to the end: the model is not left mid-answer
        if first is None and isinstance(piece, str):
            first = time.perf_counter() - t
        if isinstance(piece, Answer):
            answer = piece
    return first, time.perf_counter() - t, answer


def bench_answers(settings: Settings, pipeline: Any, questions: list[str]) -> dict[str, float]:
    """TTFT, end-to-end latency and decode speed through the real pipeline, then the raw model."""
    ttft, e2e, prompt_tokens, decode = [], [], [], []
    gen = pipeline.generator
    for q in questions:
        first, total, answer = _ask_timed(pipeline, q)
        e2e.append(total)
        if first is not None:
            ttft.append(first)
        rate = _decode_rate(answer.timings, getattr(gen, "last_completion_tokens", 0))
        if rate is not None:
            decode.append(rate)
        prompt_tokens.append(float(getattr(gen, "last_prompt_tokens", 0)))
    out = {
        "questions": float(len(questions)),
        "ttft_s_p50": _p(ttft, 50),
        "e2e_s_p50": _p(e2e, 50),
        "e2e_s_p95": _p(e2e, 95),
        "prompt_tokens_p50": _p(prompt_tokens, 50),
        "decode_tokens_per_s": _p(decode, 50),
    }
    # The same model called directly with the same settings: what the pipeline could at best reach.
    if questions:
        msgs = [{"role": "user", "content": "Write three sentences about the sea."}]
        raw = []
        for _ in range(2):
            first_t = None
            for _piece in gen.stream(msgs, max_tokens=48):
                if first_t is None:
                    first_t = time.perf_counter()
            end = time.perf_counter()
            n = getattr(gen, "last_completion_tokens", 0)
            if first_t is not None and n > 1:
                raw.append((n - 1) / (end - first_t))
        out["raw_decode_tokens_per_s"] = max(raw) if raw else float("nan")
        out["decode_ratio"] = out["decode_tokens_per_s"] / out["raw_decode_tokens_per_s"]
    return out


def bench_states(pipeline: Any, questions: list[str]) -> dict[str, float]:
    """Passage states: the same questions with none kept (cold), then again with all kept (warm).

    The cold pass runs on a fresh in-memory store (nothing on disk is read), so it is
    what a large corpus pays for a passage asked about the first time; the warm pass
    is what every later question on those passages pays.
    """
    from rag.states import StateStore

    gen = pipeline.generator
    kept = getattr(gen, "states", None)  # llama.cpp only: other backends keep no states
    if kept is None or not questions:
        return {}
    fresh = StateStore(kept.model_id, None, disk_bytes=0, memory_bytes=kept.memory_bytes)
    gen.states = fresh
    try:
        passes: dict[str, list[float]] = {"cold": [], "warm": []}
        hits0 = misses0 = 0
        restore0 = 0.0
        for name in ("cold", "warm"):
            if name == "warm":
                hits0, misses0, restore0 = fresh.stats.memory_hits, fresh.stats.misses, fresh.stats.restore_s
            for q in questions:
                first, _, _ = _ask_timed(pipeline, q)
                if first is not None:
                    passes[name].append(first)
        hits = fresh.stats.memory_hits - hits0
        misses = fresh.stats.misses - misses0
        count, size = fresh.memory_usage()
        return {
            "ttft_cold_s_p50": _p(passes["cold"], 50),
            "ttft_warm_s_p50": _p(passes["warm"], 50),
            "state_hit_rate_warm": hits / (hits + misses) if hits + misses else float("nan"),
            "state_mb_per_passage": size / count / 1e6 if count else float("nan"),
            "state_restore_ms_mean": (fresh.stats.restore_s - restore0) / hits * 1000 if hits else float("nan"),
        }
    finally:
        gen.states = kept


def run_bench(
    settings: Settings,
    *,
    passages: int,
    sizes: list[int],
    questions: int,
    backends: bool = False,
    milvus: dict[str, str] | None = None,
) -> dict[str, float]:
    from rag.embedding import load_embedder
    from rag.evaluation import load_gold
    from rag.ingest import ingest
    from rag.pipeline import build_pipeline

    figures: dict[str, float] = {}
    embedder = load_embedder(settings)
    # ingest_passages_per_s is the configured backend's (RAG_EMBED_BACKEND); --backends adds all three.
    figures.update(bench_ingest(settings, embedder, passages))
    figures.update(bench_roofline(settings, embedder, figures["ingest_passages_per_s"]))
    if backends:
        figures.update(bench_backends(settings, passages, {settings.embed_backend: embedder}))
    qlat = _timed(lambda: embedder.embed(["Which port were the munitions shipped from?"]), 20)
    figures["query_embed_ms_p50"] = _p([x * 1000 for x in qlat], 50)
    figures.update(bench_scale(settings, sizes, embedder.dim, milvus=milvus))
    if questions > 0:
        ingest(settings.corpus_dir, settings.index_dir, embedder, settings, progress=False)
        pipeline = build_pipeline(settings, embedder=embedder)
        gold = [g for g in load_gold(Path("eval/gold.jsonl")) if not g.history][:questions]
        figures.update(bench_answers(settings, pipeline, [g.question for g in gold]))
        figures.update(bench_states(pipeline, [g.question for g in gold]))
    figures["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return figures


def check_targets(figures: dict[str, float], targets_path: Path) -> list[str]:
    """The figures that miss their target (``{"min": {...}, "max": {...}}``), with the eval's checker."""
    from rag.evaluation.thresholds import check_thresholds, load_thresholds

    targets = load_thresholds(targets_path, known=None)
    measured = {name: value for name, value in figures.items() if name in targets.min or name in targets.max}
    missed, _ = check_thresholds(measured, targets)  # a figure this run did not measure is not a miss
    return missed
