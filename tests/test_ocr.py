"""OCR with the real Tesseract (CI installs it; a missing binary fails here loudly, by design)."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rag import ocr
from rag.chunking import chunk_document
from rag.errors import InputError
from rag.formats import page_label
from rag.generation import Message
from rag.ingest import add_or_update, ingest
from rag.loaders import load_bytes, load_corpus
from rag.pipeline import Pipeline
from rag.serialization import citation_to_dict
from rag.settings import Settings
from rag.store import CURRENT, MANIFEST, load_index
from tests.fakes import FakeEmbedder, FakeGenerator
from tests.image_files import encode, image_bytes, page_image
from tests.test_loaders import make_pdf

LINES = ["Mount Etna erupted again", "Lava reached the village"]


def image_pdf(lines: list[str]) -> bytes:
    """A one-page PDF holding only an image (no text layer), like a scanner's output."""
    return image_bytes(lines, "PDF")


def mixed_pdf(text_page: str = "Page one has a text layer with words.", scan: list[str] = LINES) -> bytes:
    """Page 1 has a text layer, page 2 is a scan."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for data in (make_pdf([text_page]), image_pdf(scan)):
        for page in PdfReader(io.BytesIO(data)).pages:
            writer.add_page(page)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_png_is_read_by_ocr_and_marked_scanned() -> None:
    doc = load_bytes("notes/etna.png", encode(page_image(LINES), "PNG"))
    assert "Mount Etna erupted again" in doc.text and "Lava reached the village" in doc.text
    assert doc.page_starts == (0,) and doc.scanned_pages == frozenset({1})


def test_each_tiff_frame_is_a_page() -> None:
    first, second = page_image(["Mount Etna erupted"]), page_image(["Lava reached the sea"])
    doc = load_bytes("scan.tiff", encode(first, "TIFF", save_all=True, append_images=[second]))
    assert len(doc.page_starts) == 2 and doc.scanned_pages == frozenset({1, 2})
    assert doc.page_at(doc.text.index("Etna")) == 1 and doc.page_at(doc.text.index("Lava")) == 2


def test_image_only_pdf_is_read_by_ocr_and_chunks_are_exact_slices() -> None:
    doc = load_bytes("scan.pdf", image_pdf(LINES))
    assert "Mount Etna erupted again" in doc.text and doc.scanned_pages == frozenset({1})
    chunks = chunk_document(doc, lambda s: len(s.split()), 4, 1)
    assert chunks and all(doc.text[c.start : c.end] == c.text and c.page == 1 for c in chunks)


def test_mixed_pdf_reads_the_text_layer_and_the_scan() -> None:
    doc = load_bytes("mixed.pdf", mixed_pdf())
    assert doc.text.startswith("Page one has a text layer with words.")
    assert doc.scanned_pages == frozenset({2})
    assert doc.page_at(doc.text.index("Page one")) == 1 and doc.page_at(doc.text.index("Lava")) == 2
    assert doc.text[doc.page_starts[1] :].startswith("Mount Etna")


def test_ocr_off_skips_images_and_scanned_pages(tmp_path: Path) -> None:
    off = ocr.OcrOptions(enabled=False)
    with pytest.raises(InputError, match="image and OCR is off"):
        load_bytes("etna.png", encode(page_image(LINES), "PNG"), off)
    doc = load_bytes("mixed.pdf", mixed_pdf(), off)
    assert "Lava" not in doc.text and doc.scanned_pages == frozenset()
    (tmp_path / "etna.png").write_bytes(encode(page_image(LINES), "PNG"))
    (tmp_path / "a.txt").write_text("text")
    docs, warnings = load_corpus(tmp_path, off)
    assert [d.id for d in docs] == ["a.txt"] and len(warnings) == 1 and "etna.png" in warnings[0]


def test_the_ocr_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    defaults = (fields["ocr"].default, fields["ocr_languages"].default, fields["ocr_timeout_s"].default)
    assert (ocr.DEFAULT_OPTIONS.enabled, ocr.DEFAULT_OPTIONS.languages, ocr.DEFAULT_OPTIONS.timeout_s) == defaults


def test_ingest_and_uploads_take_the_ocr_settings_they_are_given_not_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = ocr._tesseract
    seen: list[tuple[str, float]] = []

    def recording(png: bytes, languages: str, timeout_s: float) -> str:
        seen.append((languages, timeout_s))
        return real(png, languages, timeout_s)

    monkeypatch.setattr(ocr, "_tesseract", recording)
    # The environment says the opposite of the settings passed in: it must not matter.
    monkeypatch.setenv("RAG_OCR", "false")
    monkeypatch.setenv("RAG_OCR_TIMEOUT_S", "1")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "etna.png").write_bytes(encode(page_image(LINES), "PNG"))
    (corpus / "a.txt").write_text("Some plain text about the weather.")
    on = Settings(corpus_dir=corpus, index_dir=tmp_path / "index", ocr=True, ocr_languages="eng", ocr_timeout_s=12.5)
    report = ingest(corpus, on.index_dir, FakeEmbedder(), on, progress=False)
    assert report.documents_total == 2 and not report.warnings
    assert seen == [("eng", 12.5)]

    monkeypatch.setenv("RAG_OCR", "true")
    off = on.model_copy(update={"ocr": False, "index_dir": tmp_path / "index-off"})
    report = ingest(corpus, off.index_dir, FakeEmbedder(), off, progress=False)
    assert report.documents_total == 1 and any("OCR is off" in w for w in report.warnings)
    with pytest.raises(InputError, match="OCR is off"):
        Pipeline(off, FakeEmbedder(), None).add_document("notice.png", encode(page_image(LINES), "PNG"))
    assert not (corpus / "notice.png").exists() and len(seen) == 1


def fake_tesseract(folder: Path, script: str) -> None:
    """Put a ``tesseract`` shell script first on PATH (the real one is still found as /usr/bin/tesseract)."""
    path = folder / "tesseract"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_tesseract_alone_runs_on_one_openmp_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    fake_tesseract(tmp_path, 'echo "limit=${OMP_THREAD_LIMIT:-none} args=$*"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    text = ocr.read_page("a.png", 1, page_image(LINES), ocr.OcrOptions(languages="eng+deu"))
    assert text == "limit=1 args=stdin stdout -l eng+deu"
    assert "OMP_THREAD_LIMIT" not in os.environ  # llama.cpp's threads in this process keep their default


def test_a_page_that_times_out_is_one_warning_and_the_rest_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    real = shutil.which("tesseract")
    assert real is not None
    # The first page hangs (and is killed at the time limit); the next ones go to the real tesseract.
    marker = tmp_path / "hung-once"
    fake_tesseract(tmp_path, f'[ -e {marker} ] || {{ touch {marker}; exec sleep 30; }}\nexec {real} "$@"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    first, second = page_image(["Mount Etna erupted"]), page_image(["Lava reached the sea"])
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        doc = load_bytes(
            "scan.tif", encode(first, "TIFF", save_all=True, append_images=[second]), ocr.OcrOptions(timeout_s=1.5)
        )
    assert time.perf_counter() - started < 25  # the hung page was killed, not waited for
    assert "Etna" not in doc.text and "Lava reached the sea" in doc.text and doc.page_at(doc.text.index("Lava")) == 2
    timeouts = [r.getMessage() for r in caplog.records if "RAG_OCR_TIMEOUT_S" in r.getMessage()]
    assert len(timeouts) == 1 and "scan.tif page 1" in timeouts[0] and "(1.5 s)" in timeouts[0]


def test_a_tesseract_error_is_a_warning_with_its_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        text = ocr.read_page("a.png", 3, page_image(LINES), ocr.OcrOptions(languages="nosuchlanguage"))
    assert text == ""
    (message,) = [r.getMessage() for r in caplog.records if "a.png page 3" in r.getMessage()]
    assert "failed (tesseract exit" in message and "nosuchlanguage" in message and "left out" in message


def test_missing_tesseract_is_one_line_naming_apt_get(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no tesseract on PATH
    with pytest.raises(InputError, match=r"apt-get install tesseract-ocr") as caught:
        load_bytes("etna.png", encode(page_image(LINES), "PNG"))
    assert "\n" not in str(caught.value)


def test_a_transparent_png_is_read_on_white() -> None:
    # Black text on fully transparent black, as screenshots often are: black on black once the alpha is dropped.
    mask = page_image(LINES).convert("L").point(lambda v: 255 - v)
    image = Image.new("RGBA", mask.size, (0, 0, 0, 0))
    image.putalpha(mask)
    doc = load_bytes("screenshot.png", encode(image, "PNG"))
    assert "Mount Etna erupted again" in doc.text


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("random.png", bytes(range(256)) * 8, "not a readable image"),
        ("cut.png", encode(page_image(LINES), "PNG")[:400], "not a readable image"),
        ("cut.jpg", encode(page_image(LINES), "JPEG")[:300], "not a readable image"),
    ],
)
def test_bad_images_are_one_input_error(name: str, data: bytes, says: str) -> None:
    with pytest.raises(InputError, match=says):
        load_bytes(name, data)


def test_needs_ocr_threshold() -> None:
    assert ocr.needs_ocr("") and ocr.needs_ocr("  127  ")
    assert not ocr.needs_ocr("Preface")


# Each page long enough (in the fake embedder's words) to be a passage of its own at 16-token chunks.
TEXT_PAGE = "The harbour office keeps the ferry timetable for the islands\nand posts the winter changes each November"
SCAN = [
    "Mount Etna erupted again in the spring",
    "Lava reached the village of Zafferana",
    "and the road to the crater closed",
]


def cite_passage_with(word: str, sentence: str) -> FakeGenerator:
    """A generator that answers ``sentence`` citing whichever numbered passage contains ``word``."""

    def reply(messages: list[Message]) -> str:
        content = "\n".join(m["content"] for m in messages[-2:])
        for n, passage in re.findall(r"^\[(\d+)\] (.*)$", content, flags=re.M):
            if word in passage:
                return f"{sentence} [{n}]."
        return "NOT FOUND"

    return FakeGenerator(reply)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scanned_corpus(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A corpus of a PDF whose page 1 has a text layer and page 2 is a scan, and a PNG, indexed with fakes."""
    root = tmp_path_factory.mktemp("scanned")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "mixed.pdf").write_bytes(mixed_pdf(TEXT_PAGE, SCAN))
    (corpus / "notice.png").write_bytes(encode(page_image(["The museum opens at nine", "on Sundays in August"]), "PNG"))
    settings = Settings(
        corpus_dir=corpus, index_dir=root / "index", chunk_tokens=16, chunk_overlap=0,
        min_dense_score=0.0, min_keyword_score=0.0,
    )  # fmt: skip
    ingest(corpus, settings.index_dir, FakeEmbedder(), settings, progress=False)
    return settings


@pytest.mark.parametrize(
    ("question", "word", "sentence", "doc_id", "page", "scanned"),
    [
        ("Where did the lava reach?", "Zafferana", "Lava reached Zafferana", "mixed.pdf", 2, True),
        (
            "Who keeps the ferry timetable?",
            "timetable",
            "The harbour office keeps the timetable",
            "mixed.pdf",
            1,
            False,
        ),
        ("When does the museum open?", "museum", "The museum opens at nine on Sundays", "notice.png", 1, True),
    ],
)
def test_a_page_read_by_ocr_is_cited_as_scanned_and_a_text_page_is_not(
    scanned_corpus: Settings, question: str, word: str, sentence: str, doc_id: str, page: int, scanned: bool
) -> None:
    pipeline = Pipeline(scanned_corpus, FakeEmbedder(), cite_passage_with(word, sentence))
    answer = pipeline.ask(question)
    assert not answer.abstained, answer.notes
    (citation,) = answer.citations
    assert (citation.doc_id, citation.page, citation.scanned) == (doc_id, page, scanned)
    assert word in citation.text
    assert citation_to_dict(citation)["scanned"] is scanned  # what the API and `rag ask --json` send
    expected = f"scanned page {page}" if scanned else f"p.{page}"
    assert page_label(citation.doc_id, page, citation.scanned) == expected  # what `rag ask` prints


def test_an_index_from_before_scanned_pages_were_recorded_loads_and_the_next_ingest_records_them(
    scanned_corpus: Settings, tmp_path: Path
) -> None:
    import json
    import shutil

    index_dir = tmp_path / "index"
    shutil.copytree(scanned_corpus.index_dir, index_dir)
    manifest_path = index_dir / (index_dir / CURRENT).read_text().strip() / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    assert manifest["documents"]["mixed.pdf"]["scanned_pages"] == [2]
    for entry in manifest["documents"].values():
        del entry["scanned_pages"]  # as the manifest was written before this field
    manifest_path.write_text(json.dumps(manifest))

    old = load_index(index_dir)
    # Unknown for the PDF (cited as a plain page until re-ingested); an image is OCR'd on every page.
    assert not old.is_scanned("mixed.pdf", 2) and old.is_scanned("notice.png", 1)
    settings = scanned_corpus.model_copy(update={"index_dir": index_dir})
    report = ingest(settings.corpus_dir, index_dir, FakeEmbedder(), settings, progress=False)
    assert report.chunks_embedded == 0 and report.index_version != old.version
    new = load_index(index_dir)
    assert new.is_scanned("mixed.pdf", 2) and not new.is_scanned("mixed.pdf", 1) and new.is_scanned("notice.png", 1)
    assert [c.id for c in new.chunks] == [c.id for c in old.chunks]
    # Recorded now: the next ingest has nothing to do.
    again = ingest(settings.corpus_dir, index_dir, FakeEmbedder(), settings, progress=False)
    assert again.index_version == new.version


class Counting:
    """Counts Tesseract runs (the real one still reads) and parsed files, by document id."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import rag.loaders

        self.ocr_runs = 0
        self.parsed: list[str] = []
        real_tesseract, real_parse = ocr._tesseract, rag.loaders._parse

        def tesseract(png: bytes, languages: str, timeout_s: float) -> str:
            self.ocr_runs += 1
            return real_tesseract(png, languages, timeout_s)

        def parse(doc_id: str, *args: Any) -> Any:
            self.parsed.append(doc_id)
            return real_parse(doc_id, *args)

        monkeypatch.setattr(ocr, "_tesseract", tesseract)
        monkeypatch.setattr(rag.loaders, "_parse", parse)

    def reset(self) -> None:
        self.ocr_runs, self.parsed = 0, []


def chunk_texts(settings: Settings, doc_id: str) -> str:
    return " ".join(c.text for c in load_index(settings.index_dir).chunks if c.doc_id == doc_id)


@pytest.fixture
def ocr_corpus(tmp_path: Path) -> Settings:
    """A folder with a PDF whose page 2 is a scan, a PNG, a text file and an unreadable image."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "mixed.pdf").write_bytes(mixed_pdf(TEXT_PAGE, SCAN))
    (corpus / "notice.png").write_bytes(encode(page_image(["The museum opens at nine"]), "PNG"))
    (corpus / "a.txt").write_text("Some plain text about the weather.")
    (corpus / "bad.png").write_bytes(b"not an image at all")
    return Settings(corpus_dir=corpus, index_dir=tmp_path / "index", chunk_tokens=16, chunk_overlap=0)


def test_a_second_ingest_of_an_unchanged_folder_hashes_the_files_and_runs_no_ocr(
    ocr_corpus: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counting = Counting(monkeypatch)
    s = ocr_corpus
    first = ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert counting.ocr_runs == 2 and sorted(counting.parsed) == ["a.txt", "bad.png", "mixed.pdf", "notice.png"]
    assert first.added == 3 and any("bad.png" in w for w in first.warnings)

    counting.reset()
    with caplog.at_level(logging.INFO, logger="rag.ingest"):
        again = ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert counting.ocr_runs == 0 and counting.parsed == ["bad.png"]  # the bad file still warns, read again
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 3)
    assert again.documents_total == 3 and again.chunks_embedded == 0 and again.index_version == first.index_version
    assert any("bad.png" in w for w in again.warnings)
    assert any(f"index {first.index_version} is up to date" in r.getMessage() for r in caplog.records)
    assert load_index(s.index_dir).is_scanned("mixed.pdf", 2)


def test_a_changed_file_is_read_again_and_a_deleted_one_removed(
    ocr_corpus: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(monkeypatch)
    s = ocr_corpus
    ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    counting.reset()
    (s.corpus_dir / "notice.png").write_bytes(encode(page_image(["The library closes at noon"]), "PNG"))
    (s.corpus_dir / "mixed.pdf").unlink()
    report = ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert counting.ocr_runs == 1 and sorted(counting.parsed) == ["bad.png", "notice.png"]
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 1, 1, 1)
    assert "library closes" in chunk_texts(s, "notice.png") and "museum" not in chunk_texts(s, "notice.png")
    assert set(load_index(s.index_dir).manifest.documents) == {"a.txt", "notice.png"}


def test_other_ocr_options_read_the_files_that_needed_ocr_again(
    ocr_corpus: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = Counting(monkeypatch)
    off = ocr_corpus.model_copy(update={"ocr": False})
    report = ingest(off.corpus_dir, off.index_dir, FakeEmbedder(), off, progress=False)
    assert counting.ocr_runs == 0 and report.documents_total == 2 and "Zafferana" not in chunk_texts(off, "mixed.pdf")
    assert load_index(off.index_dir).manifest.documents["mixed.pdf"].ocr == "off"

    counting.reset()
    on = ocr_corpus  # RAG_OCR=true: the PDF's scanned page now has words to read; the text file does not change
    report = ingest(on.corpus_dir, on.index_dir, FakeEmbedder(), on, progress=False)
    assert counting.ocr_runs == 2 and sorted(counting.parsed) == ["bad.png", "mixed.pdf", "notice.png"]
    assert (report.added, report.updated, report.unchanged) == (1, 1, 1)
    assert "Zafferana" in chunk_texts(on, "mixed.pdf")
    entries = load_index(on.index_dir).manifest.documents
    assert (entries["mixed.pdf"].ocr, entries["notice.png"].ocr, entries["a.txt"].ocr) == ("eng", "eng", "")

    counting.reset()
    ingest(on.corpus_dir, on.index_dir, FakeEmbedder(), on, progress=False)
    assert counting.ocr_runs == 0


def test_a_file_the_index_changed_under_the_ingest_is_read_under_the_lock(
    ocr_corpus: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rag.ingest

    s = ocr_corpus
    ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    real_read = rag.ingest.read_corpus
    new_bytes = encode(page_image(["The library closes at noon"]), "PNG")

    def read_then_an_upload_lands(*args: Any) -> Any:
        corpus = real_read(*args)  # notice.png hashed as unchanged against the index as it was
        (s.corpus_dir / "notice.png").write_bytes(new_bytes)
        add_or_update(s.index_dir, load_bytes("notice.png", new_bytes), FakeEmbedder(), s)
        return corpus

    monkeypatch.setattr(rag.ingest, "read_corpus", read_then_an_upload_lands)
    report = ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert report.documents_total == 3 and report.unchanged == 3 and report.chunks_embedded == 0
    assert "library closes" in chunk_texts(s, "notice.png")


def ingest_as_before_ocr_options_were_recorded(s: Settings) -> None:
    """Ingest the corpus, then drop each entry's OCR options, as a manifest written before that field."""
    import json

    ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    manifest_path = s.index_dir / (s.index_dir / CURRENT).read_text().strip() / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["documents"].values():
        del entry["ocr"]
    manifest_path.write_text(json.dumps(manifest))


def test_an_index_from_before_ocr_options_were_recorded_records_them_on_the_next_ingest(
    ocr_corpus: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ocr_corpus
    ingest_as_before_ocr_options_were_recorded(s)
    old = load_index(s.index_dir)

    counting = Counting(monkeypatch)
    report = ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert counting.ocr_runs == 2 and report.chunks_embedded == 0 and report.index_version != old.version
    assert {d: e.ocr for d, e in load_index(s.index_dir).manifest.documents.items()} == {
        "a.txt": "",
        "mixed.pdf": "eng",
        "notice.png": "eng",
    }
    counting.reset()
    ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert counting.ocr_runs == 0


def test_an_index_from_before_ocr_options_were_recorded_re_embeds_a_scan_that_now_reads_otherwise(
    ocr_corpus: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ocr_corpus
    ingest_as_before_ocr_options_were_recorded(s)

    # Another Tesseract reads the same image with one more line: the indexed chunks are stale now.
    real_tesseract = ocr._tesseract
    monkeypatch.setattr(ocr, "_tesseract", lambda png, *a: real_tesseract(png, *a) + "\nClosed on Mondays.")
    report = ingest(s.corpus_dir, s.index_dir, FakeEmbedder(), s, progress=False)
    assert (report.updated, report.unchanged) == (2, 1)  # the PDF's scanned page and the PNG; a.txt kept
    assert "Closed on Mondays" in chunk_texts(s, "notice.png")
    assert "Closed on Mondays" in chunk_texts(s, "mixed.pdf")
