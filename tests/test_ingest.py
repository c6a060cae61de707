from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import rag.store
from rag.errors import IndexFormatError, InputError, StorageError
from rag.ingest import IngestReport, add_or_update, ingest, remove
from rag.loaders import load_bytes, load_corpus
from rag.settings import Settings
from rag.store import current_version, load_index
from tests.fakes import FakeEmbedder
from tests.test_loaders import make_pdf


class CountingEmbedder(FakeEmbedder):
    """FakeEmbedder that remembers every text it embedded."""

    def __init__(self, embedder_id: str = "fake-hash-embedder") -> None:
        self.id = embedder_id
        self.seen: list[str] = []

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        self.seen.extend(texts)
        return super().embed(texts, progress=progress)


PARAGRAPH = (
    "The {topic} report describes how the {topic} programme grew over the years. "
    "It lists budgets, staff numbers and the main results of each {topic} phase. "
    "Reviewers found the {topic} figures consistent with earlier audits."
)


def long_text(topic: str, paragraphs: int = 6) -> str:
    return "\n\n".join(PARAGRAPH.format(topic=f"{topic}{i}") for i in range(paragraphs))


@pytest.fixture
def settings() -> Settings:
    return Settings(chunk_tokens=48, chunk_overlap=8)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "alpha.txt").write_text(long_text("alpha"))
    (root / "beta.md").write_text(long_text("beta"))
    (root / "sub").mkdir()
    (root / "sub" / "gamma.html").write_text(f"<html><body><p>{long_text('gamma', 3)}</p></body></html>")
    return root


def run(corpus: Path, index_dir: Path, embedder: FakeEmbedder, settings: Settings, **kw: bool) -> IngestReport:
    return ingest(corpus, index_dir, embedder, settings, progress=False, **kw)


def test_first_ingest_indexes_everything(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    emb = CountingEmbedder()
    report = run(corpus, tmp_path / "idx", emb, settings)
    index = load_index(tmp_path / "idx", emb.id)
    assert (report.added, report.updated, report.removed, report.unchanged) == (3, 0, 0, 0)
    assert report.documents_total == 3
    assert report.chunks_embedded == report.chunks_total == len(index.chunks) == len(emb.seen)
    assert report.index_version == index.version
    assert report.rebuild_reason is None
    assert [d.doc_id for d in index.documents()] == ["alpha.txt", "beta.md", "sub/gamma.html"]
    assert index.manifest.chunk_tokens == 48 and index.manifest.overlap_tokens == 8
    assert all(emb.count_tokens(c.text) <= 48 for c in index.chunks)
    # Dense search over the fake embedder finds the passage sharing the query's rare word.
    hit = index.search(emb.embed(["beta3 budgets staff"])[0], 1)[0]
    assert hit.chunk.doc_id == "beta.md" and "beta3" in hit.chunk.text
    as_dict = report.to_dict()
    assert as_dict["warnings"] == [] and json.dumps(as_dict)


def test_rerun_on_unchanged_corpus_embeds_nothing_and_keeps_the_version(
    corpus: Path, tmp_path: Path, settings: Settings
) -> None:
    first = run(corpus, tmp_path / "idx", CountingEmbedder(), settings)
    emb = CountingEmbedder()
    again = run(corpus, tmp_path / "idx", emb, settings)
    assert emb.seen == []
    assert again.chunks_embedded == 0 and again.unchanged == 3 and again.added == again.updated == again.removed == 0
    assert again.index_version == first.index_version == current_version(tmp_path / "idx")
    assert again.chunks_total == first.chunks_total


def test_adding_a_file_embeds_only_its_chunks(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    index_dir = tmp_path / "idx"
    first = run(corpus, index_dir, CountingEmbedder(), settings)
    before = load_index(index_dir)
    (corpus / "delta.txt").write_text(long_text("delta", 2))
    emb = CountingEmbedder()
    report = run(corpus, index_dir, emb, settings)
    after = load_index(index_dir)
    delta_chunks = [c for c in after.chunks if c.doc_id == "delta.txt"]
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 0, 0, 3)
    assert emb.seen == [c.text for c in delta_chunks] and report.chunks_embedded == len(delta_chunks)
    assert report.index_version != first.index_version
    # Reused vectors are carried over bit for bit.
    for c in before.chunks:
        assert np.array_equal(after.vectors[after.row(c.id)], before.vectors[before.row(c.id)])
    assert report.chunks_total == len(before.chunks) + len(delta_chunks)


def test_modifying_a_file_re_embeds_only_it(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    index_dir = tmp_path / "idx"
    run(corpus, index_dir, CountingEmbedder(), settings)
    before = load_index(index_dir)
    (corpus / "beta.md").write_text(long_text("betanew", 4))
    emb = CountingEmbedder()
    report = run(corpus, index_dir, emb, settings)
    after = load_index(index_dir)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 1, 0, 2)
    new_beta = [c for c in after.chunks if c.doc_id == "beta.md"]
    assert emb.seen == [c.text for c in new_beta]
    assert all("betanew" in c.text for c in new_beta)
    old_beta_ids = {c.id for c in before.chunks if c.doc_id == "beta.md"}
    assert not old_beta_ids & {c.id for c in after.chunks}  # a changed document gets new chunk ids
    assert {c.id for c in after.chunks if c.doc_id != "beta.md"} == {
        c.id for c in before.chunks if c.doc_id != "beta.md"
    }


def test_deleting_a_file_removes_its_chunks(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    index_dir = tmp_path / "idx"
    run(corpus, index_dir, CountingEmbedder(), settings)
    (corpus / "alpha.txt").unlink()
    emb = CountingEmbedder()
    report = run(corpus, index_dir, emb, settings)
    after = load_index(index_dir)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 1, 2)
    assert emb.seen == [] and report.chunks_embedded == 0
    assert {c.doc_id for c in after.chunks} == {"beta.md", "sub/gamma.html"}
    assert "alpha.txt" not in after.manifest.documents
    # Search never returns a deleted passage.
    query = CountingEmbedder().embed(["alpha1 budgets"])[0]
    assert all(h.chunk.doc_id != "alpha.txt" for h in after.search(query, len(after.chunks)))


def test_changed_chunking_or_embedder_or_rebuild_re_embeds_everything(
    corpus: Path, tmp_path: Path, settings: Settings
) -> None:
    index_dir = tmp_path / "idx"
    run(corpus, index_dir, CountingEmbedder(), settings)

    emb = CountingEmbedder()
    report = run(corpus, index_dir, emb, Settings(chunk_tokens=64, chunk_overlap=8))
    assert report.rebuild_reason and "chunking" in report.rebuild_reason
    assert report.chunks_embedded == report.chunks_total == len(emb.seen) > 0
    assert report.unchanged == 3  # the documents did not change, only how they are indexed
    assert load_index(index_dir).manifest.chunk_tokens == 64

    other = CountingEmbedder("another-embedder")
    report = run(corpus, index_dir, other, Settings(chunk_tokens=64, chunk_overlap=8))
    assert report.rebuild_reason and "another-embedder" in report.rebuild_reason
    assert report.chunks_embedded == report.chunks_total
    assert load_index(index_dir, "another-embedder").manifest.embedder_id == "another-embedder"

    emb = CountingEmbedder("another-embedder")
    report = run(corpus, index_dir, emb, Settings(chunk_tokens=64, chunk_overlap=8), rebuild=True)
    assert report.rebuild_reason == "rebuild requested" and report.chunks_embedded == report.chunks_total


def test_chunk_size_is_capped_by_the_embedder(corpus: Path, tmp_path: Path) -> None:
    emb = CountingEmbedder()
    emb.max_tokens = 20
    run(corpus, tmp_path / "idx", emb, Settings(chunk_tokens=200, chunk_overlap=4))
    index = load_index(tmp_path / "idx")
    assert index.manifest.chunk_tokens == 20
    assert all(emb.count_tokens(c.text) <= 20 for c in index.chunks)


def test_unknown_index_format_asks_for_rebuild_and_rebuild_fixes_it(
    corpus: Path, tmp_path: Path, settings: Settings
) -> None:
    index_dir = tmp_path / "idx"
    first = run(corpus, index_dir, CountingEmbedder(), settings)
    manifest_path = index_dir / first.index_version / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["format_version"] = 2
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match=r"rag ingest --rebuild"):
        run(corpus, index_dir, CountingEmbedder(), settings)
    report = run(corpus, index_dir, CountingEmbedder(), settings, rebuild=True)
    assert report.chunks_embedded == report.chunks_total > 0
    assert load_index(index_dir).version == report.index_version != first.index_version
    assert not (index_dir / first.index_version).exists()


@pytest.mark.parametrize("case", ["missing", "empty", "only-unsupported", "only-unreadable"])
def test_bad_corpus_raises_input_error_and_writes_nothing(tmp_path: Path, settings: Settings, case: str) -> None:
    root = tmp_path / "corpus"
    if case != "missing":
        root.mkdir()
    if case == "only-unsupported":
        (root / "a.xlsx").write_bytes(b"PK")
    if case == "only-unreadable":
        (root / "a.txt").write_bytes(b"\x00\x01")
    index_dir = tmp_path / "idx"
    emb = CountingEmbedder()
    with pytest.raises(InputError):
        run(root, index_dir, emb, settings)
    assert not index_dir.exists()
    assert emb.seen == []


def test_bad_chunk_settings_raise_input_error_before_writing(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="overlap"):
        run(corpus, tmp_path / "idx", CountingEmbedder(), Settings(chunk_tokens=16, chunk_overlap=16))
    assert not (tmp_path / "idx").exists()


def test_warnings_about_skipped_files_are_reported(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    (corpus / "picture.png").write_bytes(b"\x89PNG")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    report = run(corpus, tmp_path / "idx", CountingEmbedder(), settings)
    assert report.documents_total == 3
    assert len(report.warnings) == 2
    assert any("picture.png" in w for w in report.warnings) and any("broken.pdf" in w for w in report.warnings)


def test_pdf_chunks_carry_pages(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    pages = [" ".join(f"page{p}word{i}" for i in range(60)) for p in (1, 2, 3)]
    (corpus / "report.pdf").write_bytes(make_pdf(pages))
    run(corpus, tmp_path / "idx", CountingEmbedder(), settings)
    index = load_index(tmp_path / "idx")
    pdf_chunks = [c for c in index.chunks if c.doc_id == "report.pdf"]
    assert {c.page for c in pdf_chunks} == {1, 2, 3}
    for c in pdf_chunks:
        assert c.text.startswith(f"page{c.page}word")
    assert index.manifest.documents["report.pdf"].page_count == 3


def test_failure_during_write_leaves_previous_index_identical(
    corpus: Path, tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_dir = tmp_path / "idx"
    run(corpus, index_dir, CountingEmbedder(), settings)
    before = load_index(index_dir)
    (corpus / "alpha.txt").write_text(long_text("changed"))
    (corpus / "new.txt").write_text(long_text("new"))

    real = rag.store._write_durably

    def fail_on_vectors(path: Path, data: bytes) -> dict[str, object]:
        if path.name == "vectors.npy":
            raise OSError(5, "Input/output error")
        return real(path, data)

    monkeypatch.setattr(rag.store, "_write_durably", fail_on_vectors)
    with pytest.raises(StorageError, match="Input/output error"):
        run(corpus, index_dir, CountingEmbedder(), settings)
    after = load_index(index_dir)
    assert after.version == before.version
    assert after.chunks == before.chunks
    assert np.array_equal(after.vectors, before.vectors)
    assert after.manifest == before.manifest

    monkeypatch.setattr(rag.store, "_write_durably", real)
    report = run(corpus, index_dir, CountingEmbedder(), settings)
    assert (report.added, report.updated) == (1, 1)
    assert sorted(p.name for p in index_dir.iterdir()) == sorted(["CURRENT", "LOCK", report.index_version])


# ------------------------------------------------------------ one document at a time (uploads)


def test_add_or_update_and_remove_one_document(corpus: Path, tmp_path: Path, settings: Settings) -> None:
    index_dir = tmp_path / "idx"
    run(corpus, index_dir, CountingEmbedder(), settings)
    before = load_index(index_dir)

    emb = CountingEmbedder()
    doc = load_bytes("uploads/notes.md", long_text("upload", 2).encode())
    index = add_or_update(index_dir, doc, emb, settings)
    added = [c for c in index.chunks if c.doc_id == "uploads/notes.md"]
    assert added and emb.seen == [c.text for c in added]
    assert load_index(index_dir).version == index.version != before.version
    assert index.search(emb.embed(["upload1 budgets"])[0], 1)[0].chunk.doc_id == "uploads/notes.md"

    same = add_or_update(index_dir, doc, CountingEmbedder(), settings)
    assert same.version == index.version  # unchanged upload: nothing written

    changed = load_bytes("uploads/notes.md", long_text("revised", 1).encode())
    emb = CountingEmbedder()
    index = add_or_update(index_dir, changed, emb, settings)
    notes = [c for c in index.chunks if c.doc_id == "uploads/notes.md"]
    assert emb.seen == [c.text for c in notes] and all("revised" in c.text for c in notes)

    index = remove(index_dir, "uploads/notes.md", settings)
    assert [d.doc_id for d in index.documents()] == [d.doc_id for d in before.documents()]
    assert [c.id for c in index.chunks] == [c.id for c in before.chunks]
    assert np.array_equal(index.vectors, before.vectors)
    with pytest.raises(InputError, match=r"notes\.md"):
        remove(index_dir, "uploads/notes.md", settings)

    # The next folder ingest sees the index as up to date with the corpus.
    assert run(corpus, index_dir, CountingEmbedder(), settings).chunks_embedded == 0


def test_add_or_update_creates_an_index_and_refuses_an_incompatible_one(tmp_path: Path, settings: Settings) -> None:
    index_dir = tmp_path / "idx"
    doc = load_bytes("first.txt", long_text("first", 2).encode())
    index = add_or_update(index_dir, doc, CountingEmbedder(), settings)
    assert [d.doc_id for d in index.documents()] == ["first.txt"]
    with pytest.raises(IndexFormatError, match="--rebuild"):
        add_or_update(index_dir, load_bytes("b.txt", b"more text"), CountingEmbedder("other"), settings)
    assert remove(index_dir, "first.txt", settings).chunks == []


def test_concurrent_uploads_both_land(tmp_path: Path, settings: Settings) -> None:
    index_dir = tmp_path / "idx"
    add_or_update(index_dir, load_bytes("seed.txt", b"seed text"), CountingEmbedder(), settings)
    errors: list[BaseException] = []

    def upload(name: str) -> None:
        try:
            for i in range(3):
                add_or_update(
                    index_dir, load_bytes(f"{name}{i}.txt", long_text(name).encode()), FakeEmbedder(), settings
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = {d.doc_id for d in load_index(index_dir).documents()}
    assert ids == {"seed.txt"} | {f"{n}{i}.txt" for n in ("left", "right") for i in range(3)}


# --------------------------------------------------------------------------- progress on stderr


class TickClock:
    """A clock that advances ``step`` seconds per reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_progress_lines_count_documents_and_chunks_with_rate_and_time_left() -> None:
    import io

    from rag.ingest_progress import IngestProgress

    out = io.StringIO()
    progress = IngestProgress(4, 400, stream=out, clock=TickClock(5.0), after_s=0.0, every_s=8.0)
    for _ in range(4):
        progress.update(documents=1, chunks=10, chars=100)
    progress.finish()
    lines = out.getvalue().splitlines()
    # Readings at 5 (start), 10, 15, 20, 25 (updates) and 30 (finish); a line at most every 8 s.
    assert lines == [
        "ingest: 1/4 documents, 10 chunks, 2.0 chunks/s, 15 s left",
        "ingest: 3/4 documents, 30 chunks, 2.0 chunks/s, 5 s left",
        "ingest: 4/4 documents, 40 chunks in 25 s (1.6 chunks/s)",
    ]


def test_progress_stays_quiet_for_a_short_ingest_and_rewrites_one_line_on_a_terminal() -> None:
    import io

    from rag.ingest_progress import IngestProgress

    quiet = io.StringIO()
    progress = IngestProgress(2, 10, stream=quiet, clock=TickClock(0.1), after_s=2.0)
    progress.update(documents=2, chunks=3, chars=10)
    progress.finish()
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    progress = IngestProgress(2, 10, stream=tty, clock=TickClock(1.0), after_s=0.0)
    progress.update(documents=1, chunks=3, chars=5)
    progress.update(documents=1, chunks=3, chars=5)
    progress.finish()
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and text.endswith("(2.0 chunks/s)\n")


def test_grouped_embedding_gives_the_same_chunks_and_vectors(
    corpus: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.chunking import chunk_document
    from rag.ingest import chunk_and_embed

    docs, _ = load_corpus(corpus)
    embedder = CountingEmbedder()
    monkeypatch.setattr("rag.ingest.EMBED_GROUP_CHUNKS", 5)  # several groups
    chunks, vectors = chunk_and_embed(docs, embedder, 48, 8)
    expected = {d.id: chunk_document(d, embedder.count_tokens, 48, 8) for d in docs}
    assert chunks == expected
    texts = [c.text for d in docs for c in expected[d.id]]
    assert np.array_equal(vectors, FakeEmbedder().embed(texts))


def test_cli_ingest_json_shows_progress_on_stderr_only(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rag import cli

    monkeypatch.setattr("rag.embedding.load_embedder", lambda settings: FakeEmbedder())
    monkeypatch.setattr("rag.ingest_progress.PROGRESS_AFTER_S", 0.0)  # as if the ingest were long
    monkeypatch.setenv("RAG_CHUNK_TOKENS", "48")
    monkeypatch.setenv("RAG_CHUNK_OVERLAP", "8")
    assert cli.main(["ingest", str(corpus), "--index", str(tmp_path / "index"), "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # stdout is exactly one JSON object
    assert report["documents_total"] == 3
    lines = err.splitlines()
    assert lines[0].startswith("ingest: ") and "chunks/s" in lines[0]
    assert lines[-1].startswith(f"ingest: 3/3 documents, {report['chunks_total']} chunks in ")
