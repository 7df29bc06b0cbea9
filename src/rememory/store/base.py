"""The store interface: what :class:`~rememory.Memory`, the recall index and the server may ask of a backend.

Typed records (:mod:`rememory.store.records`) cross this boundary, never a backend's rows, blobs
or files. Two backends implement it: the embedded SQLite store (a directory) and PostgreSQL
(a ``postgresql://`` URL), chosen by :func:`rememory.store.open_store`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..engine import Artifact, ModelRepository, SharedModel
from ..episodes import stored_time
from ..errors import DuplicateIdError, EmbedderMismatchError, IntegrityError
from ..records import Episode
from .records import (
    ArtifactSwap,
    Changes,
    Damage,
    IndexRow,
    KeyRows,
    NewEpisode,
    Row,
    SizeReport,
    StagedKey,
    StoredModel,
    StoredSnapshot,
)

if TYPE_CHECKING:
    from ..crypto.keyring import Keyring


class MemoryStore(Protocol):
    """Episodes' metadata, recall keys and engine artifacts, safe for several threads (and processes)."""

    read_only: bool
    server_ann: bool  # whether ``nearest`` searches keys in the backend (then indexes keep no HNSW graph)
    # Whether ``key_rows`` serves stored keys by rowid (then indexes past ann_threshold keep no key in memory).
    server_keys: bool

    @property
    def keyring(self) -> Keyring | None:
        """The keyring that seals the store's content (rememory.store.sealing), or None: a plaintext store."""
        ...

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a directory, or a URL without its password)."""
        ...

    @property
    def snapshot_dir(self) -> Path | None:
        """A local directory for recall-index snapshots, or None where the backend keeps none."""
        ...

    def close(self) -> None: ...

    # --- the embedder that made every key ---
    def embedder_info(self) -> tuple[str, int] | None: ...
    def bind_embedder(self, embedder_id: str, dim: int) -> None: ...

    # --- reembed: new keys are staged, then swapped in with the embedder binding in one transaction ---
    def stage_keys(self, embedder: tuple[str, int], keys: Sequence[StagedKey]) -> None:
        """Stage keys made by ``embedder`` (id, dim) for rows; recall keeps using the rows' own keys."""
        ...

    def staged_rowids(self, embedder: tuple[str, int]) -> set[int]: ...
    def clear_staged_keys(self, keep: tuple[str, int] | None = None) -> None: ...

    def swap_staged_keys(self, embedder: tuple[str, int], namespace: str | None = None) -> int:
        """Atomically make the staged keys the rows' keys and ``embedder`` the store's, if every row (of
        ``namespace``, if given) has one; returns how many rows lack one (then nothing changed)."""
        ...

    def generation(self) -> int:
        """A number that changes with every committed write (recall indexes sync when it moves)."""
        ...

    # --- writes ---
    def commit_batch(
        self, items: Sequence[NewEpisode], artifacts: Sequence[Artifact], embedder: tuple[str, int], *, replace: bool
    ) -> list[str]:
        """Store a batch atomically; returns the ids inserted (identical re-adds are skipped)."""
        ...

    def delete(self, namespace: str, ids: Sequence[str]) -> list[str]:
        """Delete and erase episodes of a namespace; returns the ids that existed."""
        ...

    def replace_artifacts(self, swaps: Sequence[ArtifactSwap]) -> list[str]:
        """Atomically give stored episodes new artifacts (``rememory reencode``); returns the ids swapped.

        A row swaps only if it still holds the text of its swap's digest; keys, tokens, ids and change
        numbers stay as they are (recall depends on none of the artifact).
        """
        ...

    # --- the engines' shared models (versioned, per namespace; a version never changes once written) ---
    def models(self, namespace: str) -> ModelRepository:
        """The shared models of ``namespace``, for the engines working in it."""
        ...

    def list_models(self, namespace: str | None = None) -> list[StoredModel]: ...

    def delete_models(self, namespace: str) -> int:
        """Delete every shared model of ``namespace`` (when the namespace is erased); returns how many."""
        ...

    def import_model(self, namespace: str, model: SharedModel, created_at: int | None = None) -> bool:
        """Keep ``model`` under its own version (from an archive): True if stored, False if already there;
        a different model under that version is a :class:`DuplicateIdError`."""
        ...

    def default_engine(self) -> str | None:
        """The engine the store encodes new episodes with (None: never chosen, i.e. the default)."""
        ...

    def set_default_engine(self, name: str) -> None: ...

    # --- reads ---
    def rows(self, namespace: str, ids: Sequence[str]) -> dict[str, Row]: ...
    def iter_rows(self, namespace: str | None = None, batch: int = 1000) -> Iterator[list[Row]]: ...
    def rows_by_rowid(self, rowids: Sequence[int]) -> dict[int, Row]: ...
    def list_rows(self, namespace: str, *, limit: int, offset: int) -> list[Row]: ...
    def list_rows_desc(self, namespace: str, *, limit: int) -> list[Row]: ...
    def load_artifacts(self, rows: Sequence[Row]) -> dict[int, Artifact | IntegrityError]: ...
    def namespace_rowids(self, namespace: str) -> np.ndarray: ...
    def changes(self, namespace: str, since: int | None) -> Changes:
        """What changed in ``namespace`` after its change number ``since`` (None: all of it), in O(changes).

        Every write advances a per-namespace change number in the write's own transaction,
        ordered so that no change numbered at most ``Changes.seq`` can commit later. When the
        store can no longer list the deletions since ``since``, it answers ``complete``.
        """
        ...

    def index_rows(self, rowids: Sequence[int]) -> list[IndexRow]: ...
    def nearest(self, namespace: str, q: np.ndarray, k: int, *, context: bool) -> list[int]:
        """Row ids of about the ``k`` own keys (or context keys) of ``namespace`` nearest to unit vector ``q``.

        Only where ``server_ann``; large namespaces take their dense candidates from it.
        """
        ...
    def key_rows(self, rowids: Sequence[int], dim: int, *, context: bool) -> KeyRows:
        """The stored own keys (and context keys, if ``context``) of ``rowids``, in rowid order.

        Only where ``server_keys``: a large namespace's index reads the keys of each query's candidates
        and their neighbours from here instead of holding every key. Rows deleted meanwhile are absent,
        and so are rows whose keys are not ``dim`` bytes long (their index took them as damaged).
        """
        ...

    def nearest_keys(self, namespace: str, q: np.ndarray, k: int, dim: int, *, context: bool) -> KeyRows:
        """:meth:`nearest`, with the found rows' keys of both kinds (nearest first) read in the same search.

        Only where ``server_keys``.
        """
        ...

    # --- recall-index snapshots kept in the store itself (only where ``snapshot_dir`` is None) ---
    def load_index_snapshot(self, namespace: str) -> StoredSnapshot | None: ...
    def save_index_snapshot(self, namespace: str, seq: int, data: bytes) -> bool:
        """Keep ``data``, the namespace's index as of change ``seq``, unless a deletion came after ``seq``
        (then it would hold a forgotten episode: returns False, nothing written). Deletes drop it."""
        ...

    def damaged(self, namespace: str | None = None) -> list[Damage]: ...
    def count(self, namespace: str | None = None) -> int: ...
    def size_report(self, namespace: str | None = None) -> SizeReport: ...


class StoreKeys:
    """A namespace's keys as its recall index reads them from a store that serves them
    (:class:`rememory.index.live.KeySource`, where ``MemoryStore.server_keys``)."""

    def __init__(self, store: MemoryStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def rows(self, rowids: list[int], dim: int, *, context: bool) -> KeyRows:
        return self.store.key_rows(rowids, dim, context=context)

    def nearest(self, q: np.ndarray, k: int, dim: int, *, context: bool) -> KeyRows:
        return self.store.nearest_keys(self.namespace, q, k, dim, context=context)


def same_content(row: Row, ep: Episode, digest: bytes) -> bool:
    """Whether stored ``row`` holds exactly episode ``ep`` (whose text has ``digest``, current format)."""
    # Stores written before times were normalised kept them verbatim: compare in today's form.
    return (row.namespace, row.keywords, stored_time(row.time), row.digest) == (
        ep.namespace, ep.keywords, ep.time, digest)  # fmt: skip


def check_duplicate(row: Row | None, ep: Episode, digest: bytes, *, replace: bool) -> bool:
    """Whether ``ep`` must be stored, given the ``row`` already stored under its id (if any).

    Identical content is skipped (re-adding is a no-op: that is how an interrupted train resumes);
    other content under the same id is a :class:`DuplicateIdError` unless ``replace``.
    """
    if row is None:
        return True
    if same_content(row, ep, digest):
        return False
    if not replace:
        raise DuplicateIdError(
            f"An episode with id {ep.id!r} already exists in namespace {ep.namespace!r} with different content. "
            "Give the new episode another id, or replace the old one (replace=True, CLI --replace)."
        )
    return True


def mismatch(path: object, have: str, have_dim: int, want: str, want_dim: int | None) -> EmbedderMismatchError:
    want_desc = f"{want!r} ({want_dim}-d)" if want_dim is not None else repr(want)
    return EmbedderMismatchError(
        f"The store at {path} was built with the embedder {have!r} ({have_dim}-d), not {want_desc}; "
        f"mixing them would make recall meaningless. Open it with embedder={have!r} "
        "(CLI: --embedder), or use a new store for the other model."
    )


def build_index_row(t: Sequence[Any], dim: int | None, event_time: float | None = None) -> IndexRow:
    """An :class:`IndexRow` from stored (rowid, id, key, scale, ctx_key, ctx_scale, tokens), checked against ``dim``."""
    rowid, id_, key, scale, ctx, ctx_scale, tokens = t
    damage = None
    for name, blob, sc in (("key", key, scale), ("context key", ctx, ctx_scale)):
        if not isinstance(blob, bytes) or (dim is not None and len(blob) != dim):
            size = len(blob) if isinstance(blob, bytes | str) else type(blob).__name__
            damage = f"its {name} has {size} bytes, not the store's {dim} dimensions"
        elif not isinstance(sc, float | int) or not math.isfinite(sc) or sc <= 0:
            damage = f"its {name} scale {sc!r} is not a positive number"
        if damage:
            break
    if damage is None and (not isinstance(tokens, bytes) or len(tokens) % 4):
        damage = "its token hashes are not a whole number of 4-byte hashes"
    if damage is not None:
        empty = np.zeros(dim or 0, dtype=np.int8)
        return IndexRow(int(rowid), str(id_), empty, 1.0, empty, 1.0, np.zeros(0, np.uint32), damage)
    return IndexRow(
        int(rowid), id_, np.frombuffer(key, dtype=np.int8), float(scale), np.frombuffer(ctx, dtype=np.int8),
        float(ctx_scale), np.frombuffer(tokens, dtype="<u4"), None,
        None if event_time is None else float(event_time),
    )  # fmt: skip
