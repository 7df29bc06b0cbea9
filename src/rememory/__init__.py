"""ReMemory: exact reconstructive episodic memory for LLM agents.

>>> from rememory import Memory
"""

from .errors import (
    ArchiveError,
    CellTrainingError,
    ConfigError,
    DuplicateIdError,
    EmbedderError,
    EmbedderMismatchError,
    IntegrityError,
    InvalidEpisodeError,
    NotFoundError,
    RememoryError,
    StoreBusyError,
    StoreError,
)
from .memory import Memory
from .records import Episode, RecallHit, StoreStats, VerifyReport

__all__ = [
    "ArchiveError",
    "CellTrainingError",
    "ConfigError",
    "DuplicateIdError",
    "EmbedderError",
    "EmbedderMismatchError",
    "Episode",
    "IntegrityError",
    "InvalidEpisodeError",
    "Memory",
    "NotFoundError",
    "RecallHit",
    "RememoryError",
    "StoreBusyError",
    "StoreError",
    "StoreStats",
    "VerifyReport",
]
