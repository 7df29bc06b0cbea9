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


def corrupt_weights(location: str | Path, namespace: str, id: str, stream: str = "int8") -> None:
    """Flip every byte of one episode's one-byte ``stream`` (its int8 weights, by default) where the backend
    keeps it (a file, or a row)."""
    if isinstance(location, str) and location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            weights, blob = conn.execute(
                "SELECT weights, spans FROM rememory.episodes WHERE namespace = %s AND id = %s", (namespace, id)
            ).fetchone()
            off, length = shards.decode_spans(bytes(blob))[stream]
            data = bytearray(weights)
            for i in range(off, off + length):
                data[i] ^= 0x5A
            conn.execute("UPDATE rememory.episodes SET weights = %s WHERE namespace = %s AND id = %s",
                         (bytes(data), namespace, id))  # fmt: skip
        return
    import json

    victim, spans = locate(Path(location), namespace, id)
    data = bytearray(victim.read_bytes())
    off, length = spans[stream]
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    start = 8 + header_len + header[stream]["data_offsets"][0] + off  # the episode's own span
    for i in range(start, start + length):
        data[i] ^= 0x5A
    victim.write_bytes(bytes(data))
