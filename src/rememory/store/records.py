"""Typed records that cross the store's boundary (never a backend's rows, files or blobs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine import Artifact, SharedModel
from ..records import Episode


@dataclass(frozen=True)
class Row:
    """One stored episode's metadata (no text: the text lives only in its memory)."""

    rowid: int  # stable and increasing in insertion order: the recall index's slot order
    id: str
    namespace: str
    keywords: str
    time: str | None
    created_at: int  # unix seconds
    n_bytes: int
    digest: bytes
    digest_format: int  # see rememory.integrity
    engine: str
    damage: str | None = None  # why its sealed metadata cannot be opened (then keywords and time are empty)


@dataclass(frozen=True)
class NewEpisode:
    """A trained episode ready to commit, with everything recall needs."""

    episode: Episode
    digest: bytes  # in ``digest_format``
    n_bytes: int
    key: np.ndarray  # (dim,) int8
    key_scale: float
    tokens: np.ndarray  # (t,) uint32 token hashes of keywords and text
    ctx_key: np.ndarray  # (dim,) int8: its own key blended with its neighbours' (rememory.contextkeys)
    ctx_key_scale: float
    digest_format: int = 2  # rememory.integrity's format of ``digest``; an imported old episode keeps format 1
    event_time: float | None = None  # epoch seconds of episode_time(time, keywords), computed once at add


@dataclass(frozen=True)
class IndexRow:
    """What the recall index holds for one episode. ``damage`` names why it cannot be indexed, if it cannot."""

    rowid: int
    id: str
    key: np.ndarray  # (dim,) int8
    key_scale: float
    ctx_key: np.ndarray  # (dim,) int8
    ctx_key_scale: float
    tokens: np.ndarray  # (t,) uint32
    damage: str | None = None
    event_time: float | None = None  # the episode's time in epoch seconds (rememory.timeparse.episode_time)


@dataclass(frozen=True)
class KeyRows:
    """The stored int8 keys of some rows (``MemoryStore.key_rows``, in rowid order; ``nearest_keys``, nearest
    first); rows gone are absent."""

    rowids: np.ndarray  # (m,) int64
    key: np.ndarray  # (m, dim) int8 own keys
    key_scale: np.ndarray  # (m,) dequantise: key * key_scale
    ctx_key: np.ndarray  # (m, dim) int8 context keys; (0, dim) when they were not asked for
    ctx_key_scale: np.ndarray  # (m,) or (0,)


@dataclass(frozen=True)
class Changes:
    """What changed in one namespace since a recall index last synced (see ``MemoryStore.changes``)."""

    seq: int  # the namespace's change sequence these changes bring an index up to
    added: list[int]  # row ids stored since, ascending
    removed: list[int]  # row ids deleted since (an index drops the ones it holds)
    complete: bool  # True: ``added`` lists the whole namespace; an index drops every row it does not list


@dataclass(frozen=True)
class StoredSnapshot:
    """A namespace's recall index as one blob (rememory.index.snapshot.to_bytes), as of change ``seq``."""

    seq: int
    data: bytes


@dataclass(frozen=True)
class Damage:
    """A stored episode whose metadata is unusable, found without decoding it."""

    namespace: str
    id: str
    reason: str


@dataclass(frozen=True)
class SizeReport:
    """Byte counts of a store or of one namespace."""

    episodes: int
    text_bytes: int
    memory_bytes: int  # every episode's artifact (streams and metadata) and the engines' shared models
    store_bytes: int  # 0 for one namespace: the files are shared
    namespaces: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedKey:
    """A row's recall keys made by another embedder, staged until a reembed switches the whole store."""

    rowid: int
    namespace: str  # the row's (an encrypted store seals the keys for their episode)
    id: str
    key: np.ndarray  # (dim,) int8
    key_scale: float
    ctx_key: np.ndarray  # (dim,) int8
    ctx_key_scale: float


@dataclass(frozen=True)
class StoredModel:
    """A shared model as the store keeps it: its namespace and when it was written, beside the model."""

    namespace: str
    model: SharedModel
    created_at: int  # unix seconds


@dataclass(frozen=True)
class ArtifactSwap:
    """A new artifact for a stored episode (``rememory reencode``), swapped in only if the row still holds
    the text of ``digest`` (an episode replaced or forgotten meanwhile is left alone)."""

    rowid: int
    id: str
    namespace: str
    digest: bytes
    artifact: Artifact
