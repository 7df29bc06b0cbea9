"""The embedded store: SQLite (WAL) for metadata and keys, safetensors shards for weights.

Layout of a store directory (0700; every file 0600)::

    rememory.db               SQLite: episodes, keys, digests, engine configs, shard index
    shards/<hex>.safetensors  the weights of one committed training batch

A shard file is written only after the database records it as pending, and it is referenced
by rows in the transaction that clears that mark; removing one goes the other way. So
cleanup deletes a file only when the database proves it was abandoned, and a store whose
database is missing or empty is refused, never mistaken for a new one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Artifact
from ..errors import IntegrityError, StoreBusyError, StoreError
from ..fsutil import FILE_MODE, private_dir, private_file, tighten
from . import shards
from .base import check_duplicate, mismatch
from .migrations import MIGRATIONS, check_version, migrate
from .records import ArtifactSwap, NewEpisode, Row, SizeReport, StagedKey
from .sql import (
    CLEAR_OTHER_STAGED_SQL,
    DELETION_LOG_S,
    ROW_COLS,
    SWAP_KEYS_SQL,
    UNSTAGED_SQL,
    Execute,
    SQLReads,
    damaged_metadata,
    log_deletions,
    log_rekeyed,
    next_seq,
)

logger = logging.getLogger(__name__)

DB_NAME = "rememory.db"
KEYRING_NAME = "keyring.json"  # an encrypted store's wrapped data keys (rememory.crypto.keyring)
SHARD_DIR = "shards"
SNAPSHOT_DIR = "index"  # the recall index's snapshots (a cache, see rememory.index.snapshot)
_ORPHAN_AGE_S = 3600.0  # a pending shard this old cannot belong to a commit in flight


@dataclass
class _ShardWrite:
    """The transaction of :meth:`Store._new_shard`: its connection, the new shard's id, and whether a row uses it."""

    db: sqlite3.Connection
    shard_id: int
    used: bool = False
_SQLITE_FILES = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")


def damaged_store_error(path: Path, problem: str) -> StoreError:
    return StoreError(
        f"The store at {path} is damaged: {problem}, but the directory still holds the store's other files "
        f"({SHARD_DIR}/, {SNAPSHOT_DIR}/ or its log). Opening it would start an empty store and lose them, so it "
        f"was not opened and nothing was changed. Restore {DB_NAME} (and any {DB_NAME}-wal beside it) from a "
        "backup, or move the directory aside and start a new store elsewhere."
    )


class Store(SQLReads):
    """SQLite + shard files under one directory. Safe for several threads and processes.

    ``read_only`` opens an existing store without writing anything to it: no migration, no
    cleanup, and every write raises :class:`StoreError`.
    """

    def __init__(self, path: Path, *, busy_timeout: float = 30.0, read_only: bool = False):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.read_only = read_only
        self.deletion_log_s: float = DELETION_LOG_S
        self._lock = threading.RLock()
        db_path = self.path / DB_NAME
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"The store path {self.path} is a file; give a directory (it is created if missing).")
        self._refuse_if_damaged(db_path)
        if read_only:
            if not db_path.exists():
                raise StoreError(f"There is no store at {self.path}. Check the path (--store, REMEMORY_STORE).")
        else:
            try:
                private_dir(self.path)
                private_dir(self.path / SHARD_DIR)
                private_file(db_path)
                for name in _SQLITE_FILES[1:]:
                    tighten(self.path / name, FILE_MODE)
            except OSError as exc:
                raise StoreError(
                    f"Cannot create the store directory {self.path}: {exc}. Choose a writable path."
                ) from exc
        try:
            if read_only:
                uri = db_path.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
                version = check_version(self._db, MIGRATIONS, "store")
                if version < len(MIGRATIONS):
                    raise StoreError(
                        f"The store at {self.path} has schema version {version}; this rememory uses "
                        f"{len(MIGRATIONS)}. Open it once for writing (for example `rememory stats`) to upgrade it."
                    )
            else:
                self._db = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                migrate(self._db, what="store")
            self._db.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten with zeros, not left in free pages (forget means erase).
            self._db.execute("PRAGMA secure_delete=ON")
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        if not read_only:
            self._collect_orphans()

    def _refuse_if_damaged(self, db_path: Path) -> None:
        """A missing or empty database beside the store's other files is damage, not a new store."""
        try:
            size = db_path.stat().st_size
        except FileNotFoundError:
            size = None
        if size:
            return
        others = [self.path / f"{DB_NAME}-wal"]  # (keys.db alone is not memories: keys may come first)
        for sub in (SHARD_DIR, SNAPSHOT_DIR):
            d = self.path / sub
            if d.is_dir():
                others += list(d.iterdir())
        if any(p.exists() for p in others):
            raise damaged_store_error(self.path, f"its database {DB_NAME} is {'missing' if size is None else 'empty'}")

    # --- plumbing ---

    def _translate(self, exc: sqlite3.Error) -> Exception:
        msg = str(exc).lower()
        if "locked" in msg or "busy" in msg:
            return StoreBusyError(
                f"The store at {self.path} is busy: another process held its write lock for over "
                f"{self.busy_timeout:g} s. Retry when that process finishes."
            )
        if "readonly" in msg or "read-only" in msg:
            return StoreError(f"The store at {self.path} is open read-only; open it for writing to change it.")
        return StoreError(f"The store database at {self.path / DB_NAME} is unreadable: {exc}.")

    @contextmanager
    def _write(self, *, bump: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``bump`` advances the generation that recall indexes sync on."""
        if self.read_only:
            raise StoreError(f"The store at {self.path} is open read-only; open it for writing to change it.")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._translate(exc) from exc
            try:
                yield self._db
                if bump:
                    self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self._translate(exc) from exc
                raise

    @contextmanager
    def _run_write(self) -> Iterator[Execute]:
        with self._write(bump=False) as db:
            yield db.execute

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise self._translate(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def snapshot_dir(self) -> Path | None:
        return self.path / SNAPSHOT_DIR

    def _shard_path(self, file: str) -> Path:
        return self.path / SHARD_DIR / file

    def _collect_orphans(self) -> None:
        """Delete shard files the database proves abandoned: pending for too long, or never renamed into place.

        A file the database knows nothing about is left alone: it may be the only copy of
        something (a database restored from an older backup, say).
        """
        now = time.time()
        pending = self._read("SELECT file, since FROM pending_shards")
        stale = [f for (f, since) in pending if now - since > _ORPHAN_AGE_S]
        for file in stale:
            self._shard_path(file).unlink(missing_ok=True)
            with self._write(bump=False) as db:
                db.execute("DELETE FROM pending_shards WHERE file = ?", (file,))
        # A shard no row uses: the rows left it (forgotten, or re-encoded) and a crash came before its removal.
        unused = "SELECT id FROM shards s WHERE NOT EXISTS (SELECT 1 FROM episodes e WHERE e.shard = s.id)"
        for (sid,) in self._read(unused):
            self._scrub(int(sid))
        # A temporary file is never referenced by name: an old one is a write that crashed.
        for p in (self.path / SHARD_DIR).glob(".tmp-*"):
            if now - p.stat().st_mtime > _ORPHAN_AGE_S:
                p.unlink(missing_ok=True)

    def erase_log(self) -> None:
        """Fold the write-ahead log into the database and truncate it, so deleted rows leave no copy there.

        Waits (up to the busy timeout) for readers of older snapshots, then raises
        :class:`StoreBusyError` if they still hold the log.
        """
        with self._lock:
            try:
                busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError as exc:
                raise self._translate(exc) from exc
        if busy:
            raise StoreBusyError(
                f"The store at {self.path} could not erase its write-ahead log: another process kept reading "
                f"for over {self.busy_timeout:g} s. The deletion is committed; retry the command to finish erasing."
            )

    # --- encryption (rememory.store.sealing) ---

    def default_keyring(self) -> Any:
        """Where an encrypted store's keyring lives unless told otherwise: a file beside the database."""
        from ..crypto.keyring import FileKeyringStorage

        return FileKeyringStorage(self.path / KEYRING_NAME)

    def set_encryption_mark(self, keyring_id: str) -> None:
        with self._write(bump=False) as db:
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('keyring', ?)", (keyring_id,))

    # --- embedder bookkeeping ---

    def bind_embedder(self, embedder_id: str, dim: int) -> None:
        """Record the store's embedder on first use; refuse a different one afterwards."""
        with self._write() as db:
            rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')").fetchall())
            if "embedder" not in rows:
                db.execute("INSERT INTO meta(key, value) VALUES ('embedder', ?), ('dim', ?)", (embedder_id, str(dim)))
            elif rows["embedder"] != embedder_id or int(rows["dim"]) != dim:
                raise mismatch(self.path, rows["embedder"], int(rows["dim"]), embedder_id, dim)

    # --- reembed: keys made by another embedder, staged, then swapped in at once ---

    def stage_keys(self, embedder: tuple[str, int], keys: Sequence[StagedKey]) -> None:
        """Stage new keys for rows (invisible to recall until :meth:`swap_staged_keys`); a row staged again is
        overwritten, and a row deleted meanwhile is skipped."""
        with self._write(bump=False) as db:
            db.execute("INSERT OR IGNORE INTO embedders(name, dim) VALUES (?, ?)", embedder)
            ref = db.execute("SELECT id FROM embedders WHERE name = ? AND dim = ?", embedder).fetchone()[0]
            for k in keys:
                c = self.codec.staged(k.namespace, k.id, k)
                db.execute(
                    "INSERT OR REPLACE INTO staged_keys(rowid, embedder, key, key_scale, ctx_key, ctx_key_scale)"
                    " SELECT rowid, ?, ?, ?, ?, ? FROM episodes WHERE rowid = ?",
                    (ref, c.key, c.key_scale, c.ctx_key, c.ctx_key_scale, k.rowid),
                )

    def clear_staged_keys(self, keep: tuple[str, int] | None = None) -> None:
        """Drop staged keys (all of them, or all but those made by ``keep``)."""
        with self._write(bump=False) as db:
            if keep is None:
                db.execute("DELETE FROM staged_keys")
            else:
                db.execute(CLEAR_OTHER_STAGED_SQL.format(mark="?"), keep)

    def swap_staged_keys(self, embedder: tuple[str, int], namespace: str | None = None) -> int:
        """In one transaction: if every row has a key staged by ``embedder``, make those the rows' keys and
        ``embedder`` the store's, and drop the stage. Returns how many rows still lack one (0: switched)."""
        with self._write() as db:
            ref = db.execute("SELECT id FROM embedders WHERE name = ? AND dim = ?", embedder).fetchone()
            if ref is None:
                return self.count(namespace)
            where, params = (" AND e.namespace = ?", [ref[0], namespace]) if namespace is not None else ("", [ref[0]])
            missing = int(db.execute(UNSTAGED_SQL.format(mark="?") + where, params).fetchone()[0])
            if missing:
                return missing  # nothing changed (the generation moves, harmlessly)
            log_rekeyed(db.execute, keep_s=self.deletion_log_s)
            db.execute(SWAP_KEYS_SQL.format(extra=""))
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('embedder', ?), ('dim', ?)",
                       (embedder[0], str(embedder[1])))  # fmt: skip
            db.execute("DELETE FROM staged_keys")
            return 0

    # --- writes ---

    def commit_batch(
        self, items: Sequence[NewEpisode], artifacts: Sequence[Artifact], embedder: tuple[str, int], *, replace: bool
    ) -> list[str]:
        """Store a trained batch in one transaction; returns the ids actually inserted.

        An id that exists in the episode's namespace with identical content is skipped; with other
        content it raises :class:`DuplicateIdError` unless ``replace``. Nothing of the batch is
        stored on error.
        """
        cols = [self.codec.episode(item, art) for item, art in zip(items, artifacts)]
        tensors, spans = shards.pack([c.streams for c in cols])
        inserted: list[str] = []
        stale_shards: set[int] = set()
        now = int(time.time())
        with self._new_shard(tensors, bump=True) as tx:
            db = tx.db
            emb_id, dim = embedder
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')").fetchall())
            if meta and (meta["embedder"] != emb_id or int(meta["dim"]) != dim):
                raise mismatch(self.path, meta["embedder"], int(meta["dim"]), emb_id, dim)
            db.execute("INSERT OR IGNORE INTO embedders(name, dim) VALUES (?, ?)", (emb_id, dim))
            emb_ref = db.execute("SELECT id FROM embedders WHERE name = ? AND dim = ?", (emb_id, dim)).fetchone()[0]
            seqs = {ns: next_seq(db.execute, ns) for ns in sorted({it.episode.namespace for it in items})}
            for item, art, sp, col in zip(items, artifacts, spans, cols):
                ep = item.episode
                got = db.execute(
                    f"SELECT {ROW_COLS}, shard FROM episodes WHERE namespace = ? AND id = ?", (ep.namespace, ep.id)
                ).fetchone()
                old = self.row(got) if got is not None else None
                if not check_duplicate(old, ep, item.digest, replace=replace):
                    continue
                if old is not None:
                    db.execute("DELETE FROM episodes WHERE rowid = ?", (old.rowid,))
                    log_deletions(db.execute, ep.namespace, [old.rowid], seqs[ep.namespace],
                                  keep_s=self.deletion_log_s)  # fmt: skip
                    stale_shards.add(int(got[-1]))
                db.execute(
                    "INSERT INTO episodes(id, namespace, keywords, time, created_at, n_bytes, digest,"
                    " digest_format, key, key_scale, embedder, engine, cell, shard, spans, tokens, ctx_key,"
                    " ctx_key_scale, seq, event_time)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ep.id, ep.namespace, col.keywords, col.time, now, item.n_bytes, item.digest,
                        item.digest_format, col.keys.key, col.keys.key_scale, emb_ref, art.engine, col.cell,
                        tx.shard_id, shards.encode_spans(sp), col.tokens, col.keys.ctx_key, col.keys.ctx_key_scale,
                        seqs[ep.namespace], col.event_time,
                    ),
                )  # fmt: skip
                inserted.append(ep.id)
            tx.used = bool(inserted)
        for sid in stale_shards:
            self._scrub(sid)
        if stale_shards:
            self.erase_log()
        return inserted

    def replace_artifacts(self, swaps: Sequence[ArtifactSwap]) -> list[str]:
        """Swap in new artifacts for stored episodes, all in one transaction; returns the ids swapped.

        A row swaps only if it still holds the text of its ``digest``. The new streams go to a new
        shard (pending until the rows point at it, as for a commit); the old shards are then rewritten
        without the old streams, or removed. A crash at any point leaves every row on one whole artifact.
        """
        if not swaps:
            return []
        cols = [self.codec.artifact_columns(sw.namespace, sw.id, sw.artifact) for sw in swaps]  # sealed if encrypted
        tensors, spans = shards.pack([streams for _, streams in cols])
        swapped: list[str] = []
        old_shards: set[int] = set()
        # No generation bump: recall indexes hold keys and tokens, which a new artifact leaves as they are.
        with self._new_shard(tensors, bump=False) as tx:
            for sw, sp, (cell, _) in zip(swaps, spans, cols):
                got = tx.db.execute(
                    "SELECT shard FROM episodes WHERE rowid = ? AND namespace = ? AND id = ? AND digest = ?",
                    (sw.rowid, sw.namespace, sw.id, sw.digest),
                ).fetchone()
                if got is None:
                    continue
                tx.db.execute(
                    "UPDATE episodes SET engine = ?, cell = ?, shard = ?, spans = ? WHERE rowid = ?",
                    (sw.artifact.engine, cell, tx.shard_id, shards.encode_spans(sp), sw.rowid),
                )  # fmt: skip
                old_shards.add(int(got[0]))
                swapped.append(sw.id)
            tx.used = bool(swapped)
        for sid in old_shards:
            self._scrub(sid)
        return swapped

    @contextmanager
    def _new_shard(self, tensors: dict[str, np.ndarray], *, bump: bool) -> Iterator[_ShardWrite]:
        """Write ``tensors`` as a new shard and open the write transaction that points rows at it.

        The protocol that keeps a crash from leaving a row without its streams or a file nobody
        owns: the file is marked pending in its own transaction before it is written; the body
        (in the transaction, with the shard registered) sets ``used`` once a row refers to it;
        the commit clears the pending mark, or drops the shard row if nothing used it. An unused
        or failed shard's file is removed after the transaction, then its mark.
        """
        file = f"{uuid.uuid4().hex}.safetensors"
        with self._write(bump=False) as db:
            db.execute("INSERT INTO pending_shards(file, since) VALUES (?, ?)", (file, int(time.time())))
        try:
            shards.write_atomic(self._shard_path(file), tensors)
            with self._write(bump=bump) as db:
                shard_id = int(db.execute("INSERT INTO shards(file, created_at) VALUES (?, ?) RETURNING id",
                                          (file, int(time.time()))).fetchone()[0])  # fmt: skip
                tx = _ShardWrite(db, shard_id)
                yield tx
                if tx.used:
                    db.execute("DELETE FROM pending_shards WHERE file = ?", (file,))
                else:
                    db.execute("DELETE FROM shards WHERE id = ?", (shard_id,))
        except BaseException:
            self._drop_pending(file)
            raise
        if not tx.used:
            self._drop_pending(file)

    def _drop_pending(self, file: str) -> None:
        """Remove a pending shard's file, then its mark (a crash in between leaves the mark for cleanup)."""
        self._shard_path(file).unlink(missing_ok=True)
        with self._write(bump=False) as db:
            db.execute("DELETE FROM pending_shards WHERE file = ?", (file,))

    def delete(self, namespace: str, ids: Sequence[str]) -> list[str]:
        """Delete a namespace's episodes and erase them from every file; returns the ids that existed.

        Their rows are overwritten in the database, the write-ahead log is truncated, and their
        weights are zeroed in a rewritten shard, all before this returns.
        """
        removed: list[str] = []
        touched: set[int] = set()
        gone: list[int] = []
        with self._write() as db:
            for id_ in ids:
                row = db.execute(
                    "SELECT rowid, shard FROM episodes WHERE namespace = ? AND id = ?", (namespace, id_)
                ).fetchone()
                if row is not None:
                    db.execute("DELETE FROM episodes WHERE rowid = ?", (row[0],))
                    removed.append(id_)
                    gone.append(int(row[0]))
                    touched.add(int(row[1]))
            if gone:
                log_deletions(db.execute, namespace, gone, next_seq(db.execute, namespace), keep_s=self.deletion_log_s)
        for sid in touched:
            self._scrub(sid)
        if removed:
            self.erase_log()
        return removed

    def _scrub(self, shard_id: int) -> None:
        """Zero the spans of deleted episodes in a shard, or remove the shard if none is left."""
        remove: str | None = None
        with self._write(bump=False) as db:
            found = db.execute("SELECT file FROM shards WHERE id = ?", (shard_id,)).fetchone()
            if found is None:
                return
            got = db.execute("SELECT rowid, spans FROM episodes WHERE shard = ?", (shard_id,)).fetchall()
            if got:
                path = self._shard_path(found[0])
                if not path.exists():
                    logger.warning(
                        "Shard %s is missing, so there was nothing to erase from it; the episodes that use it "
                        "are damaged. Run `rememory verify` to list them.", path
                    )  # fmt: skip
                    return
                live = []
                for rowid, blob in got:
                    try:
                        live.append(shards.decode_spans(bytes(blob)))
                    except ValueError:  # its bytes stay: erasing them would destroy what is left of it
                        logger.warning("Row %s of shard %s has damaged spans; run `rememory verify`.", rowid, path)
                        return
                shards.rewrite_keeping(path, live)
            else:
                db.execute("DELETE FROM shards WHERE id = ?", (shard_id,))
                db.execute(
                    "INSERT OR REPLACE INTO pending_shards(file, since) VALUES (?, ?)", (found[0], int(time.time()))
                )
                remove = found[0]
        if remove is not None:
            self._drop_pending(remove)

    # --- reads ---

    def load_artifacts(self, rows: Sequence[Row]) -> dict[int, Artifact | IntegrityError]:
        """The stored artifact of each row, by rowid; a row whose data is damaged maps to an IntegrityError."""
        out: dict[int, Artifact | IntegrityError] = {}
        by_file: dict[str, list[tuple[Row, Any, shards.Spans]]] = {}
        located: dict[int, tuple[Any, ...]] = {}  # rowid -> (rowid, cell, spans, shard file)
        ids = [r.rowid for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for t in self._read(
                f"SELECT e.rowid, e.cell, e.spans, s.file FROM episodes e LEFT JOIN shards s ON s.id = e.shard"
                f" WHERE e.rowid IN ({marks})",
                chunk,
            ):
                located[int(t[0])] = t
        for r in rows:
            found = located.get(r.rowid)
            if found is None:  # forgotten meanwhile
                out[r.rowid] = IntegrityError(f"the memory {r.id!r} was deleted while being read", ids=[r.id])
                continue
            t = found
            try:
                if t[3] is None:
                    raise ValueError("its shard is not in the shard table")
                sp = shards.decode_spans(bytes(t[2]))
            except (ValueError, TypeError) as exc:
                out[r.rowid] = damaged_metadata(r, exc)
                continue
            by_file.setdefault(t[3], []).append((r, t[1], sp))
        for file, group in by_file.items():
            path = self._shard_path(file)
            if not path.exists():
                for r, _, _ in group:
                    out[r.rowid] = IntegrityError(f"weights file {path} is missing", ids=[r.id])
                continue
            got = shards.read_spans(path, [(str(r.rowid), sp) for r, _, sp in group])
            for r, cfg, _ in group:
                streams = got[str(r.rowid)]
                if isinstance(streams, Exception):
                    out[r.rowid] = IntegrityError(f"the weights of memory {r.id!r} are unreadable ({streams})",
                                                  ids=[r.id])  # fmt: skip
                else:
                    try:
                        out[r.rowid] = self.codec.artifact(r, cfg, streams)
                    except IntegrityError as exc:
                        out[r.rowid] = exc
                    except (ValueError, TypeError) as exc:
                        out[r.rowid] = damaged_metadata(r, exc)
        return out

    def size_report(self, namespace: str | None = None) -> SizeReport:
        """Episode, text, cell and on-disk byte counts for ``stats``.

        For one namespace, cell bytes count the cells' own stream bytes (shards are shared), and
        store bytes are left at 0: the files on disk are not split by namespace.
        """
        if namespace is not None:
            (n, text_bytes, meta_bytes) = self._read(
                "SELECT COUNT(*), COALESCE(SUM(n_bytes), 0),"
                " COALESCE(SUM(LENGTH(cell) + LENGTH(spans) + LENGTH(digest)), 0) FROM episodes WHERE namespace = ?",
                (namespace,),
            )[0]
            stream_bytes = 0
            for (blob,) in self._read("SELECT spans FROM episodes WHERE namespace = ?", (namespace,)):
                try:
                    spans = shards.decode_spans(bytes(blob))
                except ValueError:  # damaged: `verify` reports it; its streams are not counted
                    continue
                stream_bytes += sum(length * np.dtype(name).itemsize for name, (_, length) in spans.items())
            per_ns = {namespace: int(n)} if n else {}
            models = self._models_bytes(namespace)
            return SizeReport(int(n), int(text_bytes), int(stream_bytes + meta_bytes + models), 0, per_ns)
        if not self.read_only:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # report settled sizes, not a transient WAL
        (n, text_bytes, meta_bytes) = self._read(
            "SELECT COUNT(*), COALESCE(SUM(n_bytes), 0),"
            " COALESCE(SUM(LENGTH(cell) + LENGTH(spans) + LENGTH(digest)), 0) FROM episodes"
        )[0]
        shard_bytes = sum(self._shard_path(f).stat().st_size for (f,) in self._read("SELECT file FROM shards")
                          if self._shard_path(f).exists())  # fmt: skip
        store_bytes = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        namespaces = {str(k): int(v) for k, v in
                      self._read("SELECT namespace, COUNT(*) FROM episodes GROUP BY namespace ORDER BY 1")}  # fmt: skip
        models = self._models_bytes(None)
        return SizeReport(int(n), int(text_bytes), int(shard_bytes + meta_bytes + models), int(store_bytes), namespaces)


__all__ = ["DB_NAME", "SHARD_DIR", "SNAPSHOT_DIR", "Store"]
