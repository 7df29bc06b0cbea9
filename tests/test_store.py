"""The store on its own: real SQLite, real safetensors shards, no embedder."""

import dataclasses
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from rememory.cells.codec import digest
from rememory.cells.engine import MlpCellEngine
from rememory.errors import DuplicateIdError, EmbedderMismatchError, StoreBusyError, StoreError
from rememory.records import Episode
from rememory.store import shards
from rememory.store.migrations import MIGRATIONS
from rememory.store.sqlite import DB_NAME, NewEpisode, Store, quantize_key

EMB = ("test-embedder", 8)


def _items(texts: list[str], ns: str = "default") -> tuple[list[NewEpisode], list]:
    engine = MlpCellEngine()
    eps = [Episode(id=f"id{i}-{t[:4]}", keywords=f"kw {i}", text=t, namespace=ns) for i, t in enumerate(texts)]
    arts = engine.encode([e.keywords for e in eps], [e.text.encode() for e in eps])
    rng = np.random.default_rng(0)
    items = []
    for e in eps:
        q, s = quantize_key(rng.normal(size=EMB[1]).astype(np.float32))
        items.append(NewEpisode(e, digest(e.text.encode()), len(e.text.encode()), q, s, np.zeros(0, np.uint32), q, s))
    return items, arts


def test_round_trip(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    items, arts = _items(["first memory", "вторая память"])
    assert store.commit_batch(items, arts, EMB, replace=False) == [it.episode.id for it in items]
    rows = store.rows([it.episode.id for it in items])
    loaded = store.load_artifacts(list(rows.values()))
    engine = MlpCellEngine()
    for it in items:
        art = loaded[it.episode.id]
        assert engine.decode(art, it.episode.keywords) == it.episode.text.encode()
        assert rows[it.episode.id].digest == it.digest
    store.close()
    # and again after reopening
    store = Store(tmp_path / "s")
    assert store.count() == 2
    _, keys = store.keys("default")
    assert keys.shape == (2, EMB[1])
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
    row = store.rows([gone])[gone]
    path = tmp_path / "s" / "shards" / row.shard_file
    off, length = row.spans["int8"]
    from safetensors.numpy import load_file

    assert np.any(load_file(path)["int8"][off : off + length] != 0)
    assert store.delete([gone, "no-such-id"]) == [gone]
    assert not np.any(load_file(path)["int8"][off : off + length])  # zeroed on disk
    kept = items[0].episode.id
    art = store.load_artifacts([store.rows([kept])[kept]])[kept]
    assert MlpCellEngine().decode(art, items[0].episode.keywords) == b"keep this one"
    store.delete([kept])
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
