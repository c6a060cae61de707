"""The contract between the library's results, their one JSON form, and the API's schema.

A field added to a dataclass in ``rag.types`` fails here until ``rag.serialization``
writes it and the matching response model in ``api/schemas.py`` describes it; and
the OpenAPI check the API tests rely on does refuse a body that drifts from the schema.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from api.app import create_app
from api.schemas import AnswerOut, CitationOut, DocInfoOut, HitOut, SentenceOut
from rag.serialization import (
    ANSWER_RENAMED,
    answer_to_dict,
    citation_to_dict,
    doc_to_dict,
    hit_to_dict,
    sentence_to_dict,
)
from rag.settings import Settings
from rag.types import Answer, Chunk, Citation, DocInfo, Hit, Sentence
from tests.openapi_contract import check_response

CITATION = Citation(1, "a.txt#0", "a.txt", 0, 4, "Etna", 2, 0, 4)
SENTENCE = Sentence("Etna [1].", (1,), True, 1.0, "")
ANSWER = Answer(
    "Which?", "Etna [1].", False, (CITATION,), (SENTENCE,), "Which volcano?", {"total_s": 0.1}, {"index": "v1"},
    ("a note",), 0.9, "Etna [1].",
)  # fmt: skip
HIT = Hit(Chunk("a.txt#0", "a.txt", "Etna", 0, 4, 2), 0.5)
DOC = DocInfo("a.txt", "ab" * 32, 1, 4)


def _names(cls: Any, renamed: dict[str, str] | None = None) -> set[str]:
    return {(renamed or {}).get(f.name, f.name) for f in dataclasses.fields(cls)}


@pytest.mark.parametrize(
    ("fields", "written", "model"),
    [
        (_names(Answer, ANSWER_RENAMED), answer_to_dict(ANSWER), AnswerOut),
        (_names(Citation), citation_to_dict(CITATION), CitationOut),
        (_names(Sentence), sentence_to_dict(SENTENCE), SentenceOut),
        # A hit is its chunk (whose id is the chunk_id) and a score.
        (_names(Chunk, {"id": "chunk_id"}) | {"score"}, hit_to_dict(HIT), HitOut),
        (_names(DocInfo), doc_to_dict(DOC), DocInfoOut),
    ],
    ids=["Answer", "Citation", "Sentence", "Hit", "DocInfo"],
)
def test_every_field_is_serialized_and_in_the_schema(
    fields: set[str], written: dict[str, Any], model: type[BaseModel]
) -> None:
    assert set(written) == fields, "rag/serialization.py must write every field of the dataclass, and only those"
    assert set(model.model_fields) == fields, f"api/schemas.py {model.__name__} must describe every field"
    model.model_validate(written)  # and the values fit the schema's types


def _response(path: str, body: object, status: int = 200, method: str = "POST") -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request(method, f"http://testserver{path}"))


def test_the_openapi_check_refuses_bodies_that_drift_from_the_schema(tmp_path: Any) -> None:
    app = create_app(Settings(corpus_dir=tmp_path, index_dir=tmp_path / "index"), lambda s: None)  # type: ignore[arg-type,return-value]
    hit = hit_to_dict(HIT)
    check_response(app, _response("/search", {"hits": [hit]}))
    check_response(app, _response("/ask", AnswerOut.model_validate(answer_to_dict(ANSWER)).model_dump(mode="json")))
    check_response(app, _response("/documents/sub/a.txt", {"deleted": "sub/a.txt"}, method="DELETE"))
    with pytest.raises(AssertionError, match="unexpected"):
        check_response(app, _response("/search", {"hits": [{**hit, "rank": 1}]}))
    with pytest.raises(AssertionError, match="score"):
        check_response(app, _response("/search", {"hits": [{k: v for k, v in hit.items() if k != "score"}]}))
    with pytest.raises(AssertionError, match="abstained"):
        check_response(app, _response("/ask", {**answer_to_dict(ANSWER), "abstained": "no"}))
    with pytest.raises(AssertionError, match="does not list"):
        check_response(app, _response("/search", {"hits": []}, status=204))
    with pytest.raises(AssertionError, match="detail"):  # an error must have the one error shape
        check_response(app, _response("/search", {"detail": "nope"}, status=404))
