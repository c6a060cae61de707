"""Real office files built by the tests: .docx and .pptx with python-docx/python-pptx, .odt by zipping content.xml."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from xml.sax.saxutils import escape

ODT_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
)
ODT_MIME = "application/vnd.oasis.opendocument.text"
MANIFEST = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">'
    f'<manifest:file-entry manifest:full-path="/" manifest:media-type="{ODT_MIME}"/>'
    '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
    "</manifest:manifest>"
)


def docx_file(blocks: Sequence[str | list[list[str]]], heading: str | None = None) -> bytes:
    """A Word document: an optional heading, then paragraphs (str) and tables (rows of cells) in order."""
    import docx

    document = docx.Document()
    if heading is not None:
        document.add_heading(heading, 1)
    for block in blocks:
        if isinstance(block, str):
            document.add_paragraph(block)
        else:
            table = document.add_table(rows=len(block), cols=len(block[0]))
            for r, row in enumerate(block):
                for c, cell in enumerate(row):
                    table.cell(r, c).text = cell
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pptx_file(slides: Sequence[tuple[str, str, str]]) -> bytes:
    """A presentation: per slide (title, body, speaker notes); empty strings leave the part out."""
    from pptx import Presentation

    deck = Presentation()
    for title, body, notes in slides:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        if title:
            slide.shapes.title.text = title
        if body:
            slide.placeholders[1].text = body
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def odt_body(paragraphs: Sequence[str]) -> str:
    return "".join(f"<text:p>{escape(p)}</text:p>" for p in paragraphs)


def odt_file(body: str, *, prolog: str = "", manifest: str = MANIFEST) -> bytes:
    """An OpenDocument text whose office:text holds ``body`` (raw XML)."""
    content = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}'
        f'<office:document-content {ODT_NS} office:version="1.2"><office:body><office:text>'
        f"{body}</office:text></office:body></office:document-content>"
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as package:
        package.writestr("mimetype", ODT_MIME, compress_type=zipfile.ZIP_STORED)
        package.writestr("content.xml", content, compress_type=zipfile.ZIP_DEFLATED)
        package.writestr("META-INF/manifest.xml", manifest, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def replace_part(package: bytes, name: str, content: bytes) -> bytes:
    """The same zip package with one part's bytes replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(package)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, content if info.filename == name else src.read(info))
    return out.getvalue()


def zip_bomb(inflated: int) -> bytes:
    """A .docx-looking zip with one part of ``inflated`` zero bytes (deflate shrinks it ~1000x)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as package:
        package.writestr("[Content_Types].xml", "<Types/>")
        with package.open("word/document.xml", "w", force_zip64=True) as part:
            block = b"\0" * (1 << 20)
            for _ in range(inflated >> 20):
                part.write(block)
    return out.getvalue()


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
)
