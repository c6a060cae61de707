"""Pydantic models for the HTTP edge: request bodies (validated) and response shapes (documented and enforced).

Inside the library the stages exchange frozen dataclasses (``rag.types``);
these models exist only where JSON crosses the wire. A response is built from
the library's one serializer (``rag.serialization``, which the CLI and the eval
report use too) and validated by its model here (``answer_json``, ``hit_out``,
...). Response models forbid unknown fields, so a field the serializer writes
but the schema does not describe is an error, not a silent undocumented extra.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from rag.serialization import answer_to_dict, citation_to_dict, doc_to_dict, hit_to_dict
from rag.types import Answer, DocInfo, Hit

MAX_HISTORY_TURNS = 20
MAX_TURN_CHARS = 20_000

# C0/C1 control characters other than tab and newlines, and lone UTF-16 surrogates (JSON allows
# "\ud800"; no encoder downstream does). Typed text never holds them; a NUL or a surrogate would
# otherwise travel into the tokenizers and the logs.
_UNTYPEABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(value: str) -> str:
    """Refuse control characters and lone surrogates, naming the first one.

    >>> check_text("Où est l'Etna ?\\n")
    "Où est l'Etna ?\\n"
    >>> check_text("Etna\\x00?")
    Traceback (most recent call last):
    ...
    ValueError: contains the control character U+0000 at position 4; remove it
    """
    if bad := _UNTYPEABLE.search(value):
        kind = "lone surrogate" if "\ud800" <= bad.group() <= "\udfff" else "control character"
        raise ValueError(f"contains the {kind} U+{ord(bad.group()):04X} at position {bad.start()}; remove it")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, AfterValidator(check_text)]
NonBlank = Annotated[str, AfterValidator(check_text), AfterValidator(_not_blank)]


class HistoryTurn(BaseModel):
    """One earlier message of the conversation, oldest first."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: Text = Field(max_length=MAX_TURN_CHARS)


class AskRequest(BaseModel):
    """Body of ``POST /ask``. The question's upper length is ``Settings.max_question_chars``,
    checked by the route because it is configurable."""

    model_config = ConfigDict(extra="forbid")

    question: NonBlank = Field(min_length=1, description="The question, in plain words.")
    history: list[HistoryTurn] = Field(
        default_factory=list,
        max_length=MAX_HISTORY_TURNS,
        description="Earlier turns, oldest first, so follow-up questions can refer to them.",
    )
    k: int | None = Field(None, ge=1, le=20, description="Passages given to the model (default: RAG_TOP_K).")
    stream: bool = Field(False, description="Answer as Server-Sent Events (also with Accept: text/event-stream).")


class SearchRequest(BaseModel):
    """Body of ``POST /search``."""

    model_config = ConfigDict(extra="forbid")

    query: NonBlank = Field(min_length=1, max_length=MAX_TURN_CHARS)
    k: int | None = Field(None, ge=1, le=50, description="Number of hits (default: RAG_TOP_K).")


class OutModel(BaseModel):
    """A response shape: every field the service sends is described, nothing else is accepted."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(OutModel):
    code: str = Field(description="Stable machine-readable code, e.g. 'invalid_request', 'busy', 'not_found'.")
    message: str = Field(description="What went wrong and what to do, for people.")


class ErrorResponse(OutModel):
    """Every error the service returns has this shape."""

    error: ErrorDetail


class HitOut(OutModel):
    chunk_id: str
    doc_id: str
    start: int = Field(description="Character offset of the passage in its source document.")
    end: int
    text: str
    score: float
    page: int | None = None


class SearchResponse(OutModel):
    hits: list[HitOut]


class DocInfoOut(OutModel):
    doc_id: str
    sha256: str
    chunks: int
    chars: int


class DeletedOut(OutModel):
    deleted: str


class CitationOut(OutModel):
    marker: int = Field(description="The n of an [n] marker in the answer text.")
    chunk_id: str
    doc_id: str
    start: int = Field(description="Offset of the passage in the source document; text starts here.")
    end: int
    text: str
    page: int | None = None
    span_start: int | None = Field(None, description="Supporting words, as offsets in the source document.")
    span_end: int | None = None
    scanned: bool = Field(
        False, description="The cited page was read by OCR (an image or a scanned PDF page): say 'scanned page'."
    )


class SentenceOut(OutModel):
    text: str
    markers: list[int]
    supported: bool
    support: float
    note: str


class AnswerOut(OutModel):
    """The answer object of ``POST /ask`` (and of the ``answer`` event when streaming)."""

    question: str
    standalone_question: str
    answer: str
    abstained: bool = Field(description="True when the documents do not answer the question.")
    citations: list[CitationOut]
    sentences: list[SentenceOut]
    timings: dict[str, float]
    provenance: dict[str, str]
    notes: list[str]
    confidence: float | None = Field(
        description="How likely the answer is right: 1 minus the model's probability of replying NOT FOUND "
        "on what it answered from, calibrated on the gold set (rag.decision.calibrated). On a refusal, that "
        "probability uncalibrated. Null when not measured."
    )
    draft: str = Field(description="The model's unverified output, to see what verification changed.")


def answer_json(answer: Answer) -> dict[str, Any]:
    """The answer object as ``POST /ask`` sends it (and the ``answer`` event of a stream)."""
    return AnswerOut.model_validate(answer_to_dict(answer)).model_dump(mode="json")


def citations_json(answer: Answer) -> list[Any]:
    """The answer's citations, as the /v1 endpoints add them to a completion."""
    return [CitationOut.model_validate(citation_to_dict(c)).model_dump(mode="json") for c in answer.citations]


def hit_out(hit: Hit) -> HitOut:
    return HitOut.model_validate(hit_to_dict(hit))


def doc_out(doc: DocInfo) -> DocInfoOut:
    return DocInfoOut.model_validate(doc_to_dict(doc))


# --- OpenAI-compatible chat completions ------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: Text | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _clean(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        # Checked here, not with ``Text`` in the union: a failing str branch would let the
        # union fall through and accept the string as it is.
        return check_text(value) if isinstance(value, str) else value

    def plain_text(self) -> str:
        """The message's text; image and other non-text parts are ignored.

        >>> parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
        >>> ChatMessage(role="user", content=parts).plain_text()
        'a\\nb'
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content if part.type == "text" and part.text)


class ChatCompletionRequest(BaseModel):
    """Body of ``POST /v1/chat/completions``. The last message must be the user's question;
    earlier user/assistant messages become the history (the last 20 are kept); sampling
    options such as ``temperature`` are accepted and ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    k: int | None = Field(None, ge=1, le=20, description="Extension: passages given to the model.")
