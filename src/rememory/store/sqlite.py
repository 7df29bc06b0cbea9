"""The embedded store: SQLite (WAL) for metadata and keys, safetensors shards for weights.

Layout of a store directory::

    rememory.db            SQLite: episodes, keys, digests, cell configs, shard index
    shards/<hex>.safetensors  the weights of one committed training batch

Every write is one ``BEGIN IMMEDIATE`` transaction. Shards are written (atomically) before the
transaction that references them, so a crash leaves at worst an unreferenced shard file,
which is collected later; it never leaves a row without its weights.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import Artifact
from ..errors import DuplicateIdError, EmbedderMismatchError, IntegrityError, StoreBusyError, StoreError
from ..records import Episode
from . import shards
from .migrations import migrate

DB_NAME = "rememory.db"
SHARD_DIR = "shards"
_ORPHAN_AGE_S = 3600.0  # an unreferenced shard this old cannot belong to a commit in flight


@dataclass(frozen=True)
class Row:
    """One stored episode's metadata (no text: the text lives only in the cell)."""

    id: str
    namespace: str
    keywords: str
    time: str | None
    created_at: int
    n_bytes: int
    digest: bytes
    engine: str
    cell: dict
    shard_file: str
    spans: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class NewEpisode:
    episode: Episode
    digest: bytes
    n_bytes: int
    key: np.ndarray  # (dim,) int8
    key_scale: float
    tokens: np.ndarray  # (t,) uint32 token hashes of keywords and text
    ctx_key: np.ndarray  # (dim,) int8: the episode embedded with its neighbours
    ctx_key_scale: float


def quantize_key(vec: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 with one scale per vector: a quarter of float32, and cosine error around 1e-3."""
    amax = float(np.abs(vec).max()) or 1.0
    scale = amax / 127.0
    return np.clip(np.round(vec / scale), -127, 127).astype(np.int8), scale


class Store:
    """SQLite + shard files under one directory. Safe for several threads and processes."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"The store path {self.path} is a file; give a directory (it is created if missing).")
        try:
            (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"Cannot create the store directory {self.path}: {exc}. Choose a writable path.") from exc
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path / DB_NAME, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
        except sqlite3.DatabaseError as exc:
            raise self._translate(exc) from exc
        self._collect_orphans()

    # --- plumbing ---

    def _translate(self, exc: sqlite3.Error) -> Exception:
        msg = str(exc).lower()
        if "locked" in msg or "busy" in msg:
            return StoreBusyError(
                f"The store at {self.path} is busy: another process held its write lock for over "
                f"{self.busy_timeout:g} s. Retry when that process finishes."
            )
        return StoreError(f"The store database at {self.path / DB_NAME} is unreadable: {exc}.")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._translate(exc) from exc
            try:
                yield self._db
                self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self._translate(exc) from exc
                raise

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise self._translate(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _shard_path(self, file: str) -> Path:
        return self.path / SHARD_DIR / file

    def _collect_orphans(self) -> None:
        """Delete shard files no row references, once they are too old to be a commit in flight."""
        known = {r[0] for r in self._read("SELECT file FROM shards")}
        now = time.time()
        for p in (self.path / SHARD_DIR).iterdir():
            if p.name not in known and now - p.stat().st_mtime > _ORPHAN_AGE_S:
                p.unlink(missing_ok=True)

    # --- embedder bookkeeping ---

    def embedder_info(self) -> tuple[str, int] | None:
        rows = dict(self._read("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')"))
        if "embedder" not in rows:
            return None
        return rows["embedder"], int(rows["dim"])

    def bind_embedder(self, embedder_id: str, dim: int) -> None:
        """Record the store's embedder on first use; refuse a different one afterwards."""
        with self._write() as db:
            rows = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')").fetchall())
            if "embedder" not in rows:
                db.execute("INSERT INTO meta(key, value) VALUES ('embedder', ?), ('dim', ?)", (embedder_id, str(dim)))
            elif rows["embedder"] != embedder_id or int(rows["dim"]) != dim:
                raise mismatch(self.path, rows["embedder"], int(rows["dim"]), embedder_id, dim)

    def generation(self) -> int:
        return int(self._read("SELECT value FROM meta WHERE key = 'generation'")[0][0])

    # --- writes ---

    def commit_batch(
        self, items: Sequence[NewEpisode], artifacts: Sequence[Artifact], embedder: tuple[str, int], *, replace: bool
    ) -> list[str]:
        """Store a trained batch in one transaction; returns the ids actually inserted.

        An id that exists with identical content is skipped; with other content it raises
        :class:`DuplicateIdError` unless ``replace``. Nothing of the batch is stored on error.
        """
        tensors, spans = shards.pack([a.streams for a in artifacts])
        file = f"{uuid.uuid4().hex}.safetensors"
        path = self._shard_path(file)
        shards.write_atomic(path, tensors)
        inserted: list[str] = []
        stale_shards: set[int] = set()
        now = int(time.time())
        try:
            with self._write() as db:
                emb_id, dim = embedder
                meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')").fetchall())
                if meta and (meta["embedder"] != emb_id or int(meta["dim"]) != dim):
                    raise mismatch(self.path, meta["embedder"], int(meta["dim"]), emb_id, dim)
                db.execute("INSERT OR IGNORE INTO embedders(name, dim) VALUES (?, ?)", (emb_id, dim))
                emb_ref = db.execute("SELECT id FROM embedders WHERE name = ? AND dim = ?", (emb_id, dim)).fetchone()[0]
                shard_id = db.execute("INSERT INTO shards(file, created_at) VALUES (?, ?)", (file, now)).lastrowid
                for item, art, sp in zip(items, artifacts, spans):
                    ep = item.episode
                    old = db.execute(
                        "SELECT namespace, keywords, time, digest, shard FROM episodes WHERE id = ?", (ep.id,)
                    ).fetchone()
                    if old is not None:
                        if tuple(old[:4]) == (ep.namespace, ep.keywords, ep.time, item.digest):
                            continue
                        if not replace:
                            raise DuplicateIdError(
                                f"An episode with id {ep.id!r} already exists with different content. Give "
                                "the new episode another id, or replace the old one (replace=True, CLI --replace)."
                            )
                        db.execute("DELETE FROM episodes WHERE id = ?", (ep.id,))
                        stale_shards.add(old[4])
                    db.execute(
                        "INSERT INTO episodes(id, namespace, keywords, time, created_at, n_bytes, digest, key,"
                        " key_scale, embedder, engine, cell, shard, spans, tokens, ctx_key, ctx_key_scale)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            ep.id, ep.namespace, ep.keywords, ep.time, now, item.n_bytes, item.digest,
                            item.key.astype(np.int8).tobytes(), item.key_scale, emb_ref, art.engine,
                            json.dumps(art.config, separators=(",", ":")), shard_id, shards.encode_spans(sp),
                            item.tokens.astype("<u4").tobytes(), item.ctx_key.astype(np.int8).tobytes(),
                            item.ctx_key_scale,
                        ),
                    )  # fmt: skip
                    inserted.append(ep.id)
                if not inserted:
                    db.execute("DELETE FROM shards WHERE id = ?", (shard_id,))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if not inserted:
            path.unlink(missing_ok=True)
        for sid in stale_shards:
            self._scrub(sid)
        return inserted

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete episodes and erase their weights from disk; returns the ids that existed."""
        removed: list[str] = []
        touched: set[int] = set()
        with self._write() as db:
            for id_ in ids:
                row = db.execute("SELECT shard FROM episodes WHERE id = ?", (id_,)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM episodes WHERE id = ?", (id_,))
                    removed.append(id_)
                    touched.add(row[0])
        for sid in touched:
            self._scrub(sid)
        return removed

    def _scrub(self, shard_id: int) -> None:
        """Zero the spans of deleted episodes in a shard, or remove the shard if none is left."""
        remove: str | None = None
        with self._write() as db:
            found = db.execute("SELECT file FROM shards WHERE id = ?", (shard_id,)).fetchone()
            if found is None:
                return
            got = db.execute("SELECT spans FROM episodes WHERE shard = ?", (shard_id,)).fetchall()
            live = [shards.decode_spans(s) for (s,) in got]
            if live:
                path = self._shard_path(found[0])
                if path.exists():
                    shards.rewrite_keeping(path, live)
            else:
                db.execute("DELETE FROM shards WHERE id = ?", (shard_id,))
                remove = found[0]
        if remove is not None:
            self._shard_path(remove).unlink(missing_ok=True)

    # --- reads ---

    _ROW_SQL = (
        "SELECT e.id, e.namespace, e.keywords, e.time, e.created_at, e.n_bytes, e.digest, e.engine, e.cell,"
        " s.file, e.spans, e.rowid FROM episodes e JOIN shards s ON s.id = e.shard"
    )

    @staticmethod
    def _row(t: tuple) -> Row:
        spans = shards.decode_spans(bytes(t[10]))
        return Row(t[0], t[1], t[2], t[3], int(t[4]), int(t[5]), bytes(t[6]), t[7], json.loads(t[8]), t[9], spans)

    def rows(self, ids: Sequence[str]) -> dict[str, Row]:
        out: dict[str, Row] = {}
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            for t in self._read(f"{self._ROW_SQL} WHERE e.id IN ({marks})", chunk):
                out[t[0]] = self._row(t)
        return out

    def iter_rows(self, namespace: str | None = None, batch: int = 1000) -> Iterator[list[Row]]:
        last = 0
        while True:
            where = "e.rowid > ?" + (" AND e.namespace = ?" if namespace is not None else "")
            params: list[object] = [last] + ([namespace] if namespace is not None else [])
            got = self._read(f"{self._ROW_SQL} WHERE {where} ORDER BY e.rowid LIMIT {int(batch)}", params)
            if not got:
                return
            last = got[-1][11]
            yield [self._row(t) for t in got]

    def list_rows(self, namespace: str, *, limit: int, offset: int) -> list[Row]:
        """A page of a namespace's episodes, oldest first."""
        got = self._read(
            f"{self._ROW_SQL} WHERE e.namespace = ? ORDER BY e.rowid LIMIT ? OFFSET ?", (namespace, limit, offset)
        )
        return [self._row(t) for t in got]

    def list_rows_desc(self, namespace: str, *, limit: int) -> list[Row]:
        """The namespace's newest episodes, newest first."""
        got = self._read(f"{self._ROW_SQL} WHERE e.namespace = ? ORDER BY e.rowid DESC LIMIT ?", (namespace, limit))
        return [self._row(t) for t in got]

    def load_artifacts(self, rows: Sequence[Row]) -> dict[str, Artifact | Exception]:
        """Read the weights of ``rows``; a cell whose shard is unreadable maps to an exception."""
        by_file: dict[str, list[Row]] = {}
        for r in rows:
            by_file.setdefault(r.shard_file, []).append(r)
        out: dict[str, Artifact | Exception] = {}
        for file, group in by_file.items():
            path = self._shard_path(file)
            if not path.exists():
                for r in group:
                    out[r.id] = IntegrityError(f"weights file {path} is missing", ids=[r.id])
                continue
            got = shards.read_spans(path, [(r.id, r.spans) for r in group])
            for r in group:
                streams = got[r.id]
                out[r.id] = streams if isinstance(streams, Exception) else Artifact(r.engine, r.cell, streams)
        return out

    def namespace_rowids(self, namespace: str) -> np.ndarray:
        """Row ids of a namespace in insertion order (the recall index's slot order)."""
        got = self._read("SELECT rowid FROM episodes WHERE namespace = ? ORDER BY rowid", (namespace,))
        return np.array([g[0] for g in got], dtype=np.int64)

    def index_rows(self, rowids: Sequence[int]) -> list[tuple[int, str, bytes, float, bytes, float, bytes]]:
        """(rowid, id, key, key_scale, ctx_key, ctx_key_scale, tokens) for building recall indexes."""
        out: list[tuple] = []
        for i in range(0, len(rowids), 500):
            chunk = [int(r) for r in rowids[i : i + 500]]
            marks = ",".join("?" * len(chunk))
            out += self._read(
                "SELECT rowid, id, key, key_scale, COALESCE(ctx_key, key), COALESCE(ctx_key_scale, key_scale),"
                f" tokens FROM episodes WHERE rowid IN ({marks})",
                chunk,
            )
        out.sort(key=lambda t: t[0])
        return out

    def keys(self, namespace: str) -> tuple[list[str], np.ndarray]:
        """All ids and dequantised key vectors (float32, (N, dim)) of a namespace."""
        got = self._read("SELECT id, key, key_scale FROM episodes WHERE namespace = ? ORDER BY rowid", (namespace,))
        if not got:
            return [], np.zeros((0, 0), dtype=np.float32)
        mat = np.frombuffer(b"".join(g[1] for g in got), dtype=np.int8).reshape(len(got), -1)
        scales = np.array([g[2] for g in got], dtype=np.float32)
        return [g[0] for g in got], mat.astype(np.float32) * scales[:, None]

    def count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return int(self._read("SELECT COUNT(*) FROM episodes")[0][0])
        return int(self._read("SELECT COUNT(*) FROM episodes WHERE namespace = ?", (namespace,))[0][0])

    def size_report(self, namespace: str | None = None) -> dict[str, object]:
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
                for name, (_, length) in shards.decode_spans(bytes(blob)).items():
                    stream_bytes += length * np.dtype(name).itemsize
            return {
                "episodes": int(n),
                "text_bytes": int(text_bytes),
                "cell_bytes": int(stream_bytes + meta_bytes),
                "store_bytes": 0,
                "namespaces": {namespace: int(n)} if n else {},
            }
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # report settled sizes, not a transient WAL
        (n, text_bytes, meta_bytes) = self._read(
            "SELECT COUNT(*), COALESCE(SUM(n_bytes), 0),"
            " COALESCE(SUM(LENGTH(cell) + LENGTH(spans) + LENGTH(digest)), 0) FROM episodes"
        )[0]
        shard_bytes = sum(self._shard_path(f).stat().st_size for (f,) in self._read("SELECT file FROM shards")
                          if self._shard_path(f).exists())  # fmt: skip
        store_bytes = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        namespaces = dict(self._read("SELECT namespace, COUNT(*) FROM episodes GROUP BY namespace ORDER BY 1"))
        return {
            "episodes": int(n),
            "text_bytes": int(text_bytes),
            "cell_bytes": int(shard_bytes + meta_bytes),
            "store_bytes": int(store_bytes),
            "namespaces": namespaces,
        }


def mismatch(path: Path, have: str, have_dim: int, want: str, want_dim: int | None) -> EmbedderMismatchError:
    want_desc = f"{want!r} ({want_dim}-d)" if want_dim is not None else repr(want)
    return EmbedderMismatchError(
        f"The store at {path} was built with the embedder {have!r} ({have_dim}-d), not {want_desc}; "
        f"mixing them would make recall meaningless. Open it with embedder={have!r} "
        "(CLI: --embedder), or use a new store for the other model."
    )
