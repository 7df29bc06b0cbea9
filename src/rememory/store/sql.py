"""The read half of the store interface in portable SQL, shared by the SQLite and PostgreSQL stores.

Both schemas keep the same ``episodes`` and ``embedders`` columns; only where the artifacts
live differs (shard files, or a ``weights`` column). Statements here write their placeholders
as ``?``; a backend's ``_read`` adapts them to its driver.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import SharedModel
from ..errors import DuplicateIdError, IntegrityError, StoreError
from ..integrity import DIGEST_SIZE
from .records import Changes, Damage, IndexRow, KeyRows, Row, StoredModel, StoredSnapshot
from .sealing import PLAIN, PlainCodec

if TYPE_CHECKING:
    from ..crypto.keyring import Keyring

ROW_COLS = "rowid, id, namespace, keywords, time, created_at, n_bytes, digest, digest_format, engine"
# What the recall index reads, with the key dimension of the embedder that made the row.
INDEX_SQL = (
    "SELECT e.rowid, e.id, e.key, e.key_scale, COALESCE(e.ctx_key, e.key), COALESCE(e.ctx_key_scale, e.key_scale),"
    " e.tokens, m.dim, e.namespace, e.digest, e.n_bytes, e.event_time, e.time"
    " FROM episodes e LEFT JOIN embedders m ON m.id = e.embedder"
)
_CHUNK = 500  # ids per IN (...) list: far below SQLite's variable limit
# The last step of a reembed, in both dialects: staged keys replace every row's keys.
SWAP_KEYS_SQL = (
    "UPDATE episodes SET key = s.key, key_scale = s.key_scale, ctx_key = s.ctx_key, ctx_key_scale = s.ctx_key_scale,"
    " embedder = s.embedder{extra} FROM staged_keys s WHERE s.rowid = episodes.rowid"
)
# Drops the keys staged by any embedder but one (name, dim): a resumed reembed keeps its own work.
CLEAR_OTHER_STAGED_SQL = (
    "DELETE FROM staged_keys WHERE embedder NOT IN (SELECT id FROM embedders WHERE name = {mark} AND dim = {mark})"
)
UNSTAGED_SQL = (
    "SELECT COUNT(*) FROM episodes e WHERE NOT EXISTS (SELECT 1 FROM staged_keys s WHERE s.rowid = e.rowid"
    " AND s.embedder = {mark})"
)

# The change sequence (see ``SQLReads.changes``). Every write to a namespace first advances the
# namespace's counter in its own transaction: the upsert locks the namespace's row until commit,
# so writers of one namespace commit in sequence order and a reader that has seen value S has
# seen every change numbered S or less (a bigserial would let a lower number commit later).
NEXT_SEQ_SQL = (
    "INSERT INTO namespaces(namespace, seq) VALUES (?, 1)"
    " ON CONFLICT (namespace) DO UPDATE SET seq = namespaces.seq + 1 RETURNING seq"
)
LOG_DELETION_SQL = "INSERT INTO deletions(namespace, episode, seq, at) VALUES (?, ?, ?, ?)"
PRUNE_DELETIONS_SQL = "DELETE FROM deletions WHERE namespace = ? AND at <= ? RETURNING seq"
MARK_PRUNED_SQL = "UPDATE namespaces SET pruned = ? WHERE namespace = ? AND pruned < ?"
DELETION_LOG_S = 7 * 86400  # how long deletions stay logged; an index synced longer ago re-reads the namespace


_MODEL_COLS = "namespace, engine, version, config, data, trained_on, created_at"
_PUT_TRIES = 8  # model versions tried by one put before it gives up to concurrent writers


class SQLReads:
    """Rows, pages, index rows, damage and counts, and the shared models; the backend provides ``_read``
    and ``_run_write`` (a write transaction whose ``execute`` takes ``?`` placeholders)."""

    server_ann = False  # SQLite: large namespaces search their keys with an in-process HNSW graph
    server_keys = False  # SQLite: recall indexes hold every key in memory (read from the local file)
    codec: PlainCodec = PLAIN  # SealedCodec in an encrypted store (rememory.store.sealing)

    @property
    def keyring(self) -> Keyring | None:
        """The store's :class:`~rememory.crypto.Keyring` (None: a plaintext store)."""
        return self.codec.keyring

    def row(self, t: Sequence[Any]) -> Row:
        return self.codec.row(t)

    def encryption_mark(self) -> str | None:
        """The id of the keyring that encrypts this store (None: a plaintext store)."""
        got = self._read("SELECT value FROM meta WHERE key = 'keyring'")
        return str(got[0][0]) if got else None

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _run_write(self) -> AbstractContextManager[Execute]:
        """One write transaction that does not move the generation (recall indexes hold no engine data)."""
        raise NotImplementedError

    # --- the engines' shared models, and the engine new episodes are made with ---

    def models(self, namespace: str) -> SQLModels:
        """The shared models of ``namespace`` (a :class:`~rememory.engine.ModelRepository`)."""
        return SQLModels(self, namespace)

    def list_models(self, namespace: str | None = None) -> list[StoredModel]:
        """Every model version (of ``namespace``, or of the store), by namespace, engine and version."""
        where, params = ("WHERE namespace = ?", [namespace]) if namespace is not None else ("", [])
        sql = f"SELECT {_MODEL_COLS} FROM models {where} ORDER BY namespace, engine, version"
        return [self.codec.model(t) for t in self._read(sql, params)]

    def delete_models(self, namespace: str) -> int:
        """Delete every shared model of ``namespace``: what its engines learnt from its episodes goes with them."""
        with self._run_write() as run:
            return len(run("DELETE FROM models WHERE namespace = ? RETURNING version", (namespace,)).fetchall())

    def import_model(self, namespace: str, model: SharedModel, created_at: int | None = None) -> bool:
        """Keep ``model`` under its own version (an archive's): True if stored, False if this very model
        already is; another model under that version is a :class:`DuplicateIdError`."""
        with self._run_write() as run:
            got = run(f"SELECT {_MODEL_COLS} FROM models WHERE namespace = ? AND engine = ? AND version = ?",
                      (namespace, model.engine, model.version)).fetchone()  # fmt: skip
            if got is None:
                cfg, data = self.codec.model_columns(namespace, model)
                run(
                    f"INSERT INTO models({_MODEL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (namespace, model.engine, model.version, cfg, data, model.trained_on,
                     int(time.time()) if created_at is None else created_at),
                )  # fmt: skip
                return True
        have = self.codec.model(got).model
        if (have.config, have.data, have.trained_on) != (model.config, model.data, model.trained_on):
            raise DuplicateIdError(
                f"Namespace {namespace!r} already holds a different version {model.version} of the {model.engine!r} "
                "model; episodes encoded with one cannot decode with the other. Import into another store."
            )
        return False

    def default_engine(self) -> str | None:
        """The engine new episodes are made with, as the store records it (None: never set)."""
        got = self._read("SELECT value FROM meta WHERE key = 'engine'")
        return str(got[0][0]) if got else None

    def set_default_engine(self, name: str) -> None:
        with self._run_write() as run:
            if run("UPDATE meta SET value = ? WHERE key = 'engine'", (name,)).rowcount == 0:
                run("INSERT INTO meta(key, value) VALUES ('engine', ?)", (name,))

    def _models_bytes(self, namespace: str | None) -> int:
        where, params = ("WHERE namespace = ?", [namespace]) if namespace is not None else ("", [])
        got = self._read(f"SELECT COALESCE(SUM(LENGTH(data) + LENGTH(config)), 0) FROM models {where}", params)
        return int(got[0][0])

    def nearest(self, namespace: str, q: np.ndarray, k: int, *, context: bool) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} searches no keys itself (server_ann is False)")

    def key_rows(self, rowids: Sequence[int], dim: int, *, context: bool) -> KeyRows:
        raise NotImplementedError(f"{type(self).__name__} serves no keys by rowid (server_keys is False)")

    def nearest_keys(self, namespace: str, q: np.ndarray, k: int, dim: int, *, context: bool) -> KeyRows:
        raise NotImplementedError(f"{type(self).__name__} searches no keys itself (server_keys is False)")

    def load_index_snapshot(self, namespace: str) -> StoredSnapshot | None:
        raise NotImplementedError(f"{type(self).__name__} keeps index snapshots in files (snapshot_dir)")

    def save_index_snapshot(self, namespace: str, seq: int, data: bytes) -> bool:
        raise NotImplementedError(f"{type(self).__name__} keeps index snapshots in files (snapshot_dir)")

    def embedder_info(self) -> tuple[str, int] | None:
        """The embedder id and dimension every key of the store was made with (None before the first add)."""
        rows = dict(self._read("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')"))
        if "embedder" not in rows:
            return None
        return rows["embedder"], int(rows["dim"])

    def generation(self) -> int:
        """Advanced by every committed write: recall indexes sync when it moves."""
        return int(self._read("SELECT value FROM meta WHERE key = 'generation'")[0][0])

    def rows(self, namespace: str, ids: Sequence[str]) -> dict[str, Row]:
        """The rows of ``ids`` in ``namespace`` (ids stored elsewhere are simply absent)."""
        out: dict[str, Row] = {}
        for i in range(0, len(ids), _CHUNK):
            chunk = list(ids[i : i + _CHUNK])
            marks = ",".join("?" * len(chunk))
            for t in self._read(f"SELECT {ROW_COLS} FROM episodes WHERE namespace = ? AND id IN ({marks})",
                                [namespace, *chunk]):  # fmt: skip
                r = self.row(t)
                out[r.id] = r
        return out

    def iter_rows(self, namespace: str | None = None, batch: int = 1000) -> Iterator[list[Row]]:
        last = 0
        where = "rowid > ?" + (" AND namespace = ?" if namespace is not None else "")
        sql = f"SELECT {ROW_COLS} FROM episodes WHERE {where} ORDER BY rowid LIMIT {int(batch)}"
        while True:
            got = self._read(sql, [last] + ([namespace] if namespace is not None else []))
            if not got:
                return
            last = int(got[-1][0])
            yield [self.row(t) for t in got]

    def rows_by_rowid(self, rowids: Sequence[int]) -> dict[int, Row]:
        """The rows of ``rowids`` (rowids no longer stored are simply absent)."""
        out: dict[int, Row] = {}
        for i in range(0, len(rowids), _CHUNK):
            chunk = [int(r) for r in rowids[i : i + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            for t in self._read(f"SELECT {ROW_COLS} FROM episodes WHERE rowid IN ({marks})", chunk):
                out[int(t[0])] = self.row(t)
        return out

    def staged_rowids(self, embedder: tuple[str, int]) -> set[int]:
        """Rows whose keys a reembed to ``embedder`` (id, dim) has staged (see ``stage_keys``)."""
        got = self._read(
            "SELECT s.rowid FROM staged_keys s JOIN embedders m ON m.id = s.embedder WHERE m.name = ? AND m.dim = ?",
            list(embedder),
        )
        return {int(g[0]) for g in got}

    def list_rows(self, namespace: str, *, limit: int, offset: int) -> list[Row]:
        """A page of a namespace's episodes, oldest first."""
        sql = f"SELECT {ROW_COLS} FROM episodes WHERE namespace = ? ORDER BY rowid LIMIT ? OFFSET ?"
        return [self.row(t) for t in self._read(sql, (namespace, limit, offset))]

    def list_rows_desc(self, namespace: str, *, limit: int) -> list[Row]:
        """The namespace's newest episodes, newest first."""
        sql = f"SELECT {ROW_COLS} FROM episodes WHERE namespace = ? ORDER BY rowid DESC LIMIT ?"
        return [self.row(t) for t in self._read(sql, (namespace, limit))]

    def namespace_rowids(self, namespace: str) -> np.ndarray:
        """Row ids of a namespace in insertion order (the recall index's slot order)."""
        got = self._read("SELECT rowid FROM episodes WHERE namespace = ? ORDER BY rowid", (namespace,))
        return np.array([g[0] for g in got], dtype=np.int64)

    def changes(self, namespace: str, since: int | None) -> Changes:
        """What changed in ``namespace`` after change number ``since`` (None: everything), read in one statement.

        O(changes) rows through the (namespace, seq) indexes. When the deletion log no longer
        reaches back to ``since`` (pruned, or a store restored from a backup), the answer is the
        namespace's whole list of row ids, marked ``complete``.
        """
        if since is not None:
            got = self._read(
                "SELECT 0, seq, pruned FROM namespaces WHERE namespace = ?"
                " UNION ALL SELECT 1, rowid, 0 FROM episodes WHERE namespace = ? AND seq > ?"
                " UNION ALL SELECT 2, episode, 0 FROM deletions WHERE namespace = ? AND seq > ?",
                (namespace, namespace, since, namespace, since),
            )
            seq, pruned = next(((int(t[1]), int(t[2])) for t in got if t[0] == 0), (0, 0))
            if pruned <= since <= seq:
                added = sorted(int(t[1]) for t in got if t[0] == 1)
                return Changes(seq, added, sorted(int(t[1]) for t in got if t[0] == 2), complete=False)
        got = self._read(
            "SELECT 0, seq FROM namespaces WHERE namespace = ?"
            " UNION ALL SELECT 1, rowid FROM episodes WHERE namespace = ?",
            (namespace, namespace),
        )
        seq = next((int(t[1]) for t in got if t[0] == 0), 0)
        return Changes(seq, sorted(int(t[1]) for t in got if t[0] == 1), [], complete=True)

    def index_rows(self, rowids: Sequence[int]) -> list[IndexRow]:
        """The recall index's data for ``rowids``, in rowid order; a damaged row says why in ``damage``."""
        out: list[IndexRow] = []
        for i in range(0, len(rowids), _CHUNK):
            chunk = [int(r) for r in rowids[i : i + _CHUNK]]
            marks = ",".join("?" * len(chunk))
            out += [self.codec.index_row(t[:7], t[7], t[8], t[11], t[12])
                    for t in self._read(f"{INDEX_SQL} WHERE e.rowid IN ({marks})", chunk)]  # fmt: skip
        out.sort(key=lambda r: r.rowid)
        return out

    def damaged(self, namespace: str | None = None) -> list[Damage]:
        """Rows whose metadata cannot be used, found without decoding: bad keys, tokens, digests or sizes."""
        where, params = ("AND e.namespace = ?", [namespace]) if namespace is not None else ("", [])
        found: list[Damage] = []
        last = 0
        while True:
            got = self._read(f"{INDEX_SQL} WHERE e.rowid > ? {where} ORDER BY e.rowid LIMIT 2000", [last, *params])
            if not got:
                return found
            last = int(got[-1][0])
            for t in got:
                digest = _blobs(t[9:10])[0]
                reason = self.codec.index_row(t[:7], t[7], t[8], t[11], t[12]).damage
                if reason is None and (not isinstance(digest, bytes) or len(digest) != DIGEST_SIZE):
                    reason = "its digest is not a 16-byte BLAKE2b digest"
                if reason is None and (not isinstance(t[10], int) or t[10] < 0):
                    reason = f"its text length {t[10]!r} is not a byte count"
                if reason is not None:
                    found.append(Damage(t[8], t[1], reason))

    def count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return int(self._read("SELECT COUNT(*) FROM episodes")[0][0])
        return int(self._read("SELECT COUNT(*) FROM episodes WHERE namespace = ?", (namespace,))[0][0])


def damaged_metadata(r: Row, exc: Exception) -> IntegrityError:
    return IntegrityError(f"the metadata of memory {r.id!r} is damaged ({exc})", ids=[r.id])


def _blobs(values: Sequence[Any]) -> tuple[Any, ...]:
    """Values with a driver's memoryviews as bytes."""
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in values)


Execute = Callable[[str, Sequence[Any]], Any]  # a connection's execute, taking ``?`` placeholders


class SQLModels:
    """A namespace's shared models in the store's ``models`` table (a :class:`~rememory.engine.ModelRepository`).

    A version, once written, never changes (the database refuses updates): ``put`` adds the next one.
    """

    def __init__(self, store: SQLReads, namespace: str):
        self._store = store
        self.namespace = namespace

    def latest_version(self, engine: str) -> int | None:
        got = self._store._read("SELECT MAX(version) FROM models WHERE namespace = ? AND engine = ?",
                                (self.namespace, engine))  # fmt: skip
        return None if not got or got[0][0] is None else int(got[0][0])

    def latest(self, engine: str) -> SharedModel | None:
        got = self._store._read(
            f"SELECT {_MODEL_COLS} FROM models WHERE namespace = ? AND engine = ? ORDER BY version DESC LIMIT 1",
            (self.namespace, engine),
        )
        return self._model(got[0], engine) if got else None

    def get(self, engine: str, version: int) -> SharedModel:
        got = self._store._read(f"SELECT {_MODEL_COLS} FROM models WHERE namespace = ? AND engine = ? AND version = ?",
                                (self.namespace, engine, int(version)))  # fmt: skip
        if not got:
            raise IntegrityError(
                f"namespace {self.namespace!r} has no version {version} of the {engine!r} model that its memories "
                "need; restore the store from a backup, or re-add the affected episodes"
            )
        return self._model(got[0], engine)

    def _model(self, t: Sequence[Any], engine: str) -> SharedModel:
        try:
            return self._store.codec.model(t).model
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"the {engine!r} model of namespace {self.namespace!r} is damaged ({exc})") from None

    def put(self, engine: str, config: dict[str, Any], data: bytes, trained_on: int) -> SharedModel:
        # Two replicas may fit a namespace's model at once and both read the same latest version.
        # The loser's insert waits for the winner's commit and then inserts nothing; it takes the
        # next number instead (each statement sees what committed before it). The sealed blob is
        # bound to its version, so it is sealed again for each number tried.
        cfg_copy = json.loads(json.dumps(config))
        with self._store._run_write() as run:
            for _ in range(_PUT_TRIES):
                version = int(run("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE namespace = ? AND engine = ?",
                                  (self.namespace, engine)).fetchone()[0])  # fmt: skip
                model = SharedModel(engine, version, cfg_copy, bytes(data), int(trained_on))
                cfg, blob = self._store.codec.model_columns(self.namespace, model)
                if run(f"INSERT INTO models({_MODEL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                       " RETURNING version",
                       (self.namespace, engine, version, cfg, blob, int(trained_on), int(time.time()))
                       ).fetchone() is not None:  # fmt: skip
                    return model
        raise StoreError(
            f"Namespace {self.namespace!r}: {_PUT_TRIES} other writers stored a new {engine!r} model while this one "
            "was being stored; run the fit again once they have finished."
        )


def next_seq(execute: Execute, namespace: str) -> int:
    """Advance ``namespace``'s change counter in the caller's write transaction (locking it until commit)."""
    return int(execute(NEXT_SEQ_SQL, (namespace,)).fetchone()[0])


def log_rekeyed(execute: Execute, *, keep_s: float) -> None:
    """Log every row with staged keys as removed and re-added, in a new change of its namespace.

    Called in a reembed's swap transaction, before the staged keys replace the rows' own. To a
    recall index (this process's or another replica's), a row whose keys changed is a row gone and
    a row stored again: its next sync drops the old slot and fetches the new keys. Without this, a
    namespace-only reembed left other replicas recalling with the old keys until they restarted.
    """
    staged: dict[str, list[int]] = {}
    for ns, rowid in execute(
        "SELECT e.namespace, e.rowid FROM episodes e JOIN staged_keys s ON s.rowid = e.rowid ORDER BY e.namespace", ()
    ).fetchall():
        staged.setdefault(str(ns), []).append(int(rowid))
    for ns, rowids in staged.items():
        seq = next_seq(execute, ns)
        log_deletions(execute, ns, rowids, seq, keep_s=keep_s)
        execute("UPDATE episodes SET seq = ? WHERE namespace = ? AND rowid IN (SELECT rowid FROM staged_keys)",
                (seq, ns))  # fmt: skip


def log_deletions(execute: Execute, namespace: str, rowids: Sequence[int], seq: int, *, keep_s: float) -> None:
    """Log deleted rows as change ``seq``, first pruning entries older than ``keep_s`` (and marking how far)."""
    now = int(time.time())
    pruned = [int(t[0]) for t in execute(PRUNE_DELETIONS_SQL, (namespace, now - keep_s)).fetchall()]
    if pruned:
        execute(MARK_PRUNED_SQL, (max(pruned), namespace, max(pruned)))
    for rowid in rowids:
        execute(LOG_DELETION_SQL, (namespace, int(rowid), seq, now))
