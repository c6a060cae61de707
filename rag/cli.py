"""The ``rag`` console command (also ``python -m rag``).

Subcommands: ingest, search, info, ask, serve, eval, bench, loadtest. Every ``RagError`` becomes
one line on stderr and exit code 2; nothing else is caught, so real bugs keep
their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from rag.errors import InputError, RagError
from rag.formats import page_label
from rag.settings import Settings
from rag.types import QAPipeline


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "index", None) is not None:
        overrides["index_dir"] = args.index
    if getattr(args, "corpus", None) is not None:
        overrides["corpus_dir"] = args.corpus
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # One line naming the variable to fix, not pydantic's multi-line report.
        problems = "; ".join(f"RAG_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors())
        raise InputError(f"bad setting: {problems}") from None


def _print_json(obj: object) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def cmd_ingest(args: argparse.Namespace) -> int:
    from rag.embedding import load_embedder
    from rag.ingest import ingest

    settings = _settings(args)
    corpus = args.path if args.path is not None else settings.corpus_dir
    embedder = load_embedder(settings)
    # Progress goes to stderr, so --json keeps stdout to one JSON object.
    report = ingest(corpus, settings.index_dir, embedder, settings, rebuild=args.rebuild, progress=True)
    warmed = None
    if args.warm:
        from rag.pipeline import build_pipeline

        with closing(build_pipeline(settings, embedder=embedder)) as pipeline:
            warmed = warm_all(pipeline, sys.stderr)
    if args.json:
        _print_json({**report.to_dict(), **({"passages_warmed": warmed} if warmed is not None else {})})
    else:
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(
            f"index {report.index_version} in {settings.index_dir}: {report.documents_total} documents, "
            f"{report.chunks_total} chunks (added {report.added}, updated {report.updated}, "
            f"removed {report.removed}, unchanged {report.unchanged}; embedded {report.chunks_embedded} chunks "
            f"in {report.seconds:.1f} s)"
        )
    return 0


def warm_all(pipeline: QAPipeline, out: TextIO) -> int:
    """Read every passage into the state cache (``Pipeline.warm_next``), with progress on ``out``; the count read."""
    total = int(str(pipeline.info().get("chunks", 0)))
    started = time.perf_counter()
    done = 0
    while pipeline.warm_next():
        done += 1
        rate = (time.perf_counter() - started) / done
        print(f"\rwarming passage states: {done}/{total} ({rate:.1f} s each)", end="", file=out, flush=True)
    if done:
        print(f"\rwarming passage states: {done} read in {time.perf_counter() - started:.0f} s", file=out)
    return done


def cmd_search(args: argparse.Namespace) -> int:
    from rag.pipeline import build_pipeline
    from rag.serialization import hit_to_dict

    settings = _settings(args)
    with closing(build_pipeline(settings, with_generator=False)) as pipeline:
        hits = pipeline.search(args.query, k=args.k)
    if args.json:
        _print_json({"hits": [hit_to_dict(h) for h in hits]})
    else:
        for rank, hit in enumerate(hits, 1):
            snippet = " ".join(hit.chunk.text.split())[:160]
            print(f"{rank}. [{hit.score:.3f}] {hit.chunk.doc_id} {hit.chunk.start}-{hit.chunk.end}: {snippet}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from rag.store import load_index
    from rag.vectors import vector_store

    settings = _settings(args)
    with closing(vector_store(settings)) as store:
        index = load_index(settings.index_dir, store=store)
        docs = index.documents()
        info = {
            "index_dir": str(settings.index_dir),
            "index_version": index.version,
            "documents": len(docs),
            "chunks": len(index.chunks),
            "manifest": index.manifest.to_json(),
        }
    if args.json:
        _print_json(info)
    else:
        print(f"index {index.version} at {settings.index_dir}: {len(docs)} documents, {len(index.chunks)} chunks")
        for doc in docs:
            print(f"  {doc.doc_id}  {doc.chunks} chunks  {doc.chars} chars  sha256 {doc.sha256[:12]}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.pipeline import build_pipeline
    from rag.serialization import answer_to_dict
    from rag.types import Answer

    settings = _settings(args)
    answer: Answer | None = None
    with closing(build_pipeline(settings)) as pipeline:
        for piece in pipeline.ask_stream(args.question, k=args.k):
            if isinstance(piece, Answer):
                answer = piece
            elif not args.json:
                print(piece, end="", flush=True)
    assert answer is not None
    if args.json:
        _print_json(answer_to_dict(answer))
        return 0
    print()
    if answer.text and not answer.abstained:
        print("\nFinal answer (verified):\n" + answer.text)
    for note in answer.notes:
        print(f"note: {note}")
    if answer.citations:
        print("\nSources:")
        for c in answer.citations:
            page = f" {page_label(c.doc_id, c.page, c.scanned)}" if c.page is not None else ""
            snippet = " ".join(c.text.split())[:140]
            print(f"  [{c.marker}] {c.doc_id}{page} chars {c.start}-{c.end}: {snippet}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings(args)
    host = args.host or settings.host
    port = args.port or settings.port
    print(f"Serving on http://{host}:{port}/  (Ctrl+C to stop)", flush=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rag.evaluation import EvalOptions, run_eval

    options = EvalOptions(
        gold=args.gold,
        corpus=args.corpus,
        thresholds=args.thresholds,
        out=args.out,
        split=args.split,
        limit=args.limit,
        retrieval_only=args.retrieval_only,
        index=args.index,
        baseline=args.baseline,
    )
    return run_eval(options, _settings(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from rag.bench import check_targets, run_bench

    settings = _settings(args)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        milvus = {"milvus_lite": str(Path(tmp) / "bench.db")} if args.milvus else {}
        if args.milvus_uri:
            milvus["milvus_server"] = args.milvus_uri
        figures = run_bench(
            settings,
            passages=args.passages,
            sizes=sizes,
            questions=args.questions,
            backends=args.backends,
            milvus=milvus,
        )
    missed = check_targets(figures, args.targets)
    if args.json:
        _print_json({"embed_backend": settings.embed_backend, **{k: round(v, 4) for k, v in figures.items()}})
    else:
        print(f"{'embed_backend':36s} {settings.embed_backend:>12s}")
        for name, value in figures.items():
            print(f"{name:36s} {value:12.3f}")
    for line in missed:
        print(f"target missed: {line}", file=sys.stderr)
    return 1 if missed and args.check else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        p.add_argument("--index", type=Path, default=None, help="index folder (default: RAG_INDEX_DIR or ./index)")
        return p

    p = add("ingest", cmd_ingest, "Build or update the index from a folder of documents.")
    p.add_argument(
        "path", nargs="?", type=Path, default=None, help="corpus folder (default: RAG_CORPUS_DIR or ./seeds)"
    )
    p.add_argument("--rebuild", action="store_true", help="re-embed everything")
    p.add_argument(
        "--warm",
        action="store_true",
        help="then have the model read every passage into the state cache (~5 s each on 2 cores)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = add("search", cmd_search, "Hybrid (dense + keyword) search over the index.")
    p.add_argument("query")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--json", action="store_true")

    p = add("info", cmd_info, "Describe the index.")
    p.add_argument("--json", action="store_true")

    p = add("ask", cmd_ask, "Answer a question with citations, streamed.")
    p.add_argument("question")
    p.add_argument("--k", type=int, default=None, help="passages given to the model")
    p.add_argument("--json", action="store_true", help="print the full answer object")

    p = add("serve", cmd_serve, "Run the HTTP service and chat page.")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--corpus", type=Path, default=None, help="corpus folder for uploads")

    p = add("eval", cmd_eval, "Run the gold Q&A set and check the thresholds.")
    p.add_argument("--gold", type=Path, default=Path("eval/gold.jsonl"))
    p.add_argument("--corpus", type=Path, default=None, help="corpus the gold set is about (default: seeds/)")
    p.add_argument("--thresholds", type=Path, default=Path("eval/thresholds.json"))
    p.add_argument("--out", type=Path, default=Path("eval"), help="folder for report.json and report.md")
    p.add_argument("--split", default=None, help="only the questions of this split (e.g. tune, heldout)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions (after --split)")
    p.add_argument("--retrieval-only", action="store_true", help="skip answer generation")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also answer every question with a plain RAG prompt and report it beside (about 3x the time)",
    )

    p = add("bench", cmd_bench, "Measure speed on this machine (ingest, retrieval at scale, answers).")
    p.add_argument("--json", action="store_true")
    p.add_argument("--passages", type=int, default=500, help="synthetic passages to ingest")
    p.add_argument("--sizes", default="10000,100000", help="chunk counts for the retrieval scale test")
    p.add_argument("--questions", type=int, default=10, help="gold questions to answer (0 = skip the generator)")
    p.add_argument("--backends", action="store_true", help="also ingest the same passages with every embedding backend")
    p.add_argument("--milvus", action="store_true", help="add Milvus Lite (in process) to the retrieval scale test")
    p.add_argument("--milvus-uri", default=None, help="add the Milvus server at this URI to the retrieval scale test")
    p.add_argument("--targets", type=Path, default=Path("eval/bench_targets.json"))
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")

    # Listed for --help only: `main` hands everything after the word to the load generator's own parser.
    sub.add_parser(
        "loadtest",
        add_help=False,
        help="Put a running service under bounded mixed load and check how it copes (rag loadtest --help).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["loadtest"]:  # a client of the service, with its own flags
        from rag.loadtest import main as loadtest

        return loadtest(argv[1:], prog="rag loadtest")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "k", None) is not None and not 1 <= args.k <= 50:
        print("error: --k must be between 1 and 50", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except RagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
