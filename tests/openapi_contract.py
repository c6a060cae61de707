"""Check HTTP responses against the app's own OpenAPI schema, not against the code that built them.

``ContractClient`` is a ``TestClient`` that validates every JSON response it
receives (and every ``answer`` event of a stream) against the schema the app
publishes at ``/openapi.json``: the documented status codes, and the body's
JSON Schema for that status. A route that returns a field its schema does not
describe, or leaves out one it promises, fails the test that called it.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import httpx
import jsonschema_rs
from fastapi import FastAPI
from fastapi.testclient import TestClient

_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


def _path_regex(template: str) -> re.Pattern[str]:
    # FastAPI's "{doc_id:path}" is published as "{doc_id}"; a path parameter may hold slashes.
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("^" + ".+".join(re.escape(part) for part in parts) + "$")


@cache
def _validator(document: str, schema: str) -> Any:
    # The response schema at the root of the whole document, so "#/components/schemas/..." resolves.
    root = {**json.loads(document), "$schema": _DIALECT, **json.loads(schema)}
    return jsonschema_rs.Draft202012Validator(root)


def _operation(spec: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    for template, operations in spec["paths"].items():
        if _path_regex(template).match(path) and method.lower() in operations:
            op: dict[str, Any] = operations[method.lower()]
            return op
    return None


def check_response(app: FastAPI, response: httpx.Response) -> None:
    """Raise ``AssertionError`` when ``response`` breaks the contract ``app.openapi()`` states."""
    spec = app.openapi()
    document = json.dumps(spec, sort_keys=True)
    method, path, status = response.request.method, response.request.url.path, response.status_code
    content_type = response.headers.get("content-type", "")
    operation = _operation(spec, method, path)
    if operation is None or not content_type.startswith(("application/json", "text/event-stream")):
        if content_type.startswith("application/json") and status >= 400:  # unknown route or method
            _validate(document, _ERROR, response.json(), method, path, status)
        return
    documented = operation.get("responses", {})
    entry = documented.get(str(status))
    if entry is None:
        if status >= 400:  # 405, 500: every error has the one error shape
            _validate(document, _ERROR, response.json(), method, path, status)
            return
        raise AssertionError(f"{method} {path} -> {status}, a status its OpenAPI operation does not list")
    if content_type.startswith("text/event-stream"):
        # The answer object of a stream is the one ``POST /ask`` documents for 200.
        schema = entry.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            for block in response.text.replace("\r\n", "\n").split("\n\n"):
                lines = block.split("\n")
                if "event: answer" in lines:
                    data = "\n".join(line[5:].strip() for line in lines if line.startswith("data:"))
                    _validate(document, schema, json.loads(data), method, path, status)
        return
    schema = entry.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        _validate(document, schema, response.json(), method, path, status)


def _validate(document: str, schema: dict[str, Any], body: Any, method: str, path: str, status: int) -> None:
    validator = _validator(document, json.dumps(schema, sort_keys=True))
    errors = list(validator.iter_errors(body))
    if errors:
        where = "/".join(str(p) for p in errors[0].instance_path) or "(body)"
        raise AssertionError(f"{method} {path} -> {status} breaks its OpenAPI schema at {where}: {errors[0].message}")


class ContractClient(TestClient):
    """A ``TestClient`` whose every response must match the app's OpenAPI schema."""

    def request(self, method: str, url: httpx._types.URLTypes, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        response = super().request(method, url, **kwargs)
        assert isinstance(self.app, FastAPI)
        check_response(self.app, response)
        return response
