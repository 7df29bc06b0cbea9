"""The store on its own: real SQLite, real safetensors shards, no embedder."""

import dataclasses
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from rememory.cells.engine import MlpCellEngine
from rememory.errors import DuplicateIdError, EmbedderMismatchError, IntegrityError, StoreBusyError, StoreError
from rememory.integrity import episode_digest
from rememory.quant import quantize_int8
from rememory.records import Episode
from rememory.store import shards
from rememory.store.migrations import MIGRATIONS, migrate
from rememory.store.records import NewEpisode
from rememory.store.sqlite import DB_NAME, Store
from tests.storeutil import locate, raw_db

EMB = ("test-embedder", 8)


def _items(texts: list[str], ns: str = "default") -> tuple[list[NewEpisode], list]:
    engine = MlpCellEngine()
    eps = [Episode(id=f"id{i}-{t[:4]}", keywords=f"kw {i}", text=t, namespace=ns) for i, t in enumerate(texts)]
    arts = engine.encode([e.keywords for e in eps], [e.text.encode() for e in eps])
    rng = np.random.default_rng(0)
    items = []
    for e in eps:
        q, s = quantize_int8(rng.normal(size=EMB[1]).astype(np.float32))
        dg = episode_digest(e.namespace, e.id, e.text.encode())
        items.append(NewEpisode(e, dg, len(e.text.encode()), q, s, np.zeros(0, np.uint32), q, s))
    return items, arts


def test_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    items, arts = _items(["first memory", "вторая память"])
    assert store.commit_batch(items, arts, EMB, replace=False) == [it.episode.id for it in items]
    rows = store.rows("default", [it.episode.id for it in items])
    loaded = store.load_artifacts(list(rows.values()))
    engine = MlpCellEngine()
    for it in items:
        art = loaded[rows[it.episode.id].rowid]
        assert engine.decode(art, it.episode.keywords) == it.episode.text.encode()
        assert rows[it.episode.id].digest == it.digest
    store.close()
    # and again after reopening
    store = Store(tmp_path / "s")
    assert store.count() == 2
    index_rows = store.index_rows(store.namespace_rowids("default").tolist())
    assert [r.key.shape for r in index_rows] == [(EMB[1],)] * 2 and all(r.damage is None for r in index_rows)
    assert store.count("other") == 0


def test_identical_readd_is_noop_and_conflict_is_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    items, arts = _items(["same text"])
    store.commit_batch(items, arts, EMB, replace=False)
    assert store.commit_batch(items, arts, EMB, replace=False) == []
    assert len(list((tmp_path / "s" / "shards").iterdir())) == 1  # the no-op left no shard behind
    other, other_arts = _items(["different text"])
    changed = [dataclasses.replace(o, episode=Episode(items[0].episode.id, "kw", "different text")) for o in other]
    with pytest.raises(DuplicateIdError, match="replace"):
        store.commit_batch(changed, other_arts, EMB, replace=False)
    assert store.commit_batch(changed, other_arts, EMB, replace=True) == [items[0].episode.id]
    assert store.count() == 1


def test_delete_erases_weights_from_disk(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    items, arts = _items(["keep this one", "forget this one"])
    store.commit_batch(items, arts, EMB, replace=False)
    gone = items[1].episode.id
    path, spans = locate(tmp_path / "s", "default", gone)
    off, length = spans["int8"]
    from safetensors.numpy import load_file

    assert np.any(load_file(path)["int8"][off : off + length] != 0)
    assert store.delete("other", [gone]) == []  # ids are per namespace
    assert store.delete("default", [gone, "no-such-id"]) == [gone]
    assert not np.any(load_file(path)["int8"][off : off + length])  # zeroed on disk
    kept = items[0].episode.id
    row = store.rows("default", [kept])[kept]
    art = store.load_artifacts([row])[row.rowid]
    assert MlpCellEngine().decode(art, items[0].episode.keywords) == b"keep this one"
    store.delete("default", [kept])
    assert not path.exists()  # the last episode took its shard with it


def test_refuses_to_mix_embedders(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.bind_embedder(*EMB)
    with pytest.raises(EmbedderMismatchError, match="test-embedder"):
        store.bind_embedder("another-model", 8)
    items, arts = _items(["x y z"])
    with pytest.raises(EmbedderMismatchError):
        store.commit_batch(items, arts, ("another-model", 16), replace=False)
    assert store.count() == 0


def test_migrations_run_once_and_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s").close()
    db = sqlite3.connect(tmp_path / "s" / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="Upgrade rememory"):
        Store(tmp_path / "s")


def test_busy_store_is_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", busy_timeout=0.2)
    other = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusyError, match="busy"):
            store.bind_embedder(*EMB)
    finally:
        other.execute("ROLLBACK")
    store.bind_embedder(*EMB)  # free again


def test_failed_commit_leaves_no_shard(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.bind_embedder(*EMB)
    items, arts = _items(["some text"])
    with pytest.raises(EmbedderMismatchError):
        store.commit_batch(items, arts, ("other", 8), replace=False)
    assert list((tmp_path / "s" / "shards").iterdir()) == []


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="directory"):
        Store(f)


def test_spans_encoding_round_trip() -> None:
    spans = {"int8": (12, 3000), "float16": (0, 4), "uint8": (99, 35)}
    blob = shards.encode_spans(spans)
    assert len(blob) == 27
    assert shards.decode_spans(blob) == spans


# --- a store is never silently lost or replaced (issue 9, item 1) ---


def _committed(path: Path, texts: list[str], ns: str = "default") -> Store:
    store = Store(path)
    items, arts = _items(texts, ns)
    store.commit_batch(items, arts, EMB, replace=False)
    return store


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_missing_or_empty_database_is_refused_and_nothing_is_deleted(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s"
    _committed(path, ["a memory that must survive"]).close()
    shard_files = sorted((path / "shards").iterdir())
    old = time.time() - 7200  # older than any commit in flight: the old cleanup deleted these
    for f in shard_files:
        os.utime(f, (old, old))
    (path / DB_NAME).unlink()
    if how == "empty":
        (path / DB_NAME).write_bytes(b"")
    for read_only in (False, True):
        with pytest.raises(StoreError, match=f"damaged: its database {DB_NAME} is {how}.*Restore"):
            Store(path, read_only=read_only)
    assert sorted((path / "shards").iterdir()) == shard_files
    assert (path / DB_NAME).exists() == (how == "empty")  # no fresh database was created either


def test_cleanup_deletes_only_what_the_database_proves_abandoned(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _committed(path, ["kept"]).close()
    unknown = path / "shards" / "0123456789abcdef.safetensors"  # e.g. the database was restored from a backup
    shards.write_atomic(unknown, {"int8": np.arange(5, dtype=np.int8)})
    pending = path / "shards" / "fedcba9876543210.safetensors"  # a commit that crashed before its rows
    shards.write_atomic(pending, {"int8": np.arange(5, dtype=np.int8)})
    with raw_db(path) as db:
        db.execute("INSERT INTO pending_shards(file, since) VALUES (?, ?)", (pending.name, int(time.time()) - 7200))
    old = time.time() - 7200
    for f in (path / "shards").iterdir():
        os.utime(f, (old, old))
    store = Store(path)
    assert unknown.exists() and not pending.exists()
    assert store.count() == 1 and len(list((path / "shards").iterdir())) == 2
    with raw_db(path) as db:
        assert db.execute("SELECT COUNT(*) FROM pending_shards").fetchone()[0] == 0


def test_a_commit_marks_its_shard_pending_until_its_rows_exist(tmp_path: Path) -> None:
    """A crash between writing a shard and committing its rows leaves a mark that proves it abandoned."""
    path = tmp_path / "s"
    store = Store(path)
    store.bind_embedder(*EMB)
    items, arts = _items(["will not commit"])
    seen: list[list[str]] = []
    real = shards.write_atomic

    def crash_after_write(p: Path, tensors: dict) -> None:
        real(p, tensors)
        with raw_db(path) as db:
            seen.append([f for (f,) in db.execute("SELECT file FROM pending_shards")])
        raise KeyboardInterrupt  # the process dies here

    shards.write_atomic = crash_after_write
    try:
        with pytest.raises(KeyboardInterrupt):
            store.commit_batch(items, arts, EMB, replace=False)
    finally:
        shards.write_atomic = real
    assert len(seen[0]) == 1  # recorded before the file existed
    assert list((path / "shards").iterdir()) == [] and store.count() == 0


def test_read_only_store_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _committed(path, ["one", "two"]).close()
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.rglob("*") if p.is_file()}
    store = Store(path, read_only=True)
    rows = store.rows("default", [f"id{i}-{t}" for i, t in enumerate(["one", "two"])])
    arts = store.load_artifacts(list(rows.values()))
    assert len(rows) == 2 and all(not isinstance(a, Exception) for a in arts.values())
    assert store.size_report().episodes == 2
    with pytest.raises(StoreError, match="read-only"):
        store.delete("default", list(rows))
    store.close()
    # SQLite may create an empty log and its shared-memory index to read a WAL database; no data is written.
    log = [p for p in path.iterdir() if p.name.endswith(("-wal", "-shm")) and p not in before]
    assert all(p.name.endswith("-shm") or p.stat().st_size == 0 for p in log)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.rglob("*") if p.is_file() and p not in log}
    assert before == after
    with pytest.raises(StoreError, match="no store"):
        Store(tmp_path / "nothing-here", read_only=True)
    assert not (tmp_path / "nothing-here").exists()


# --- forget erases, ids are per namespace (issue 9, items 2 and 3) ---


def test_delete_erases_the_row_from_the_database_and_its_log(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = Store(path)
    items, arts = _items(["keep me around", "the secret text"])
    store.commit_batch(items, arts, EMB, replace=False)
    gone = items[1]
    needles = [gone.episode.id.encode(), gone.key.tobytes()]
    assert any(n in _all_bytes(path) for n in needles)
    store.delete("default", [gone.episode.id])
    blob = _all_bytes(path)  # before close: erased by the time delete returns
    for needle in needles:
        assert needle not in blob, needle
    assert items[0].episode.id.encode() in blob


def _all_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def test_ids_are_unique_per_namespace(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    a, a_arts = _items(["text of tenant a"], "a")
    b, b_arts = _items(["text of tenant b"], "b")
    b = [dataclasses.replace(it, episode=dataclasses.replace(it.episode, id=a[0].episode.id)) for it in b]
    b = [dataclasses.replace(it, digest=episode_digest("b", it.episode.id, it.episode.text.encode())) for it in b]
    assert store.commit_batch(a, a_arts, EMB, replace=False) == [a[0].episode.id]
    assert store.commit_batch(b, b_arts, EMB, replace=False) == [a[0].episode.id]  # no duplicate_id across tenants
    ra, rb = store.rows("a", [a[0].episode.id]), store.rows("b", [a[0].episode.id])
    assert ra[a[0].episode.id].digest != rb[a[0].episode.id].digest
    assert store.delete("a", [a[0].episode.id]) == [a[0].episode.id]
    assert store.count("b") == 1 and store.count("a") == 0


def _v2_store(path: Path) -> list[Episode]:
    """A store as rememory wrote it before ids became per-namespace (schema 2, text-only digests)."""
    from rememory.cells.codec import digest

    path.mkdir()
    (path / "shards").mkdir()
    eps = [Episode("e1", "kw one", "first, in namespace a", None, "a"),
           Episode("e2", "kw two", "second, in b", None, "b")]  # fmt: skip
    arts = MlpCellEngine().encode([e.keywords for e in eps], [e.text.encode() for e in eps])
    tensors, spans = shards.pack([a.streams for a in arts])
    shards.write_atomic(path / "shards" / "old.safetensors", tensors)
    db = sqlite3.connect(path / DB_NAME, isolation_level=None)
    migrate(db, MIGRATIONS[:2])
    db.execute("INSERT INTO meta(key, value) VALUES ('embedder', 'test-embedder'), ('dim', '8')")
    db.execute("INSERT INTO embedders(id, name, dim) VALUES (1, 'test-embedder', 8)")
    db.execute("INSERT INTO shards(id, file, created_at) VALUES (1, 'old.safetensors', 0)")
    for e, art, sp in zip(eps, arts, spans):
        db.execute(
            "INSERT INTO episodes(id, namespace, keywords, time, created_at, n_bytes, digest, key, key_scale,"
            " embedder, engine, cell, shard, spans, tokens, ctx_key, ctx_key_scale)"
            " VALUES (?,?,?,?,0,?,?,?,1.0,1,?,?,1,?,?,?,1.0)",
            (e.id, e.namespace, e.keywords, e.time, len(e.text.encode()), digest(e.text.encode()), bytes(8),
             art.engine, json.dumps(art.config), shards.encode_spans(sp), b"", bytes(8)),
        )  # fmt: skip
    db.close()
    return eps


def test_migration_to_per_namespace_ids_keeps_every_episode(tmp_path: Path) -> None:
    path = tmp_path / "s"
    eps = _v2_store(path)
    store = Store(path)
    with raw_db(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    engine = MlpCellEngine()
    for e in eps:
        row = store.rows(e.namespace, [e.id])[e.id]
        assert row.digest_format == 1  # old digests are kept and still checked as text-only digests
        art = store.load_artifacts([row])[row.rowid]
        assert engine.decode(art, e.keywords) == e.text.encode()
    items, arts = _items(["now e1 may exist in b too"], "b")
    items = [dataclasses.replace(it, episode=dataclasses.replace(it.episode, id="e1")) for it in items]
    assert store.commit_batch(items, arts, EMB, replace=False) == ["e1"]
    assert store.count("b") == 2 and store.count("a") == 1


def test_migration_statements_may_hold_semicolons(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    migrate(db, [("CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('a;b -- not a comment')")])
    assert db.execute("SELECT v FROM t").fetchone()[0] == "a;b -- not a comment"


# --- damaged metadata is reported, never a crash (issue 9, item 4) ---


def test_damaged_rows_are_listed_with_their_reason(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = _committed(path, ["ok one", "short key", "odd tokens", "bad digest"])
    ids = [f"id{i}-{t[:4]}" for i, t in enumerate(["ok one", "short key", "odd tokens", "bad digest"])]
    with raw_db(path) as db:
        db.execute("UPDATE episodes SET key = x'0102' WHERE id = ?", (ids[1],))
        db.execute("UPDATE episodes SET tokens = x'010203' WHERE id = ?", (ids[2],))
        db.execute("UPDATE episodes SET digest = x'00' WHERE id = ?", (ids[3],))
    found = {d.id: d.reason for d in store.damaged()}
    assert set(found) == set(ids[1:])
    assert "key has 2 bytes" in found[ids[1]] and "token" in found[ids[2]] and "digest" in found[ids[3]]
    rows = store.index_rows(store.namespace_rowids("default").tolist())
    assert [r.damage is None for r in rows] == [True, False, False, True]


def test_damaged_engine_metadata_maps_to_an_integrity_error_per_episode(tmp_path: Path) -> None:
    texts = ["fine", "bad json", "bad spans", "spans past the end", "not an object"]
    path = tmp_path / "s"
    store = _committed(path, texts)
    ids = [f"id{i}-{t[:4]}" for i, t in enumerate(texts)]
    with raw_db(path) as db:
        db.execute("UPDATE episodes SET cell = '{not json' WHERE id = ?", (ids[1],))
        db.execute("UPDATE episodes SET spans = x'6900' WHERE id = ?", (ids[2],))
        db.execute("UPDATE episodes SET spans = ? WHERE id = ?",
                   (shards.encode_spans({"int8": (10**6, 50)}), ids[3]))  # fmt: skip
        db.execute("UPDATE episodes SET cell = '[1, 2]' WHERE id = ?", (ids[4],))
    rows = store.rows("default", ids)
    got = store.load_artifacts([rows[i] for i in ids])
    assert not isinstance(got[rows[ids[0]].rowid], Exception)
    for i in ids[1:]:
        err = got[rows[i].rowid]
        assert isinstance(err, IntegrityError) and err.ids == [i], err


def test_spans_decoding_rejects_damage() -> None:
    with pytest.raises(ValueError, match="multiple of 9"):
        shards.decode_spans(b"\x00" * 10)
    with pytest.raises(ValueError, match="unknown or repeated"):
        shards.decode_spans(b"Z" + bytes(8))


# --- file permissions (issue 9, item 9) ---


def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    from rememory.server.auth import KeyStore

    old = os.umask(0)
    try:
        path = tmp_path / "s"
        store = _committed(path, ["private"])
        KeyStore.for_store(path).create("alice")
        for p in [path, *path.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        store.close()
        # A store made wider by hand is narrowed again on open.
        os.chmod(path, 0o755)
        os.chmod(path / DB_NAME, 0o644)
        Store(path).close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert stat.S_IMODE((path / DB_NAME).stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_forget_with_its_shard_missing_warns_and_still_deletes(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s"
    store = _committed(path, ["one", "two"])
    shard, _ = locate(path, "default", "id0-one")
    shard.unlink()
    with caplog.at_level("WARNING", logger="rememory"):
        assert store.delete("default", ["id0-one"]) == ["id0-one"]
    assert "is missing" in caplog.text and "rememory verify" in caplog.text


# --- the change sequence: recall indexes sync only what changed (issue 11), on both backends ---


def _named(ids: list[str], ns: str) -> tuple[list[NewEpisode], list]:
    items, arts = _items([f"text of {i}" for i in ids], ns)
    out = []
    for it, id_ in zip(items, ids):
        ep = dataclasses.replace(it.episode, id=id_)
        out.append(dataclasses.replace(it, episode=ep, digest=episode_digest(ns, id_, ep.text.encode())))
    return out, arts


def _rowid(store, ns: str, id_: str) -> int:
    return store.rows(ns, [id_])[id_].rowid


def test_changes_list_only_what_changed_since(store_at) -> None:
    from rememory.store import open_store

    store = open_store(store_at())
    try:
        store.commit_batch(*_named(["a1", "a2", "a3"], "a"), EMB, replace=False)
        store.commit_batch(*_named(["b1"], "b"), EMB, replace=False)
        first = store.changes("a", None)
        assert first.complete and first.added == sorted(store.namespace_rowids("a").tolist()) and len(first.added) == 3
        assert store.changes("a", first.seq) == dataclasses.replace(first, added=[], complete=False)
        store.commit_batch(*_named(["a4", "a5"], "a"), EMB, replace=False)
        gone = _rowid(store, "a", "a2")
        store.delete("a", ["a2"])
        store.commit_batch(*_named(["b2"], "b"), EMB, replace=False)  # another namespace: not a change of "a"
        later = store.changes("a", first.seq)
        assert not later.complete and later.seq > first.seq
        assert later.added == [_rowid(store, "a", "a4"), _rowid(store, "a", "a5")] and later.removed == [gone]
        old = _rowid(store, "a", "a1")
        items, arts = _named(["a1"], "a")
        items = [dataclasses.replace(it, episode=dataclasses.replace(it.episode, keywords="new kw")) for it in items]
        store.commit_batch(items, arts, EMB, replace=True)  # a replaced episode is a deletion and an addition
        last = store.changes("a", later.seq)
        assert (last.added, last.removed) == ([_rowid(store, "a", "a1")], [old])
        assert store.changes("a", last.seq).added == [] and store.changes("a", last.seq).removed == []
        assert store.changes("nobody", None).added == store.changes("nobody", 0).added == []
    finally:
        store.close()


def test_a_pruned_deletion_log_answers_the_whole_namespace(store_at) -> None:
    from rememory.store import open_store

    store = open_store(store_at())
    try:
        store.commit_batch(*_named(["x", "y", "z"], "a"), EMB, replace=False)
        seen = store.changes("a", None)
        store.deletion_log_s = 0  # every write prunes the log entries written before it
        x = _rowid(store, "a", "x")
        store.delete("a", ["x"])
        assert store.changes("a", seen.seq).removed == [x]
        store.delete("a", ["y"])  # prunes x's entry: an index synced before it can no longer learn of x
        got = store.changes("a", seen.seq)
        assert got.complete and got.added == [_rowid(store, "a", "z")] and got.removed == []
        # an index that synced after the pruned entry still gets the incremental answer
        assert not store.changes("a", got.seq).complete
        # a change number ahead of the store (say, one restored from a backup) is answered in full
        assert store.changes("a", got.seq + 5).complete
    finally:
        store.close()


def _waiting_on_locks(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0])  # fmt: skip


def test_a_change_that_commits_late_is_never_skipped(new_postgres_url) -> None:
    """Two real concurrent transactions on one namespace: the one that took the lower change number
    commits last. A reader that synced in between must still get it afterwards."""
    import threading

    import psycopg

    from rememory.store.postgres import PostgresStore

    url = new_postgres_url()
    store = PostgresStore(url)
    blocker = psycopg.connect(url)  # a transaction left open: it holds the unique key ("x", "late")
    try:
        store.commit_batch(*_named(["seed"], "x"), EMB, replace=False)
        seen = store.changes("x", None)
        blocker.execute(
            "INSERT INTO rememory.episodes(id, namespace, keywords, time, created_at, n_bytes, digest, digest_format,"
            " key, key_scale, embedding, ctx_key, ctx_key_scale, tokens, embedder, engine, cell, weights, spans)"
            " SELECT 'late', namespace, keywords, time, created_at, n_bytes, digest, digest_format, key, key_scale,"
            " embedding, ctx_key, ctx_key_scale, tokens, embedder, engine, cell, weights, spans"
            " FROM rememory.episodes WHERE id = 'seed'"
        )
        errors: list[BaseException] = []

        def add(ids: list[str]) -> None:
            try:
                store.commit_batch(*_named(ids, "x"), EMB, replace=False)
            except BaseException as exc:  # re-raised by the test below
                errors.append(exc)

        late = threading.Thread(target=add, args=(["late"],))  # takes its change number, then waits on the key
        late.start()
        while _waiting_on_locks(url) < 1:
            late.join(0.05)
        early = threading.Thread(target=add, args=(["early"],))  # would take a higher number and commit first
        early.start()
        while early.is_alive() and _waiting_on_locks(url) < 2:
            early.join(0.05)
        between = store.changes("x", seen.seq)  # a replica syncs while "late" is still open
        blocker.rollback()  # now "late" commits, then "early"
        late.join()
        early.join()
        assert not errors, errors
        after = store.changes("x", between.seq)
        synced = (set(seen.added) | set(between.added) | set(after.added)) - set(between.removed) - set(after.removed)
        assert synced == set(store.namespace_rowids("x").tolist()) and len(synced) == 3
    finally:
        blocker.close()
        store.close()


def test_postgres_nearest_keys_come_from_hnsw_within_the_namespace(new_postgres_url) -> None:
    import psycopg

    from rememory.store.postgres import PostgresStore, nearest_sql

    url = new_postgres_url()
    store = PostgresStore(url)
    try:
        store.bind_embedder(*EMB)
        for ns in ("a", "b"):  # the same keys in both: only the asked namespace may answer
            store.commit_batch(*_named([f"e{i}" for i in range(40)], ns), EMB, replace=False)
        q = np.random.default_rng(7).normal(size=EMB[1]).astype(np.float32)
        q /= np.linalg.norm(q)
        rows = store.index_rows(store.namespace_rowids("a").tolist())
        for context in (False, True):
            keys = np.stack([(r.ctx_key if context else r.key).astype(np.float32) * r.key_scale for r in rows])
            exact = [rows[i].rowid for i in np.argsort(-(keys @ q) / np.linalg.norm(keys, axis=1))[:5]]
            assert set(store.nearest("a", q, 5, context=context)) == set(exact)
            with psycopg.connect(url, autocommit=True) as conn:  # the statement can use the HNSW index
                conn.execute("SET search_path TO rememory, public")
                conn.execute("SET enable_seqscan = off; SET enable_sort = off")  # as for a large namespace
                plan = conn.execute(f"EXPLAIN {nearest_sql(context, EMB[1])}", ("a", str(q.tolist()), 5)).fetchall()
            assert f"episodes_{'ctx_' if context else ''}embedding_hnsw" in " ".join(str(t[0]) for t in plan)
    finally:
        store.close()


def test_postgres_store_of_schema_1_gains_changes_and_vector_indexes(new_postgres_url, monkeypatch) -> None:
    import psycopg

    from rememory.store import postgres

    url = new_postgres_url()
    with monkeypatch.context() as m:
        m.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:1])
        postgres.PostgresStore(url).close()
    key = np.arange(-4, 4, dtype=np.int8)
    with psycopg.connect(url, autocommit=True) as conn:  # an episode as the first release stored it
        conn.execute("SET search_path TO rememory, public")
        conn.execute("INSERT INTO meta(key, value) VALUES ('embedder', %s), ('dim', %s)", (EMB[0], str(EMB[1])))
        conn.execute("INSERT INTO embedders(name, dim) VALUES (%s, %s)", EMB)
        conn.execute(
            "INSERT INTO episodes(id, namespace, keywords, created_at, n_bytes, digest, digest_format, key, key_scale,"
            " embedding, ctx_key, ctx_key_scale, tokens, embedder, engine, cell, weights, spans)"
            " VALUES ('old', 'a', 'kw', 0, 1, %s, 2, %s, 0.5, %s::halfvec, %s, 0.25, '', 1, 'mlp-cell', '{}', '', '')",
            (bytes(16), key.tobytes(), str((key * 0.5).tolist()), key[::-1].tobytes()),
        )
    store = postgres.PostgresStore(url)
    try:
        [rowid] = store.namespace_rowids("a").tolist()
        assert store.changes("a", None).added == [rowid] and store.changes("a", 0).added == []
        q = key[::-1].astype(np.float32) / np.linalg.norm(key)
        assert store.nearest("a", q, 3, context=True) == [rowid]  # its context key was copied for pgvector
        with psycopg.connect(url) as conn:
            ctx = conn.execute("SELECT ctx_embedding::text FROM rememory.episodes").fetchone()[0]
            names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'rememory'")}
        assert np.allclose(json.loads(ctx), key[::-1] * 0.25)
        assert {"episodes_embedding_hnsw", "episodes_ctx_embedding_hnsw"} <= names  # the store was already bound
    finally:
        store.close()


def _dated_items() -> tuple[list[NewEpisode], list]:
    """Episodes dated by their time, by a date in their keywords, and not at all."""
    items, arts = _items(["timed", "keyword dated", "undated"])
    eps = [dataclasses.replace(items[0].episode, time="2023-05-03T10:00:00"),
           dataclasses.replace(items[1].episode, keywords="Ira, 1:56 pm on 8 May, 2023"), items[2].episode]  # fmt: skip
    return [dataclasses.replace(it, episode=e) for it, e in zip(items, eps)], arts


# What migration 6 must compute for _dated_items: epoch seconds of each episode's time.
DATED = {"timed": 1683108000.0, "keyword dated": 1683554160.0, "undated": None}


def test_schema_5_store_gets_its_event_times_backfilled(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = Store(path)
    items, arts = _dated_items()
    store.commit_batch(items, arts, EMB, replace=False)  # NewEpisode.event_time unset: the column stays NULL
    store.close()
    with raw_db(path) as db:  # back to schema 5, as a store written before episode times were stored
        db.execute("ALTER TABLE episodes DROP COLUMN event_time")
        db.execute("DROP TABLE models")  # (migration 7)
        db.execute("PRAGMA user_version = 5")
    store = Store(path)
    try:
        rows = store.index_rows(store.namespace_rowids("default").tolist())
        got = {store.rows("default", [r.id])[r.id].keywords: r.event_time for r in rows}
        assert {text: got[it.episode.keywords] for text, it in zip(DATED, items)} == DATED
    finally:
        store.close()


def test_postgres_store_of_schema_5_gets_its_event_times_backfilled(new_postgres_url) -> None:
    import psycopg

    from rememory.store import postgres

    url = new_postgres_url()
    store = postgres.PostgresStore(url)
    items, arts = _dated_items()
    store.commit_batch(items, arts, EMB, replace=False)
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE rememory.episodes DROP COLUMN event_time")
        conn.execute("DROP TABLE rememory.models")  # (migration 7)
        conn.execute("DROP FUNCTION rememory.models_immutable()")
        conn.execute("DROP TABLE rememory.keyring")  # schema 8's: a schema-5 store has none
        conn.execute("UPDATE rememory.meta SET value = '5' WHERE key = 'schema_version'")
    store = postgres.PostgresStore(url)
    try:
        rows = store.index_rows(store.namespace_rowids("default").tolist())
        got = {store.rows("default", [r.id])[r.id].keywords: r.event_time for r in rows}
        assert {text: got[it.episode.keywords] for text, it in zip(DATED, items)} == DATED
    finally:
        store.close()


# --- shared models and artifact swaps (engines with a per-namespace model, e.g. `rememory reencode`) ---


def _traced(store, ids: list[str], ns: str) -> tuple[list[NewEpisode], list]:
    """Episodes encoded by the test engine with ``store``'s models of ``ns`` (no torch needed)."""
    from .enginekit import TableTraceEngine

    eps = [Episode(id=i, keywords=f"kw {i}", text=f"text of {i} ✓", namespace=ns) for i in ids]
    arts = TableTraceEngine(models=store.models(ns)).encode([e.keywords for e in eps], [e.text.encode() for e in eps])
    rng = np.random.default_rng(0)
    items = []
    for e in eps:
        q, s = quantize_int8(rng.normal(size=EMB[1]).astype(np.float32))
        data = e.text.encode()
        items.append(NewEpisode(e, episode_digest(ns, e.id, data), len(data), q, s, np.zeros(0, np.uint32), q, s))
    return items, arts


def _raw_update_models(backend: str, where) -> None:
    """Try to change a stored model behind the store's back."""
    if backend == "sqlite":
        with raw_db(where) as db:
            db.execute("UPDATE models SET data = x'00'")
        return
    import psycopg

    with psycopg.connect(where, autocommit=True) as conn:
        conn.execute("UPDATE rememory.models SET data = '\\x00'::bytea")


def test_models_are_versioned_per_namespace_and_never_change(store_at, backend: str) -> None:
    from rememory.store import open_store
    from rememory.store.sql import SQLModels

    store = open_store(store_at())
    try:
        a, b = store.models("a"), store.models("b")
        assert isinstance(a, SQLModels) and a.latest("e/1") is None and a.latest_version("e/1") is None
        m1 = a.put("e/1", {"h": 2}, b"\x00\x01", trained_on=10)
        m2 = a.put("e/1", {"h": 3}, b"\x02" * 1000, trained_on=20)
        assert (m1.version, m2.version, m2.trained_on, m2.config) == (1, 2, 20, {"h": 3})
        assert b.put("e/1", {}, b"x", 0).version == 1  # versions count per namespace
        assert a.put("other/1", {}, b"", 0).version == 1  # and per engine
        assert a.latest("e/1") == m2 and a.latest_version("e/1") == 2 and a.get("e/1", 1) == m1
        with pytest.raises(IntegrityError, match="no version 3"):
            a.get("e/1", 3)
        listed = store.list_models("a")
        assert [(s.model.engine, s.model.version) for s in listed] == [("e/1", 1), ("e/1", 2), ("other/1", 1)]
        assert all(s.namespace == "a" and s.created_at > 0 for s in listed) and len(store.list_models()) == 4
        # An archive's model keeps its version: the same one again is a no-op, another one is refused.
        assert not store.import_model("a", m1)
        with pytest.raises(DuplicateIdError, match="version 1"):
            store.import_model("a", dataclasses.replace(m1, data=b"other weights"))
        assert store.import_model("c", m1, created_at=123) and store.models("c").get("e/1", 1) == m1
        assert [s.created_at for s in store.list_models("c")] == [123]
        # Shared models count in the memory bytes: data and config, per namespace and for the store.
        assert store.size_report("a").memory_bytes == 2 + 1000 + 0 + len('{"h":2}') + len('{"h":3}') + len("{}")
        assert store.size_report().memory_bytes == store.size_report("a").memory_bytes + (1 + 2) + (2 + 7)
        # A version is immutable in the database itself, not only through the store's methods.
        with pytest.raises(Exception, match="immutable"):
            _raw_update_models(backend, store_at())
    finally:
        store.close()
    store = open_store(store_at())
    try:
        assert store.models("a").latest("e/1") == m2 and store.models("a").get("e/1", 1) == m1
    finally:
        store.close()


def test_an_artifact_is_swapped_in_place_only_for_the_same_text(store_at, backend: str) -> None:
    from rememory.store import open_store
    from rememory.store.records import ArtifactSwap

    from .enginekit import NAME, TableTraceEngine

    store = open_store(store_at())
    try:
        ids = ["a1", "a2", "a3"]
        items, arts = _traced(store, ids, "a")
        store.commit_batch(items, arts, EMB, replace=False)
        rows = store.rows("a", ids)
        seq = store.changes("a", None).seq
        eng = TableTraceEngine(models=store.models("a"))
        assert eng.fit([b"zzzz"]) is not None  # version 2
        texts = [it.episode.text.encode() for it in items]
        new = eng.encode([it.episode.keywords for it in items], texts)
        swaps = [ArtifactSwap(rows[i].rowid, i, "a", rows[i].digest, art) for i, art in zip(ids, new)]
        swaps[2] = dataclasses.replace(swaps[2], digest=b"\x00" * 16)  # replaced meanwhile: left alone
        assert store.replace_artifacts(swaps) == ["a1", "a2"] and store.replace_artifacts([]) == []
        after = store.rows("a", ids)
        assert {i: after[i].rowid for i in ids} == {i: rows[i].rowid for i in ids} and after["a1"].engine == NAME
        assert store.changes("a", seq).added == []  # recall indexes have nothing to redo
        loaded = store.load_artifacts([after[i] for i in ids])
        got = [loaded[after[i].rowid] for i in ids]
        assert [eng.model_version(a) for a in got] == [2, 2, 1]  # type: ignore[arg-type]
        fresh = TableTraceEngine(models=store.models("a"))
        assert [fresh.decode(a, it.episode.keywords, n_bytes=len(t)) for a, it, t in zip(got, items, texts)] == texts
        assert store.replace_artifacts([dataclasses.replace(swaps[2], digest=rows["a3"].digest)]) == ["a3"]
        if backend == "sqlite":  # the old shard, now unused, is gone; only the swaps' shards remain
            with raw_db(store_at()) as db:
                files = {f for (f,) in db.execute("SELECT file FROM shards")}
                used_sql = "SELECT DISTINCT s.file FROM episodes e JOIN shards s ON s.id = e.shard"
                used = {f for (f,) in db.execute(used_sql)}
            assert files == used and {p.name for p in (store_at() / "shards").iterdir()} == files
    finally:
        store.close()


def test_a_shard_left_without_rows_by_a_crash_is_removed_at_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    items, arts = _traced(store, ["x1"], "x")
    store.commit_batch(items, arts, EMB, replace=False)
    store.close()
    with raw_db(tmp_path / "s") as db:  # as if a crash came between a swap's commit and its old shard's removal
        (file,) = db.execute("SELECT file FROM shards").fetchone()
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("DELETE FROM episodes")
    assert (tmp_path / "s" / "shards" / file).exists()
    Store(tmp_path / "s").close()
    assert not (tmp_path / "s" / "shards" / file).exists()
