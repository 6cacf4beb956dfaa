"""Typed exceptions of the library. `cli/` turns each into `Error: <message>` and exit code 1.

Library code raises these and never prints or exits; the message must name the
file or value at fault and say what to do instead.
"""


class XmrError(Exception):
    """Base class of every error xmr reports to a user.

    `setting` names the option that fixes it by its library name (`max_pixels`,
    `token_pool`, ...); each face says it in its own words (the CLI as `--max-pixels`).
    """

    def __init__(self, message: str = "", *, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


class ModelNotAvailable(XmrError):
    """The encoder's weights or config cannot be found or loaded."""


class InvalidModelSpec(XmrError):
    """A model string `NAME[:PRETRAINED]` that names nothing usable."""


class EncoderMismatch(XmrError):
    """An index built with one encoder was opened with another."""


class IndexNotFound(XmrError):
    """No xmr index lives at the given directory."""


class IndexCorrupt(XmrError):
    """An index directory whose files cannot be read back."""


class DatasetError(XmrError):
    """A retrieval dataset file (Karpathy / LAVIS / corpus JSON) is malformed or incomplete."""


class InputError(XmrError):
    """A user-supplied file or argument that cannot be used (missing, wrong format)."""


class ItemNotFound(XmrError):
    """An id that names no item of the index (deleted, or never there)."""


class DiskFull(XmrError):
    """The file system ran out of space (or quota) while an index was written."""


class ReadOnlyIndex(XmrError):
    """A writing command on an index whose folder cannot be written."""


class DatabaseDamaged(IndexCorrupt):
    """The SQLite file of an index fails to open or its integrity check."""


class ManifestDamaged(IndexCorrupt):
    """manifest.json is missing, unreadable or of the wrong shape."""
