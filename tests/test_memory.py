"""The Memory facade end to end: real model, real SQLite, real shards."""

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from rememory import (
    ConfigError,
    DuplicateIdError,
    EmbedderMismatchError,
    IntegrityError,
    Memory,
    NotFoundError,
)
from rememory.embed import Embedder

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


def test_corruption_is_detected_and_other_cells_stay_readable(make_memory, tmp_path: Path) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:2])
    mem.add_many(EPISODES[2:])  # a second batch: a second shard
    shard_dir = tmp_path / "store" / "shards"
    row = mem._store.rows(["bridge"])["bridge"]
    victim = shard_dir / row.shard_file
    data = bytearray(victim.read_bytes())
    off, length = row.spans["int8"]
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    start = 8 + header_len + header["int8"]["data_offsets"][0] + off  # the "bridge" cell's own int8 span
    for i in range(start, start + length):
        data[i] ^= 0x5A
    victim.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="'bridge'"):
        mem.get("bridge")
    with pytest.raises(IntegrityError, match="'bridge'"):
        mem.recall("walking on a bridge with Ilya", top_k=1)
    assert mem.get("dacha").text == EPISODES[2]["text"]  # another shard: untouched
    report = mem.verify()
    assert not report.ok and "bridge" in report.failed and "dacha" not in report.failed
    assert report.checked == 4


def test_unreadable_weight_file(make_memory, tmp_path: Path) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:1])
    mem.add_many(EPISODES[1:2])
    row = mem._store.rows(["bridge"])["bridge"]
    (tmp_path / "store" / "shards" / row.shard_file).write_bytes(b"garbage, not safetensors")
    with pytest.raises(IntegrityError, match="unreadable"):
        mem.get("bridge")
    assert mem.get("van").text == EPISODES[1]["text"]
    assert set(mem.verify().failed) == {"bridge"}


def test_embedder_mismatch_is_refused(make_memory, tmp_path: Path) -> None:
    mem = make_memory()
    mem.add_many(EPISODES[:1])
    mem.close()

    class Other(Embedder):
        id = "other-model"
        dim = 384

        def embed_batch(self, texts):
            raise AssertionError("must not be used")

    with pytest.raises(EmbedderMismatchError, match="all-MiniLM-L6-v2"):
        Memory(tmp_path / "store", embedder=Other())
    # reopening without naming an embedder uses the store's own
    again = Memory(tmp_path / "store")
    assert again.embedder.id == "sentence-transformers/all-MiniLM-L6-v2"
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


def test_two_processes_add_at_once(tmp_path: Path, make_memory) -> None:
    make_memory().add("seed", "binds the embedder first", id="seed")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_add_in_process, args=(str(tmp_path / "store"), p, q)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    results = [q.get(timeout=5) for _ in procs]
    assert results == ["ok", "ok"] or any("busy" in r for r in results), results
    with Memory(tmp_path / "store") as mem:
        assert mem.verify().ok
        assert len(mem) == 1 + 5 * results.count("ok")


def test_stats_counts_bytes(make_memory) -> None:
    mem = make_memory()
    mem.add_many(EPISODES)
    st = mem.stats()
    text_bytes = sum(len(e["text"].encode()) for e in EPISODES)
    assert st.episodes == 4 and st.text_bytes == text_bytes
    assert 0 < st.cell_bytes < st.store_bytes
    assert st.embedder == "sentence-transformers/all-MiniLM-L6-v2" and st.dim == 384
    d = st.to_dict()
    assert json.loads(json.dumps(d))["cell_bytes_per_text_byte"] == pytest.approx(st.cell_bytes / text_bytes)


def test_weights_never_hold_the_text(make_memory, tmp_path: Path) -> None:
    mem = make_memory()
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
