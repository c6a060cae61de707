"""One small error hierarchy; only the CLI and the API turn these into exit codes / HTTP statuses."""


class RagError(Exception):
    """Base class: the message is meant for the user and says what to do."""


class InputError(RagError):
    """Bad input from the user: a missing path, an empty corpus, an unsupported file."""


class IndexFormatError(RagError):
    """The index on disk is missing, corrupt, or was built differently (format or embedder)."""


class ModelError(RagError):
    """A model file is missing, corrupt, or does not match its expected hash."""


class BusyError(RagError):
    """The generator queue is full; retry later."""
