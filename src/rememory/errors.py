"""Typed errors. Every message says what went wrong and what to do next.

Only the CLI turns these into exit codes (see ``rememory.cli.main``).
"""

from __future__ import annotations


class RememoryError(Exception):
    """Base class of every error ReMemory raises on purpose."""

    exit_code = 1


class InvalidEpisodeError(RememoryError, ValueError):
    """An episode (or a file of them) is malformed. Nothing from the batch was stored."""

    exit_code = 2

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None):
        self.index = index
        self.field = field
        prefix = f"episode #{index}: " if index is not None else ""
        super().__init__(prefix + message)


class ConfigError(RememoryError, ValueError):
    """A setting or argument has an invalid value."""

    exit_code = 2


class UnknownEngineError(ConfigError):
    """A memory engine name that no engine is registered under (see ``rememory engines``)."""


class NotFoundError(RememoryError, KeyError):
    """No memory with this id exists."""

    exit_code = 3

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateIdError(RememoryError):
    """An id already exists with different content."""

    exit_code = 4


class EmbedderError(RememoryError):
    """The embedding model could not be loaded or used."""

    exit_code = 5


class EmbedderMismatchError(EmbedderError):
    """The store was built with another embedder; mixing key spaces would break recall."""


class StoreBusyError(RememoryError):
    """Another process holds the store's write lock for too long."""

    exit_code = 6


class StoreError(RememoryError):
    """The store on disk is unreadable or was written by a newer version."""

    exit_code = 7


class IntegrityError(StoreError):
    """A memory cell did not reconstruct its exact text (digest mismatch or unreadable weights)."""

    def __init__(self, message: str, *, ids: list[str] | None = None):
        self.ids = list(ids or [])
        super().__init__(message)


class CellTrainingError(RememoryError):
    """A memory cell could not be trained to exactness within its budget. Nothing was stored for it."""

    exit_code = 8


class ArchiveError(RememoryError):
    """An archive file is unreadable, damaged, truncated or of an unknown format. Nothing from it was stored."""

    exit_code = 2


class SecretError(RememoryError):
    """An encrypted store (or sealed archive) cannot be opened: its secret is missing or wrong."""

    exit_code = 9


class SecretRequiredError(SecretError):
    """The store or archive is encrypted and no secret was given."""


class WrongSecretError(SecretError):
    """The secret given does not open the keyring (or the sealed archive)."""
