"""The office and table loaders (rag/formats.py) on real files the tests build: text, offsets, slides, headers."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag.chunking import chunk_document
from rag.errors import InputError
from rag.formats import TABLE_GROUP_CHARS, page_label
from rag.ingest import ingest
from rag.loaders import load_bytes, load_corpus
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.store import load_index
from rag.types import Document
from tests.fakes import FakeEmbedder, FakeGenerator
from tests.office_files import (
    BILLION_LAUGHS,
    MANIFEST,
    docx_file,
    odt_body,
    odt_file,
    pptx_file,
    replace_part,
    zip_bomb,
)

COUNT = FakeEmbedder().count_tokens


def chunks_of(doc: Document, chunk_tokens: int = 200, overlap: int = 40) -> list[tuple[str, int, int, int | None]]:
    out = []
    for c in chunk_document(doc, COUNT, chunk_tokens, overlap):
        assert doc.text[c.start : c.end] == c.text  # the project's promise, for every format
        out.append((c.text, c.start, c.end, c.page))
    return out


# ---------- .docx ----------


def test_docx_reads_heading_paragraphs_and_tables_in_reading_order() -> None:
    data = docx_file(
        ["Mount Etna is the tallest active volcano in Europe.", [["town", "height"], ["Catania", "7 m"]], "After."],
        heading="Etna report",
    )
    doc = load_bytes("etna.docx", data)
    assert doc.text == (
        "Etna report\n\nMount Etna is the tallest active volcano in Europe.\n\ntown | height\nCatania | 7 m\n\nAfter."
    )
    assert doc.page_starts == ()


def test_docx_merged_cell_is_read_once() -> None:
    import docx

    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    table.cell(0, 0).merge(table.cell(0, 2)).text = "Merged title"
    for c, text in enumerate(["a", "b", "c"]):
        table.cell(1, c).text = text
    out = io.BytesIO()
    document.save(out)
    assert load_bytes("m.docx", out.getvalue()).text == "Merged title\na | b | c"


# ---------- .pptx ----------


def test_pptx_slides_are_pages_and_notes_follow_their_slide() -> None:
    data = pptx_file(
        [
            ("Etna", "Tallest active volcano in Europe", "Say the height"),
            ("", "", ""),  # an empty slide still counts, so later numbers stay right
            ("Stromboli", "Erupts every few minutes\nLighthouse of the Mediterranean", ""),
        ]
    )
    doc = load_bytes("deck.pptx", data)
    slide1 = "Etna\n\nTallest active volcano in Europe\n\nSay the height"
    slide3 = "Stromboli\n\nErupts every few minutes\nLighthouse of the Mediterranean"
    assert doc.text == f"{slide1}\n\n\n\n{slide3}"
    assert doc.page_starts == (0, len(slide1) + 2, len(slide1) + 4)
    assert doc.page_at(doc.text.index("Stromboli")) == 3
    assert doc.page_at(doc.text.index("Say the height")) == 1


def test_pptx_chunks_carry_their_slide_number() -> None:
    slides = [(f"Topic {i}", " ".join(f"fact{i}w{j}" for j in range(60)), f"note {i}") for i in range(1, 6)]
    doc = load_bytes("deck.pptx", pptx_file(slides))
    chunks = chunks_of(doc, chunk_tokens=64, overlap=0)
    for text, start, end, page in chunks:
        assert page == doc.page_at(start) == doc.page_at(end - 1)  # a passage never spans two slides
        first_word = next(w for w in text.split() if w.startswith("fact"))
        assert page == int(first_word[4 : first_word.index("w")])
    assert {c[3] for c in chunks} == {1, 2, 3, 4, 5}


def test_page_label_names_slides() -> None:
    assert page_label("talks/Deck.PPTX", 2) == "slide 2"
    assert page_label("a.pdf", 2) == "p.2"


# ---------- .odt ----------


def test_odt_reads_headings_lists_tables_and_skips_notes() -> None:
    body = (
        "<text:h>Etna</text:h>"
        '<text:p>Tallest<text:s text:c="3"/>volcano <text:span>in <text:a>Europe</text:a></text:span>.'
        "<text:note><text:note-body><text:p>A footnote.</text:p></text:note-body></text:note></text:p>"
        "<text:list><text:list-item><text:p>first</text:p></text:list-item>"
        "<text:list-item><text:p>second<text:line-break/>line</text:p></text:list-item></text:list>"
        "<table:table><table:table-header-rows><table:table-row><table:table-cell><text:p>town</text:p>"
        "</table:table-cell><table:table-cell><text:p>height</text:p></table:table-cell></table:table-row>"
        "</table:table-header-rows><table:table-row><table:table-cell><text:p>Enna</text:p></table:table-cell>"
        "<table:table-cell><text:p>931</text:p></table:table-cell></table:table-row></table:table>"
        "<text:section><text:p>In a section.</text:p></text:section>"
    )
    doc = load_bytes("etna.odt", odt_file(body))
    assert doc.text == (
        "Etna\n\nTallest volcano in Europe.\n\nfirst\n\nsecond\nline\n\ntown | height\nEnna | 931\n\nIn a section."
    )


# ---------- .csv / .tsv ----------


def test_csv_passages_each_start_with_the_header_line() -> None:
    rows = "\n".join(f"Town{i},{i * 7},Sicily" for i in range(200))
    doc = load_bytes("towns.csv", f"town,height,region\n{rows}\n".encode())
    header = "town | height | region"
    groups = doc.text.split("\n\n")
    assert len(groups) > 5
    assert all(g.startswith(header + "\n") and len(g) <= TABLE_GROUP_CHARS for g in groups)
    assert [line for g in groups for line in g.split("\n")[1:]] == [f"Town{i} | {i * 7} | Sicily" for i in range(200)]
    for text, *_ in chunks_of(doc):
        assert text.startswith(header + "\n")


def test_csv_quoted_fields_semicolons_and_tsv() -> None:
    assert (
        load_bytes("q.csv", b'name,quote\r\nEtna,"hot,\r\nvery hot"\r\n').text == "name | quote\nEtna | hot, very hot"
    )
    assert load_bytes("s.csv", "Ort;Höhe\nEnna;931\nCatania;7\n".encode()).text == "Ort | Höhe\nEnna | 931\nCatania | 7"
    assert load_bytes("t.tsv", b"a\tb\n1\t2, 3\n").text == "a | b\n1 | 2, 3"


def test_one_long_row_is_its_own_passage_under_the_header() -> None:
    long = "x" * (2 * TABLE_GROUP_CHARS)
    text = load_bytes("l.csv", f"k,v\n1,short\n2,{long}\n3,short\n".encode()).text
    assert text == f"k | v\n1 | short\n\nk | v\n2 | {long}\n\nk | v\n3 | short"


# ---------- exact offsets, any content ----------

WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30)
PARAGRAPHS = st.lists(st.lists(WORDS, min_size=1, max_size=12).map(" ".join), min_size=1, max_size=8)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_paragraphs_kept(doc: Document, paragraphs: list[str]) -> None:
    for paragraph in paragraphs:
        words = paragraph.split()
        if words:
            assert " ".join(words) in doc.text


@SETTINGS
@given(PARAGRAPHS)
def test_docx_offsets_are_exact(paragraphs: list[str]) -> None:
    try:
        doc = load_bytes("p.docx", docx_file(paragraphs))
    except InputError as exc:
        assert "no text" in str(exc)
        return
    assert_paragraphs_kept(doc, paragraphs)
    chunks_of(doc, chunk_tokens=16, overlap=4)


@SETTINGS
@given(st.lists(PARAGRAPHS, min_size=1, max_size=5))
def test_pptx_offsets_and_slide_numbers_are_exact(slides: list[list[str]]) -> None:
    try:
        doc = load_bytes("p.pptx", pptx_file([(s[0], "\n".join(s[1:]), "") for s in slides]))
    except InputError as exc:
        assert "no text" in str(exc)
        return
    assert len(doc.page_starts) == len(slides)
    for n, slide in enumerate(slides, 1):
        title = " ".join(slide[0].split())
        if title:
            assert doc.text.find(title, doc.page_starts[n - 1]) >= 0
    for _text, start, end, page in chunks_of(doc, chunk_tokens=16, overlap=4):
        assert page == doc.page_at(start) == doc.page_at(end - 1)


@SETTINGS
@given(PARAGRAPHS)
def test_odt_offsets_are_exact(paragraphs: list[str]) -> None:
    try:
        doc = load_bytes("p.odt", odt_file(odt_body(paragraphs)))
    except InputError as exc:
        assert "no text" in str(exc)
        return
    assert_paragraphs_kept(doc, paragraphs)
    chunks_of(doc, chunk_tokens=16, overlap=4)


# Cells may hold the other separators, quotes and line breaks: csv.writer quotes them.
CELLS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), include_characters=';|\t\n",'),
    max_size=20,
)


@SETTINGS
@given(st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=2, max_size=60))
def test_csv_offsets_are_exact_and_every_passage_has_the_header(rows: list[list[str]]) -> None:
    import csv

    out = io.StringIO()
    csv.writer(out).writerows([["col a", "col b", "col c"], *rows])
    doc = load_bytes("p.csv", out.getvalue().encode())
    for text, *_ in chunks_of(doc, chunk_tokens=200, overlap=40):
        assert text.startswith("col a | col b | col c")


# ---------- a folder of every type, through ingest and a question ----------


def every_kind(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("Vulcano gave its name to every volcano.")
    (root / "report.docx").write_bytes(docx_file(["Etna stands on the east coast of Sicily."], heading="Etna"))
    (root / "talk.pptx").write_bytes(
        pptx_file([("Intro", "Sicily has three active volcanoes", ""), ("Stromboli", "Stromboli erupts hourly", "")])
    )
    (root / "essay.odt").write_bytes(odt_file(odt_body(["Vesuvius buried Pompeii in 79 AD."])))
    (root / "towns.csv").write_text("town,height\nEnna,931 m\nCatania,7 m\n")
    (root / "peaks.tsv").write_text("peak\tmetres\nEtna\t3357\n")


def test_a_folder_of_every_kind_is_ingested_and_searchable(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    every_kind(corpus)
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index")
    report = ingest(corpus, settings.index_dir, FakeEmbedder(), settings, progress=False)
    assert report.warnings == () and report.documents_total == 6
    index = load_index(settings.index_dir)
    by_doc = {c.doc_id: c for c in index.chunks}
    assert set(by_doc) == {"notes.txt", "report.docx", "talk.pptx", "essay.odt", "towns.csv", "peaks.tsv"}
    pipeline = Pipeline(settings, FakeEmbedder(), FakeGenerator(lambda m: "Stromboli erupts hourly [1]."))
    hits = pipeline.search("Stromboli erupts hourly", k=1)
    assert hits[0].chunk.doc_id == "talk.pptx"
    answer = pipeline.ask("How often does Stromboli erupt?")
    cited = [c for c in answer.citations if c.doc_id == "talk.pptx"]
    assert cited and cited[0].page == 2 and page_label(cited[0].doc_id, 2) == "slide 2"


def test_bad_office_files_are_one_warning_each_and_the_rest_is_indexed(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    every_kind(corpus)
    good = docx_file(["fine"])
    (corpus / "bomb.docx").write_bytes(zip_bomb(80 << 20))
    (corpus / "locked.pptx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    (corpus / "cut.docx").write_bytes(good[: len(good) // 2])
    (corpus / "laughs.docx").write_bytes(replace_part(good, "word/document.xml", BILLION_LAUGHS + b"<w:document/>"))
    (corpus / "secret.odt").write_bytes(
        odt_file(odt_body(["x"]), manifest=MANIFEST.replace("</manifest:manifest>", "<encryption-data/></m>"))
    )
    (corpus / "huge.csv").write_text("a,b\n1," + "y" * 200_000 + "\n")
    (corpus / "latin.csv").write_bytes("ville,café\nLyon,crème\n".encode("latin-1"))
    docs, warnings = load_corpus(corpus)
    assert len(docs) == 6
    assert len(warnings) == 7, warnings
    said = " ".join(warnings)
    for name, reason in [
        ("bomb.docx", "zip bomb"),
        ("locked.pptx", "password-protected"),
        ("cut.docx", "not a readable Word"),
        ("laughs.docx", "DTD"),
        ("secret.odt", "password-protected"),
        ("huge.csv", "field larger than field limit"),
        ("latin.csv", "not valid UTF-8"),
    ]:
        assert any(name in w and reason in w for w in warnings), (name, said)
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index")
    report = ingest(corpus, settings.index_dir, FakeEmbedder(), settings, progress=False)
    assert report.documents_total == 6 and len(report.warnings) == 7


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = zip_bomb(80 << 20)
    assert len(bomb) < 200_000
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"bomb\.docx: its parts inflate to 83,886,\d+ bytes"):
        load_bytes("bomb.docx", bomb)
    assert time.perf_counter() - started < 0.5


def test_not_a_zip_at_all() -> None:
    for name, kind in [("a.docx", "Word"), ("a.pptx", "PowerPoint"), ("a.odt", "OpenDocument")]:
        with pytest.raises(InputError, match=f"{name}: it is not a readable {kind}"):
            load_bytes(name, b"plain text, not a package")
    with pytest.raises(InputError, match=r"no content\.xml"):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as package:
            package.writestr("mimetype", "x")
        load_bytes("empty.odt", out.getvalue())


def test_a_dtd_is_refused_in_any_part_whatever_its_name() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(docx_file(["fine"]))) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("word/media/image1.png", b"\x89PNG" + bytes(100))  # not XML: skipped quickly
        dst.writestr(
            "customXml/item9.bin", b'\xef\xbb\xbf<?xml version="1.0"?>\n<!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>'
        )
    with pytest.raises(InputError, match=r"customXml/item9\.bin\) declares a DTD"):
        load_bytes("d.docx", out.getvalue())


def test_a_package_of_too_many_parts_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as package:
        for i in range(10_001):
            package.writestr(f"p{i}", b"")
    with pytest.raises(InputError, match="10,001 parts"):
        load_bytes("many.odt", out.getvalue())


def test_the_page_file_picker_offers_every_supported_type() -> None:
    import re

    from rag.loaders import SUPPORTED_SUFFIXES

    page = (Path(__file__).resolve().parents[1] / "api" / "static" / "index.html").read_text(encoding="utf-8")
    accept = re.search(r'id="file"[^>]*accept="([^"]*)"', page)
    assert accept and set(accept.group(1).split(",")) == SUPPORTED_SUFFIXES


def test_docx_reads_content_controls_and_tracked_insertions_but_not_deletions() -> None:
    import docx
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    document = docx.Document()
    document.add_paragraph("Before.")
    body = document.element.body
    sectpr = body[-1]  # the section properties stay last
    sectpr.addprevious(
        parse_xml(
            f"<w:sdt {nsdecls('w')}><w:sdtContent><w:p><w:r><w:t>Inside a content control.</w:t></w:r></w:p>"
            "</w:sdtContent></w:sdt>"
        )
    )
    sectpr.addprevious(
        parse_xml(
            f'<w:p {nsdecls("w")}><w:r><w:t xml:space="preserve">Etna is </w:t></w:r>'
            '<w:del w:id="1" w:author="a"><w:r><w:delText>very </w:delText></w:r></w:del>'
            '<w:ins w:id="2" w:author="a"><w:r><w:t xml:space="preserve">still </w:t></w:r></w:ins>'
            "<w:r><w:t>active.</w:t></w:r></w:p>"
        )
    )
    out = io.BytesIO()
    document.save(out)
    assert load_bytes("c.docx", out.getvalue()).text == "Before.\n\nInside a content control.\n\nEtna is still active."


def corrupt(package: bytes, part: str) -> bytes:
    """Zero 8 bytes in the middle of one part's compressed data: the zip directory is intact, the CRC is not."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        info = archive.getinfo(part)
    data = bytearray(package)
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data[at : at + 8] = bytes(8)
    return bytes(data)


def test_a_damaged_part_is_unreadable_not_a_traceback() -> None:
    words = [" ".join(f"word{i}" for i in range(2000))]
    with pytest.raises(InputError, match=r"d\.odt: it is not a readable OpenDocument"):
        load_bytes("d.odt", corrupt(odt_file(odt_body(words)), "content.xml"))
    with pytest.raises(InputError, match=r"d\.docx: it is not a readable Word"):
        load_bytes("d.docx", corrupt(docx_file(words), "word/document.xml"))


def test_pptx_reads_tables_and_grouped_shapes() -> None:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[6])  # blank
    table = slide.shapes.add_table(2, 2, Inches(1), Inches(1), Inches(4), Inches(1)).table
    for (r, c), text in zip([(0, 0), (0, 1), (1, 0), (1, 1)], ["volcano", "height", "Etna", "3357 m"], strict=True):
        table.cell(r, c).text = text
    group = slide.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(1), Inches(3), Inches(3), Inches(1)).text_frame.text = "Grouped caption"
    out = io.BytesIO()
    deck.save(out)
    doc = load_bytes("t.pptx", out.getvalue())
    assert doc.text == "volcano | height\nEtna | 3357 m\n\nGrouped caption"
    assert doc.page_starts == (0,)


def test_an_uploaded_deck_is_cited_by_slide_over_http(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "seed.md").write_text("Mount Etna stands on the east coast of Sicily.")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index", api_key=None)
    ingest(corpus, settings.index_dir, FakeEmbedder(), settings, progress=False)
    pipeline = Pipeline(settings, FakeEmbedder(), FakeGenerator(lambda m: "Stromboli erupts hourly [1]."))
    app = create_app(settings, lambda s: pipeline)
    deck = pptx_file([("Intro", "Sicily", ""), ("Stromboli", "Stromboli erupts hourly", "Mention the lighthouse")])
    with TestClient(app) as client:
        assert app.state.rag.wait_ready(10)
        resp = client.post("/documents", files={"file": ("talk.pptx", deck)})
        assert resp.status_code == 201, resp.text
        answer = client.post("/ask", json={"question": "How often does Stromboli erupt?"}).json()
    cited = answer["citations"][0]
    assert cited["doc_id"] == "talk.pptx" and cited["page"] == 2
    assert cited["text"].startswith("Stromboli") and "lighthouse" in cited["text"]


def test_an_odt_written_by_odfpy_is_read() -> None:
    from odf.opendocument import OpenDocumentText
    from odf.table import Table, TableCell, TableColumn, TableRow
    from odf.text import H, List, ListItem, P, Span

    document = OpenDocumentText()
    document.text.addElement(H(outlinelevel=1, text="Etna"))
    paragraph = P(text="Tallest active volcano ")
    paragraph.addElement(Span(text="in Europe."))
    document.text.addElement(paragraph)
    table = Table(name="Heights")
    table.addElement(TableColumn(numbercolumnsrepeated=2))
    for cells in (["town", "height"], ["Enna", "931 m"]):
        row = TableRow()
        for text in cells:
            cell = TableCell()
            cell.addElement(P(text=text))
            row.addElement(cell)
        table.addElement(row)
    document.text.addElement(table)
    items = List()
    item = ListItem()
    item.addElement(P(text="Erupted in 2021."))
    items.addElement(item)
    document.text.addElement(items)
    out = io.BytesIO()
    document.save(out)
    doc = load_bytes("etna.odt", out.getvalue())
    assert doc.text == "Etna\n\nTallest active volcano in Europe.\n\ntown | height\nEnna | 931 m\n\nErupted in 2021."


def test_a_table_of_contents_is_not_read_twice() -> None:
    import docx
    from docx.oxml import parse_xml
    from docx.oxml.ns import nsdecls

    document = docx.Document()
    document.add_heading("Etna", 1)
    document.add_paragraph("Body.")
    document.element.body[0].addprevious(
        parse_xml(
            f'<w:sdt {nsdecls("w")}><w:sdtPr><w:docPartObj><w:docPartGallery w:val="Table of Contents"/>'
            "</w:docPartObj></w:sdtPr><w:sdtContent><w:p><w:r><w:t>Etna 1</w:t></w:r></w:p></w:sdtContent></w:sdt>"
        )
    )
    out = io.BytesIO()
    document.save(out)
    assert load_bytes("toc.docx", out.getvalue()).text == "Etna\n\nBody."
    toc = "<text:table-of-content><text:index-body><text:p>Etna 1</text:p></text:index-body></text:table-of-content>"
    assert load_bytes("toc.odt", odt_file(toc + "<text:h>Etna</text:h><text:p>Body.</text:p>")).text == "Etna\n\nBody."


def test_rag_ingest_warns_once_per_bad_office_file_and_rag_ask_names_the_slide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag import cli

    monkeypatch.setattr("rag.embedding.load_embedder", lambda settings: FakeEmbedder())
    corpus, index = tmp_path / "corpus", tmp_path / "index"
    corpus.mkdir()
    deck = pptx_file([("Intro", "Sicily", ""), ("Stromboli", "Stromboli erupts hourly", "")])
    (corpus / "talk.pptx").write_bytes(deck)
    (corpus / "bomb.docx").write_bytes(zip_bomb(80 << 20))
    (corpus / "broken.odt").write_bytes(b"PK\x03\x04 not really")
    code = cli.main(["ingest", str(corpus), "--index", str(index)])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err
    warned = [line for line in (out + err).splitlines() if "Skipped" in line]
    assert len(warned) == 2 and "bomb.docx" in warned[0] + warned[1] and "broken.odt" in warned[0] + warned[1]

    settings = Settings(corpus_dir=corpus, index_dir=index)
    pipeline = Pipeline(settings, FakeEmbedder(), FakeGenerator(lambda m: "Stromboli erupts hourly [1]."))
    monkeypatch.setattr("rag.pipeline.build_pipeline", lambda settings: pipeline)
    code = cli.main(["ask", "How often does Stromboli erupt?", "--index", str(index)])
    out, _ = capsys.readouterr()
    assert code == 0 and "[1] talk.pptx slide 2 chars" in out
