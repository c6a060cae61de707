"""The passage-state store: exact round trips, bounds, and never trusting a bad file."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from rag.states import SUFFIX, StateStore, state_key

TOKENS = [101, 7, 7, 2048, 5]
DATA = bytes(range(256)) * 40


def store(folder: Path | None, *, disk: int = 10**7, memory: int = 10**7, model: str = "m@1") -> StateStore:
    return StateStore(model, folder, disk_bytes=disk, memory_bytes=memory)


def test_a_state_comes_back_from_disk_in_a_new_store(tmp_path: Path) -> None:
    store(tmp_path).put(TOKENS, DATA)
    fresh = store(tmp_path)
    assert fresh.get(TOKENS) == DATA
    assert fresh.stats.disk_hits == 1
    assert fresh.get(TOKENS) == DATA and fresh.stats.memory_hits == 1
    assert fresh.get([*TOKENS, 1]) is None and fresh.stats.misses == 1


def test_other_tokens_or_another_model_miss(tmp_path: Path) -> None:
    store(tmp_path).put(TOKENS, DATA)
    assert store(tmp_path).get(TOKENS[:-1]) is None
    assert store(tmp_path, model="other@2").get(TOKENS) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # one bit of the state flipped
        lambda b: b"garbage" + b[7:],  # wrong magic
        lambda b: b"",  # empty
    ],
)
def test_a_damaged_file_is_never_trusted_and_is_rebuilt(
    tmp_path: Path, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    store(tmp_path).put(TOKENS, DATA)
    (path,) = tmp_path.glob("*" + SUFFIX)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    fresh = store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="rag.states"):
        assert fresh.get(TOKENS) is None
        assert fresh.get(TOKENS) is None
    assert not path.exists() and fresh.stats.rejected == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    fresh.put(TOKENS, DATA)
    assert store(tmp_path).get(TOKENS) == DATA


def test_a_file_from_another_model_renamed_into_place_is_rejected(tmp_path: Path) -> None:
    other = store(tmp_path, model="other@2")
    other.put(TOKENS, DATA)
    (path,) = tmp_path.glob("*" + SUFFIX)
    path.rename(tmp_path / (state_key("m@1", TOKENS) + SUFFIX))
    assert store(tmp_path).get(TOKENS) is None


def test_disk_stays_under_its_budget_least_recently_used_out(tmp_path: Path) -> None:
    size = len(DATA) + 200  # header and tokens
    s = store(tmp_path, disk=3 * size, memory=0)
    for i in range(3):
        s.put([i], DATA)
        os.utime(tmp_path / (state_key("m@1", [i]) + SUFFIX), (1000 + i, 1000 + i))
    assert s.get([0]) == DATA  # used: now the most recent
    s.put([3], DATA)
    files, used = s.disk_usage()
    assert files == 3 and used <= 3 * size
    assert s.get([1]) is None  # the least recently used went first
    assert s.get([0]) == DATA and s.get([3]) == DATA


def test_memory_stays_under_its_budget(tmp_path: Path) -> None:
    s = store(None, memory=2 * len(DATA))
    for i in range(5):
        s.put([i], DATA)
    assert s.get([4]) == DATA and s.get([3]) == DATA
    assert s.get([0]) is None


def test_a_read_only_folder_is_slower_never_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = store(tmp_path)

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("rag.states.open", read_only, raising=False)  # root could write through chmod 0500
    with caplog.at_level(logging.WARNING, logger="rag.states"):
        s.put(TOKENS, DATA)
        s.put([1], DATA)
    assert s.get(TOKENS) == DATA  # from memory
    assert len(caplog.records) == 1 and "memory only" in caplog.records[0].message
    assert list(tmp_path.iterdir()) == []


def test_an_uncreatable_folder_is_slower_never_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    s = store(blocker / "states")
    s.put(TOKENS, DATA)
    assert s.get(TOKENS) == DATA


def test_a_full_disk_is_slower_never_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = store(tmp_path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rag.states.os.replace", full)
    s.put(TOKENS, DATA)
    assert s.get(TOKENS) == DATA
    assert list(tmp_path.iterdir()) == []  # no half-written file left


def test_two_writers_at_once_leave_only_whole_states(tmp_path: Path) -> None:
    stores = [store(tmp_path, memory=0), store(tmp_path, memory=0)]

    def write(s: StateStore, offset: int) -> None:
        for i in range(30):
            s.put([i % 10], DATA[offset:] + DATA[:offset])

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = store(tmp_path, memory=0)
    for i in range(10):
        assert reader.get([i]) in (DATA, DATA[1:] + DATA[:1])
    assert reader.stats.rejected == 0 and not list(tmp_path.glob("*.tmp"))
