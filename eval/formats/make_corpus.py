"""Write eval/formats/corpus/: one small file of each everyday type, made up by us for this gold set.

    PYTHONPATH=. python eval/formats/make_corpus.py

Run once; its output is committed, so `make eval-formats` does not depend on this script (nor on
python-docx/python-pptx writing the same bytes twice: zip entries carry the time they were made).
The files are built with the same makers the tests use (tests/office_files.py,
tests/image_files.py): real .docx and .pptx from python-docx and python-pptx, an .odt zipped
from its content.xml, a CSV, and images of text rendered with Pillow. Every fact in them is
invented (the town of Harbourside does not exist); each question of gold.jsonl has its answer
in exactly one file.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the file makers live in tests/

from tests.image_files import encode, page_image  # noqa: E402
from tests.office_files import docx_file, odt_body, odt_file, pptx_file  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"

BUDGET_TABLE = [
    ["Project", "Budget (EUR)", "Lead department"],
    ["Road resurfacing on Quay Street", "412,000", "Highways"],
    ["New roof for the public library", "185,500", "Property"],
    ["Flood barrier at Mill Creek", "1,240,000", "Environment"],
    ["Playground at Rowan Park", "96,000", "Parks"],
]

SLIDES = [
    ("Welcome to the harbour office", "Induction for new staff", ""),
    (
        "Your first week",
        "Security badges are collected from Room 14 on the ground floor\nIT accounts are opened on your first morning",
        "Remind newcomers that the canteen closes at 2:30 pm on Fridays.",
    ),
    ("Safety", "The fire assembly point is the car park behind the fish market", ""),
    ("Questions", "Ask your line manager or the HR desk", ""),
]

# Scanned report: a cover, then a page whose last paragraph holds the fact asked about.
INSPECTION_COVER = ["Harbour wall inspection", "Report of the structural engineer", "March 2026"]
INSPECTION_PAGE = [
    "The harbour wall was inspected from a boat at low",
    "tide on 9 March 2026. The south pier is in good order:",
    "its stones are sound and the mortar joints are tight.",
    "The slipway needs new anti-slip strips before the",
    "sailing season, and two mooring rings on the east",
    "quay are loose and should be reset in concrete.",
    "The inspection found a crack of 35 centimetres in the",
    "north pier, which must be sealed before the autumn",
    "storms. The next inspection is due in March 2028.",
]

PERMIT = ["HARBOURSIDE PARKING PERMIT", "Permit holder: Marguerite Okafor", "Zone C, harbour car park",
          "Valid until 30 June 2026"]  # fmt: skip

SUPPLIERS = [
    ("Baltic Paints", "antifouling paint", "Hanna Virtanen"),
    ("Nordhavn Marine", "mooring ropes", "Piet Larsen"),
    ("Quayside Electrics", "dock lighting", "Oren Shapiro"),
    ("Westwind Sails", "sail repairs", "Maeve Gallagher"),
    ("Harbour Timber", "pontoon decking", "Ruben Alves"),
    ("Saltmarsh Safety", "life jackets", "Ines Moreau"),
]

FORUM = [
    "Minutes of the harbour users' forum, 3 February 2026.",
    "Present: fourteen members and the harbour master.",
    "The forum elected Rosalind Achterberg as its new chair.",
    "The fishing crews asked for longer opening hours at the ice plant; the harbour master will reply in writing.",
]


def scanned_pdf(pages: list[list[str]]) -> bytes:
    """An image-only PDF (no text layer), one black-and-white scanned page per list of lines (~7 KB a page)."""
    first, *rest = [page_image(lines).convert("1") for lines in pages]
    return encode(first, "PDF", resolution=200.0, save_all=True, append_images=rest)


def main() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    intro = "The council approved the following capital projects at its meeting of 14 January 2026."
    files = {
        "budget.docx": docx_file([intro, BUDGET_TABLE], heading="Capital budget 2026"),
        "onboarding.pptx": pptx_file(SLIDES),
        "forum-minutes.odt": odt_file(odt_body(FORUM)),
        "suppliers.csv": ("supplier,product,contact\n" + "".join(f"{a},{b},{c}\n" for a, b, c in SUPPLIERS)).encode(),
        "wall-inspection.pdf": scanned_pdf([INSPECTION_COVER, INSPECTION_PAGE]),
        "parking-permit.png": encode(page_image(PERMIT).convert("L"), "PNG", optimize=True),
    }
    for name, data in files.items():
        (CORPUS / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
