"""ReMemory: exact reconstructive episodic memory for LLM agents.

Importing the package loads only the records and the errors; :class:`Memory` (the store, the
index and, once training starts, torch) loads on first use.

>>> from rememory import Memory
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    UnknownEngineError,
)
from .records import (
    DayCount,
    EncodeProgress,
    Episode,
    EpisodeDetail,
    EpisodePage,
    EpisodeView,
    RecallHit,
    ReembedReport,
    ReencodeReport,
    StoreStats,
    TrainProgress,
    VerifyReport,
)

if TYPE_CHECKING:
    from .memory import Memory

__all__ = [
    "ArchiveError",
    "CellTrainingError",
    "ConfigError",
    "DayCount",
    "DuplicateIdError",
    "EmbedderError",
    "EmbedderMismatchError",
    "EncodeProgress",
    "Episode",
    "EpisodeDetail",
    "EpisodePage",
    "EpisodeView",
    "IntegrityError",
    "InvalidEpisodeError",
    "Memory",
    "NotFoundError",
    "RecallHit",
    "ReembedReport",
    "ReencodeReport",
    "RememoryError",
    "StoreBusyError",
    "StoreError",
    "StoreStats",
    "TrainProgress",  # deprecated alias of EncodeProgress (one release)
    "UnknownEngineError",
    "VerifyReport",
]


def __getattr__(name: str) -> Any:
    # A program that only wants the records or the errors should not pay for the store and the index.
    if name == "Memory":
        from .memory import Memory

        return Memory
    raise AttributeError(f"module 'rememory' has no attribute {name!r}")
