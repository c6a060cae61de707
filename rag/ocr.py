"""OCR: text of images and of PDF pages that have no text layer, read by Tesseract.

The ``tesseract`` program (Debian: ``apt-get install tesseract-ocr``) reads each
page image, run here as a subprocess on one OpenMP thread; ``pypdfium2``
renders a scanned PDF page to an image first. Each page is read on its own with
a time limit, so one page that Tesseract chokes on costs a warning naming it,
not the document.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from rag.errors import InputError
from rag.settings import Settings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
# 250 dpi: Tesseract reads body text best at 200-300 dpi (its documentation's advice); higher
# only costs time and memory on an A4 page (250 dpi is 2067x2923 pixels).
RENDER_DPI = 250
# A text layer this short is a scanner's page number (up to 999), not the page's words; a longer
# one (a title page's "Chapter 1") is kept as it is, since OCR costs seconds a page (see _tesseract).
MIN_TEXT_LAYER_CHARS = 4
INSTALL_HINT = "install it with `apt-get install tesseract-ocr tesseract-ocr-eng`"
TESSERACT = "tesseract"  # looked up on PATH
OCR_OFF = "off"  # OcrOptions.signature when OCR is off


@dataclass(frozen=True)
class OcrOptions:
    """What a load needs of the OCR settings: ``RAG_OCR``, ``RAG_OCR_LANGUAGES``, ``RAG_OCR_TIMEOUT_S``.

    Built from ``Settings`` by whoever loads (``rag ingest``, an upload, the eval) and passed down,
    so the loaders never read the environment. The defaults are ``Settings``' own.
    """

    enabled: bool = True
    languages: str = "eng"
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OcrOptions:
        return cls(enabled=settings.ocr, languages=settings.ocr_languages, timeout_s=settings.ocr_timeout_s)

    @property
    def signature(self) -> str:
        """What decides the text of a page without a text layer: the languages, or "off" (``Document.ocr``).

        The time limit is left out on purpose: a page that timed out stays out until its file changes
        or ``rag ingest --rebuild``, rather than every file being read again when the limit moves.

        >>> OcrOptions(languages="eng+deu").signature, OcrOptions(enabled=False).signature
        ('eng+deu', 'off')
        """
        return self.languages if self.enabled else OCR_OFF


DEFAULT_OPTIONS = OcrOptions()


def needs_ocr(text_layer: str) -> bool:
    """Whether a PDF page's text layer is too thin to stand for the page.

    >>> needs_ocr("  12 \\n"), needs_ocr("Preface")
    (True, False)
    """
    return len("".join(text_layer.split())) < MIN_TEXT_LAYER_CHARS


def image_pages(doc_id: str, data: bytes, options: OcrOptions) -> list[str]:
    """Text of each page (TIFF frame) of an image file; a page that fails OCR is empty, with a warning."""
    if not options.enabled:
        raise InputError(f"Skipped {doc_id}: it is an image and OCR is off (RAG_OCR=false).")
    try:
        frames = list(_frames(Image.open(io.BytesIO(data))))
    except Exception as exc:  # Pillow raises many types on damaged or non-image data
        raise InputError(f"Skipped {doc_id}: it is not a readable image ({type(exc).__name__}: {exc}).") from exc
    return [read_page(doc_id, n, frame, options) for n, frame in enumerate(frames, start=1)]


def pdf_page_image(data: bytes, index: int) -> Image.Image:
    """The PDF page ``index`` (0-based) rendered at RENDER_DPI."""
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(data)
    try:
        return pdf[index].render(scale=RENDER_DPI / 72).to_pil()
    finally:
        pdf.close()


def read_page(doc_id: str, page: int, image: Image.Image, options: OcrOptions) -> str:
    """Tesseract's text of one page image; empty (and a warning) when it times out or fails."""
    png = io.BytesIO()
    image.save(png, format="PNG")
    try:
        raw = _tesseract(png.getvalue(), options.languages, options.timeout_s)
    except FileNotFoundError as exc:
        raise InputError(f"Skipped {doc_id}: OCR needs the tesseract program; {INSTALL_HINT}.") from exc
    except subprocess.TimeoutExpired:
        what = f"took longer than RAG_OCR_TIMEOUT_S ({options.timeout_s:g} s)"
        log.warning("OCR of %s page %d %s; the page is left out.", doc_id, page, what)
        return ""
    except subprocess.CalledProcessError as exc:
        said = " ".join((exc.stderr or b"").decode("utf-8", "replace").split())[:300] or "no message"
        what = f"failed (tesseract exit {exc.returncode}: {said})"
        log.warning("OCR of %s page %d %s; the page is left out.", doc_id, page, what)
        return ""
    return raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "").strip()


def _tesseract(png: bytes, languages: str, timeout_s: float) -> str:
    """Run ``tesseract`` on one PNG (stdin to stdout); killed after ``timeout_s``.

    OMP_THREAD_LIMIT=1 for this process only: Tesseract 5's OpenMP threads mostly spin on a 2-core
    machine. Measured here (load ~7 from other jobs), three dense A4 pages at 250 dpi took 8.8 s of
    CPU and 13.6 s of wall a page with its default threads, 2.6 s and 4.7 s with one, same text.
    Setting the variable in our own environment would also put llama.cpp (libgomp) on one thread,
    and pytesseract has no per-call environment, hence the subprocess here.
    """
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}  # the child's environment, not a setting of ours
    done = subprocess.run(
        [TESSERACT, "stdin", "stdout", "-l", languages],
        input=png,
        capture_output=True,
        timeout=timeout_s,
        env=env,
        check=True,
    )
    return done.stdout.decode("utf-8", "replace")


def _frames(image: Image.Image) -> Iterator[Image.Image]:
    """Every frame, fully decoded (a truncated file fails here, not halfway through OCR), on white.

    A transparent pixel is often black under its alpha (a screenshot's background): plain
    ``convert("RGB")`` would leave black text on black, so transparency is laid on white.
    """
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frame = image.convert("RGBA")  # convert() loads the pixels and copies the frame
        page = Image.new("RGB", frame.size, (255, 255, 255))
        page.paste(frame, (0, 0), frame.getchannel("A"))
        yield page
