"""Reading a SQLite store's files directly, the way an attacker or a damaged disk would see them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from rememory.store import shards
from rememory.store.sqlite import DB_NAME, SHARD_DIR


@contextmanager
def raw_db(store_dir: Path) -> Iterator[sqlite3.Connection]:
    """A plain autocommit connection to the store's database, for reading and tampering."""
    with closing(sqlite3.connect(store_dir / DB_NAME, isolation_level=None)) as db:
        yield db


def locate(store_dir: Path, namespace: str, id: str) -> tuple[Path, shards.Spans]:
    """The shard file and the spans of one episode's weights."""
    with raw_db(store_dir) as db:
        file, blob = db.execute(
            "SELECT s.file, e.spans FROM episodes e JOIN shards s ON s.id = e.shard WHERE e.namespace = ? AND e.id = ?",
            (namespace, id),
        ).fetchone()
    return store_dir / SHARD_DIR / file, shards.decode_spans(blob)
