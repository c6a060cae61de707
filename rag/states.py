"""Passage states: the model's KV cache after reading a prompt prefix, kept for the next question.

With causal attention nothing that comes after a token changes that token's keys and
values, so the state after ``fixed prefix + one passage`` is exact for every prompt that
starts with those tokens. Reading a ~200-token passage costs ~5 s on 2 cores; restoring
its state costs milliseconds, and a question then costs only its own ~25 tokens.

A state is keyed by the generator's id and the exact token ids it holds (which already
encode the prompt prefix and the passage text), so a changed chunk, model or prompt
simply misses. States live in memory (least recently used out, bounded in bytes) and,
when a folder is given, on disk, one file each, bounded in bytes too.

A disk state is trusted only after its header (magic, model id, token ids) and its
payload (size, sha256) check out; anything else is deleted and rebuilt with one
warning. A folder that is read-only or full makes answers slower, never wrong and
never an error. Files are written under a unique temporary name and renamed, so a
service and an ingest warming the same folder at once never see half a state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAGIC = b"RAGKV1\n"
SUFFIX = ".kv"


def state_key(model_id: str, tokens: Sequence[int]) -> str:
    """A stable name for the state after ``tokens`` under ``model_id``.

    >>> state_key("m", [1, 2]) == state_key("m", (1, 2)) != state_key("n", [1, 2])
    True
    """
    h = hashlib.sha256(model_id.encode("utf-8") + b"\0")
    h.update(np.asarray(tokens, dtype="<i4").tobytes())
    return h.hexdigest()


@dataclass
class StateStats:
    """Counters for ``rag bench`` and the tests."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    saved: int = 0
    rejected: int = 0  # damaged or foreign files found and deleted
    restore_s: float = 0.0


class StateStore:
    """Token-prefix -> KV state bytes, in memory and optionally on disk, each bounded in bytes."""

    def __init__(
        self, model_id: str, folder: Path | None, *, disk_bytes: int, memory_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.model_id = model_id
        self.folder = folder
        self.disk_bytes = disk_bytes
        self.memory_bytes = memory_bytes
        self.stats = StateStats()
        self._memory: OrderedDict[str, tuple[tuple[int, ...], bytes]] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()
        self._warned = False
        self._writable = folder is not None and disk_bytes > 0
        if self._writable and folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._disable(f"cannot create {folder}: {exc}")

    # ------------------------------------------------------------------ lookups

    def get(self, tokens: Sequence[int]) -> bytes | None:
        """The state after exactly ``tokens``, or None."""
        key = state_key(self.model_id, tokens)
        with self._lock:
            found = self._memory.get(key)
            if found is not None and found[0] == tuple(tokens):
                self._memory.move_to_end(key)
                self.stats.memory_hits += 1
                return found[1]
        data = self._read(key, tokens)
        if data is None:
            self.stats.misses += 1
            return None
        self.stats.disk_hits += 1
        self._remember(key, tokens, data)
        return data

    def contains(self, tokens: Sequence[int]) -> bool:
        """Whether a state for ``tokens`` is at hand (memory, or a file with that name; not validated)."""
        key = state_key(self.model_id, tokens)
        with self._lock:
            if key in self._memory:
                return True
        return self.folder is not None and (self.folder / (key + SUFFIX)).is_file()

    def put(self, tokens: Sequence[int], data: bytes) -> None:
        key = state_key(self.model_id, tokens)
        self._remember(key, tokens, data)
        self._write(key, tokens, data)
        self.stats.saved += 1

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_used = 0

    def memory_usage(self) -> tuple[int, int]:
        """(states, bytes) held in memory."""
        with self._lock:
            return len(self._memory), self._memory_used

    def disk_usage(self) -> tuple[int, int]:
        """(files, bytes) of the states on disk."""
        files = self._files()
        return len(files), sum(size for _, size, _ in files)

    # ------------------------------------------------------------------ memory

    def _remember(self, key: str, tokens: Sequence[int], data: bytes) -> None:
        if len(data) > self.memory_bytes:
            return
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_used -= len(old[1])
            self._memory[key] = (tuple(tokens), data)
            self._memory_used += len(data)
            while self._memory_used > self.memory_bytes and self._memory:
                _, (_, dropped) = self._memory.popitem(last=False)
                self._memory_used -= len(dropped)

    # ------------------------------------------------------------------ disk

    def _header(self, tokens: Sequence[int], data: bytes) -> bytes:
        meta = {
            "model": self.model_id,
            "n_tokens": len(tokens),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        raw = json.dumps(meta, sort_keys=True).encode("utf-8")
        return MAGIC + struct.pack("<I", len(raw)) + raw

    def _read(self, key: str, tokens: Sequence[int]) -> bytes | None:
        if self.folder is None:
            return None
        path = self.folder / (key + SUFFIX)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"cannot read passage state {path.name}: {exc}")
            return None
        data = self._parse(blob, tokens)
        if data is None:
            self.stats.rejected += 1
            self._warn(f"passage state {path.name} is damaged or from another model; it will be rebuilt")
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first when the folder is full
        return data

    def _parse(self, blob: bytes, tokens: Sequence[int]) -> bytes | None:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
            return None
        at = len(MAGIC)
        (n,) = struct.unpack_from("<I", blob, at)
        at += 4
        try:
            meta = json.loads(blob[at : at + n])
        except ValueError:
            return None
        at += n
        want = np.asarray(tokens, dtype="<i4").tobytes()
        if not isinstance(meta, dict) or meta.get("model") != self.model_id or meta.get("n_tokens") != len(tokens):
            return None
        if blob[at : at + len(want)] != want:
            return None
        data = blob[at + len(want) :]
        if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        return data

    def _write(self, key: str, tokens: Sequence[int], data: bytes) -> None:
        if not self._writable or self.folder is None:
            return
        if len(data) > self.disk_bytes:
            return
        path = self.folder / (key + SUFFIX)
        tmp = self.folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            self._make_room(len(data))
            with open(tmp, "wb") as f:
                f.write(self._header(tokens, data))
                f.write(np.asarray(tokens, dtype="<i4").tobytes())
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self._disable(f"cannot write passage states to {self.folder}: {exc}")

    def _files(self) -> list[tuple[Path, int, float]]:
        if self.folder is None:
            return []
        out = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return []
        for entry in entries:
            if not entry.name.endswith(SUFFIX):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # removed by another process meanwhile
            out.append((Path(entry.path), st.st_size, st.st_mtime))
        return out

    def _make_room(self, incoming: int) -> None:
        files = self._files()
        used = sum(size for _, size, _ in files)
        if used + incoming <= self.disk_bytes:
            return
        for path, size, _ in sorted(files, key=lambda f: f[2]):
            with contextlib.suppress(FileNotFoundError):  # another process evicted it first
                path.unlink()
            used -= size
            if used + incoming <= self.disk_bytes:
                return

    def _disable(self, why: str) -> None:
        self._writable = False
        self._warn(f"{why}; passage states stay in memory only (answers are slower, not different)")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)
        else:
            log.debug(message)
