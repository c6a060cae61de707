"""The gold set: one question per JSON line, checked as it is read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rag.errors import InputError
from rag.types import Turn


@dataclass(frozen=True)
class GoldItem:
    id: str
    question: str
    answers: tuple[str, ...]
    evidence: str
    doc_id: str | None
    answerable: bool
    type: str
    history: tuple[Turn, ...] = ()
    #: Optional part of the set ("tune" to choose settings on, "heldout" to report); ``rag eval --split``.
    split: str | None = None


def load_gold(path: Path) -> list[GoldItem]:
    """Read a JSON-lines gold file; any malformed line is an ``InputError`` naming it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"Cannot read the gold file {path}: {exc.strerror or exc}. Pass --gold FILE.") from exc
    items: list[GoldItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _gold_error(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
        item = _gold_item(row, path, lineno)
        if item.id in seen:
            raise _gold_error(path, lineno, f"id {item.id!r} already used on line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise InputError(f"The gold file {path} holds no questions (one JSON object per line expected).")
    return items


def _gold_error(path: Path, lineno: int, what: str) -> InputError:
    return InputError(
        f"{path}, line {lineno}: {what}. Each line needs id, question, answers, evidence, doc_id, "
        "answerable, type (and optionally history)."
    )


def _gold_item(row: object, path: Path, lineno: int) -> GoldItem:
    def bad(what: str) -> InputError:
        return _gold_error(path, lineno, what)

    if not isinstance(row, dict):
        raise bad("expected a JSON object")
    missing = [k for k in ("id", "question", "answers", "answerable", "type") if k not in row]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    for key in ("id", "question", "type"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise bad(f"{key!r} must be a non-empty string")
    answerable = row["answerable"]
    if not isinstance(answerable, bool):
        raise bad("'answerable' must be true or false")
    answers = row["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) and a.strip() for a in answers):
        raise bad("'answers' must be a list of non-empty strings")
    evidence = row.get("evidence") or ""
    doc_id = row.get("doc_id")
    if not isinstance(evidence, str):
        raise bad("'evidence' must be a string")
    if doc_id is not None and not isinstance(doc_id, str):
        raise bad("'doc_id' must be a string or null")
    if answerable:
        if not answers:
            raise bad("an answerable question needs at least one answer")
        if not evidence.strip() or not doc_id:
            raise bad("an answerable question needs 'evidence' and 'doc_id'")
    history: list[Turn] = []
    raw_history = row.get("history") or []
    if not isinstance(raw_history, list):
        raise bad('\'history\' must be a list of {"role", "content"} objects')
    for turn in raw_history:
        if (
            not isinstance(turn, dict)
            or turn.get("role") not in ("user", "assistant")
            or not isinstance(turn.get("content"), str)
        ):
            raise bad('each history turn must be {"role": "user"|"assistant", "content": "..."}')
        history.append(Turn(turn["role"], turn["content"]))
    split = row.get("split")
    if split is not None and (not isinstance(split, str) or not split.strip()):
        raise bad("'split' must be a non-empty string when given")
    return GoldItem(
        id=row["id"],
        question=row["question"],
        answers=tuple(answers),
        evidence=evidence,
        doc_id=doc_id,
        answerable=answerable,
        type=row["type"],
        history=tuple(history),
        split=split,
    )
