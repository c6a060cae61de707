"""Keyword search: bm25s in process (rag/keyword.py) against Milvus's own BM25 full-text search, alone and fused.

    PYTHONPATH=. python eval/keyword_milvus.py                       # Milvus Lite in this process
    PYTHONPATH=. python eval/keyword_milvus.py --uri http://127.0.0.1:19530 --json figures.json

Run from the repository root. A benchmark, not a test: it prints figures and checks none (a few
minutes on 2 cores, so not in CI). Each gold set is measured over its own index, brought up to date
first by an incremental ingest (cheap when nothing changed): the seed article (eval/gold.jsonl over
RAG_CORPUS_DIR, in RAG_INDEX_DIR, as ``rag eval`` uses them) and SQuAD (eval/squad/gold.jsonl over
eval/squad/corpus, in eval/squad/index, as ``make eval-squad`` builds it). Over the same chunks:

* **Keyword alone**: bm25s as the service builds it, and a Milvus collection per analyzer
  (``ANALYZERS``) with a BM25 function from the chunk text to a sparse vector, searched with the
  question's text; dense (the index's own vectors, the question's embedding timed too) beside them
  for reference. recall@1/5/10/20 and MRR over the first 20, on answerable questions, by the
  evidence rule of ``rag.evaluation.scoring``; query latency p50/p95 over every question; build
  time from the texts to the first answer (Milvus: create, insert, flush, load and one search).
* **Fused** as the service fuses: ``Retriever`` (dense + keyword by RRF with RAG_CANDIDATES and
  RAG_RRF_K, overlapping passages merged), once with bm25s and once with each Milvus index, scored
  as ``rag eval --retrieval-only`` scores (depth max(5, RAG_TOP_K); recall@1/3/5/k, MRR), so the
  bm25s row reproduces ``rag eval``'s figures. No reranker and no follow-up rewriting (as in
  ``rag eval --retrieval-only``, which has no generator to rewrite with).

Milvus is Milvus Lite in this process (a fresh ``.db`` in a temporary folder) plus every ``--uri``
(a Milvus server: 2.5 or later, or ``milvus-lite server``; Milvus 2.3 has no BM25 function). An
analyzer the deployment does not have is reported as unavailable, with Milvus's reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bm25s.stopwords import STOPWORDS_EN

from rag.embedding import Embedder, load_embedder
from rag.evaluation.gold import GoldItem, load_gold
from rag.evaluation.metrics import compute_metrics
from rag.evaluation.scoring import QuestionResult, find_evidence, score_question
from rag.ingest import ingest
from rag.keyword import KeywordIndex, KeywordSearch
from rag.loaders import load_file
from rag.ocr import OcrOptions
from rag.retrieval import Retriever
from rag.settings import Settings
from rag.stats import percentile
from rag.store import load_index
from rag.types import Hit
from rag.vectors import vector_store

#: Milvus analyzers measured: its default; the same with the English stop words bm25s drops (the list
#: itself: Milvus Lite does not expand "_english_"); and Milvus's English analyzer (stemming and stop
#: words, as rag/keyword.py does), which Milvus Lite 3.2.2 does not have.
ANALYZERS: dict[str, dict[str, Any] | None] = {
    "standard": None,
    "standard+stop": {"tokenizer": "standard", "filter": ["lowercase", {"type": "stop", "stop_words": STOPWORDS_EN}]},
    "english": {"type": "english"},
}
ALONE_AT = (1, 5, 10, 20)
BATCH = 1000  # rows per insert
T = TypeVar("T")


@dataclass(frozen=True)
class GoldSet:
    name: str
    gold: Path
    settings: Settings


class MilvusKeyword:
    """Milvus's BM25 full-text search over chunk texts; primary key = row of the chunk store (a ``KeywordSearch``)."""

    def __init__(
        self, client: Any, name: str, texts: Sequence[str], analyzer: dict[str, Any] | None, settings: Settings
    ):
        from pymilvus import DataType, Function, FunctionType

        self.client, self.name, self.timeout = client, name, settings.milvus_timeout_s
        write = settings.milvus_write_timeout_s
        schema = client.create_schema()
        schema.add_field("row", DataType.INT64, is_primary=True)
        text_params: dict[str, Any] = {"enable_analyzer": True}
        if analyzer is not None:
            text_params["analyzer_params"] = analyzer
        schema.add_field("text", DataType.VARCHAR, max_length=65535, **text_params)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        # Milvus analyzes the text and stores term frequencies; BM25 weights them at search time.
        schema.add_function(
            Function(
                name="bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        client.create_collection(name, schema=schema, index_params=index_params, timeout=write)
        for first in range(0, len(texts), BATCH):
            rows = [{"row": first + i, "text": t} for i, t in enumerate(texts[first : first + BATCH])]
            client.insert(name, rows, timeout=write)
        client.flush(name, timeout=write)
        client.load_collection(name, timeout=write)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        found = self.client.search(
            self.name,
            data=[query],
            anns_field="sparse",
            limit=k,
            search_params={"metric_type": "BM25"},
            output_fields=["row"],
            timeout=self.timeout,
        )
        # abs: Milvus Lite 3.2.2 reports a BM25 score negated (a smaller-is-better distance); a score is never < 0.
        return [(int(h["row"]), abs(float(h["distance"]))) for h in (found[0] if found else [])]


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and how long it took, in milliseconds."""
    t = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t) * 1000


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95)}


def _spans(items: Sequence[GoldItem], settings: Settings) -> dict[str, tuple[int, int] | None]:
    """Each answerable question's evidence range in its document (``Document.text`` offsets, as ``rag eval``)."""
    corpus = Path(settings.corpus_dir)
    ocr = OcrOptions.from_settings(settings)
    docs = sorted({i.doc_id for i in items if i.answerable and i.doc_id})
    texts = {d: load_file(corpus / d, corpus, ocr).text for d in docs}
    return {i.id: find_evidence(texts[i.doc_id or ""], i.evidence) if i.answerable else None for i in items}


Search = Callable[[str], list[Hit]]


def measure(
    searches: Mapping[str, Search], items: Sequence[GoldItem], spans: dict[str, Any]
) -> dict[str, tuple[list[QuestionResult], list[float]]]:
    """Every question through every search, scored, with its latency in ms.

    Interleaved, question by question, so that every search sees the same machine load
    (this machine's other jobs come and go); one untimed warm-up call each first.
    """
    for search in searches.values():
        search(items[0].question)
    out: dict[str, tuple[list[QuestionResult], list[float]]] = {label: ([], []) for label in searches}
    for item in items:
        for label, search in searches.items():
            hits, ms = _timed(search, item.question)
            out[label][0].append(score_question(item, hits, None, None, spans[item.id]))
            out[label][1].append(ms)
    return out


def alone_figures(results: Sequence[QuestionResult], latencies: list[float]) -> dict[str, float]:
    """recall@n and MRR over ``ALONE_AT[-1]`` passages, answerable questions only; latency over all."""
    scored = [r for r in results if r.item.answerable]
    out = {f"recall@{n}": statistics.fmean(any(r.retrieved_ok[:n]) for r in scored) for n in ALONE_AT}
    out["mrr"] = statistics.fmean(1.0 / r.first_hit_rank if r.first_hit_rank else 0.0 for r in scored)
    return out | _ms(latencies)


def fused_figures(results: Sequence[QuestionResult], latencies: list[float], k: int) -> dict[str, float]:
    """What `rag eval --retrieval-only` reports (recall@1/3/5/k and MRR, answerable questions only); latency."""
    metrics = compute_metrics(results, k, retrieval_only=True)
    return {name: metrics[name] for name in ("recall@1", "recall@3", "recall@5", "recall@k", "mrr")} | _ms(latencies)


def measure_set(gold_set: GoldSet, embedder: Embedder, uris: list[str]) -> dict[str, Any]:
    from pymilvus import MilvusClient, MilvusException

    settings = gold_set.settings
    ingest(settings.corpus_dir, settings.index_dir, embedder, settings, progress=False)
    index = load_index(settings.index_dir, embedder.id, vector_store(settings))
    items = load_gold(gold_set.gold)
    spans = _spans(items, settings)
    texts = [c.text for c in index.chunks]
    depth = ALONE_AT[-1]
    out: dict[str, Any] = {
        "chunks": len(texts),
        "questions": len(items),
        "answerable": sum(i.answerable for i in items),
        "reranker": settings.reranker,
        "candidates": settings.candidates,
        "fusion": settings.fusion,
        "dense_weight": settings.dense_weight,
        "rrf_k": settings.rrf_k,
        "top_k": settings.top_k,
    }

    def keyword_hits(keyword: KeywordSearch, query: str) -> list[Hit]:
        return [Hit(index.chunks[row], score) for row, score in keyword.search(query, depth)]

    def fused_hits(keyword: KeywordSearch) -> Search:
        retriever = Retriever(
            index,
            embedder,
            candidates=settings.candidates,
            fusion=settings.fusion,
            dense_weight=settings.dense_weight,
            rrf_k=settings.rrf_k,
            keyword=keyword,
        )
        return lambda query: retriever.retrieve(query, max(5, settings.top_k)).hits  # the depth `rag eval` retrieves

    keywords: dict[str, KeywordSearch] = {}
    bm25s_index, build_ms = _timed(KeywordIndex, texts)
    _, first_ms = _timed(bm25s_index.search, items[0].question, depth)
    keywords["bm25s"] = bm25s_index
    out["bm25s"] = {"build_s": (build_ms + first_ms) / 1000}
    clients: list[tuple[Any, list[str]]] = []  # each client, with the collections this run made there
    try:
        for uri in uris:
            client = MilvusClient(uri=uri, timeout=settings.milvus_timeout_s)
            made: list[str] = []
            clients.append((client, made))
            where = "milvus-lite" if uri.endswith(".db") else f"milvus@{urlsplit(uri).netloc}"
            for analyzer, params in ANALYZERS.items():
                label = f"{where} {analyzer}"
                name = f"keyword_bench_{secrets.token_hex(4)}"
                made.append(name)
                try:
                    milvus, build_ms = _timed(MilvusKeyword, client, name, texts, params, settings)
                except MilvusException as exc:
                    out[label] = {"unavailable": str(getattr(exc, "message", "") or exc)}
                    continue
                _, first_ms = _timed(milvus.search, items[0].question, depth)
                keywords[label] = milvus
                out[label] = {"build_s": (build_ms + first_ms) / 1000}
        alone: dict[str, Search] = {"dense (reference)": lambda q: index.search(embedder.embed([q])[0], depth)}
        alone |= {label: partial(keyword_hits, keyword) for label, keyword in keywords.items()}
        for label, (results, latencies) in measure(alone, items, spans).items():
            out.setdefault(label, {})["alone"] = alone_figures(results, latencies)
        fused = {label: fused_hits(keyword) for label, keyword in keywords.items()}
        splits = sorted({i.split for i in items if i.split})
        for label, (results, latencies) in measure(fused, items, spans).items():
            out[label]["fused"] = fused_figures(results, latencies, settings.top_k)
            # Per split too: the bm25s rows are then `make eval-squad`'s own figures, a check on this script.
            for split in splits:
                part = [(r, ms) for r, ms in zip(results, latencies, strict=True) if r.item.split == split]
                out[label][f"fused {split}"] = fused_figures(
                    [r for r, _ in part], [ms for _, ms in part], settings.top_k
                )
    finally:
        for client, made in clients:
            for name in made:
                with contextlib.suppress(MilvusException):  # one that failed to be created
                    client.drop_collection(name)
            client.close()
    return out


def table(name: str, figures: dict[str, Any]) -> str:
    """One gold set's figures as a Markdown table."""
    head = (
        f"{name}: {figures['chunks']} chunks, {figures['answerable']} answerable of {figures['questions']} questions; "
        f"fused: candidates {figures['candidates']}, rrf_k {figures['rrf_k']}, k {figures['top_k']}\n\n"
        "| keyword index | build s | R@1 | R@5 | R@10 | R@20 | MRR | p50 ms | p95 ms "
        "| fused R@1 | R@3 | R@5 | R@k | MRR | p50 ms | p95 ms |\n|---|" + "---|" * 16
    )
    rows = [head]
    for label, f in figures.items():
        if not isinstance(f, dict):
            continue
        if "unavailable" in f:
            rows.append(f"| {label} | unavailable: {f['unavailable']} |" + " |" * 15)
            continue
        a, u = f["alone"], f.get("fused")
        cells = [f"{f['build_s']:.2f}" if "build_s" in f else "-"]
        cells += [f"{a[f'recall@{n}']:.3f}" for n in ALONE_AT] + [f"{a['mrr']:.3f}", f"{a['p50_ms']:.1f}"]
        cells.append(f"{a['p95_ms']:.1f}")
        if u is None:
            cells += ["-"] * 7
        else:
            cells += [f"{u[m]:.3f}" for m in ("recall@1", "recall@3", "recall@5", "recall@k", "mrr")]
            cells += [f"{u['p50_ms']:.1f}", f"{u['p95_ms']:.1f}"]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--uri", action="append", default=[], help="also a Milvus server (http://host:port)")
    parser.add_argument("--json", type=Path, help="write every figure to this file too")
    parser.add_argument("--only", choices=("seeds", "squad"), help="one gold set")
    args = parser.parse_args(argv)
    import pymilvus  # noqa: F401  # it configures its loggers when imported: quieted after that

    for name in ("pymilvus", "pymilvus.decorators", "pymilvus.milvus_client", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # a refused analyzer is reported, not logged

    settings = Settings()  # type: ignore[call-arg]  # RAG_* from the environment
    squad = settings.model_copy(update={"corpus_dir": Path("eval/squad/corpus"), "index_dir": Path("eval/squad/index")})
    sets = [GoldSet("seeds", Path("eval/gold.jsonl"), settings), GoldSet("squad", Path("eval/squad/gold.jsonl"), squad)]
    sets = [s for s in sets if args.only in (None, s.name)]
    embedder = load_embedder(settings)
    report: dict[str, Any] = {"load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        uris = [str(Path(tmp) / "keyword.db"), *args.uri]
        for gold_set in sets:
            t = time.perf_counter()
            report[gold_set.name] = measure_set(gold_set, embedder, uris)
            report[gold_set.name]["seconds"] = time.perf_counter() - t
            print(table(gold_set.name, report[gold_set.name]) + "\n", flush=True)
    report["load_average_end"] = os.getloadavg()
    start, end = report["load_average_start"], report["load_average_end"]
    print(f"load average (1, 5, 15 min): {start} at the start, {end} at the end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
