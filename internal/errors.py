"""The exception type for bad configuration values (a flag or YAML key with a value that cannot work).

Like DatasetError (internal/data/errors.py), a ConfigError's message is one line that names the option
as a user writes it and says what values it takes; `main.py` prints it as `error: ...` and exits with
status 1 instead of a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work. `str(e)` is one line naming the option and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def check(ok: bool, option: str, message: str) -> None:
    """Raise ConfigError `option message` unless ok."""
    if not ok:
        raise ConfigError(f"{option} {message}")


__all__ = ["ConfigError", "check"]
