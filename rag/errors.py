"""One small error hierarchy; only the CLI and the API turn these into exit codes / HTTP statuses."""

import errno


class RagError(Exception):
    """Base class: the message is meant for the user and says what to do."""


class InputError(RagError):
    """Bad input from the user: a missing path, an empty corpus, an unsupported file."""


class IndexFormatError(RagError):
    """The index on disk is missing, corrupt, or was built differently (format or embedder)."""


class ModelError(RagError):
    """A model file is missing, corrupt, or does not match its expected hash."""


class VectorStoreError(RagError):
    """The vector store (a Milvus server, say) is down or unreachable; the index itself may be fine."""


class UnreachableError(RagError):
    """A server the settings point at (the model server) is down, unreachable or too slow; retry later."""


class StorageError(RagError):
    """Writing to disk failed (full, over quota, read-only); whatever was live before is still in place."""

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


# Errors that mean "no room to write": a full disk, a quota, or a file-size limit (ulimit -f).
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def write_failed(exc: OSError, what: str, hint: str) -> StorageError:
    """The user-facing error for an ``OSError`` raised while writing ``what``; ``hint`` says what to re-run.

    >>> full = write_failed(OSError(errno.ENOSPC, "No space left on device"), "the index in idx", "re-run it")
    >>> str(full).split(";")[0], full.disk_full
    ('disk full: could not write the index in idx (No space left on device)', True)
    >>> write_failed(PermissionError(errno.EACCES, "Permission denied"), "x", "retry").disk_full
    False
    """
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_ROOM:
        return StorageError(
            f"disk full: could not write {what} ({reason}); free some space and {hint}. "
            "The previous version is still in place.",
            disk_full=True,
        )
    return StorageError(
        f"could not write {what} ({reason}); check that the folder is writable and {hint}. "
        "The previous version is still in place."
    )


class BusyError(RagError):
    """The generator queue is full; retry later."""
