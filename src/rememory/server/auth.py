"""API keys: each key belongs to one namespace (a tenant); only a hash of it is stored.

Keys live in the store's own backend: ``keys.db``, a SQLite file next to a directory store's
database (with its own ordered migrations), or the ``api_keys`` table of a PostgreSQL store.
A key reads ``rmk_<key id>_<secret>``: the key id is public (``rememory keys list`` shows it)
and finds the row; the whole key's SHA-256 is then compared in constant time. The server reads
the keys on every request, so ``rememory keys create`` and ``rememory keys revoke`` take effect
at once, even while a server runs (on every replica, for PostgreSQL).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from ..episodes import validate_namespace
from ..errors import ConfigError, InvalidEpisodeError, NotFoundError, StoreError
from ..fsutil import FILE_MODE, private_dir, private_file, tighten
from ..store.migrations import Migration, migrate

KEYS_DB = "keys.db"
PREFIX = "rmk"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_KEY = re.compile(r"^rmk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


_M001_KEYS = (
    """CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        key_id TEXT NOT NULL UNIQUE,   -- public part of the key, finds the row
        key_hash BLOB NOT NULL,        -- SHA-256 of the whole key (the key itself is never stored)
        namespace TEXT NOT NULL,
        created_at TEXT NOT NULL       -- ISO 8601, UTC
    )""",
)


MIGRATIONS: list[Migration] = [_M001_KEYS]


@dataclass(frozen=True)
class ApiKey:
    """A stored key's public record (never the key itself)."""

    name: str
    key_id: str
    namespace: str
    created_at: str

    @property
    def hint(self) -> str:
        """How the key starts, to tell keys apart: ``rmk_<key id>_…``."""
        return f"{PREFIX}_{self.key_id}_…"


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyBackend(Protocol):
    """Where keys are kept: ``keys.db`` beside a SQLite store, or the ``api_keys`` table of a PostgreSQL store."""

    location: str

    def insert(self, name: str, key_id: str, key_hash: bytes, namespace: str, created_at: str) -> bool:
        """Add a key row; False if a key of that name exists."""
        ...

    def find(self, key_id: str) -> tuple[str, str, str, str, bytes] | None:
        """(name, key id, namespace, created at, hash) of the key with this public id."""
        ...

    def all(self) -> list[tuple[str, str, str, str]]: ...
    def delete(self, name: str) -> bool: ...
    def close(self) -> None: ...


class SQLiteKeys:
    """``keys.db`` in a store directory, with its own ordered migrations."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.location = str(self.path)
        try:
            private_dir(self.path.parent)
            private_file(self.path)  # 0600 before SQLite opens it: its -wal and -shm inherit the mode
            for suffix in ("-wal", "-shm"):
                tighten(self.path.with_name(self.path.name + suffix), FILE_MODE)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            migrate(self._db, MIGRATIONS, what="key store")
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"Cannot open the key store {self.path}: {exc}. Check the --store path.") from exc
        self._lock = threading.Lock()

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreError(f"The key store {self.path} is unusable: {exc}.") from exc

    def insert(self, name: str, key_id: str, key_hash: bytes, namespace: str, created_at: str) -> bool:
        try:
            self._run("INSERT INTO api_keys(name, key_id, key_hash, namespace, created_at) VALUES (?, ?, ?, ?, ?)",
                      (name, key_id, key_hash, namespace, created_at))  # fmt: skip
        except sqlite3.IntegrityError:
            return False
        return True

    def find(self, key_id: str) -> tuple[str, str, str, str, bytes] | None:
        got = self._run(
            "SELECT name, key_id, namespace, created_at, key_hash FROM api_keys WHERE key_id = ?", (key_id,)
        ).fetchone()
        return None if got is None else (got[0], got[1], got[2], got[3], bytes(got[4]))

    def all(self) -> list[tuple[str, str, str, str]]:
        rows = self._run("SELECT name, key_id, namespace, created_at FROM api_keys ORDER BY name").fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def delete(self, name: str) -> bool:
        return bool(self._run("DELETE FROM api_keys WHERE name = ?", (name,)).rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class KeyStore:
    """The API keys of one store, kept in the store's own backend. Safe for several threads and processes.

    >>> keys = KeyStore.for_store("memories")
    >>> key = keys.create("alice")          # shown once; only its hash is kept
    >>> keys.authenticate(key).namespace
    'alice'
    """

    def __init__(self, backend: KeyBackend, *, owned: object | None = None):
        self._backend = backend
        self._owned = owned  # a store opened only for its keys, closed with them

    @classmethod
    def for_store(cls, location: str | os.PathLike[str]) -> KeyStore:
        """The keys of the store at ``location``: ``<dir>/keys.db``, or the PostgreSQL store's ``api_keys`` table."""
        from ..store import is_postgres_url

        if is_postgres_url(location):
            from ..store.postgres import PostgresStore

            store = PostgresStore(str(location), pool_size=2)
            return cls(store.key_backend(), owned=store)
        return cls(SQLiteKeys(Path(location) / KEYS_DB))

    @property
    def location(self) -> str:
        return self._backend.location

    def close(self) -> None:
        self._backend.close()
        close = getattr(self._owned, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self, name: str, namespace: str | None = None) -> str:
        """Make a key for ``namespace`` (default: ``name``); returns the key, which is not stored."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"Key name {name!r} is not valid: use 1-64 letters, digits, '.', '_', '@' or '-', "
                "starting with a letter or digit."
            )
        try:
            namespace = validate_namespace(name if namespace is None else namespace)
        except InvalidEpisodeError as exc:
            raise ConfigError(str(exc)) from None
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"  # 256 bits of secret
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if not self._backend.insert(name, key_id, _hash(key), namespace, created):
            raise ConfigError(
                f"A key named {name!r} already exists. Pick another name, or revoke it first "
                f"(rememory keys revoke {name})."
            )
        return key

    def authenticate(self, key: str) -> ApiKey | None:
        """The record of ``key``, or ``None`` if it is malformed, unknown or revoked."""
        m = _KEY.match(key) if isinstance(key, str) else None
        if m is None:
            return None
        row = self._backend.find(m.group(1))
        if row is None or not hmac.compare_digest(row[4], _hash(key)):
            return None
        return ApiKey(*row[:4])

    def list(self) -> list[ApiKey]:
        """Every key's public record, by name."""
        return [ApiKey(*r) for r in self._backend.all()]

    def revoke(self, name: str) -> None:
        """Delete the key called ``name``; requests using it get 401 from then on."""
        if not self._backend.delete(name):
            raise NotFoundError(f"No API key named {name!r}. List the keys with `rememory keys list`.")
