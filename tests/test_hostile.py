"""Hostile input against the service: every bad upload or question gets a clear 4xx and harms nothing.

The service runs over the real ``Pipeline``, index and loaders with the fake
models, so "the index is unharmed" is checked on disk: every file under the
test's folder (corpus, index, and the folders around them that a path
traversal would reach) is byte-identical after each refused request. Then the
API key (every route but health, ready and the page's files needs it; the
comparison is constant-time) and CORS (closed).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

import api.security
from api.app import create_app
from rag.ingest import ingest
from rag.loaders import load_bytes
from rag.pipeline import Pipeline
from rag.settings import Settings
from tests import fault_procs
from tests.api_fakes import FakePipeline
from tests.fakes import FakeEmbedder, FakeGenerator
from tests.image_files import image_bytes
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

LIMIT = 400_000  # RAG_MAX_UPLOAD_BYTES for these tests: room for a deeply nested page, cheap to exceed
SEED = "Mount Etna is the tallest active volcano in Europe. It stands on the east coast of Sicily.\n"


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with the sha256 of its bytes: equal trees are byte-identical."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


class Service(NamedTuple):
    client: TestClient
    root: Path  # everything the service may touch, and the folders around it
    corpus: Path


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    # Two levels of folders around the corpus, so "../../x" would land inside tmp_path, where we look.
    corpus = tmp_path / "srv" / "data" / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "etna.md").write_text(SEED, encoding="utf-8")
    settings = Settings(
        corpus_dir=corpus, index_dir=tmp_path / "srv" / "data" / "index", api_key=None, max_upload_bytes=LIMIT
    )
    ingest(corpus, settings.index_dir, FakeEmbedder(), settings, progress=False)
    pipeline = Pipeline(
        settings, FakeEmbedder(), FakeGenerator(lambda m: "Etna stands on the east coast of Sicily [1].")
    )
    app = create_app(settings, lambda s: pipeline)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.rag.wait_ready(10)
        yield Service(client, tmp_path, corpus)


def assert_clear_error(resp: Any, status: int, says: str) -> None:
    """The status, the error shape, a message naming the problem, and nothing of our internals."""
    assert resp.status_code == status, resp.text[:500]
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    message = body["error"]["message"]
    assert re.search(says, message, re.I), message
    assert "Traceback" not in resp.text and 'File "' not in resp.text


def multipart(disposition: bytes, content: bytes = b"Some text.") -> dict[str, Any]:
    """A hand-built upload body: httpx would percent-encode control characters in a file name."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; ' + disposition + b"\r\n\r\n" + content + b"\r\n--B--\r\n"
    )
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=B"}}


def pdf(*, encrypt: bool = False) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    if encrypt:
        writer.encrypt(user_password="secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def file(name: str, content: bytes) -> dict[str, Any]:
    return {"files": {"file": (name, content, "application/octet-stream")}}


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
TEXT_PNG = image_bytes(["Etna erupted again."], "PNG")
TEXT_JPG = image_bytes(["Etna erupted again."], "JPEG")
DOCX = docx_file(["Etna erupted again."])
PPTX = pptx_file([("Etna", "It erupted again.", "")])
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(1024)  # how Office stores a password-protected file
DEEP_SPANS = "<text:span>" * 100_000 + "deep text" + "</text:span>" * 100_000
ENCRYPTED_ODT = MANIFEST.replace("</manifest:manifest>", "<manifest:encryption-data/></manifest:manifest>")

# (id, request keyword arguments for POST /documents, status, what the message must say)
HOSTILE_UPLOADS: list[tuple[str, dict[str, Any], int, str]] = [
    # content that is not what its name says
    ("binary-named-txt", file("photo.txt", PNG), 400, "not a text file"),
    ("latin1-named-md", file("notes.md", "café crème brûlée".encode("latin-1")), 400, "not valid UTF-8"),
    ("utf16-text", file("wide.txt", "hello".encode("utf-16")), 400, "not a text file"),
    ("only-a-bom", file("bom.txt", b"\xef\xbb\xbf"), 400, "no text"),
    ("only-whitespace", file("blank.md", b" \n\t\r\n "), 400, "no text"),
    ("html-only-script", file("x.html", b"<script>alert(1)</script><style>p{}</style>"), 400, "no text"),
    ("html-nested-60000-deep", file("deep.html", b"<div>" * 60_000), 400, "no text"),
    ("pdf-garbage", file("broken.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 8), 400, "not a readable PDF"),
    ("pdf-truncated", file("cut.pdf", pdf()[:200]), 400, "not a readable PDF"),
    ("pdf-without-text", file("scan.pdf", pdf()), 400, "no text.*OCR"),
    ("pdf-encrypted", file("locked.pdf", pdf(encrypt=True)), 400, "password"),
    ("html-named-pdf", file("page.pdf", b"<html><p>hi</p></html>"), 400, "not a readable PDF"),
    # office packages and tables
    ("docx-garbage", file("a.docx", PNG), 400, r"not a readable Word \(\.docx\) file"),
    ("docx-truncated", file("cut.docx", DOCX[: len(DOCX) // 2]), 400, "not a readable Word"),
    ("docx-encrypted", file("locked.docx", OLE), 400, "password-protected"),
    ("docx-zip-bomb", file("bomb.docx", zip_bomb(80 << 20)), 400, "inflate to 83,886,.* bytes.*zip bomb"),
    (
        "docx-dtd",
        file("lol.docx", replace_part(DOCX, "word/document.xml", BILLION_LAUGHS + b"<w:document/>")),
        400,
        "DTD",
    ),
    ("docx-empty", file("blank.docx", docx_file([""])), 400, "no text"),
    ("pptx-garbage", file("deck.pptx", b"PK\x03\x04" + bytes(300)), 400, "not a readable PowerPoint"),
    ("pptx-encrypted", file("deck.pptx", OLE), 400, "password-protected"),
    ("pptx-named-docx", file("deck.docx", PPTX), 400, "not a readable Word"),
    ("odt-dtd", file("lol.odt", odt_file(odt_body(["x"]), prolog=BILLION_LAUGHS.decode()[22:])), 400, "DTD"),
    ("odt-encrypted", file("secret.odt", odt_file(odt_body(["x"]), manifest=ENCRYPTED_ODT)), 400, "password"),
    ("odt-bad-xml", file("bad.odt", odt_file("<text:p>unclosed")), 400, "not a readable OpenDocument"),
    ("csv-huge-field", file("big.csv", b"a,b\n1," + b"y" * 200_000), 400, "field larger than field limit"),
    ("csv-latin1", file("t.csv", "ville,café\n".encode("latin-1")), 400, "not valid UTF-8"),
    ("tsv-binary", file("t.tsv", PNG), 400, "not a text file"),
    # images (read by OCR)
    ("random-bytes-named-png", file("photo.png", bytes(range(256)) * 8), 400, "not a readable image"),
    ("png-header-only", file("photo.png", PNG), 400, "not a readable image"),
    ("png-truncated", file("cut.png", TEXT_PNG[: len(TEXT_PNG) // 3]), 400, "not a readable image"),
    ("jpg-truncated", file("cut.jpg", TEXT_JPG[:300]), 400, "not a readable image"),
    ("text-named-tif", file("scan.tif", b"Mount Etna"), 400, "not a readable image"),
    ("blank-png", file("blank.png", image_bytes([], "PNG")), 400, "no text.*OCR found no words"),
    ("executable", file("tool.exe", b"MZ\x90\x00" + bytes(64)), 415, r"not a supported type.*\.txt"),
    # size
    ("one-byte-too-large", file("big.txt", b"a" * (LIMIT + 1)), 413, "larger than 400,000 bytes"),
    ("far-too-large", file("huge.txt", b"a " * (4 * LIMIT)), 413, "RAG_MAX_UPLOAD_BYTES"),
    # names
    ("traversal-passwd", file("../../etc/passwd", b"root:x:0:0"), 400, r"outside its folder \('\.\.'\)"),
    ("traversal-txt", file("../../../../../../etc/passwd.txt", b"root:x:0:0"), 400, "outside its folder"),
    ("traversal-windows", file("..\\..\\boot.ini.txt", b"[boot]"), 400, "outside its folder"),
    ("absolute-no-extension", file("/etc/passwd", b"root:x:0:0"), 415, "'passwd' is not a supported type"),
    ("only-dots", file("....", b"text"), 400, "may not start with '.'"),
    ("dot-dot", file("..", b"text"), 400, "outside its folder"),
    ("hidden-file", file(".env.txt", b"SECRET=1"), 400, "may not start with '.'"),
    ("windows-con", file("CON", b"text"), 400, r"reserved on Windows \(CON\)"),
    ("windows-lpt1", file("lpt1.md", b"text"), 400, "reserved on Windows"),
    ("name-300-chars", file("x" * 296 + ".txt", b"text"), 400, "longer than 255 bytes"),
    ("rtl-override-name", file("invoice\u202etxt.exe.md", b"text"), 400, "control characters"),
    ("zero-width-name", file("a\u200bb.txt", b"text"), 400, "control characters"),
    ("escape-sequence-name", multipart(b'filename="\x1b[31mred.txt"'), 400, "control characters"),
    ("nul-in-name", multipart(b'filename="a\x00b.txt"'), 400, "control characters"),
    ("newline-in-name", multipart(b'filename="a\nb.txt"'), 400, "control characters"),
    ("surrogate-bytes-name", multipart(b'filename="\xed\xa0\x80.txt"'), 400, "control characters"),
    ("empty-name", multipart(b'filename=""'), 400, "has no file name"),
    ("no-filename", multipart(b"x=1"), 422, "field named 'file'"),
    ("rfc5987-name-only", multipart(b"filename*=utf-8''%F0%9F%8C%8B.txt"), 422, "file name"),
    ("two-files", {"files": [("file", ("a.txt", b"one")), ("file", ("b.txt", b"two"))]}, 400, "Too many files"),
    ("not-multipart", {"json": {"file": "x"}}, 422, "multipart/form-data"),
]


@pytest.mark.parametrize(
    ("kwargs", "status", "says"), [c[1:] for c in HOSTILE_UPLOADS], ids=[c[0] for c in HOSTILE_UPLOADS]
)
def test_hostile_upload_is_a_clear_4xx_and_changes_nothing(
    service: Service, kwargs: dict[str, Any], status: int, says: str
) -> None:
    before = tree(service.root)
    documents = service.client.get("/documents").json()
    assert_clear_error(service.client.post("/documents", **kwargs), status, says)
    assert tree(service.root) == before  # index, corpus and every folder around them: byte-identical
    assert service.client.get("/documents").json() == documents
    assert not Path("/etc/passwd.txt").exists()


# Edge cases that are legitimate: accepted, stored under the expected name, and nothing else changes.
ACCEPTED_UPLOADS: list[tuple[str, str, bytes, str]] = [
    ("emoji-name", "🌋 eruption notes.txt", b"Lava reached the sea.", "🌋 eruption notes.txt"),
    ("name-of-255-bytes", "n" * 251 + ".txt", b"A long name.", "n" * 251 + ".txt"),
    ("decomposed-name-stored-composed", "cafe\u0301.md", b"Coffee on Etna.", "caf\u00e9.md"),
    ("folder-path-of-old-browsers", "C:\\Users\\me\\report.txt", b"Report text.", "report.txt"),
    ("rtl-and-zero-width-in-text", "bidi.txt", "abc \u202edef\u202c g\u200bh".encode(), "bidi.txt"),
    ("html-nested-20000-deep-with-text", "deep.html", b"<table><tr><td>" * 20_000 + b"deep text", "deep.html"),
    ("docx", "report.docx", DOCX, "report.docx"),
    ("pptx", "deck.pptx", PPTX, "deck.pptx"),
    ("odt", "essay.odt", odt_file(odt_body(["Etna erupted again."])), "essay.odt"),
    ("csv", "towns.csv", b"town,height\r\nEnna,931\r\n", "towns.csv"),
    ("odt-nested-100000-deep-with-text", "deep.odt", odt_file(f"<text:p>{DEEP_SPANS}</text:p>"), "deep.odt"),
    ("tsv", "peaks.tsv", b"peak\tmetres\nEtna\t3357\n", "peaks.tsv"),
    ("png", "scan.png", TEXT_PNG, "scan.png"),
]


@pytest.mark.parametrize(
    ("name", "content", "stored"), [c[1:] for c in ACCEPTED_UPLOADS], ids=[c[0] for c in ACCEPTED_UPLOADS]
)
def test_edge_case_upload_is_accepted_and_touches_only_its_own_file(
    service: Service, name: str, content: bytes, stored: str
) -> None:
    before = tree(service.root)
    resp = service.client.post("/documents", files={"file": (name, content)})
    assert resp.status_code == 201, resp.text
    assert resp.json()["doc_id"] == stored
    assert (service.corpus / stored).read_bytes() == content
    after = tree(service.root)
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    index_dir = Path("srv/data/index")
    # Only the new file and the index's new version; nothing anywhere else.
    assert all(Path(p) == Path("srv/data/corpus") / stored or index_dir in Path(p).parents for p in changed), changed
    assert {d["doc_id"] for d in service.client.get("/documents").json()} == {"etna.md", stored}
    if name.startswith("deep."):
        assert service.client.post("/search", json={"query": "deep text"}).json()["hits"][0]["text"] == "deep text"


def test_deeply_nested_html_is_read_in_bounded_time() -> None:
    # The text extraction used to insert breaks into the parsed tree, which re-walks each element's
    # subtree: 300 kB of nested tables took six minutes of CPU (while holding the upload lock).
    # Run in a child process so a regression fails here in a minute instead of hanging the suite.
    ctx = fault_procs.context()
    proc = ctx.Process(target=load_bytes, args=("deep.html", b"<table><tr><td>" * 20_000 + b"deep text"))
    proc.start()
    proc.join(60)
    finished = not proc.is_alive()
    if not finished:
        proc.kill()
        proc.join()
    assert finished, "reading 300 kB of nested HTML took over 60 s"
    assert proc.exitcode == 0


def raw_json(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"content-type": "application/json"}}


def chat(content: Any) -> dict[str, Any]:
    return {"json": {"messages": [{"role": "user", "content": content}]}}


MEGABYTE = "x" * 1_000_000

# (id, method, path, request keyword arguments, status, what the message must say)
HOSTILE_QUESTIONS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("nul", "POST", "/ask", {"json": {"question": "Where is Etna?\u0000"}}, 422, r"question: .*U\+0000"),
    ("escape-sequence", "POST", "/ask", {"json": {"question": "\u001b[2J\u001b[HEtna?"}}, 422, r"U\+001B"),
    ("c1-control", "POST", "/ask", {"json": {"question": "Etna\u0085?"}}, 422, r"U\+0085"),
    ("lone-surrogate", "POST", "/ask", raw_json(b'{"question": "Etna \\ud800?"}'), 422, "question: .*unicode"),
    (
        "lone-low-surrogate-stream",
        "POST",
        "/ask",
        raw_json(b'{"question": "\\udfff", "stream": true}'),
        422,
        "question",
    ),
    ("one-megabyte", "POST", "/ask", {"json": {"question": MEGABYTE}}, 422, "at most 2000 characters"),
    ("one-megabyte-stream", "POST", "/ask", {"json": {"question": MEGABYTE, "stream": True}}, 422, "at most 2000"),
    (
        "nul-in-history",
        "POST",
        "/ask",
        {"json": {"question": "And?", "history": [{"role": "user", "content": "a\u0000"}]}},
        422,
        "history.0.content",
    ),
    ("invalid-utf8-body", "POST", "/ask", raw_json(b'{"question": "\xff\xfe"}'), 400, "UTF-8 JSON"),
    (
        "nested-100000-deep",
        "POST",
        "/ask",
        raw_json(b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        400,
        "nested",
    ),
    ("search-nul", "POST", "/search", {"json": {"query": "Etna\u0000"}}, 422, r"query: .*U\+0000"),
    ("search-one-megabyte", "POST", "/search", {"json": {"query": MEGABYTE}}, 422, "query: .*at most 20000"),
    ("chat-one-megabyte", "POST", "/v1/chat/completions", chat(MEGABYTE), 422, "at most 2000"),
    (
        "chat-lone-surrogate",
        "POST",
        "/v1/chat/completions",
        raw_json(b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
        422,
        "lone surrogate",
    ),
    ("chat-nul-in-part", "POST", "/v1/chat/completions", chat([{"type": "text", "text": "a\u0000"}]), 422, r"U\+0000"),
    ("delete-traversal", "DELETE", "/documents/..%2F..%2Fetc%2Fpasswd", {}, 404, "No document"),
    ("delete-encoded-nul", "DELETE", "/documents/etna.md%00.txt", {}, 404, "No document"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "says"),
    [c[1:] for c in HOSTILE_QUESTIONS],
    ids=[c[0] for c in HOSTILE_QUESTIONS],
)
def test_hostile_question_is_a_clear_4xx_and_changes_nothing(
    service: Service, method: str, path: str, kwargs: dict[str, Any], status: int, says: str
) -> None:
    before = tree(service.root)
    assert_clear_error(service.client.request(method, path, **kwargs), status, says)
    assert tree(service.root) == before
    assert service.client.get("/ready").status_code == 200


@pytest.mark.parametrize(
    "question",
    [
        "Where does Etna stand?\u202e",  # an RTL override: legitimate in right-to-left text
        "Where does Et\u200bna stand?",  # a zero-width space
        "🌋 Where does Etna stand? 🇮🇹",
        "Ou\u0300 se trouve l'Etna ?",  # a combining accent
        "x" * 2000,  # exactly the limit
    ],
)
def test_unicode_edge_case_questions_are_answered(service: Service, question: str) -> None:
    resp = service.client.post("/ask", json={"question": question})
    assert resp.status_code == 200, resp.text
    assert resp.json()["question"] == question


# ------------------------------------------------------------------ API key and CORS

KEY = "k3y-0123456789abcdef"
# The only answers without a key: liveness, readiness, the page and its files (decided in api/security.py).
PUBLIC = {("GET", "/health"), ("GET", "/ready"), ("GET", "/")}


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    app = create_app(Settings(api_key=KEY), lambda s: FakePipeline())
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.rag.wait_ready(10)
        yield client


def flat_routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The app's routes, with those of each included router (``api/routes/*``) in its place."""
    for route in routes:
        included = getattr(route, "original_router", None)  # what FastAPI's include_router leaves in app.routes
        if included is not None:
            yield from flat_routes(included.routes)
        else:
            yield route


def every_route(client: TestClient) -> list[tuple[str, str]]:
    routes = []
    for route in flat_routes(client.app.routes):  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            routes.append(("GET", f"{route.path}/app.js"))
            continue
        path = re.sub(r"\{[^}]+\}", "etna.md", route.path)  # type: ignore[attr-defined]
        routes += [(method, path) for method in sorted(route.methods or ())]  # type: ignore[attr-defined]
    return routes


def test_every_route_but_health_ready_and_the_page_needs_the_key(keyed: TestClient) -> None:
    routes = every_route(keyed)
    # The enumeration is not vacuous: it covers the API, /v1, /metrics, the schema and the static mount.
    paths = {path for _, path in routes}
    for expected in ("/ask", "/search", "/documents", "/documents/etna.md", "/v1/models", "/v1/chat/completions"):
        assert expected in paths, expected
    assert {"/metrics", "/openapi.json", "/info", "/static/app.js"} <= paths
    assert any(isinstance(r, APIRoute) for r in flat_routes(keyed.app.routes))  # type: ignore[attr-defined]

    wrong = {
        "no header": {},
        "wrong key, same length": {"authorization": "Bearer " + "x" * len(KEY)},
        "wrong key, other length": {"authorization": "Bearer nope"},
        "key with a suffix": {"authorization": f"Bearer {KEY}x"},
        "key without scheme": {"authorization": KEY},
        "basic scheme": {"authorization": f"Basic {KEY}"},
        "empty bearer": {"authorization": "Bearer "},
    }
    for method, path in routes:
        public = (method, path) in PUBLIC or path.startswith("/static/")
        for why, headers in wrong.items():
            resp = keyed.request(method, path, headers=headers, json={})
            if public:
                assert resp.status_code == 200, (method, path, why)
            else:
                assert resp.status_code == 401, (method, path, why, resp.status_code)
                assert resp.headers["www-authenticate"] == "Bearer"
                if method != "HEAD":  # a HEAD response has no body
                    assert resp.json()["error"]["code"] == "unauthorized"
        resp = keyed.request(method, path, headers={"authorization": f"Bearer {KEY}"}, json={})
        assert resp.status_code != 401, (method, path)
    # Paths that are no route (the docs pages are off) or that sneak past the static prefix.
    for path in ("/docs", "/redoc", "/nope", "/static/%2e%2e/openapi.json", "/static/..%2fopenapi.json"):
        resp = keyed.get(path)
        assert resp.status_code in (401, 404) and set(resp.json()) == {"error"}, path  # an error, not the schema


def test_the_key_comparison_is_constant_time(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.security.hmac, "compare_digest", spy)
    for token in ("x" * len(KEY), "nope", KEY[:-1], KEY + "x", ""):
        assert keyed.get("/info", headers={"authorization": f"Bearer {token}"}).status_code == 401
    assert keyed.get("/info", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    # Every candidate, of any length, went through hmac.compare_digest: no early exit on a length mismatch.
    assert compared == [(t.encode(), KEY.encode()) for t in ("x" * len(KEY), "nope", KEY[:-1], KEY + "x", "", KEY)]


@pytest.mark.parametrize("api_key", [None, KEY])
def test_cors_is_closed(api_key: str | None) -> None:
    app = create_app(Settings(api_key=api_key), lambda s: FakePipeline())
    origin = {"origin": "https://evil.example"}
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.rag.wait_ready(10)
        preflight = client.options(
            "/ask", headers={**origin, "access-control-request-method": "POST", "access-control-request-headers": "x"}
        )
        assert preflight.status_code >= 400
        auth = {"authorization": f"Bearer {KEY}"} if api_key else {}
        responses = [
            preflight,
            client.get("/health", headers=origin),
            client.post("/search", json={"query": "Etna"}, headers={**origin, **auth}),
            client.get("/documents", headers={**origin, **auth}),
        ]
        for resp in responses:
            assert not any(h.lower().startswith("access-control-") for h in resp.headers), dict(resp.headers)
