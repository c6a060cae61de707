"""Loading stage: files on disk (or uploaded bytes) -> ``Document``.

Supported: ``.txt`` and ``.md`` (plain UTF-8 text), ``.html``/``.htm`` (visible
text only), ``.pdf`` (text layer, one page after another), and through
``rag.formats`` ``.docx``, ``.odt``, ``.pptx`` (slides numbered like pages) and
``.csv``/``.tsv`` (rows grouped under a repeated header line), and through
``rag.ocr`` images (``.png``, ``.jpg``, ``.tif``: each TIFF frame a page) and PDF
pages without a text layer, read by Tesseract and listed in
``Document.scanned_pages`` so citations can say so. A file that
cannot be read becomes a warning naming the file and the reason; one bad file
never stops an ingest of a thousand good ones.

``read_corpus`` is told what the index already holds (``Known``: each document's
hash and OCR options): a file with the same bytes costs only its hash, so an
ingest of an unchanged folder never parses, nor OCRs, anything again.

Texts are normalized once here (``\\r\\n`` -> ``\\n``), and every later offset
(chunks, citations) refers to ``Document.text`` as produced here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rag import formats, ocr
from rag.errors import InputError
from rag.ocr import DEFAULT_OPTIONS as DEFAULT_OCR
from rag.ocr import OcrOptions
from rag.types import Document

log = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset({".txt", ".md"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = (
    TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | formats.OFFICE_SUFFIXES | formats.TABLE_SUFFIXES | ocr.IMAGE_SUFFIXES
)
SUPPORTED_HUMAN = ".txt, .md, .html, .pdf, .docx, .odt, .pptx, .csv, .tsv, .png, .jpg or .tif"

# Tags whose content a browser never shows as text.
_INVISIBLE_TAGS = ("script", "style", "noscript", "template", "head")
# Block elements start on a new paragraph; these only on a new line.
_LINE_TAGS = frozenset({"li", "tr", "dt", "dd", "caption", "figcaption", "option", "summary"})
_PARAGRAPH_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "details", "dialog", "div", "dl",
        "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "title", "ul",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})
_SPACES = re.compile(r"[ \t\f\v\r\n\u00a0]+")
_LINE_EDGES = re.compile(r"[ \t]*\n[ \t]*")
_MANY_NEWLINES = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Known:
    """What the index holds of a document: the sha256 of its file's bytes and its ``Document.ocr``."""

    sha256: str
    ocr: str

    def holds(self, sha256: str, ocr_options: OcrOptions) -> bool:
        """Whether a file with these bytes, read with these OCR options, would give the text held.

        >>> Known("ab", "eng").holds("ab", OcrOptions()), Known("ab", "eng").holds("ab", OcrOptions(languages="deu"))
        (True, False)
        >>> Known("ab", "").holds("ab", OcrOptions(enabled=False))  # no page of it needed OCR
        True
        """
        return self.sha256 == sha256 and self.ocr in ("", ocr_options.signature)


@dataclass(frozen=True)
class Corpus:
    """A corpus folder as read: the documents parsed, the files the index already holds, the warnings."""

    base: Path
    ocr_options: OcrOptions
    documents: list[Document]
    #: Files left unparsed because ``known`` held the same bytes (and OCR options): doc id -> what matched.
    unchanged: dict[str, Known] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def read(self, doc_ids: Iterable[str]) -> tuple[list[Document], list[str]]:
        """Parse files left unparsed after all (the index changed meanwhile); warnings for the bad ones."""
        documents: list[Document] = []
        warnings: list[str] = []
        for doc_id in doc_ids:
            try:
                documents.append(load_file(self.base / doc_id, self.base, self.ocr_options))
            except InputError as exc:
                warnings.append(str(exc))
                log.warning("%s", exc)
        return documents, warnings


def load_corpus(root: Path, ocr_options: OcrOptions = DEFAULT_OCR) -> tuple[list[Document], list[str]]:
    """Every supported document under ``root`` (a folder or a single file), sorted by id, and the warnings.

    ``read_corpus`` without an index to compare with.
    """
    corpus = read_corpus(root, ocr_options)
    return corpus.documents, corpus.warnings


def read_corpus(root: Path, ocr_options: OcrOptions = DEFAULT_OCR, known: Mapping[str, Known] | None = None) -> Corpus:
    """Every supported document under ``root`` (a folder or a single file), sorted by id.

    A file whose bytes (and OCR options) ``known`` holds is hashed only, and listed in
    ``Corpus.unchanged`` instead of parsed. Warnings name the files that were skipped.
    Raises ``InputError`` when ``root`` is missing or yields no document.
    ``ocr_options`` come from ``Settings`` (``OcrOptions.from_settings``) for images and scanned pages.
    """
    known = known or {}
    root = Path(root)
    if not root.exists():
        raise InputError(
            f"Corpus folder does not exist: {root}. "
            f"Point --corpus/RAG_CORPUS_DIR at a folder of {SUPPORTED_HUMAN} files"
        )
    if root.is_file():
        base, files = root.parent, [root]
    else:
        base, files = root, _walk_visible(root)

    warnings: list[str] = []
    unsupported = [f for f in files if f.suffix.lower() not in SUPPORTED_SUFFIXES]
    if unsupported:
        names = [_doc_id(f, base) for f in unsupported]
        kinds = sorted({f.suffix.lower() or "(no extension)" for f in unsupported})
        more = f", ... and {len(names) - 5} more" if len(names) > 5 else ""
        warnings.append(
            f"Skipped {len(names)} file(s) of unsupported type ({', '.join(kinds)}): "
            f"{', '.join(names[:5])}{more}. Supported: {SUPPORTED_HUMAN}."
        )

    candidates = [f for f in files if f.suffix.lower() in SUPPORTED_SUFFIXES]
    documents: list[Document] = []
    unchanged: dict[str, Known] = {}
    for path in candidates:
        doc_id = _doc_id(path, base)
        try:
            data = _read_bytes(doc_id, path)
            held = known.get(doc_id)
            if held is not None and held.holds(hashlib.sha256(data).hexdigest(), ocr_options):
                unchanged[doc_id] = held
            else:
                documents.append(_parse(doc_id, str(path.resolve()), data, ocr_options))
        except InputError as exc:
            warnings.append(str(exc))
    for warning in warnings:
        log.warning("%s", warning)

    if not documents and not unchanged:
        if not candidates:
            raise InputError(
                f"No documents to index in {root}: found no {SUPPORTED_HUMAN} files "
                "(hidden files are ignored). Add some, or point --corpus/RAG_CORPUS_DIR elsewhere."
            )
        raise InputError(
            f"None of the {len(candidates)} supported file(s) in {root} could be read: " + " ".join(warnings)
        )
    documents.sort(key=lambda d: d.id)
    return Corpus(base, ocr_options, documents, unchanged, warnings)


def load_file(path: Path, root: Path, ocr_options: OcrOptions = DEFAULT_OCR) -> Document:
    """Read one file; its id is its path relative to ``root`` in posix form.

    Raises ``InputError`` (message names the file) when it is unsupported,
    not text, unparseable or empty.
    """
    doc_id = _doc_id(path, root)
    return _parse(doc_id, str(path.resolve()), _read_bytes(doc_id, path), ocr_options)


def _read_bytes(doc_id: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"Skipped {doc_id}: cannot read it ({exc.strerror or exc}).") from exc


def load_bytes(doc_id: str, data: bytes, ocr_options: OcrOptions = DEFAULT_OCR) -> Document:
    """Parse uploaded bytes as the document ``doc_id`` (its suffix picks the format).

    >>> load_bytes("notes/a.md", b"# Title\\r\\nBody").text
    '# Title\\nBody'
    """
    safe = safe_doc_id(doc_id)
    return _parse(safe, safe, data, ocr_options)


def safe_doc_id(name: str) -> str:
    """Check that an untrusted name is a usable relative document id and return it in posix form.

    >>> safe_doc_id("reports\\\\2024.pdf")
    'reports/2024.pdf'
    """
    candidate = name.replace("\\", "/").strip()
    parts = PurePosixPath(candidate).parts
    if (
        not candidate
        or candidate.startswith("/")
        or not parts
        or any(p in ("", ".", "..") or p.startswith(".") for p in parts)
        or "\x00" in candidate
    ):
        raise InputError(
            f"Invalid document name {name!r}: use a plain relative file name such as 'report.pdf' "
            "(no '..', no hidden or absolute paths)."
        )
    if PurePosixPath(candidate).suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(f"Unsupported file type for {name!r}: upload a {SUPPORTED_HUMAN} file.")
    return "/".join(parts)


def _walk_visible(root: Path) -> list[Path]:
    """All regular files under ``root``, skipping anything whose name starts with '.'."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into hidden folders.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                if path.is_file():
                    found.append(path)
    return sorted(found, key=lambda p: _doc_id(p, root))


def _doc_id(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _parse(doc_id: str, path: str, data: bytes, ocr_options: OcrOptions) -> Document:
    suffix = PurePosixPath(doc_id).suffix.lower()
    sha = hashlib.sha256(data).hexdigest()
    page_starts: tuple[int, ...] = ()
    scanned: frozenset[int] = frozenset()
    needed_ocr = False  # whether some page had no text layer, so the text depends on the OCR options
    if suffix in TEXT_SUFFIXES:
        text = _normalize_newlines(_decode(doc_id, data))
    elif suffix in HTML_SUFFIXES:
        text = html_to_text(_decode(doc_id, data))
    elif suffix in PDF_SUFFIXES:
        text, page_starts, scanned, needed_ocr = _pdf_text(doc_id, data, ocr_options)
    elif suffix in ocr.IMAGE_SUFFIXES:
        pages = ocr.image_pages(doc_id, data, ocr_options)
        text, page_starts = formats.join_pages(pages)
        scanned, needed_ocr = frozenset(range(1, len(pages) + 1)), True
    elif suffix in formats.DOCX_SUFFIXES:
        text = formats.docx_text(doc_id, data)
    elif suffix in formats.PPTX_SUFFIXES:
        text, page_starts = formats.pptx_text(doc_id, data)
    elif suffix in formats.ODT_SUFFIXES:
        text = formats.odt_text(doc_id, data)
    elif suffix in formats.TABLE_SUFFIXES:
        text = formats.table_text(doc_id, _normalize_newlines(_decode(doc_id, data)), suffix)
    else:
        raise InputError(f"Skipped {doc_id}: unsupported file type; use {SUPPORTED_HUMAN}.")
    if not text.strip():
        hint = ""
        if suffix in PDF_SUFFIXES | ocr.IMAGE_SUFFIXES:
            needs = " (a scanned PDF needs OCR: set RAG_OCR=true)"
            hint = " (OCR found no words either)" if ocr_options.enabled else needs
        raise InputError(f"Skipped {doc_id}: it contains no text{hint}.")
    return Document(
        id=doc_id,
        path=path,
        text=text,
        sha256=sha,
        page_starts=page_starts,
        scanned_pages=scanned,
        ocr=ocr_options.signature if needed_ocr else "",
    )


def _decode(doc_id: str, data: bytes) -> str:
    """Strict UTF-8 (a BOM is dropped); NUL bytes mean a binary file with a text name."""
    if b"\x00" in data:
        raise InputError(f"Skipped {doc_id}: it is not a text file (contains NUL bytes).")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"Skipped {doc_id}: it is not valid UTF-8 text (bad byte at offset {exc.start}); re-save it as UTF-8."
        ) from exc


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page, one block per paragraph.

    >>> html_to_text("<h1>Hi</h1><p>a <b>bold</b>\\n word<script>x()</script></p><ul><li>1</li><li>2</li></ul>")
    'Hi\\n\\na bold word\\n\\n1\\n2'
    """
    from bs4 import BeautifulSoup
    from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction, Tag

    soup = BeautifulSoup(markup, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    # Which string types get_text() reads inside <pre> (where strings are taken as they are).
    kept_types = tuple(soup.interesting_string_types or ())
    pieces: list[str] = []
    # One pass in document order with an explicit stack of the open elements. Inserting the
    # breaks into the tree instead (insert_after) re-walks each element's subtree, which made a
    # 300 kB page of nested tables cost minutes of CPU; this costs the same at any depth.
    stack: list[Tag] = []
    hidden = 0  # open elements whose content a browser never shows (script, style, ...)
    in_pre = 0

    def enter(tag: Tag) -> None:
        nonlocal hidden, in_pre
        if tag.name in _INVISIBLE_TAGS:
            hidden += 1
        elif not hidden:
            if tag.name == "br":
                pieces.append("\n")
            elif tag.name in _PARAGRAPH_TAGS:
                pieces.append("\n\n")
            elif tag.name in _LINE_TAGS:
                # A break before each item is enough: the enclosing list/table ends the block.
                pieces.append("\n")
        in_pre += tag.name == "pre"
        stack.append(tag)

    def leave() -> None:
        nonlocal hidden, in_pre
        tag = stack.pop()
        in_pre -= tag.name == "pre"
        if tag.name in _INVISIBLE_TAGS:
            hidden -= 1
        elif not hidden:
            if tag.name in _PARAGRAPH_TAGS:
                pieces.append("\n\n")
            elif tag.name in _CELL_TAGS:
                pieces.append(" ")

    for node in soup.descendants:
        while stack and stack[-1] is not node.parent:
            leave()
        if isinstance(node, Tag):
            enter(node)
        elif hidden or isinstance(node, (Comment, Declaration, Doctype, ProcessingInstruction)):
            continue
        elif in_pre:
            if type(node) in kept_types:
                pieces.append(str(node))
        else:
            # Source line breaks are plain spaces to a browser; only <pre> keeps them.
            pieces.append(_SPACES.sub(" ", str(node)))
    while stack:
        leave()
    body = "".join(pieces)
    body = re.sub(r"[ \t]+", " ", _normalize_newlines(body))
    body = _MANY_NEWLINES.sub("\n\n", _LINE_EDGES.sub("\n", body)).strip()
    if title and not body.startswith(title):
        body = f"{title}\n\n{body}" if body else title
    return body


def _pdf_text(doc_id: str, data: bytes, ocr_options: OcrOptions) -> tuple[str, tuple[int, ...], frozenset[int], bool]:
    """Pages joined by a blank line, where each page starts, the pages read by OCR, and whether any page needed it."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InputError(f"Skipped {doc_id}: the PDF is password-protected.")
        pages = [_normalize_newlines((page.extract_text() or "").replace("\x00", "")).strip() for page in reader.pages]
    except InputError:
        raise
    except Exception as exc:  # pypdf raises many types on damaged files; all mean "unreadable"
        raise InputError(f"Skipped {doc_id}: it is not a readable PDF ({type(exc).__name__}: {exc}).") from exc
    blank = [n for n, page in enumerate(pages, start=1) if ocr.needs_ocr(page)]
    needed = bool(blank)
    if blank and not ocr_options.enabled:
        if len(blank) < len(pages):  # all-blank ends as "contains no text" with the same hint
            log.warning("%s: %d page(s) without a text layer skipped: OCR is off (RAG_OCR=false).", doc_id, len(blank))
        blank = []
    scanned: set[int] = set()
    for n in blank:
        read = _ocr_pdf_page(doc_id, data, n, ocr_options)
        if read:  # a page OCR finds nothing on keeps its text layer and is not marked
            pages[n - 1] = read
            scanned.add(n)
    text, starts = formats.join_pages(pages)
    return text, starts, frozenset(scanned), needed


def _ocr_pdf_page(doc_id: str, data: bytes, page: int, ocr_options: OcrOptions) -> str:
    """OCR of one PDF page; a failure is a warning, since the document's other pages still count."""
    try:
        image = ocr.pdf_page_image(data, page - 1)
        return ocr.read_page(doc_id, page, image, ocr_options)
    except InputError as exc:  # tesseract missing: say so once a page, keep the text layer
        log.warning("%s (page %d)", exc, page)
    except Exception as exc:  # pdfium rejects some pages pypdf read; the page stays as its text layer
        log.warning("Could not render %s page %d for OCR (%s: %s).", doc_id, page, type(exc).__name__, exc)
    return ""
