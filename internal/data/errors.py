"""The one exception type for bad dataset input.

Every message is a single line that names the offending file (and the record or line where that
applies) and says what to do about it, so that a user can act on it without reading a traceback.
"""

from __future__ import annotations

import os


class DatasetError(ValueError):
    """Bad or unreadable dataset input. `str(e)` is one line: `<file>[: record/line]: problem; fix`."""

    def __init__(self, message: str):
        # One line, always: messages are read in logs and terminals.
        super().__init__(" ".join(str(message).split()))


def fail(path: str | os.PathLike, what: str, fix: str | None = None) -> DatasetError:
    """Build (not raise) a DatasetError `path: what; fix`."""
    msg = f"{os.fspath(path)}: {what}"
    if fix:
        msg += f"; {fix}"
    return DatasetError(msg)
