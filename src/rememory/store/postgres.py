"""The PostgreSQL store: every replica needs nothing but the URL.

Everything lives in the database, in the schema ``rememory``: episodes' metadata, int8 recall
keys (and a pgvector ``halfvec`` copy of each key for server-side vector search), hashed tokens,
the engines' artifacts (``weights`` bytea, one row per episode), the API keys and a
``generation`` counter that every write advances in its own transaction. A replica compares
the generation before each recall and, when it moved, asks for the namespace's changes since
the change number its index holds (``namespaces.seq``, advanced under that row's lock by every
write to the namespace; each row keeps the number that stored it, and ``deletions`` logs what
went), so an episode committed on one replica is recalled on every other one at its next
request, a forgotten one never comes back, and a sync costs O(changes), not O(namespace).

Namespaces past ``RankingConfig.ann_threshold`` take their dense candidates from pgvector's
HNSW indexes over both keys (``nearest``) and the int8 keys each query scores from their rows
(``key_rows``), so a replica holds no key vector of them; their index is kept as one blob in
``index_snapshots`` (dropped by any deletion in the namespace), so a fresh replica loads it and
catches up from the change log instead of reading every row.

Migrations run in order when a store opens, inside one transaction that holds an advisory
lock, so two servers starting at once cannot race.

On erasure: a deleted row's bytes stay in PostgreSQL's heap pages until (auto)vacuum reuses
them, and in its WAL and backups. ``forget`` runs ``VACUUM`` on the table so the heap copy goes
at once; for the WAL and backups, the answer is encryption with per-tenant keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..engine import Artifact
from ..errors import ConfigError, IntegrityError, StoreBusyError, StoreError
from . import shards
from .base import check_duplicate, mismatch
from .records import ArtifactSwap, KeyRows, NewEpisode, Row, SizeReport, StagedKey, StoredSnapshot
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

SCHEMA = "rememory"
_LOCK_ID = 0x72656D656D6F7279  # "rememory": the advisory lock that serialises migrations
_M001_INITIAL = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    "INSERT INTO meta(key, value) VALUES ('generation', '0')",
    """CREATE TABLE embedders (
        id serial PRIMARY KEY,
        name text NOT NULL,
        dim integer NOT NULL,
        UNIQUE (name, dim)
    )""",
    """CREATE TABLE episodes (
        rowid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused: recall's slot order
        id text NOT NULL,
        namespace text NOT NULL,
        keywords text NOT NULL,
        time text,
        created_at bigint NOT NULL,           -- unix seconds
        n_bytes integer NOT NULL,
        digest bytea NOT NULL,
        digest_format smallint NOT NULL,      -- see rememory.integrity
        key bytea NOT NULL,                   -- int8 key vector (what the recall index uses)
        key_scale double precision NOT NULL,  -- dequantise: key * key_scale
        embedding halfvec,                    -- the same key for pgvector search
        ctx_key bytea,
        ctx_key_scale double precision,
        tokens bytea NOT NULL,                -- uint32 token hashes, little-endian
        embedder integer NOT NULL REFERENCES embedders(id),
        engine text NOT NULL,
        cell text NOT NULL,                   -- engine config, JSON
        weights bytea NOT NULL,               -- the artifact's streams, concatenated
        spans bytea NOT NULL,                 -- each stream's byte offset and length in weights
        UNIQUE (namespace, id)
    )""",
    "CREATE INDEX episodes_namespace_rowid ON episodes(namespace, rowid)",
    """CREATE TABLE api_keys (
        name text PRIMARY KEY,
        key_id text NOT NULL UNIQUE,
        key_hash bytea NOT NULL,
        namespace text NOT NULL,
        created_at text NOT NULL
    )""",
)
# Keys that `rememory reembed` made with another embedder wait here, invisible to recall, until one
# transaction swaps them all in with the store's embedder: a store is never keyed by two models.
_M002_STAGED_KEYS = (
    """CREATE TABLE staged_keys (
        rowid bigint PRIMARY KEY REFERENCES episodes(rowid) ON DELETE CASCADE,
        embedder integer NOT NULL REFERENCES embedders(id),
        key bytea NOT NULL,
        key_scale double precision NOT NULL,
        embedding halfvec NOT NULL,
        ctx_key bytea NOT NULL,
        ctx_key_scale double precision NOT NULL,
        ctx_embedding halfvec NOT NULL
    )""",
)
# A change sequence per namespace, so replicas sync only what changed (see store.sql.changes).
_M003_CHANGES = (
    "ALTER TABLE episodes ADD COLUMN seq bigint NOT NULL DEFAULT 0",
    "CREATE INDEX episodes_namespace_seq ON episodes(namespace, seq)",
    """CREATE TABLE namespaces (
        namespace text PRIMARY KEY,
        seq bigint NOT NULL,              -- the namespace's last change; its row lock orders writers
        pruned bigint NOT NULL DEFAULT 0  -- deletions up to this change may be gone from the log
    )""",
    """CREATE TABLE deletions (
        namespace text NOT NULL,
        episode bigint NOT NULL,  -- the deleted row's rowid (nothing of its content)
        seq bigint NOT NULL,
        at bigint NOT NULL        -- unix seconds, for pruning
    )""",
    "CREATE INDEX deletions_namespace_seq ON deletions(namespace, seq)",
    "CREATE INDEX deletions_namespace_at ON deletions(namespace, at)",
)


def _m004_context_embeddings(conn: Any) -> None:
    """The context keys get a pgvector copy too (dense candidates of large namespaces, see ``nearest``)."""
    conn.execute("ALTER TABLE episodes ADD COLUMN ctx_embedding halfvec")
    last = 0
    while True:
        got = conn.execute(
            "SELECT rowid, COALESCE(ctx_key, key), COALESCE(ctx_key_scale, key_scale) FROM episodes"
            " WHERE rowid > %s ORDER BY rowid LIMIT 1000",
            (last,),
        ).fetchall()
        if not got:
            return
        last = int(got[-1][0])
        units = [(r, _unit(bytes(k), sc)) for r, k, sc in got]
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE episodes SET ctx_embedding = %s::halfvec WHERE rowid = %s",
                [(_vector_text(u), r) for r, u in units if u is not None],
            )


# Recall-index snapshots, so a fresh replica loads one blob and catches up from the change log
# instead of rebuilding its index from every row. A deletion drops its namespace's snapshot.
_M005_INDEX_SNAPSHOTS = (
    """CREATE TABLE index_snapshots (
        namespace text PRIMARY KEY,
        seq bigint NOT NULL,  -- the namespace's change it covers
        data bytea NOT NULL   -- rememory.index.snapshot.to_bytes: live episodes' tokens and keys only
    )""",
    # Uncompressed: int8 keys and hashes barely compress, and a cold replica reads it on its critical path.
    "ALTER TABLE index_snapshots ALTER COLUMN data SET STORAGE EXTERNAL",
)



def _m006_event_time(conn: Any) -> None:
    """Each episode's time (``rememory.timeparse.episode_seconds``), stored so recall never parses keywords.

    Existing rows are parsed here, once, in batches: a one-time cost at the first open for writing of
    a few milliseconds per row whose keywords hold a digit (about 34 s for 10k distinct keyword dates).
    Snapshots made before it lack the times: they are dropped, and rebuilt at the next recall.
    """
    from ..timeparse import backfill_event_times

    conn.execute("ALTER TABLE episodes ADD COLUMN event_time double precision")  # epoch seconds; NULL: no time
    conn.execute("DELETE FROM index_snapshots")

    def write(pairs: list[tuple[float, int]]) -> None:
        with conn.cursor() as cur:
            cur.executemany("UPDATE episodes SET event_time = %s WHERE rowid = %s", pairs)

    backfill_event_times(
        lambda last: conn.execute(
            "SELECT rowid, time, keywords FROM episodes WHERE rowid > %s ORDER BY rowid LIMIT 1000", (last,)
        ).fetchall(),
        write,
    )


# Engines' shared models, one numbered version per (namespace, engine); immutable (see the SQLite store's
# migration 7): episodes decode from exactly the version they name, so the database refuses an update.
_M007_MODELS = (
    """CREATE TABLE models (
        namespace text NOT NULL,
        engine text NOT NULL,
        version integer NOT NULL,     -- 1, 2, ... per (namespace, engine)
        config text NOT NULL,         -- JSON: the model's shape and format constants
        data bytea NOT NULL,          -- the engine's weights blob
        trained_on integer NOT NULL,  -- episodes it was trained on (0: shipped)
        created_at bigint NOT NULL,   -- unix seconds
        PRIMARY KEY (namespace, engine, version)
    )""",
    """CREATE FUNCTION models_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN RAISE EXCEPTION 'a model version is immutable: put a new version instead'; END $$""",
    """CREATE TRIGGER models_immutable BEFORE UPDATE ON models
       FOR EACH ROW EXECUTE FUNCTION models_immutable()""",
)


# Encryption at rest (rememory.store.sealing): a sealed row has no pgvector copy of its keys, staged ones
# included, and the keyring (the wrapped data keys, rememory.crypto.keyring) gets a table of its own.
_M008_ENCRYPTION = (
    "ALTER TABLE staged_keys ALTER COLUMN embedding DROP NOT NULL",
    "ALTER TABLE staged_keys ALTER COLUMN ctx_embedding DROP NOT NULL",
    """CREATE TABLE keyring (
        id smallint PRIMARY KEY CHECK (id = 1),  -- one document
        doc bytea NOT NULL                        -- the keyring's JSON (wrapped keys only, never a plain key)
    )""",
)

Migration = Sequence[str] | Callable[[Any], None]
MIGRATIONS: list[Migration] = [
    _M001_INITIAL, _M002_STAGED_KEYS, _M003_CHANGES, _m004_context_embeddings, _M005_INDEX_SNAPSHOTS, _m006_event_time,
    _M007_MODELS, _M008_ENCRYPTION,
]  # fmt: skip
ANN_EF_SEARCH = 200  # HNSW candidate list; with iterative scans, a larger LIMIT scans on until it is met


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _driver() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise ConfigError(
            "A postgresql:// store needs psycopg 3 and psycopg-pool: pip install 'rememory[postgres]'."
        ) from None
    return psycopg, psycopg_pool


def connect_error(url: str, exc: Exception) -> StoreError:
    """A clear error for a database that cannot be reached or refuses us (never showing the password)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = redact(url)
    low = text.lower()
    if "password" in low or "authentication" in low or ("role" in low and "does not exist" in low):
        return StoreError(
            f"PostgreSQL at {where} refused the credentials ({text}). Check the user and password in the URL."
        )
    if "database" in low and "does not exist" in low:
        return StoreError(f"PostgreSQL at {where} has no such database ({text}). Create it (createdb) or fix the URL.")
    return StoreError(
        f"Cannot reach PostgreSQL at {where} ({text}). Check the host, port and database in the URL, and that the "
        "server is running."
    )


def pg_migrate(conn: Any, url: str, *, read_only: bool) -> None:
    """Create or upgrade the schema under an advisory lock; refuse a schema from a newer version."""
    psycopg, _ = _driver()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        have_vector = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        if not have_vector:
            if read_only:
                raise StoreError(
                    f"There is no rememory store at {redact(url)} yet. Open it once for writing (for example "
                    "`rememory stats`) to create it."
                )
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise StoreError(
                    f"The PostgreSQL server at {redact(url)} cannot enable the pgvector extension "
                    f"({str(exc).strip().splitlines()[0]}). Install pgvector on the server, or have an administrator "
                    "run CREATE EXTENSION vector in this database, then retry."
                ) from None
        if not read_only:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        has_meta = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'meta'", (SCHEMA,)
        ).fetchone()
        version = 0
        if has_meta:
            got = conn.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
            version = int(got[0]) if got else 1
        if version > len(MIGRATIONS):
            raise StoreError(
                f"The store at {redact(url)} has schema version {version}, newer than this rememory understands "
                f"({len(MIGRATIONS)}). Upgrade rememory to open it."
            )
        if version < len(MIGRATIONS) and read_only:
            raise StoreError(
                f"The store at {redact(url)} has schema version {version}; this rememory uses {len(MIGRATIONS)}. "
                "Open it once for writing (for example `rememory stats`) to create or upgrade it."
            )
        conn.execute(f"SET LOCAL search_path TO {SCHEMA}, public")
        for i in range(version, len(MIGRATIONS)):
            migration = MIGRATIONS[i]
            if callable(migration):
                migration(conn)
            else:
                for statement in migration:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(i + 1),),
            )
        if not read_only and version < len(MIGRATIONS):
            got = conn.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
            if got is not None:  # a store bound before the vector indexes existed
                _vector_indexes(conn, int(got[0]))


def _vector_indexes(conn: Any, dim: int) -> None:
    """HNSW indexes over both keys, for :meth:`PostgresStore.nearest`.

    pgvector indexes only a column of known dimension, and the dimension is the embedder's,
    known once the store is bound: the indexes are over the keys cast to it.
    """
    for name, col in (("embedding", "embedding"), ("ctx_embedding", "ctx_embedding")):
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS episodes_{name}_hnsw ON episodes"
            f" USING hnsw (({ann_expr(col, dim)}) halfvec_cosine_ops)"
        )


class PostgresStore(SQLReads):
    """A :class:`~rememory.store.base.MemoryStore` in PostgreSQL (with pgvector), shared by any number of replicas."""

    def __init__(self, url: str, *, busy_timeout: float = 30.0, read_only: bool = False, pool_size: int = 8):
        psycopg, psycopg_pool = _driver()
        self.url = url
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.deletion_log_s: float = DELETION_LOG_S
        self._psycopg = psycopg
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                pg_migrate(conn, url, read_only=read_only)
        except psycopg.OperationalError as exc:
            raise connect_error(url, exc) from None
        except psycopg.Error as exc:
            raise StoreError(f"The store at {redact(url)} could not be opened: {exc}.") from None

        def configure(conn: Any) -> None:
            conn.execute(f"SET search_path TO {SCHEMA}, public")
            conn.execute(f"SET lock_timeout = {int(busy_timeout * 1000)}")
            conn.execute("SET hnsw.iterative_scan = relaxed_order")  # see nearest()
            conn.execute(f"SET hnsw.ef_search = {ANN_EF_SEARCH}")
            if read_only:
                conn.execute("SET default_transaction_read_only = on")

        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, configure=configure, open=True,
            timeout=max(busy_timeout, 1.0), name="rememory",
        )  # fmt: skip
        self._lock = threading.RLock()
        self._dim_cache: dict[int, int] = {}

    # --- plumbing ---

    @property
    def location(self) -> str:
        return redact(self.url)

    @property
    def snapshot_dir(self) -> Path | None:
        return None  # replicas rebuild their index from the rows; nothing is kept on local disk

    def close(self) -> None:
        self._pool.close()

    def _translate(self, exc: Exception) -> Exception:
        pg = self._psycopg
        if isinstance(exc, pg.errors.LockNotAvailable | pg.errors.QueryCanceled):
            return StoreBusyError(
                f"The store at {self.location} is busy: another writer held a lock for over {self.busy_timeout:g} s. "
                "Retry when it finishes."
            )
        if isinstance(exc, pg.errors.ReadOnlySqlTransaction):
            return StoreError(f"The store at {self.location} is open read-only; open it for writing to change it.")
        if isinstance(exc, pg.OperationalError):
            return connect_error(self.url, exc)
        return StoreError(f"The store at {self.location} failed: {exc}.")

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except self._psycopg.Error as exc:
            raise self._translate(exc) from exc

    @contextmanager
    def _write(self, *, bump: bool = True) -> Iterator[Any]:
        if self.read_only:
            raise StoreError(f"The store at {self.location} is open read-only; open it for writing to change it.")
        with self._conn() as conn, conn.transaction():
            yield conn
            if bump:
                conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'generation'")

    @contextmanager
    def _run_write(self) -> Iterator[Execute]:
        with self._write(bump=False) as conn:
            yield _qmark(conn)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # Shared statements (rememory.store.sql) write `?`; psycopg wants `%s`. No statement holds a literal `?`.
        with self._conn() as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())

    # --- encryption (rememory.store.sealing) ---

    def default_keyring(self) -> PostgresKeyringStorage:
        """Where an encrypted store's keyring lives unless told otherwise: its own table in the database."""
        return PostgresKeyringStorage(self)

    def set_encryption_mark(self, keyring_id: str) -> None:
        with self._write(bump=False) as conn:
            conn.execute("INSERT INTO meta(key, value) VALUES ('keyring', %s) ON CONFLICT DO NOTHING", (keyring_id,))

    # --- embedder bookkeeping ---

    def bind_embedder(self, embedder_id: str, dim: int) -> None:
        with self._write() as conn:
            conn.execute("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('embedder', 'dim')").fetchall())
            if "embedder" not in rows:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('embedder', %s), ('dim', %s)", (embedder_id, str(dim))
                )
                _vector_indexes(conn, dim)
            elif rows["embedder"] != embedder_id or int(rows["dim"]) != dim:
                raise mismatch(self.location, rows["embedder"], int(rows["dim"]), embedder_id, dim)

    # --- reembed: keys made by another embedder, staged, then swapped in at once ---

    def stage_keys(self, embedder: tuple[str, int], keys: Sequence[StagedKey]) -> None:
        with self._write(bump=False) as conn:
            conn.execute("INSERT INTO embedders(name, dim) VALUES (%s, %s) ON CONFLICT DO NOTHING", embedder)
            ref = conn.execute("SELECT id FROM embedders WHERE name = %s AND dim = %s", embedder).fetchone()[0]
            for k in keys:
                c = self.codec.staged(k.namespace, k.id, k)
                conn.execute(
                    "INSERT INTO staged_keys(rowid, embedder, key, key_scale, embedding, ctx_key, ctx_key_scale,"
                    " ctx_embedding) SELECT rowid, %s, %s, %s, %s::halfvec, %s, %s, %s::halfvec FROM episodes"
                    " WHERE rowid = %s ON CONFLICT (rowid) DO UPDATE SET embedder = EXCLUDED.embedder,"
                    " key = EXCLUDED.key, key_scale = EXCLUDED.key_scale, embedding = EXCLUDED.embedding,"
                    " ctx_key = EXCLUDED.ctx_key, ctx_key_scale = EXCLUDED.ctx_key_scale,"
                    " ctx_embedding = EXCLUDED.ctx_embedding",
                    (ref, c.key, c.key_scale, _vector_text(c.unit), c.ctx_key, c.ctx_key_scale,
                     _vector_text(c.ctx_unit), k.rowid),
                )  # fmt: skip

    def clear_staged_keys(self, keep: tuple[str, int] | None = None) -> None:
        with self._write(bump=False) as conn:
            if keep is None:
                conn.execute("DELETE FROM staged_keys")
            else:
                conn.execute(CLEAR_OTHER_STAGED_SQL.format(mark="%s"), keep)

    def swap_staged_keys(self, embedder: tuple[str, int], namespace: str | None = None) -> int:
        with self._write() as conn:
            # Adds hold these rows FOR SHARE while they commit (see _commit): once locked here, no add is in
            # flight, and any that follows sees the new embedder and refuses to mix in its keys.
            conn.execute("SELECT key FROM meta WHERE key IN ('embedder', 'dim') FOR UPDATE")
            ref = conn.execute("SELECT id FROM embedders WHERE name = %s AND dim = %s", embedder).fetchone()
            if ref is None:
                return int(conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0])  # none staged
            where, params = (" AND e.namespace = %s", [ref[0], namespace]) if namespace is not None else ("", [ref[0]])
            missing = int(conn.execute(UNSTAGED_SQL.format(mark="%s") + where, params).fetchone()[0])
            if missing:
                return missing
            old_dim = conn.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
            if old_dim is not None and int(old_dim[0]) != embedder[1]:  # the HNSW indexes cast keys to the dimension
                for name in ("embedding", "ctx_embedding"):
                    conn.execute(f"DROP INDEX IF EXISTS episodes_{name}_hnsw")
            log_rekeyed(_qmark(conn), keep_s=self.deletion_log_s)
            conn.execute(SWAP_KEYS_SQL.format(extra=", embedding = s.embedding, ctx_embedding = s.ctx_embedding"))
            conn.execute("DELETE FROM index_snapshots")  # made from the old keys
            _vector_indexes(conn, embedder[1])
            for key, value in (("embedder", embedder[0]), ("dim", str(embedder[1]))):
                conn.execute("INSERT INTO meta(key, value) VALUES (%s, %s)"
                             " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value))  # fmt: skip
            conn.execute("DELETE FROM staged_keys")
            return 0

    # --- writes ---

    def commit_batch(
        self, items: Sequence[NewEpisode], artifacts: Sequence[Artifact], embedder: tuple[str, int], *, replace: bool
    ) -> list[str]:
        try:
            return self._commit(items, artifacts, embedder, replace=replace)
        except _NothingToCommitError:  # rolled back: every episode was already stored
            return []

    def _commit(
        self, items: Sequence[NewEpisode], artifacts: Sequence[Artifact], embedder: tuple[str, int], *, replace: bool
    ) -> list[str]:
        inserted: list[str] = []
        now = int(time.time())
        with self._write() as conn:
            emb_id, dim = embedder
            # FOR SHARE: a reembed (swap_staged_keys) cannot switch the store's embedder under this batch.
            meta = dict(conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('embedder', 'dim') FOR SHARE").fetchall())  # fmt: skip
            if meta and (meta["embedder"] != emb_id or int(meta["dim"]) != dim):
                raise mismatch(self.location, meta["embedder"], int(meta["dim"]), emb_id, dim)
            conn.execute("INSERT INTO embedders(name, dim) VALUES (%s, %s) ON CONFLICT DO NOTHING", (emb_id, dim))
            emb_ref = conn.execute("SELECT id FROM embedders WHERE name = %s AND dim = %s", (emb_id, dim)).fetchone()[0]
            run = _qmark(conn)
            # First, and in a fixed order: writers of a namespace queue here until the one before commits.
            seqs = {ns: next_seq(run, ns) for ns in sorted({it.episode.namespace for it in items})}
            for item, art in zip(items, artifacts):
                ep = item.episode
                # Row-locked: a concurrent add of the same id on another replica waits here, then sees it.
                got = conn.execute(
                    f"SELECT {ROW_COLS} FROM episodes WHERE namespace = %s AND id = %s FOR UPDATE",
                    (ep.namespace, ep.id),
                ).fetchone()
                old = self.row(got) if got is not None else None
                if not check_duplicate(old, ep, item.digest, replace=replace):
                    continue
                if old is not None:
                    conn.execute("DELETE FROM episodes WHERE rowid = %s", (old.rowid,))
                    log_deletions(run, ep.namespace, [old.rowid], seqs[ep.namespace], keep_s=self.deletion_log_s)
                    conn.execute("DELETE FROM index_snapshots WHERE namespace = %s", (ep.namespace,))
                col = self.codec.episode(item, art)
                weights, spans = shards.pack_streams(col.streams)
                conn.execute(
                    "INSERT INTO episodes(id, namespace, keywords, time, created_at, n_bytes, digest, digest_format,"
                    " key, key_scale, embedding, ctx_key, ctx_key_scale, ctx_embedding, tokens, embedder, engine, cell,"
                    " weights, spans, seq, event_time)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::halfvec, %s, %s, %s::halfvec, %s, %s, %s, %s,"
                    " %s, %s, %s, %s)",
                    (
                        ep.id, ep.namespace, col.keywords, col.time, now, item.n_bytes, item.digest,
                        item.digest_format, col.keys.key, col.keys.key_scale, _vector_text(col.keys.unit),
                        col.keys.ctx_key, col.keys.ctx_key_scale, _vector_text(col.keys.ctx_unit), col.tokens, emb_ref,
                        art.engine, col.cell, weights, spans, seqs[ep.namespace], col.event_time,
                    ),
                )  # fmt: skip
                inserted.append(ep.id)
            if not inserted:
                raise _NothingToCommitError
        return inserted

    def replace_artifacts(self, swaps: Sequence[ArtifactSwap]) -> list[str]:
        """Swap in new artifacts for stored episodes in one transaction (rows whose digest still matches)."""
        swapped: list[str] = []
        if not swaps:
            return swapped
        # No generation bump: recall indexes and their snapshots hold keys and tokens, which stay as they are.
        with self._write(bump=False) as conn:
            for sw in swaps:
                cell, streams = self.codec.artifact_columns(sw.namespace, sw.id, sw.artifact)  # sealed if encrypted
                weights, spans = shards.pack_streams(streams)
                got = conn.execute(
                    "UPDATE episodes SET engine = %s, cell = %s, weights = %s, spans = %s"
                    " WHERE rowid = %s AND namespace = %s AND id = %s AND digest = %s RETURNING id",
                    (sw.artifact.engine, cell, weights, spans, sw.rowid, sw.namespace, sw.id, sw.digest),
                ).fetchone()  # fmt: skip
                if got is not None:
                    swapped.append(sw.id)
        return swapped

    def delete(self, namespace: str, ids: Sequence[str]) -> list[str]:
        removed: list[str] = []
        with self._write() as conn:
            run = _qmark(conn)
            seq = next_seq(run, namespace)
            gone: list[int] = []
            for id_ in ids:
                got = conn.execute(
                    "DELETE FROM episodes WHERE namespace = %s AND id = %s RETURNING rowid", (namespace, id_)
                ).fetchone()
                if got is not None:
                    removed.append(id_)
                    gone.append(int(got[0]))
            log_deletions(run, namespace, gone, seq, keep_s=self.deletion_log_s)
            if gone:  # a snapshot holding them goes in the same transaction
                conn.execute("DELETE FROM index_snapshots WHERE namespace = %s", (namespace,))
        if removed:
            with self._conn() as conn:
                conn.execute("VACUUM episodes")  # the heap copy of the deleted rows goes now, not at autovacuum
                conn.execute("VACUUM index_snapshots")  # and so does the dropped snapshot's
        return removed

    # --- reads ---

    server_ann = True

    def nearest(self, namespace: str, q: np.ndarray, k: int, *, context: bool) -> list[int]:
        """Row ids of (about) the ``k`` keys of ``namespace`` nearest to unit vector ``q``, by pgvector's HNSW.

        ``hnsw.iterative_scan`` keeps scanning the graph until ``k`` rows of the namespace are
        found (pgvector 0.8), so one namespace among many still gets its ``k`` candidates.
        """
        # hnsw.iterative_scan and hnsw.ef_search are set once per connection (see __init__): one round trip.
        got = self._read(nearest_sql(context, int(q.shape[0])), (namespace, _vector_text(q), int(k)))
        return [int(t[0]) for t in got]

    server_keys = True

    def key_rows(self, rowids: Sequence[int], dim: int, *, context: bool) -> KeyRows:
        """The int8 keys of ``rowids`` (rowid order), so a large namespace's index holds none of them."""
        ctx = ", COALESCE(ctx_key, key), COALESCE(ctx_key_scale, key_scale)" if context else ""
        with self._conn() as conn:  # binary: the keys come as they are, not hex-escaped
            got = conn.execute(f"SELECT rowid, key, key_scale{ctx} FROM episodes WHERE rowid = ANY(%s) ORDER BY rowid",
                               ([int(r) for r in rowids],), binary=True).fetchall()  # fmt: skip
        # (one aggregated row of concatenated keys took twice as long: the aggregates' sorts)
        return _key_rows(got, dim, context=context)

    def nearest_keys(self, namespace: str, q: np.ndarray, k: int, dim: int, *, context: bool) -> KeyRows:
        """:meth:`nearest` that also reads the found rows' keys: the index scan visits those rows anyway."""
        cols = "rowid, key, key_scale, COALESCE(ctx_key, key), COALESCE(ctx_key_scale, key_scale)"
        with self._conn() as conn:
            got = conn.execute(nearest_sql(context, int(q.shape[0]), cols), (namespace, _vector_text(q), int(k)),
                               binary=True).fetchall()  # fmt: skip
        return _key_rows(got, dim, context=True)

    def load_index_snapshot(self, namespace: str) -> StoredSnapshot | None:
        with self._conn() as conn:  # binary: the blob comes as it is, not hex-escaped (~100 MB at 100k episodes)
            got = conn.execute("SELECT seq, data FROM index_snapshots WHERE namespace = %s", (namespace,),
                               binary=True).fetchone()  # fmt: skip
        return StoredSnapshot(int(got[0]), bytes(got[1])) if got else None

    def save_index_snapshot(self, namespace: str, seq: int, data: bytes) -> bool:
        # Two phases, so that writing the blob (~100 MB at 100k episodes) never holds the namespace's
        # lock, which every add and forget of the namespace takes. First the blob, unless it is stale already.
        with self._write(bump=False) as conn:
            if self._snapshot_stale(conn, namespace, seq, lock=False):
                return False
            conn.execute(
                "INSERT INTO index_snapshots(namespace, seq, data) VALUES (%s, %s, %s) ON CONFLICT (namespace)"
                " DO UPDATE SET seq = EXCLUDED.seq, data = EXCLUDED.data WHERE index_snapshots.seq < EXCLUDED.seq",
                (namespace, seq, data),
            )
        # Then, under the lock for a moment: a deletion that committed while the blob was written (its own
        # DELETE of the namespace's snapshot may have run before the blob existed) makes it stale: drop it.
        with self._write(bump=False) as conn:
            if self._snapshot_stale(conn, namespace, seq, lock=True):
                conn.execute("DELETE FROM index_snapshots WHERE namespace = %s AND seq = %s", (namespace, seq))
                return False
        return True

    @staticmethod
    def _snapshot_stale(conn: Any, namespace: str, seq: int, *, lock: bool) -> bool:
        """Whether an index as of change ``seq`` may hold an episode deleted since (then it must not be kept)."""
        # FOR UPDATE waits for a deleting transaction of the namespace (it holds this row) to commit.
        got = conn.execute("SELECT pruned FROM namespaces WHERE namespace = %s" + (" FOR UPDATE" if lock else ""),
                           (namespace,)).fetchone()  # fmt: skip
        if got is None or int(got[0]) > seq:  # (a pruned log cannot prove that nothing was deleted)
            return True
        return conn.execute("SELECT 1 FROM deletions WHERE namespace = %s AND seq > %s LIMIT 1",
                            (namespace, seq)).fetchone() is not None  # fmt: skip

    def load_artifacts(self, rows: Sequence[Row]) -> dict[int, Artifact | IntegrityError]:
        out: dict[int, Artifact | IntegrityError] = {}
        if not rows:
            return out
        got = {
            int(t[0]): t
            for t in self._read(
                "SELECT rowid, cell, weights, spans FROM episodes WHERE rowid = ANY(%s)", ([r.rowid for r in rows],)
            )
        }
        for r in rows:
            t = got.get(r.rowid)
            if t is None:
                out[r.rowid] = IntegrityError(f"the memory {r.id!r} was deleted while being read", ids=[r.id])
                continue
            try:
                out[r.rowid] = self.codec.artifact(r, t[1], shards.unpack_streams(bytes(t[2]), bytes(t[3])))
            except IntegrityError as exc:
                out[r.rowid] = exc
            except (ValueError, TypeError) as exc:
                out[r.rowid] = damaged_metadata(r, exc)
        return out

    def size_report(self, namespace: str | None = None) -> SizeReport:
        where, params = ("WHERE namespace = %s", (namespace,)) if namespace is not None else ("", ())
        n, text_bytes, cell_bytes = self._read(
            "SELECT COUNT(*), COALESCE(SUM(n_bytes), 0), COALESCE(SUM(octet_length(weights) + octet_length(cell)"
            f" + octet_length(spans) + octet_length(digest)), 0) FROM episodes {where}",
            params,
        )[0]
        cell_bytes = int(cell_bytes) + self._models_bytes(namespace)
        if namespace is not None:
            return SizeReport(int(n), int(text_bytes), cell_bytes, 0, {namespace: int(n)} if n else {})
        store_bytes = self._read(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace s"
            " ON s.oid = c.relnamespace WHERE s.nspname = %s AND c.relkind = 'r'",
            (SCHEMA,),
        )[0][0]
        per_ns = {str(k): int(v) for k, v in
                  self._read("SELECT namespace, COUNT(*) FROM episodes GROUP BY namespace ORDER BY 1")}  # fmt: skip
        return SizeReport(int(n), int(text_bytes), cell_bytes, int(store_bytes), per_ns)

    # --- API keys, in the same database (see rememory.server.auth) ---

    def key_backend(self) -> PostgresKeys:
        return PostgresKeys(self)


class PostgresKeys:
    """The ``api_keys`` table: the storage half of :class:`rememory.server.auth.KeyStore`."""

    def __init__(self, store: PostgresStore):
        self._store = store
        self.location = store.location

    def insert(self, name: str, key_id: str, key_hash: bytes, namespace: str, created_at: str) -> bool:
        """Add a key; False if the name is taken."""
        with self._store._write(bump=False) as conn:
            cur = conn.execute(
                "INSERT INTO api_keys(name, key_id, key_hash, namespace, created_at) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, key_id, key_hash, namespace, created_at),
            )
            return bool(cur.rowcount)

    def find(self, key_id: str) -> tuple[str, str, str, str, bytes] | None:
        got = self._store._read(
            "SELECT name, key_id, namespace, created_at, key_hash FROM api_keys WHERE key_id = %s", (key_id,)
        )
        return (got[0][0], got[0][1], got[0][2], got[0][3], bytes(got[0][4])) if got else None

    def all(self) -> list[tuple[str, str, str, str]]:
        rows = self._store._read("SELECT name, key_id, namespace, created_at FROM api_keys ORDER BY name")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def delete(self, name: str) -> bool:
        with self._store._write(bump=False) as conn:
            return bool(conn.execute("DELETE FROM api_keys WHERE name = %s", (name,)).rowcount)

    def close(self) -> None:
        """The store owns the connections."""


class PostgresKeyringStorage:
    """The ``keyring`` table: one row, replaced in one transaction under its row lock (see crypto.keyring)."""

    def __init__(self, store: PostgresStore):
        self._store = store

    @property
    def location(self) -> str:
        return f"{self._store.location} (table {SCHEMA}.keyring)"

    def read(self) -> bytes | None:
        got = self._store._read("SELECT doc FROM keyring WHERE id = 1")
        return bytes(got[0][0]) if got else None

    def update(self, change: Callable[[bytes | None], bytes | None]) -> None:
        with self._store._write(bump=False) as conn:
            conn.execute("LOCK TABLE keyring IN SHARE ROW EXCLUSIVE MODE")  # also serialises the first insert
            got = conn.execute("SELECT doc FROM keyring WHERE id = 1").fetchone()
            new = change(bytes(got[0]) if got else None)
            if new is None:
                return
            conn.execute(
                "INSERT INTO keyring(id, doc) VALUES (1, %s) ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc", (new,)
            )
        with self._store._conn() as conn:
            conn.execute("VACUUM keyring")  # the old version (say, an erased key) leaves the heap now


class _NothingToCommitError(Exception):
    """Rolls back a batch whose every episode was already stored (no generation change)."""


def _qmark(conn: Any) -> Any:
    """``conn.execute`` for the shared statements of rememory.store.sql, which write ``?`` placeholders."""
    return lambda sql, params: conn.execute(sql.replace("?", "%s"), params)


def _key_rows(got: Sequence[Any], dim: int, *, context: bool) -> KeyRows:
    """:class:`KeyRows` of (rowid, key, scale[, ctx key, ctx scale]) tuples, in their order; keys of another
    length than ``dim`` are left out (their rows were indexed as damaged)."""
    got = [t for t in got if len(t[1]) == dim and (not context or len(t[3]) == dim)]

    def keys(col: int) -> tuple[np.ndarray, np.ndarray]:
        q8 = np.frombuffer(b"".join(t[col] for t in got), dtype=np.int8).reshape(-1, dim)
        return q8, np.array([t[col + 1] for t in got], dtype=np.float64)

    key, scale = keys(1)
    ctx_key, ctx_scale = keys(3) if context else (np.zeros((0, dim), dtype=np.int8), np.zeros(0))
    return KeyRows(np.array([t[0] for t in got], dtype=np.int64), key, scale, ctx_key, ctx_scale)


def nearest_sql(context: bool, dim: int, cols: str = "rowid") -> str:
    """The statement of :meth:`PostgresStore.nearest`: its ORDER BY is the HNSW indexes' expression."""
    col = "ctx_embedding" if context else "embedding"
    return (f"SELECT {cols} FROM episodes WHERE namespace = %s"
            f" ORDER BY {ann_expr(col, dim)} <=> %s::halfvec({int(dim)}) LIMIT %s")  # fmt: skip


def ann_expr(col: str, dim: int) -> str:
    """What the HNSW indexes index: the keys of the store's dimension (others, NULL, are left out).

    A reembed to another dimension rewrites every key and rebuilds the indexes in one transaction:
    building an index also reads the old row versions, which a plain cast would refuse.
    """
    return f"(CASE WHEN vector_dims({col}) = {int(dim)} THEN {col} END)::halfvec({int(dim)})"


def _unit(key: bytes, scale: Any) -> np.ndarray | None:
    """A stored int8 key as floats (None for a damaged one: recall reports it, the migration leaves it)."""
    if not isinstance(scale, float | int) or len(key) == 0:
        return None
    return np.frombuffer(key, dtype=np.int8).astype(np.float32) * np.float32(scale)


def _vector_text(vec: np.ndarray | None) -> str | None:
    if vec is None:  # a sealed row: no plaintext copy of its key
        return None
    return "[" + ",".join(f"{float(x):.6g}" for x in vec) + "]"
