"""Ordered schema migrations, applied when a store is opened.

Each migration runs once, in order, inside a transaction; ``PRAGMA user_version`` records how
many have run. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..errors import StoreError


def run_script(db: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, which would break the migration's transaction.
    for statement in script.split(";"):
        lines = [ln.split("--")[0] for ln in statement.splitlines()]
        if "".join(lines).strip():
            db.execute("\n".join(lines))


def _m001_initial(db: sqlite3.Connection) -> None:
    run_script(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE embedders (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            dim INTEGER NOT NULL,
            UNIQUE (name, dim)
        );
        CREATE TABLE shards (
            id INTEGER PRIMARY KEY,
            file TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE episodes (
            rowid INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            namespace TEXT NOT NULL,
            keywords TEXT NOT NULL,
            time TEXT,
            created_at INTEGER NOT NULL, -- unix seconds
            n_bytes INTEGER NOT NULL,
            digest BLOB NOT NULL,
            key BLOB NOT NULL,          -- int8 key vector
            key_scale REAL NOT NULL,    -- dequantise: key * key_scale
            embedder INTEGER NOT NULL REFERENCES embedders(id),  -- the model that made the key
            engine TEXT NOT NULL,
            cell TEXT NOT NULL,         -- engine config, JSON
            shard INTEGER NOT NULL REFERENCES shards(id),
            spans BLOB NOT NULL         -- where the cell's streams lie in the shard (see shards.py)
        );
        CREATE INDEX episodes_namespace ON episodes(namespace);
        CREATE INDEX episodes_shard ON episodes(shard);
        INSERT INTO meta(key, value) VALUES ('generation', '0');
        """,
    )


def _m002_recall_index(db: sqlite3.Connection) -> None:
    # Hashed tokens for BM25 and a second key embedding the episode with its neighbours.
    run_script(
        db,
        """
        ALTER TABLE episodes ADD COLUMN tokens BLOB NOT NULL DEFAULT x'';   -- uint32 token hashes
        ALTER TABLE episodes ADD COLUMN ctx_key BLOB;                        -- int8, like key
        ALTER TABLE episodes ADD COLUMN ctx_key_scale REAL;
        CREATE INDEX episodes_namespace_rowid ON episodes(namespace, rowid);
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_initial, _m002_recall_index]


def migrate(db: sqlite3.Connection, migrations: list[Callable[[sqlite3.Connection], None]] | None = None) -> None:
    """Bring ``db`` to the newest schema; refuse a database written by a newer version.

    ``migrations`` defaults to the store's own list; other SQLite files (e.g. the server's key
    store) pass theirs. ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    if migrations is None:
        migrations = MIGRATIONS
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise StoreError(
            f"This database has schema version {version}, newer than this rememory understands "
            f"({len(migrations)}). Upgrade rememory to open it."
        )
    for i in range(version, len(migrations)):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if db.execute("PRAGMA user_version").fetchone()[0] > i:
                db.execute("COMMIT")
                continue
            migrations[i](db)
            db.execute(f"PRAGMA user_version = {i + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
