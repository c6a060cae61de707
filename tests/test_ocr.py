"""OCR with the real Tesseract (CI installs it; a missing binary fails here loudly, by design)."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from rag import ocr
from rag.chunking import chunk_document
from rag.errors import InputError
from rag.formats import page_label
from rag.generation import Message
from rag.ingest import ingest
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
