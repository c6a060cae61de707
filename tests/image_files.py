"""Images of text built by the tests with Pillow, in a large clear font, so Tesseract reads them word for word."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def page_image(lines: list[str]) -> Image.Image:
    """A white page with black text about 14 pt tall at 200 dpi."""
    font = ImageFont.truetype(str(_DEJAVU), 40) if _DEJAVU.exists() else ImageFont.load_default(size=40)
    image = Image.new("RGB", (1400, 120 + 70 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((60, 60 + 70 * i), line, fill="black", font=font)
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def image_bytes(lines: list[str], fmt: str) -> bytes:
    """``lines`` as an image file in ``fmt`` ("PNG", "JPEG", "TIFF", or "PDF": an image-only page)."""
    options: dict[str, object] = {"resolution": 200.0} if fmt == "PDF" else {}
    return encode(page_image(lines), fmt, **options)
