from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rag.errors import InputError
from rag.loaders import html_to_text, load_bytes, load_corpus, load_file, safe_doc_id


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one text line per input line (Helvetica, no compression)."""

    def escape(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    n = len(pages)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        shown = " ".join(f"({escape(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream".encode())
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def write(root: Path, rel: str, data: bytes | str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def test_loads_every_supported_kind_sorted_with_posix_ids(tmp_path: Path) -> None:
    write(tmp_path, "b.txt", "Plain text.")
    write(tmp_path, "sub/dir/a.md", "# Heading\n\nMarkdown body.")
    write(tmp_path, "c.html", "<html><body><p>Web page.</p></body></html>")
    write(tmp_path, "d.pdf", make_pdf(["Page one text.", "Page two text."]))
    docs, warnings = load_corpus(tmp_path)
    assert warnings == []
    assert [d.id for d in docs] == ["b.txt", "c.html", "d.pdf", "sub/dir/a.md"]
    by_id = {d.id: d for d in docs}
    assert by_id["b.txt"].text == "Plain text."
    assert by_id["sub/dir/a.md"].text == "# Heading\n\nMarkdown body."
    assert by_id["c.html"].text == "Web page."
    assert by_id["b.txt"].sha256 == hashlib.sha256(b"Plain text.").hexdigest()
    assert by_id["b.txt"].page_starts == ()


def test_pdf_pages_joined_and_page_starts_point_at_each_page(tmp_path: Path) -> None:
    write(tmp_path, "r.pdf", make_pdf(["Alpha first page.", "Beta second page.", "Gamma third page."]))
    doc = load_file(tmp_path / "r.pdf", tmp_path)
    assert len(doc.page_starts) == 3
    for n, word in enumerate(["Alpha", "Beta", "Gamma"], 1):
        start = doc.page_starts[n - 1]
        assert doc.text[start:].startswith(word)
        assert doc.page_at(doc.text.index(word)) == n
    assert "\n\n" in doc.text


def test_text_is_utf8_with_bom_dropped_and_newlines_normalized(tmp_path: Path) -> None:
    write(tmp_path, "bom.txt", "\ufeffcafé\r\nline two\rthree".encode())
    (doc,), _ = load_corpus(tmp_path)
    assert doc.text == "café\nline two\nthree"


def test_bad_files_become_warnings_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path, "good.txt", "fine")
    write(tmp_path, "binary.txt", b"abc\x00def")
    write(tmp_path, "latin1.md", "caf\xe9".encode("latin-1"))
    write(tmp_path, "blank.txt", "  \n\t ")
    write(tmp_path, "broken.pdf", b"%PDF-1.4 this is not really a pdf")
    write(tmp_path, "scanned.pdf", make_pdf([""]))
    docs, warnings = load_corpus(tmp_path)
    assert [d.id for d in docs] == ["good.txt"]
    assert len(warnings) == 5
    joined = "\n".join(warnings)
    for name, why in [
        ("binary.txt", "NUL"),
        ("latin1.md", "UTF-8"),
        ("blank.txt", "no text"),
        ("broken.pdf", "PDF"),
        ("scanned.pdf", "no text"),
    ]:
        assert any(name in w and why in w for w in warnings), (name, joined)


def test_unsupported_files_get_one_warning_with_count_and_names(tmp_path: Path) -> None:
    write(tmp_path, "keep.txt", "text")
    for i in range(7):
        write(tmp_path, f"img{i}.gif", b"GIF89a")
    write(tmp_path, "notes.xlsx", b"PK")
    docs, warnings = load_corpus(tmp_path)
    assert [d.id for d in docs] == ["keep.txt"]
    assert len(warnings) == 1
    assert "8 file(s)" in warnings[0] and ".xlsx" in warnings[0] and ".gif" in warnings[0]
    assert "img0.gif" in warnings[0] and "3 more" in warnings[0]


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "visible.txt", "yes")
    write(tmp_path, ".hidden.txt", "no")
    write(tmp_path, ".git/config.txt", "no")
    write(tmp_path, "sub/.cache/x.md", "no")
    docs, warnings = load_corpus(tmp_path)
    assert [d.id for d in docs] == ["visible.txt"]
    assert warnings == []


def test_missing_root_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"does not exist: .*nope.*RAG_CORPUS_DIR"):
        load_corpus(tmp_path / "nope")


def test_single_file_root_is_a_corpus_of_one(tmp_path: Path) -> None:
    path = write(tmp_path, "deep/one.md", "only me")
    docs, _ = load_corpus(path)
    assert [(d.id, d.text) for d in docs] == [("one.md", "only me")]


@pytest.mark.parametrize(
    "files",
    [{}, {"a.png": b"x", "b.exe": b"y"}, {"empty.txt": b"", "bin.md": b"\x00\x01"}],
    ids=["empty-folder", "only-unsupported", "all-unreadable"],
)
def test_corpus_without_readable_documents_is_an_input_error(tmp_path: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        write(tmp_path, rel, data)
    with pytest.raises(InputError, match=str(tmp_path)):
        load_corpus(tmp_path)


def test_html_keeps_visible_text_and_block_structure() -> None:
    page = """<!DOCTYPE html><html><head><title>Report</title><style>p {color: red}</style>
    <script>var secret = 1;</script></head><body>
    <!-- a comment --><noscript>enable js</noscript><template><p>tmpl</p></template>
    <h1>Main   heading</h1><p>First
       paragraph with <b>bold</b> text.</p><ul><li>one</li><li>two</li></ul>
    <table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
    Line<br>break &amp; entity</body></html>"""
    text = html_to_text(page)
    for hidden in ("secret", "color", "comment", "enable js", "tmpl"):
        assert hidden not in text
    assert text.splitlines() == [
        "Report",
        "",
        "Main heading",
        "",
        "First paragraph with bold text.",
        "",
        "one",
        "two",
        "",
        "a b",
        "c d",
        "",
        "Line",
        "break & entity",
    ]


def test_load_bytes_parses_by_suffix_and_rejects_bad_names() -> None:
    doc = load_bytes("up/notes.html", b"<p>Hi <i>there</i></p>")
    assert (doc.id, doc.text) == ("up/notes.html", "Hi there")
    assert doc.sha256 == hashlib.sha256(b"<p>Hi <i>there</i></p>").hexdigest()
    pdf = load_bytes("r.pdf", make_pdf(["x1", "y2"]))
    assert pdf.page_starts[0] == 0 and len(pdf.page_starts) == 2
    for bad in ("../etc/passwd.txt", "/abs.txt", ".hidden.txt", "a/../b.txt", "", "x.exe"):
        with pytest.raises(InputError):
            load_bytes(bad, b"data")
    with pytest.raises(InputError, match="NUL"):
        load_bytes("bin.txt", b"\x00")


def test_safe_doc_id_normalizes_separators() -> None:
    assert safe_doc_id("a\\b\\c.md") == "a/b/c.md"
    assert safe_doc_id("./x.txt") == "x.txt"
    with pytest.raises(InputError):
        safe_doc_id("a//.b/c.md")
