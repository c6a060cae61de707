"""`rag ask` over everyday documents with the real models: one question per format, answered and cited right.

Slow: the real embedder and generator (loaded once per session, see conftest.py), and Tesseract
for the scanned PDF and the image. One ingest of a folder holding one file of each type, then
one question per file whose answer sits only in that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag.formats import page_label
from rag.ingest import ingest
from rag.pipeline import Pipeline
from rag.settings import Settings
from rag.types import Answer
from tests.image_files import encode, page_image
from tests.office_files import docx_file, odt_body, odt_file, pptx_file

pytestmark = pytest.mark.slow

# A cover page, then a page long enough that the passage holding its last paragraph starts on it:
# a passage that starts on page 1 and runs on would be cited as page 1 (Chunk.page is where it starts).
SCAN_COVER = ["Parish of San Vito", "Notes on the church buildings", "Compiled by the parish office, 2025"]
SCAN_PAGE = [
    "The nave was built of local limestone between 1702",
    "and 1731. Its roof was replaced after the storm of",
    "1868, and the floor tiles were relaid in 1954 when",
    "the heating pipes were laid under the central aisle.",
    "The sacristy holds the parish registers from 1640",
    "onwards, kept in two oak cabinets against the north",
    "wall. The organ, a gift of the wool merchants guild,",
    "was rebuilt in 1890 and again in 1976. Visitors may",
    "see the registers by appointment with the parish",
    "office on weekday mornings, except in August when",
    "the office is closed for the summer holidays.",
    "The churchyard wall was rebuilt in 1921 with stone",
    "from the old mill, and the lime trees along the path",
    "were planted by the school children in 1935. The",
    "well in the cloister was filled in during the works",
    "of 1954, and its iron cover now hangs in the porch.",
    "The bell tower was repaired by the Lombardi brothers",
    "in 1911, after lightning cracked its upper arches.",
]


def scanned_pdf(pages: list[list[str]]) -> bytes:
    """An image-only PDF (no text layer), one scanned page per list of lines."""
    first, *rest = [page_image(lines) for lines in pages]
    return encode(first, "PDF", resolution=200.0, save_all=True, append_images=rest)


def everyday_folder(root: Path) -> Path:
    """One file of each everyday type, each holding a fact no other file holds."""
    root.mkdir(parents=True, exist_ok=True)
    table = [
        ["Building", "Boiler model", "Last inspected"],
        ["North Hall", "Viessmann Vitodens 200", "12 March 2025"],
        ["Library", "Buderus Logamax GB162", "4 April 2025"],
        ["Sports Centre", "Vaillant ecoTEC plus", "30 January 2025"],
    ]
    (root / "facilities.docx").write_bytes(
        docx_file(["Boilers are serviced every spring by the estates team.", table], heading="Facilities report")
    )
    (root / "ferries.pptx").write_bytes(
        pptx_file(
            [
                ("Island ferries", "Winter timetable 2025", ""),
                ("Capri crossing", "The winter ferry to Capri leaves from Pier 7\nFirst sailing 7:40", ""),
                ("Ischia crossing", "The Ischia hydrofoil leaves from Molo Beverello", "Buy tickets at the kiosk"),
            ]
        )
    )
    (root / "committee.odt").write_bytes(
        odt_file(
            odt_body(
                [
                    "Minutes of the garden committee, May meeting.",
                    "The committee chose Alder Street for the new community orchard.",
                    "The next meeting is in the school hall.",
                ]
            )
        )
    )
    rows = [
        ("Red panda", "Ingrid Solberg", "East Woods"),
        ("Snow leopard", "Tomas Rehak", "High Rocks"),
        ("Capybara", "Amina Diallo", "River Meadow"),
        ("Fennec fox", "Luca Ferri", "Desert House"),
    ]
    (root / "keepers.csv").write_text("species,keeper,enclosure\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    (root / "parish.pdf").write_bytes(scanned_pdf([SCAN_COVER, SCAN_PAGE]))
    (root / "notice.png").write_bytes(
        encode(page_image(["LOST PROPERTY", "The lost property office is run", "by Teodora Vasquez."]), "PNG")
    )
    return root


# (question, a fact the answer must state, the file, how its citation names the page: None without pages)
QUESTIONS = [
    ("Which boiler model is installed in the Library?", "Buderus", "facilities.docx", None),
    ("From which pier does the winter ferry to Capri leave?", "Pier 7", "ferries.pptx", "slide 2"),
    ("Where will the new community orchard be planted?", "Alder Street", "committee.odt", None),
    ("Who is the keeper of the red panda?", "Ingrid Solberg", "keepers.csv", None),
    ("Who repaired the bell tower?", "Lombardi", "parish.pdf", "scanned page 2"),
    ("Who runs the lost property office?", "Teodora Vasquez", "notice.png", "scanned page 1"),
]


@pytest.fixture(scope="module")
def everyday(tmp_path_factory: pytest.TempPathFactory, real_embedder: Any, real_generator: Any) -> Pipeline:
    root = tmp_path_factory.mktemp("everyday")
    settings = Settings(corpus_dir=everyday_folder(root / "corpus"), index_dir=root / "index")
    report = ingest(settings.corpus_dir, settings.index_dir, real_embedder, settings, progress=False)
    assert report.documents_total == len(QUESTIONS) and not report.warnings, report
    return Pipeline(settings, real_embedder, real_generator)


@pytest.mark.parametrize(("question", "fact", "doc_id", "label"), QUESTIONS, ids=[q[2] for q in QUESTIONS])
def test_rag_ask_answers_from_each_format_with_its_citation(
    everyday: Pipeline, question: str, fact: str, doc_id: str, label: str | None
) -> None:
    answer: Answer = everyday.ask(question)
    assert not answer.abstained, (answer.text, answer.notes)
    assert fact.lower() in answer.text.lower(), answer.text
    assert answer.citations and all(c.doc_id == doc_id for c in answer.citations), answer.citations
    # What `rag ask` prints after the file name (rag/cli.py), for the passage that holds the fact.
    holding = [c for c in answer.citations if fact.lower() in " ".join(c.text.split()).lower()]
    assert holding, answer.citations
    cited = holding[0]
    shown = page_label(cited.doc_id, cited.page, cited.scanned) if cited.page is not None else None
    assert shown == label, cited
