"""The PostgreSQL store on its own terms: a real server (embedded PostgreSQL 18 with pgvector), no mocks.

Behaviour shared with SQLite is tested against both backends through the ``backend`` fixture
(tests/test_memory.py, tests/test_store_backends.py); this file covers what only a shared
database has: replicas, advisory-locked migrations, and its connection errors.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest

from rememory import Memory
from rememory.embed import Embedder
from rememory.errors import StoreError
from rememory.server.auth import KeyStore
from rememory.store.postgres import MIGRATIONS, PostgresStore, redact

pytestmark = pytest.mark.model

EPISODES = [
    {"id": "bridge", "keywords": "Ilya, bridge, night", "text": "We walked with Ilya across the bridge at night."},
    {"id": "van", "keywords": "Sergey, van", "text": "Sergey brought an old van with a stuck window."},
]


def test_replicas_read_their_writes_and_forget_globally(new_postgres_url, embedder) -> None:
    url = new_postgres_url()
    a, b = Memory(url, embedder=embedder), Memory(url, embedder=embedder)
    try:
        assert b.recall("bridge", top_k=1) == []  # b's index is live before a writes
        a.add_many(EPISODES)
        hit = b.recall("walking over a bridge with Ilya", top_k=1)[0]
        assert (hit.id, hit.text) == ("bridge", EPISODES[0]["text"])
        b.forget("bridge")
        assert "bridge" not in [h.id for h in a.recall("walking over a bridge with Ilya", top_k=2)]
        a.add("tea", "Green tea at noon.", id="tea")  # after a forget, a new row never reuses the old slot
        assert b.recall("green tea", top_k=1)[0].id == "tea"
    finally:
        a.close()
        b.close()


def test_keys_live_in_the_database_and_revocation_is_global(new_postgres_url) -> None:
    url = new_postgres_url()
    one, two = KeyStore.for_store(url), KeyStore.for_store(url)
    try:
        key = one.create("alice")
        assert two.authenticate(key).namespace == "alice"
        two.revoke("alice")
        assert one.authenticate(key) is None
    finally:
        one.close()
        two.close()


def _open(url: str, q) -> None:
    try:
        PostgresStore(url).close()
        q.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        q.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_first_opens_migrate_once(new_postgres_url) -> None:
    url = new_postgres_url()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [q.get(timeout=5) for _ in procs] == ["ok"] * 3
    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT value FROM rememory.meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == str(len(MIGRATIONS))


def test_a_newer_schema_is_refused(new_postgres_url) -> None:
    url = new_postgres_url()
    PostgresStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE rememory.meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 99.*Upgrade rememory"):
        PostgresStore(url)


def test_unreachable_database_and_wrong_credentials_are_clear(new_postgres_url, tmp_path) -> None:
    url = new_postgres_url()
    parts = urlsplit(url)
    nowhere = urlunsplit(parts._replace(query=f"host={tmp_path}/no-server-here"))
    with pytest.raises(StoreError, match=r"Cannot reach PostgreSQL.*server is running"):
        Memory(nowhere)
    stranger = urlunsplit(parts._replace(netloc="nobody:hunter2@"))
    with pytest.raises(StoreError, match="refused the credentials") as exc:
        Memory(stranger)
    assert "hunter2" not in str(exc.value)  # a password never reaches a message
    missing_db = urlunsplit(parts._replace(path="/no_such_database"))
    with pytest.raises(StoreError, match="no such database"):
        Memory(missing_db)
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_read_only_refuses_writes(new_postgres_url, embedder) -> None:
    url = new_postgres_url()
    with Memory(url, embedder=embedder) as mem:
        mem.add_many(EPISODES)
    with Memory(url, embedder=embedder, read_only=True) as ro:
        assert ro.get("van").text == EPISODES[1]["text"] and ro.verify().ok
        with pytest.raises(StoreError, match="read-only"):
            ro.forget("van")
    with pytest.raises(StoreError, match="Open it once for writing"):
        Memory(new_postgres_url(), embedder=embedder, read_only=True)


def test_a_refused_open_leaves_no_connection_behind(new_postgres_url, embedder) -> None:
    from rememory.embed import Embedder
    from rememory.errors import EmbedderMismatchError

    url = new_postgres_url()
    with Memory(url, embedder=embedder) as mem:
        mem.add_many(EPISODES[:1])

    class Other(Embedder):
        id = "other-model"
        dim = 384

        def embed_batch(self, texts):
            raise AssertionError("must not be used")

    with pytest.raises(EmbedderMismatchError) as refused:
        Memory(url, embedder=Other())
    assert refused.traceback  # still held: the half-made Memory is not garbage yet, so only close() can free it
    db = urlsplit(url).path.lstrip("/")
    with psycopg.connect(url) as conn:
        others = conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db,)
        ).fetchone()[0]
    assert others == 0


STORY = [
    ("Ilya, bridge", "We walked with Ilya across the bridge at night."),
    ("Sergey, van", "Sergey brought an old van with a stuck window."),
    ("tea, noon", "Green tea at noon in the garden, with Masha."),
    ("rain, station", "It rained at the station and the train was late."),
    ("Lena, violin", "Lena played the violin at the concert on Friday."),
    ("soup, kitchen", "We cooked a beet soup in the small kitchen."),
    ("map, forest", "The old map led us through the pine forest."),
    ("cat, roof", "The cat sat on the roof all morning."),
]
QUERIES = ["a walk over the bridge", "music concert", "cooking dinner", "waiting for a train", "a lost pet"]


def test_large_namespaces_take_dense_candidates_from_pgvector(new_postgres_url, embedder) -> None:
    from rememory.index.config import RankingConfig

    url = new_postgres_url()
    # dense_contrast needs every key in memory, so the large-namespace path leaves it out: off in both here.
    exact = Memory(url, embedder=embedder, ranking=RankingConfig(dense_contrast=0.0))  # every key compared in memory
    server = Memory(url, embedder=embedder, ranking=RankingConfig(ann_threshold=1, dense_contrast=0.0))  # pgvector
    try:
        exact.add_many([{"id": f"s{i}", "keywords": k, "text": t} for i, (k, t) in enumerate(STORY)])
        for q in QUERIES:
            want = exact.recall(q, top_k=4)
            got = server.recall(q, top_k=4)
            assert [h.id for h in got] == [h.id for h in want]
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)  # float sums differ
        dense = server._indexes["default"].own
        assert dense.ann and dense.remote is not None and dense._hnsw is None  # no graph was built in memory
        exact.forget("s0")
        assert "s0" not in [h.id for h in server.recall("a walk over the bridge", top_k=8)]
        exact.add("Ilya, river", "Ilya swam across the river at dawn.", id="swim")
        assert server.recall("swimming in a river at dawn", top_k=1)[0].id == "swim"
    finally:
        exact.close()
        server.close()


@pytest.mark.parametrize("narrow", [False, True])
def test_large_namespaces_hold_no_keys_and_recall_exactly_as_with_keys_held(new_postgres_url, embedder,
                                                                            narrow: bool) -> None:  # fmt: skip
    from rememory.index.config import RankingConfig

    url = new_postgres_url()
    # Past the threshold from 2 episodes. Narrow: few candidates, cut to 4 before the neighbour signals, whose
    # windows (2 on each side) then cover only some slots: each query reads a part of the keys, in two steps.
    extra = {"candidates": 3, "rerank": 4, "dense_far": 0.0} if narrow else {}
    large = RankingConfig(ann_threshold=1, dense_contrast=0.0, **extra)
    fetched = Memory(url, embedder=embedder, ranking=large)  # keys read from the database per query
    held = Memory(url, embedder=embedder, ranking=large)
    held._store.server_keys = False  # the same pgvector candidates, every key held in memory (as before)
    try:
        fetched.add_many([{"id": f"s{i}", "keywords": k, "text": t} for i, (k, t) in enumerate(STORY)])

        def same(top_k: int) -> None:
            for q in [*QUERIES, "Lena and the violin"]:
                want = held.recall(q, top_k=top_k, explain=True)
                got = fetched.recall(q, top_k=top_k, explain=True)
                assert [(h.id, h.text, h.score, h.explain) for h in got] == [
                    (h.id, h.text, h.score, h.explain) for h in want]  # fmt: skip
            a, b = fetched._indexes["default"], held._indexes["default"]
            assert a.coherence == pytest.approx(b.coherence)

        same(4)
        idx = fetched._indexes["default"]
        assert idx.own.ann and idx.key_bytes() == 0  # no key vector of any episode in this process
        assert held._indexes["default"].key_bytes() >= len(STORY) * 2 * embedder.dim
        held.forget("s3")  # a forget on another replica: the coherence starts over from the database's keys
        fetched.add("Ilya, river", "Ilya swam across the river at dawn.", id="swim")
        same(len(STORY))
        assert "s3" not in [h.id for h in fetched.recall("waiting for a train", top_k=len(STORY))]
        assert fetched.recall("swimming in a river at dawn", top_k=1)[0].id == "swim"
        assert idx.key_bytes() == 0
        # A fresh replica starts from the snapshot in the database, which holds no keys either.
        fetched._save_snapshot(idx, "default")
        fresh = Memory(url, embedder=embedder, ranking=large, read_only=True)
        try:
            loaded = fresh._index("default")

            def no_key_read(slots: np.ndarray) -> np.ndarray:
                raise AssertionError("the key statistics come with the snapshot: no key is read for them")

            loaded.own.stats_units = loaded.ctx.stats_units = no_key_read
            want = [[(h.id, h.score) for h in held.recall(q, top_k=3)] for q in QUERIES]
            assert [[(h.id, h.score) for h in fresh.recall(q, top_k=3)] for q in QUERIES] == want
            assert fresh._indexes["default"].snapshot_size > 0 and fresh._indexes["default"].key_bytes() == 0
        finally:
            fresh.close()
        # A replica that holds keys at this size (a higher threshold) reads them into the snapshot's index.
        kept = RankingConfig(dense_contrast=0.0, **extra)
        small = Memory(url, embedder=embedder, ranking=kept, read_only=True)
        rows = Memory(url, embedder=embedder, ranking=kept, read_only=True)
        rows._store_snapshots = False  # builds its index from the rows
        try:
            for q in QUERIES:
                got, want = small.recall(q, top_k=3), rows.recall(q, top_k=3)
                assert [h.id for h in got] == [h.id for h in want]
                assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)  # (a tombstone more)
            idx = small._indexes["default"]
            assert idx.snapshot_size > 0 and not idx.own.ann and idx.key_bytes() > 0
            assert rows._indexes["default"].snapshot_size == 0
        finally:
            small.close()
            rows.close()
    finally:
        fetched.close()
        held.close()


def test_recall_runs_the_pgvector_searches_on_threads_of_its_own_and_close_joins_them(new_postgres_url,
                                                                                      embedder) -> None:  # fmt: skip
    from rememory.index.config import RankingConfig

    mem = Memory(new_postgres_url(), embedder=embedder, ranking=RankingConfig(ann_threshold=1))
    try:
        mem.add_many([{"id": f"s{i}", "keywords": k, "text": t} for i, (k, t) in enumerate(STORY)])
        searched_on: list[str] = []
        # A large namespace's searches read the found rows' keys too (nearest_keys); held keys: nearest.
        def recorded(search):
            def run(*args, **kwargs):
                searched_on.append(threading.current_thread().name)
                return search(*args, **kwargs)

            return run

        for name in ("nearest", "nearest_keys"):
            setattr(mem._store, name, recorded(getattr(mem._store, name)))  # the real search, its thread noted
        assert mem.recall("cooking dinner", top_k=1)
        # Both searches (own and context keys) ran while this thread computed BM25 and the query's time.
        assert len(searched_on) == 2 and all(name.startswith("rememory-search") for name in searched_on)
    finally:
        mem.close()
    # The CLI exits at once only when no other thread is left: closing joins them.
    assert not [t for t in threading.enumerate() if t.name.startswith("rememory-search")]


def _snapshot(url: str) -> tuple[int, bytes] | None:
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT seq, data FROM rememory.index_snapshots WHERE namespace = 'default'").fetchone()
        return (int(got[0]), bytes(got[1])) if got else None


def test_a_fresh_replica_starts_from_the_snapshot_in_the_database(new_postgres_url, embedder) -> None:
    from rememory.index.config import RankingConfig

    url = new_postgres_url()
    small = RankingConfig(ann_threshold=3)  # namespaces from 3 episodes keep a snapshot
    a = Memory(url, embedder=embedder, ranking=small)
    try:
        episodes = [{"id": f"s{i}", "keywords": k, "text": t} for i, (k, t) in enumerate(STORY)]
        episodes[1]["id"] = "forgotten-episode-x7"
        a.add_many(episodes)
        a.recall("cooking dinner")  # syncs, and keeps a snapshot in the database
        seq, data = _snapshot(url)
        assert b"forgotten-episode-x7" in data
        a.forget("forgotten-episode-x7")
        assert _snapshot(url) is None  # dropped with the episode, in the same transaction
        a.recall("cooking dinner")
        seq2, data2 = _snapshot(url)
        assert seq2 > seq and b"forgotten-episode-x7" not in data2  # rewritten without it
        a.add("Ilya, river", "Ilya swam across the river at dawn.", id="swim")  # newer than the snapshot
        b = Memory(url, embedder=embedder, ranking=small, read_only=True)
        try:
            assert b.recall("swimming in a river at dawn", top_k=1)[0].id == "swim"  # caught up from the change log
            assert b._indexes["default"].snapshot_size == len(STORY)  # it started from the snapshot, not the rows
            got = [[(h.id, round(h.score, 6)) for h in b.recall(q, top_k=3)] for q in QUERIES]
            assert got == [[(h.id, round(h.score, 6)) for h in a.recall(q, top_k=3)] for q in QUERIES]
        finally:
            b.close()
    finally:
        a.close()


def test_a_snapshot_older_than_a_deletion_is_refused(new_postgres_url) -> None:
    store = PostgresStore(new_postgres_url())
    try:
        store.delete("default", ["nothing"])  # the namespace exists, nothing deleted
        seq = store.changes("default", None).seq
        assert store.save_index_snapshot("default", seq, b"snapshot as of seq")
        assert store.load_index_snapshot("default").data == b"snapshot as of seq"
        with psycopg.connect(store.url, autocommit=True) as conn:  # a deletion committed after `seq`
            conn.execute("INSERT INTO rememory.deletions(namespace, episode, seq, at) VALUES ('default', 1, %s, 0)",
                         (seq + 1,))  # fmt: skip
        assert not store.save_index_snapshot("default", seq, b"stale")
        assert store.load_index_snapshot("default").data == b"snapshot as of seq"
    finally:
        store.close()


def test_writing_a_snapshot_leaves_the_namespace_to_its_writers_and_a_deletion_meanwhile_drops_it(
    new_postgres_url,
) -> None:
    import threading

    store = PostgresStore(new_postgres_url())
    saved: list[bool] = []
    try:
        store.delete("default", ["nothing"])  # the namespace exists, nothing deleted
        seq = store.changes("default", None).seq
        with psycopg.connect(store.url, autocommit=True) as gate:
            # Hold the blob's write in the middle: a trigger waits on an advisory lock this test holds.
            gate.execute("SELECT pg_advisory_lock(4242)")
            gate.execute("CREATE FUNCTION rememory.hold() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$")  # fmt: skip
            gate.execute("CREATE TRIGGER hold BEFORE INSERT OR UPDATE ON rememory.index_snapshots"
                         " FOR EACH ROW EXECUTE FUNCTION rememory.hold()")  # fmt: skip
            saver = threading.Thread(target=lambda: saved.append(store.save_index_snapshot("default", seq, b"blob")))
            saver.start()
            while not gate.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                   ).fetchone()[0]:  # fmt: skip
                saver.join(0.05)
            try:
                # A forget of the namespace commits while the blob is being written: it takes the
                # namespace's row lock, which the save must not be holding.
                with psycopg.connect(store.url) as writer, writer.transaction():
                    writer.execute("SET LOCAL lock_timeout = '20s'")
                    new_seq = writer.execute("UPDATE rememory.namespaces SET seq = seq + 1"
                                             " WHERE namespace = 'default' RETURNING seq").fetchone()[0]  # fmt: skip
                    writer.execute("INSERT INTO rememory.deletions(namespace, episode, seq, at)"
                                   " VALUES ('default', 1, %s, 0)", (new_seq,))  # fmt: skip
            finally:
                gate.execute("SELECT pg_advisory_unlock(4242)")
                saver.join()
        assert saved == [False]  # the save saw the deletion once its blob was written...
        assert store.load_index_snapshot("default") is None  # ...and dropped the blob that predates it
    finally:
        store.close()


class _Letters(Embedder):
    """A small real embedder of another dimension: letter counts, for a reembed that changes the dimension."""

    id = "test/letter-counts"
    dim = 26

    def embed_batch(self, texts):
        out = np.zeros((len(texts), 26), dtype=np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def test_reembed_to_another_dimension_rebuilds_the_vector_indexes_and_drops_snapshots(new_postgres_url, embedder):
    from rememory.index.config import RankingConfig

    url = new_postgres_url()
    small = RankingConfig(ann_threshold=1)  # pgvector's HNSW answers, and a snapshot is kept, from 2 rows
    mem = Memory(url, embedder=embedder, ranking=small)
    mem.add_many([{"id": f"s{i}", "keywords": k, "text": t} for i, (k, t) in enumerate(STORY)])
    mem.recall("a walk over the bridge", top_k=2)
    assert _snapshot(url) is not None
    mem.reembed(_Letters())
    mem.close()
    assert _snapshot(url) is None  # made from the old keys
    with psycopg.connect(url) as conn:
        defs = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname LIKE '%hnsw'")]
    assert len(defs) == 2 and all("halfvec(26)" in d for d in defs)
    with psycopg.connect(url) as conn:  # and recall's statement is one they answer
        from rememory.store.postgres import nearest_sql

        conn.execute("SET search_path = rememory, public")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        plan = conn.execute("EXPLAIN " + nearest_sql(False, 26), ("default", "[" + ",".join(["0.2"] * 26) + "]", 3))
        assert "episodes_embedding_hnsw" in "\n".join(r[0] for r in plan)
    again = Memory(url, embedder=_Letters(), ranking=small)  # HNSW over the 26-d keys
    try:
        exact = Memory(url, embedder=_Letters())
        want = [h.id for h in exact.recall(STORY[2][1], top_k=3)]
        exact.close()
        assert [h.id for h in again.recall(STORY[2][1], top_k=3)] == want and want[0] == "s2"
    finally:
        again.close()


def test_two_writers_of_a_model_get_consecutive_versions(new_postgres_url) -> None:
    """Two replicas fitting a namespace's model at once: the one that loses the race takes the next version."""
    import threading

    store = PostgresStore(new_postgres_url())
    got: list[object] = []
    try:
        models = store.models("default")
        with psycopg.connect(store.url) as rival, rival.transaction():
            # A rival's version 1, not yet committed: the put below reads version 0 as the latest too
            # and blocks on the rival's row until it commits.
            rival.execute("INSERT INTO rememory.models(namespace, engine, version, config, data, trained_on,"
                          " created_at) VALUES ('default', 'e/1', 1, '{}', '\\x01', 1, 0)")  # fmt: skip

            def put() -> None:
                try:
                    got.append(models.put("e/1", {"n": 2}, b"\x02", 2))
                except Exception as exc:  # the assertion below names it
                    got.append(exc)

            writer = threading.Thread(target=put)
            writer.start()
            while not rival.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                writer.join(0.05)
        writer.join()
        assert [getattr(m, "version", m) for m in got] == [2]
        assert [m.model.version for m in store.list_models("default")] == [1, 2]
        assert models.get("e/1", 2).data == b"\x02"
    finally:
        store.close()
