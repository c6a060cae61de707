"""Deterministic fakes for fast unit tests (no model loads)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from rag.generation import Message

_WORD = re.compile(r"\w+")


class FakeEmbedder:
    """Bag of hashed words: texts sharing words get similar unit vectors."""

    id = "fake-hash-embedder"
    dim = 64
    max_tokens = 256

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[row, h % self.dim] += 1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else 1.0 / np.sqrt(self.dim)
        return out

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))


class FakeGenerator:
    """Replies with ``reply(messages)``, streamed word by word."""

    id = "fake-generator"
    keeps_states = False

    def __init__(self, reply: Callable[[Sequence[Message]], str]) -> None:
        self.reply = reply
        self.calls: list[list[Message]] = []
        self.avoided: list[str] = []
        self.closes = 0

    def stream(self, messages: Sequence[Message], *, max_tokens: int, avoid: str = "") -> Iterator[str]:
        self.calls.append(list(messages))
        self.avoided.append(avoid)
        text = self.reply(messages)
        yield from re.findall(r"\S+\s*", text)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def start_probability(self, messages: Sequence[Message], text: str) -> float | None:
        return None  # like a backend that cannot read its own logits

    def keep_state(self, messages: Sequence[Message], *, pin: bool = False) -> bool:
        return False

    def check_ready(self) -> None:
        pass  # in process: always there

    def close(self) -> None:
        self.closes += 1


class ScoringFakeGenerator(FakeGenerator):
    """A FakeGenerator that also states its P(reply starts NOT FOUND), like the llama backend."""

    def __init__(
        self, reply: Callable[[Sequence[Message]], str], p_not_found: float | Callable[[Sequence[Message]], float]
    ) -> None:
        super().__init__(reply)
        self.keeps_states = True  # keep_state below remembers what it read
        self.p_not_found = p_not_found
        self.scored: list[list[Message]] = []
        self.kept: set[str] = set()
        self.read: list[list[Message]] = []  # messages whose state had to be read (not kept yet)

    def keep_state(self, messages: Sequence[Message], *, pin: bool = False) -> bool:
        key = repr(list(messages))
        if key in self.kept:
            return True
        self.kept.add(key)
        self.read.append(list(messages))
        return False

    def start_probability(self, messages: Sequence[Message], text: str) -> float:
        self.calls.append(list(messages))
        self.scored.append(list(messages))
        if text != "NOT FOUND":
            return 0.0
        return self.p_not_found(messages) if callable(self.p_not_found) else self.p_not_found
