"""Office documents and tables -> text: ``.docx``, ``.pptx``, ``.odt``, ``.csv`` and ``.tsv``.

Each reader returns the document's text (blocks joined by a blank line, so the
chunker cuts between them first); ``.pptx`` also returns where each slide
starts, which ``Document.page_starts`` keeps exactly as it keeps a PDF's pages.

The office formats are zip packages of XML, so a file is checked before any
library parses it: it must be a zip that is not encrypted, whose parts do not
inflate to more than ``MAX_INFLATED_BYTES`` beyond the file's own size (a zip
bomb), and whose XML carries no DTD (entity expansion, external entities).
Every failure is an ``InputError`` naming the file; nothing here writes anything.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any
from xml.etree.ElementTree import Element
from xml.parsers import expat

from rag.errors import InputError
from rag.ocr import IMAGE_SUFFIXES

DOCX_SUFFIXES = frozenset({".docx"})
PPTX_SUFFIXES = frozenset({".pptx"})
ODT_SUFFIXES = frozenset({".odt"})
TABLE_SUFFIXES = frozenset({".csv", ".tsv"})
OFFICE_SUFFIXES = DOCX_SUFFIXES | PPTX_SUFFIXES | ODT_SUFFIXES

# XML inflated beyond the file's own size: media parts are stored about as they are, so a real
# document stays far below this, while a zip bomb's few kB claim gigabytes.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
# A real document has tens to a few thousand parts; millions of empty ones only cost time.
MAX_PARTS = 10_000
# A CSV passage is the header line plus rows up to this many characters: under the default
# 200-token chunk even for the densest cells (MiniLM reads random hex at ~1.5 characters a token:
# 300 characters measured 199 tokens), so the chunker merges whole groups and never cuts one.
TABLE_GROUP_CHARS = 250
# Encrypted Word/PowerPoint files are not zips but OLE compound files (as are the old .doc/.ppt).
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_WHITESPACE = re.compile(r"\s+")


def is_slides(doc_id: str) -> bool:
    """Whether the document's pages are slides (a presentation)."""
    return PurePosixPath(doc_id).suffix.lower() in PPTX_SUFFIXES


def is_image(doc_id: str) -> bool:
    """Whether the document is an image, every page of which is read by OCR."""
    return PurePosixPath(doc_id).suffix.lower() in IMAGE_SUFFIXES


def page_label(doc_id: str, page: int, scanned: bool = False) -> str:
    """How a citation names its page: slides for presentations, scanned pages for pages read by OCR.

    ``scanned`` is ``Citation.scanned``: OCR text may misread words, so the reader should know.

    >>> page_label("deck.pptx", 3), page_label("report.pdf", 3), page_label("report.pdf", 4, scanned=True)
    ('slide 3', 'p.3', 'scanned page 4')
    """
    if is_slides(doc_id):
        return f"slide {page}"
    if scanned:
        return f"scanned page {page}"
    return f"p.{page}"


def docx_text(doc_id: str, data: bytes) -> str:
    """Paragraphs, headings and tables of a Word document's body, in reading order."""
    _check_package(doc_id, data, "Word (.docx)").close()
    try:
        import docx

        document = docx.Document(io.BytesIO(data))
        blocks = list(_docx_blocks(document.element.body, document))
    except InputError:
        raise
    except Exception as exc:  # python-docx raises many types on damaged packages; all mean "unreadable"
        raise _unreadable(doc_id, "Word (.docx)", exc) from exc
    return _join(blocks)


def pptx_text(doc_id: str, data: bytes) -> tuple[str, tuple[int, ...]]:
    """Each slide's text, then its speaker notes; ``starts[n]`` is where slide n+1 begins (like PDF pages)."""
    _check_package(doc_id, data, "PowerPoint (.pptx)").close()
    try:
        from pptx import Presentation

        slides: list[str] = []
        for slide in Presentation(io.BytesIO(data)).slides:
            blocks = [block for shape in slide.shapes for block in _shape_blocks(shape)]
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                blocks.append(_normalize(slide.notes_slide.notes_text_frame.text))
            slides.append(_join(blocks))
    except InputError:
        raise
    except Exception as exc:  # python-pptx, like python-docx, has no single error type for bad files
        raise _unreadable(doc_id, "PowerPoint (.pptx)", exc) from exc
    return join_pages(slides)


def odt_text(doc_id: str, data: bytes) -> str:
    """Headings, paragraphs, lists and tables of an OpenDocument text, read from its content.xml."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    kind = "OpenDocument (.odt)"
    with _check_package(doc_id, data, kind) as package:
        names = set(package.namelist())
        try:
            manifest = package.read("META-INF/manifest.xml") if "META-INF/manifest.xml" in names else b""
            content = package.read("content.xml") if "content.xml" in names else None
        except Exception as exc:  # the check read only each part's start: a bad CRC shows up here
            raise _unreadable(doc_id, kind, exc) from exc
    if b"encryption-data" in manifest:
        raise InputError(f"Skipped {doc_id}: the {kind} file is password-protected; save it without a password.")
    if content is None:
        raise InputError(f"Skipped {doc_id}: it is not a readable {kind} file (it has no content.xml).")
    try:
        root = fromstring(content, forbid_dtd=True)
        body = root.find(f"{{{_OFFICE}}}body/{{{_OFFICE}}}text")
        blocks = list(_odt_blocks(body)) if body is not None else []
    except DefusedXmlException as exc:
        raise InputError(f"Skipped {doc_id}: its XML declares a DTD or entities, which are not read.") from exc
    except RecursionError as exc:
        raise InputError(f"Skipped {doc_id}: its XML is nested too deeply to read.") from exc
    except Exception as exc:  # expat's ParseError and friends: a damaged content.xml
        raise _unreadable(doc_id, kind, exc) from exc
    return _join(blocks)


def table_text(doc_id: str, text: str, suffix: str) -> str:
    """Rows as ``a | b | c`` lines, grouped into passages that each start with the header line.

    The header is repeated in the text itself (not added at chunking time), so every passage is
    still an exact slice of the document and a cited cell always comes with its column names.

    >>> table_text("t.csv", "city,height\\nCatania,7\\nEnna,931\\n", ".csv")
    'city | height\\nCatania | 7\\nEnna | 931'
    """
    delimiter = "\t" if suffix == ".tsv" else _sniff_delimiter(text)
    try:
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        rows = [[_WHITESPACE.sub(" ", cell).strip() for cell in row] for row in reader]
    except csv.Error as exc:  # "field larger than field limit (131072)", e.g. an unclosed quote
        raise InputError(
            f"Skipped {doc_id}: it is not a readable table ({exc}); a field may be huge or a quote unclosed."
        ) from exc
    lines = [" | ".join(row) for row in rows if any(row)]
    if not lines:
        return ""
    header, body = lines[0], lines[1:]
    if not body:
        return header
    groups: list[list[str]] = []
    size = TABLE_GROUP_CHARS + 1  # the first row opens the first group
    for line in body:
        if size + len(line) + 1 > TABLE_GROUP_CHARS and (not groups or len(groups[-1]) > 1):
            groups.append([header])
            size = len(header)
        groups[-1].append(line)
        size += len(line) + 1
    return "\n\n".join("\n".join(group) for group in groups)


def _sniff_delimiter(text: str) -> str:
    """The separator the header line uses most: ',' by default, ';' as spreadsheets in many locales write.

    Only the header is looked at: cells below it may hold any character, the column names rarely do.

    >>> _sniff_delimiter("Ort;Höhe;Notiz\\nEnna;931;a, b, c")
    ';'
    """
    header = text.lstrip("\n").split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])  # ties keep the first, ','
    return best if counts[best] else ","


def _check_package(doc_id: str, data: bytes, kind: str) -> zipfile.ZipFile:
    """Open ``data`` as a zip after the checks in the module docstring; the caller closes it."""
    if data.startswith(_OLE_MAGIC):
        raise InputError(
            f"Skipped {doc_id}: the {kind} file is password-protected or in the old binary format; "
            "save it without a password in the current format."
        )
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        infos = package.infolist()
    except Exception as exc:  # BadZipFile, or struct/OSError on a cut-off central directory
        raise _unreadable(doc_id, kind, exc) from exc
    # zipfile never inflates a member beyond its declared size (it checks the CRC), so the sum is a cap.
    inflated = sum(info.file_size for info in infos)
    if inflated > MAX_INFLATED_BYTES + len(data):
        raise InputError(
            f"Skipped {doc_id}: its parts inflate to {inflated:,} bytes, more than "
            f"{MAX_INFLATED_BYTES:,} beyond the file's size (a zip bomb?)."
        )
    if any(info.flag_bits & 0x1 for info in infos):
        raise InputError(f"Skipped {doc_id}: the {kind} file is password-protected; save it without a password.")
    if len(infos) > MAX_PARTS:
        raise InputError(f"Skipped {doc_id}: it has {len(infos):,} parts, more than {MAX_PARTS:,} (not a real {kind}).")
    try:
        # Every part, whatever its name: the package's content types could declare any name as XML.
        for info in infos:
            _refuse_dtd(doc_id, package, info)
    except InputError:
        raise
    except Exception as exc:  # a bad CRC or a damaged compressed stream
        raise _unreadable(doc_id, kind, exc) from exc
    return package


class _RootReached(Exception):
    """The prolog is over: a DTD can no longer appear."""


def _refuse_dtd(doc_id: str, package: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Raise if the part is XML that declares a DTD; inflates and parses only up to its root element."""

    def doctype(*_: Any) -> None:
        raise InputError(
            f"Skipped {doc_id}: its XML ({info.filename}) declares a DTD, which is not read (entity tricks)."
        )

    def root(*_: Any) -> None:
        raise _RootReached

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = doctype
    parser.StartElementHandler = root
    try:
        with package.open(info) as stream:
            while block := stream.read(64 * 1024):
                parser.Parse(block, False)
        parser.Parse(b"", True)
    except _RootReached:
        return
    except expat.ExpatError:
        return  # not XML (an image) or not well-formed: the reader of the part reports the damage


def _unreadable(doc_id: str, kind: str, exc: BaseException) -> InputError:
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return InputError(f"Skipped {doc_id}: it is not a readable {kind} file ({type(exc).__name__}: {detail}).")


def _normalize(text: str) -> str:
    """One block's text: trimmed lines, no vertical tabs (PowerPoint's line breaks), no empty lines."""
    lines = (_WHITESPACE.sub(" ", line).strip() for line in re.split(r"[\n\r\v]", text))
    return "\n".join(line for line in lines if line)


def _join(blocks: Iterable[str]) -> str:
    return "\n\n".join(block for block in blocks if block)


def _table_block(rows: Iterable[list[str]]) -> str:
    """A table as one block: a row per line, cells separated by ' | ', empty rows dropped."""
    lines = [" | ".join(cells) for cells in rows if any(cells)]
    return "\n".join(lines)


def _docx_blocks(container: Any, parent: Any) -> Iterator[str]:
    """Paragraphs and tables in body order, including those inside content controls and tracked insertions
    (python-docx's own ``iter_inner_content`` skips both)."""
    from docx.oxml.ns import qn
    from docx.table import Table

    for child in container.iterchildren():
        if child.tag == qn("w:p"):
            yield _normalize(_docx_paragraph(child))
        elif child.tag == qn("w:tbl"):
            yield _table_block(_docx_rows(Table(child, parent)))
        elif child.tag == qn("w:sdt"):
            content = child.find(qn("w:sdtContent"))
            # A table of contents is a content control too: it only repeats the headings (with page numbers).
            gallery = child.find(f"{qn('w:sdtPr')}/{qn('w:docPartObj')}/{qn('w:docPartGallery')}")
            is_toc = gallery is not None and "contents" in (gallery.get(qn("w:val")) or "").lower()
            if content is not None and not is_toc:
                yield from _docx_blocks(content, parent)
        elif child.tag in (qn("w:ins"), qn("w:customXml")):
            yield from _docx_blocks(child, parent)


def _docx_paragraph(paragraph: Any) -> str:
    """A paragraph's runs and links, also those in tracked insertions, inline content controls and fields.

    Deleted text (``w:delText``) and text boxes anchored in the paragraph are left out.
    """
    inner = "w:r | w:hyperlink | w:ins/w:r | w:sdt/w:sdtContent/w:r | w:smartTag/w:r | w:fldSimple/w:r"
    return "".join(element.text for element in paragraph.xpath(inner))


def _docx_rows(table: Any) -> Iterator[list[str]]:
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            # A merged cell is returned once per grid column it spans; read it once.
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(_WHITESPACE.sub(" ", cell.text).strip())
        yield cells


def _shape_blocks(shape: Any) -> Iterator[str]:
    """Text of one slide shape, tables row by row, groups recursively, in the slide's shape order."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
        for inner in shape.shapes:
            yield from _shape_blocks(inner)
    elif getattr(shape, "has_table", False) and shape.has_table:
        yield _table_block([_WHITESPACE.sub(" ", cell.text).strip() for cell in row.cells] for row in shape.table.rows)
    elif shape.has_text_frame:
        yield _normalize(shape.text_frame.text)


_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_TABLE = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
# Notes and comments would land mid-sentence; change-tracking holds deleted text; a table of contents
# only repeats the headings.
_ODT_SKIPPED = frozenset(
    {
        f"{{{_TEXT}}}note",
        f"{{{_OFFICE}}}annotation",
        f"{{{_TEXT}}}tracked-changes",
        f"{{{_TEXT}}}sequence-decls",
        f"{{{_TEXT}}}table-of-content",
    }
)
_CELL = f"{{{_TABLE}}}table-cell"
_ROW_GROUPS = frozenset(f"{{{_TABLE}}}{name}" for name in ("table-header-rows", "table-rows", "table-row-group"))


def _odt_blocks(element: Element) -> Iterator[str]:
    for child in element:
        tag = child.tag
        if tag in (f"{{{_TEXT}}}p", f"{{{_TEXT}}}h"):
            yield _normalize(_odt_inline(child))
        elif tag == f"{{{_TABLE}}}table":
            yield _table_block(
                [_WHITESPACE.sub(" ", " ".join(_odt_blocks(cell))).strip() for cell in row if cell.tag == _CELL]
                for row in _odt_rows(child)
            )
        elif tag not in _ODT_SKIPPED:
            yield from _odt_blocks(child)  # lists, list items, sections: their paragraphs in order


def _odt_rows(element: Element) -> Iterator[Element]:
    """The table's own rows (header rows and row groups included), not those of tables nested in its cells."""
    for child in element:
        if child.tag == f"{{{_TABLE}}}table-row":
            yield child
        elif child.tag in _ROW_GROUPS:
            yield from _odt_rows(child)


def _odt_inline(element: Element) -> str:
    """A paragraph's text in document order; a loop with its own stack, so spans nested any depth cost nothing."""
    parts = [element.text or ""]
    stack = [(element, iter(element))]
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if stack:  # the paragraph's own tail is not its text
                parts.append(node.tail or "")
            continue
        tag = child.tag
        if tag == f"{{{_TEXT}}}s":
            parts.append(" ")  # runs of spaces collapse anyway
        elif tag == f"{{{_TEXT}}}tab":
            parts.append("\t")
        elif tag == f"{{{_TEXT}}}line-break":
            parts.append("\n")
        elif tag not in _ODT_SKIPPED:
            parts.append(child.text or "")  # spans, links, bookmarks: read inside, then their tail
            stack.append((child, iter(child)))
            continue
        parts.append(child.tail or "")
    return "".join(parts)


def join_pages(pages: list[str]) -> tuple[str, tuple[int, ...]]:
    """Pages (or slides) joined by a blank line; ``page_starts[n]`` is where page n+1 begins.

    >>> join_pages(["ab", "", "c"])
    ('ab\\n\\n\\n\\nc', (0, 4, 6))
    """
    starts: list[int] = []
    offset = 0
    for page_text in pages:
        starts.append(offset)
        offset += len(page_text) + 2  # the "\n\n" joiner
    return "\n\n".join(pages), tuple(starts)
