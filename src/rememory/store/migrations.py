"""Ordered schema migrations, applied when a store is opened.

Each migration runs once, in order, inside a transaction; ``PRAGMA user_version`` records how
many have run. Never edit a released migration's SQL: append a new one. A migration is a list
of statements, executed one by one (never split from a script: a string literal may hold a
``;``), or a function of the connection for work SQL alone cannot express.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from ..errors import StoreError

Migration = Sequence[str] | Callable[[sqlite3.Connection], None]

_M001_INITIAL = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE embedders (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        dim INTEGER NOT NULL,
        UNIQUE (name, dim)
    )""",
    """CREATE TABLE shards (
        id INTEGER PRIMARY KEY,
        file TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE episodes (
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
    )""",
    "CREATE INDEX episodes_namespace ON episodes(namespace)",
    "CREATE INDEX episodes_shard ON episodes(shard)",
    "INSERT INTO meta(key, value) VALUES ('generation', '0')",
)

# Hashed tokens for BM25 and a second key embedding the episode with its neighbours.
_M002_RECALL_INDEX = (
    "ALTER TABLE episodes ADD COLUMN tokens BLOB NOT NULL DEFAULT x''",  # uint32 token hashes
    "ALTER TABLE episodes ADD COLUMN ctx_key BLOB",  # int8, like key
    "ALTER TABLE episodes ADD COLUMN ctx_key_scale REAL",
    "CREATE INDEX episodes_namespace_rowid ON episodes(namespace, rowid)",
)

# Ids become unique per namespace (tenants must not share, or probe, one id space); digests may
# bind the namespace and id (digest_format 2); shard files are written only after the database
# records the intent, so cleanup deletes a file only when the database proves it abandoned it.
# SQLite cannot drop a UNIQUE constraint: the table is rebuilt, rowids (recall's slot order) kept.
# Rowids become AUTOINCREMENT: reusing a forgotten episode's rowid made a live recall index keep
# the forgotten episode's slot (and data) and never index the new one.
_M003_TENANT_IDS = (
    """CREATE TABLE episodes_v3 (
        rowid INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a recall index maps rowids to slots
        id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        keywords TEXT NOT NULL,
        time TEXT,
        created_at INTEGER NOT NULL, -- unix seconds
        n_bytes INTEGER NOT NULL,
        digest BLOB NOT NULL,
        digest_format INTEGER NOT NULL DEFAULT 1, -- 1: text only; 2: namespace, id and text
        key BLOB NOT NULL,          -- int8 key vector
        key_scale REAL NOT NULL,    -- dequantise: key * key_scale
        embedder INTEGER NOT NULL REFERENCES embedders(id),  -- the model that made the key
        engine TEXT NOT NULL,
        cell TEXT NOT NULL,         -- engine config, JSON
        shard INTEGER NOT NULL REFERENCES shards(id),
        spans BLOB NOT NULL,        -- where the cell's streams lie in the shard (see shards.py)
        tokens BLOB NOT NULL DEFAULT x'',  -- uint32 token hashes
        ctx_key BLOB,               -- int8, like key
        ctx_key_scale REAL,
        UNIQUE (namespace, id)
    )""",
    """INSERT INTO episodes_v3(rowid, id, namespace, keywords, time, created_at, n_bytes, digest, digest_format,
        key, key_scale, embedder, engine, cell, shard, spans, tokens, ctx_key, ctx_key_scale)
       SELECT rowid, id, namespace, keywords, time, created_at, n_bytes, digest, 1,
        key, key_scale, embedder, engine, cell, shard, spans, tokens, ctx_key, ctx_key_scale FROM episodes""",
    "DROP TABLE episodes",
    "ALTER TABLE episodes_v3 RENAME TO episodes",
    "CREATE INDEX episodes_shard ON episodes(shard)",
    "CREATE INDEX episodes_namespace_rowid ON episodes(namespace, rowid)",
    """CREATE TABLE pending_shards (
        file TEXT PRIMARY KEY,      -- a shard file being written or being removed: no row may use it
        since INTEGER NOT NULL      -- unix seconds
    )""",
)

# Keys that `rememory reembed` made with another embedder wait here, invisible to recall, until one
# transaction swaps them all in with the store's embedder: a store is never keyed by two models.
_M004_STAGED_KEYS = (
    """CREATE TABLE staged_keys (
        rowid INTEGER PRIMARY KEY REFERENCES episodes(rowid) ON DELETE CASCADE,
        embedder INTEGER NOT NULL REFERENCES embedders(id),
        key BLOB NOT NULL,
        key_scale REAL NOT NULL,
        ctx_key BLOB NOT NULL,
        ctx_key_scale REAL NOT NULL
    )""",
)

# A change sequence per namespace, so recall indexes sync only what changed (see store.sql.changes):
# each row keeps the change that stored it, and deletions are logged for a while.
_M005_CHANGES = (
    "ALTER TABLE episodes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX episodes_namespace_seq ON episodes(namespace, seq)",
    """CREATE TABLE namespaces (
        namespace TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,              -- the namespace's last change
        pruned INTEGER NOT NULL DEFAULT 0  -- deletions up to this change may be gone from the log
    )""",
    """CREATE TABLE deletions (
        namespace TEXT NOT NULL,
        episode INTEGER NOT NULL,  -- the deleted row's rowid (nothing of its content)
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL        -- unix seconds, for pruning
    )""",
    "CREATE INDEX deletions_namespace_seq ON deletions(namespace, seq)",
    "CREATE INDEX deletions_namespace_at ON deletions(namespace, at)",
)


def _m006_event_time(db: sqlite3.Connection) -> None:
    """Each episode's time (``rememory.timeparse.episode_seconds``), stored so recall never parses keywords.

    Existing rows are parsed here, once, in batches: a one-time cost at the first open for writing of
    a few milliseconds per row whose keywords hold a digit (about 34 s for 10k distinct keyword dates).
    """
    from ..timeparse import backfill_event_times

    db.execute("ALTER TABLE episodes ADD COLUMN event_time REAL")  # epoch seconds; NULL: no time
    backfill_event_times(
        lambda last: db.execute(
            "SELECT rowid, time, keywords FROM episodes WHERE rowid > ? ORDER BY rowid LIMIT 1000", (last,)
        ).fetchall(),
        lambda pairs: db.executemany("UPDATE episodes SET event_time = ? WHERE rowid = ?", pairs),
    )


# Engines' shared models (e.g. a byte model whose per-episode traces need it to decode), one
# numbered version per (namespace, engine). A version is immutable: episodes name the version they
# were encoded with and must decode from exactly it, so an update is refused by the database itself.
_M007_MODELS = (
    """CREATE TABLE models (
        namespace TEXT NOT NULL,
        engine TEXT NOT NULL,
        version INTEGER NOT NULL,     -- 1, 2, ... per (namespace, engine)
        config TEXT NOT NULL,         -- JSON: the model's shape and format constants
        data BLOB NOT NULL,           -- the engine's weights blob
        trained_on INTEGER NOT NULL,  -- episodes it was trained on (0: shipped)
        created_at INTEGER NOT NULL,  -- unix seconds
        PRIMARY KEY (namespace, engine, version)
    )""",
    """CREATE TRIGGER models_immutable BEFORE UPDATE ON models
       BEGIN SELECT RAISE(ABORT, 'a model version is immutable: put a new version instead'); END""",
)


# Encryption at rest (rememory.store.sealing) changes no table: sealed values fit the same columns, and
# the store names its keyring in ``meta``. The version moves anyway, so that a rememory without
# encryption refuses a store that may hold sealed rows instead of reading them as text.
_M008_ENCRYPTION: tuple[str, ...] = ()

MIGRATIONS: list[Migration] = [
    _M001_INITIAL, _M002_RECALL_INDEX, _M003_TENANT_IDS, _M004_STAGED_KEYS, _M005_CHANGES, _m006_event_time,
    _M007_MODELS, _M008_ENCRYPTION,
]  # fmt: skip


def _apply(db: sqlite3.Connection, migration: Migration) -> None:
    if callable(migration):
        migration(db)
        return
    for statement in migration:  # not executescript(): it commits first, breaking the transaction
        db.execute(statement)


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def check_version(db: sqlite3.Connection, migrations: Sequence[Migration], what: str) -> int:
    """The database's schema version; a version newer than ``migrations`` is an error."""
    version = schema_version(db)
    if version > len(migrations):
        raise StoreError(
            f"This {what} has schema version {version}, newer than this rememory understands "
            f"({len(migrations)}). Upgrade rememory to open it."
        )
    return version


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration] | None = None, *, what: str = "database") -> None:
    """Bring ``db`` to the newest schema; refuse a database written by a newer version.

    ``migrations`` defaults to the store's own list; other SQLite files (e.g. the server's key
    store) pass theirs. ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    if migrations is None:
        migrations = MIGRATIONS
    version = check_version(db, migrations, what)
    for i in range(version, len(migrations)):
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            if schema_version(db) > i:
                db.execute("COMMIT")
                continue
            _apply(db, migrations[i])
            db.execute(f"PRAGMA user_version = {i + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
