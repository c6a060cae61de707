"""Processes the fault tests kill with SIGKILL: a `rag ingest` loop and the HTTP service.

Both run the production code paths (``rag.cli.main(["ingest", ...])``, and
``create_app`` over the real ``Pipeline`` under uvicorn) with the deterministic
fake models, so a cycle costs milliseconds of model time and the index on disk
is exactly what production writes. They are started through a multiprocessing
*forkserver* that has already imported them: a fresh interpreter needs ~2 s to
import numpy, faiss and FastAPI on this machine, a fork from the server needs
milliseconds, so the tests can afford dozens of kills.

They report through small files (an append-only progress log, a port file)
rather than pipes or queues, which a SIGKILL in mid-message would leave torn.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import socket
import sys
import threading
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

# Imported here so the forkserver holds them in memory before it forks the children.
import uvicorn
from tqdm import tqdm

import rag.embedding
import rag.ingest
from api.app import create_app
from rag import cli
from rag.pipeline import Pipeline
from rag.settings import Settings
from tests.fakes import FakeEmbedder, FakeGenerator

PRELOAD = ["tests.fault_procs", "rag.ingest", "rag.store", "rag.loaders", "rag.chunking", "faiss", "numpy"]


def context() -> ForkServerContext:
    """The forkserver context, preloaded with everything the children import."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _thread_lock_for_tqdm() -> None:
    # tqdm (via bm25s) otherwise creates a multiprocessing lock, i.e. a named semaphore that a
    # SIGKILLed child never unlinks (the resource tracker then warns about it at exit).
    tqdm.set_lock(threading.RLock())


def ingest_loop(index_dir: str, corpora: list[str], progress: str) -> None:
    """Run `rag ingest` over each corpus in turn, forever; log each commit to ``progress``."""
    _thread_lock_for_tqdm()
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the CLI's summary lines are not wanted
    # The CLI's embedder, swapped for the fake one; everything else is the real command.
    rag.embedding.load_embedder = lambda settings: FakeEmbedder()  # type: ignore[assignment]
    real_save = rag.ingest.save_index
    with open(progress, "a", buffering=1) as log:

        def save_index(*args: Any, **kwargs: Any) -> Any:
            log.write("writing\n")  # lets the test aim a kill at the write itself
            return real_save(*args, **kwargs)

        rag.ingest.save_index = save_index  # type: ignore[assignment]
        log.write("ready\n")
        for n in itertools.count():
            corpus = corpora[n % len(corpora)]
            code = cli.main(["ingest", corpus, "--index", index_dir])
            log.write(f"committed {n % len(corpora)} exit {code}\n")


def ingest_loop_milvus(index_dir: str, corpora: list[str], progress: str, milvus_uri: str) -> None:
    """``ingest_loop`` with the vectors in Milvus at ``milvus_uri`` (the settings a user would export)."""
    os.environ["RAG_VECTOR_STORE"] = "milvus"
    os.environ["RAG_MILVUS_URI"] = milvus_uri
    ingest_loop(index_dir, corpora, progress)


def serve(corpus_dir: str, index_dir: str, port_file: str) -> None:
    """The HTTP service over the real pipeline with fake models; writes its port to ``port_file``."""
    _thread_lock_for_tqdm()
    settings = Settings(corpus_dir=Path(corpus_dir), index_dir=Path(index_dir), api_key=None)

    def factory(s: Settings) -> Pipeline:
        return Pipeline(s, FakeEmbedder(), FakeGenerator(lambda messages: "NOT FOUND"))

    app = create_app(settings, factory)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    os.replace(tmp, port_file)  # the reader never sees half a number
    uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on")).run(sockets=[sock])
