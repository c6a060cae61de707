"""API key check, safe upload names and security headers.

CORS stays closed on purpose (no CORS middleware): the chat page is served by
this same origin, and other sites must not drive a private service from a
visitor's browser.
"""

from __future__ import annotations

import hmac
import json
import unicodedata

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.errors import InputError
from rag.loaders import SUPPORTED_SUFFIXES

# The page loads nothing from elsewhere; this makes a mistake (or an injected tag) fail closed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# Routes a browser must reach before it can know a key: liveness, readiness, the page and its files.
_PUBLIC_PATHS = frozenset({"/health", "/ready", "/", "/favicon.ico"})
_PUBLIC_PREFIXES = ("/static/",)


def safe_filename(name: str | None) -> str:
    """Reduce an uploaded file's name to a plain basename (NFC), or refuse it.

    A folder path, as old browsers send it, is dropped (either slash counts);
    a name that tries to climb out with ``..`` is refused outright. Either way
    an upload can never land outside the corpus folder.

    >>> safe_filename("C:\\\\Users\\\\me\\\\report.pdf")
    'report.pdf'
    >>> safe_filename("../../etc/notes.txt")
    Traceback (most recent call last):
    ...
    rag.errors.InputError: File name '../../etc/notes.txt' points outside its folder ('..'); send the bare name.
    >>> safe_filename("docs/")
    Traceback (most recent call last):
    ...
    rag.errors.InputError: The upload has no file name; send the file with its name (e.g. notes.txt).
    >>> safe_filename("con.txt")
    Traceback (most recent call last):
    ...
    rag.errors.InputError: File name 'con.txt' is reserved on Windows (CON); rename the file.
    """
    # Split by hand rather than with pathlib, which would turn "dir/" into "dir" and "a/." into "a".
    parts = (name or "").replace("\\", "/").split("/")
    if any(part.strip() == ".." for part in parts):
        raise InputError(f"File name {_shown(name or '')} points outside its folder ('..'); send the bare name.")
    base = unicodedata.normalize("NFC", parts[-1].strip())
    if not base:
        raise InputError("The upload has no file name; send the file with its name (e.g. notes.txt).")
    # Cs: a lone surrogate, which no file system can store and no encoder accepts.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in base):
        raise InputError("The file name contains control characters; rename the file.")
    if base.startswith("."):
        raise InputError(f"File name {_shown(base)} is not allowed: names may not start with '.'; rename the file.")
    if len(base.encode("utf-8")) > 255:
        raise InputError("The file name is longer than 255 bytes; rename the file.")
    # The corpus folder may be copied to Windows, which cannot create these (whatever the extension).
    stem = base.split(".", 1)[0].strip().upper()
    if stem in _WINDOWS_RESERVED:
        raise InputError(f"File name {_shown(base)} is reserved on Windows ({stem}); rename the file.")
    return base


_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
)


def _shown(name: str) -> str:
    """A name quoted for an error message, cut short so a 10 kB name cannot flood it."""
    return repr(name) if len(name) <= 80 else repr(name[:77] + "...")


def is_supported(filename: str) -> bool:
    """Whether the loaders read this kind of file (by suffix, any case).

    >>> is_supported("a.PDF"), is_supported("a.xlsx")
    (True, False)
    """
    return filename.lower().endswith(tuple(SUPPORTED_SUFFIXES))


def _is_public(path: str) -> bool:
    return path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


def bearer_ok(header: str | None, key: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer KEY`` header.

    >>> bearer_ok("Bearer s3cret", "s3cret"), bearer_ok("Bearer nope", "s3cret"), bearer_ok(None, "s3cret")
    (True, False, False)
    """
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # compare_digest on bytes: str arguments must be ASCII, and a header may not be.
    return hmac.compare_digest(token.strip().encode("utf-8"), key.encode("utf-8"))


class ApiKeyMiddleware:
    """When a key is configured, every route but the public ones needs ``Authorization: Bearer KEY``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if bearer_ok(header, self.api_key):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": {
                    "code": "unauthorized",
                    "message": "This service needs an API key: send 'Authorization: Bearer <key>'."
                    if header is None
                    else "The API key is wrong; check the key and send 'Authorization: Bearer <key>'.",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    """Adds CSP and friends to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)
