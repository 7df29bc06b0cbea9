"""Export and import: portable archives and JSONL, on real SQLite stores with the real embedder."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rememory import archive
from rememory.errors import ArchiveError, DuplicateIdError, EmbedderMismatchError, IntegrityError, InvalidEpisodeError
from rememory.integrity import DIGEST_SIZE
from rememory.jsonl import is_jsonl, load_jsonl_file
from rememory.store.sqlite import DB_NAME

from .conftest import REPO

pytestmark = pytest.mark.model

BIN = Path(sys.executable).parent / "rememory"

EPISODES = [
    {"id": "bridge", "keywords": "Ilya, bridge, night", "time": "2024-09-14T21:40:00",
     "text": "We walked with Ilya across the bridge when the city lights turned on."},
    {"id": "van", "keywords": "Sergey, van, repair", "text": "Sergey brought an old van with a stuck window."},
    {"id": "dacha", "keywords": "бабушка, дача, яблоки", "text": "Бабушка собирала яблоки на даче в августе."},
    {"id": "party", "keywords": "Dima, party", "text": "Surprise party for Dima 🎉 with a cake shaped like a cat."},
    {"id": "sep", "keywords": "odd, separators", "text": "Line one\u2028line two\nline three\r\nand a tab\tend."},
    {"id": "tea", "keywords": "tea, noon", "text": "Green tea at noon on the balcony, watching the rain."},
    {"id": "x", "keywords": "x", "text": "x"},
]
WORK = [
    {"id": "deploy", "keywords": "deploy, friday", "text": "Never deploy on a Friday evening, said the lead."},
    {"id": "bridge", "keywords": "bridge, design", "text": "The bridge design review moved to Tuesday."},
]
QUERIES = [("walking on a bridge with Ilya", "default"), ("яблоки у бабушки", "default"),
           ("a party with a cake", "default"), ("when is the design review", "work")]  # fmt: skip
OLD = "tea"  # an episode from before digest format 2: its text-only digest must survive a round trip


_COLS = ("SELECT namespace, id, keywords, time, n_bytes, digest, digest_format, key, key_scale, ctx_key,"
         " ctx_key_scale, tokens, engine, cell, event_time FROM {}episodes ORDER BY rowid")


def _db_rows(store: Path | str) -> dict[tuple[str, str], tuple]:
    """Everything recall and verification use, straight from the database (not through the code under test)."""
    if isinstance(store, str):  # PostgreSQL
        import psycopg

        with psycopg.connect(store) as conn:
            got = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                   for r in conn.execute(_COLS.format("rememory.")).fetchall()]  # fmt: skip
        return {(r[0], r[1]): r for r in got}
    with sqlite3.connect(store / DB_NAME) as db:
        got = db.execute(_COLS.format("")).fetchall()
    return {(r[0], r[1]): r for r in got}


def _files(store: Path | str) -> dict[str, bytes]:
    """The store's files and their bytes (the log and shared-memory files change with every read); for
    PostgreSQL, every stored row."""
    if isinstance(store, str):
        return {repr(k): repr(v).encode() for k, v in _db_rows(store).items()}
    with sqlite3.connect(store / DB_NAME) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, embedder):
    """Store A: two namespaces, non-ASCII and odd separators, one format-1 digest. Trained once."""
    from rememory import Memory

    root = tmp_path_factory.mktemp("archive")
    mem = Memory(root / "a", embedder=embedder)
    mem.add_many(EPISODES)
    mem.add_many(WORK, namespace="work")
    text = next(e["text"] for e in EPISODES if e["id"] == OLD).encode()
    with sqlite3.connect(root / "a" / DB_NAME) as db:  # what a store written before format 2 holds
        db.execute("UPDATE episodes SET digest = ?, digest_format = 1 WHERE id = ?",
                   (hashlib.blake2b(text, digest_size=DIGEST_SIZE).digest(), OLD))  # fmt: skip
    assert mem.verify().ok
    yield mem, root
    mem.close()


@pytest.fixture(scope="module")
def small_batches_archive(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive of A in batches of two episodes, so that damage can sit in a late batch."""
    mem, _ = source
    path = tmp_path_factory.mktemp("small") / "a.zip"
    saved = archive.BATCH
    archive.BATCH = 2
    try:
        mem.export(path)
    finally:
        archive.BATCH = saved
    with zipfile.ZipFile(path) as zf:
        assert len([n for n in zf.namelist() if n.startswith("arrays/")]) == 5
    return path


def test_round_trip_is_byte_exact_with_the_same_recall_and_digests(
    source, make_memory, make_sqlite_memory, tmp_path: Path
) -> None:
    a, root = source
    rep = a.export(tmp_path / "a.zip")
    assert (rep.episodes, rep.namespaces) == (9, {"default": 7, "work": 2})
    b = make_memory("b")
    got = b.import_archive(tmp_path / "a.zip")
    assert (got.episodes, got.imported, got.skipped) == (9, 9, 0)
    for ns in ("default", "work"):
        assert [(e.id, e.keywords, e.text, e.time) for e in b.list(ns)] == \
               [(e.id, e.keywords, e.text, e.time) for e in a.list(ns)]  # fmt: skip
    want = {k: r[2:] for k, r in _db_rows(root / "a").items()}
    assert {k: r[2:] for k, r in _db_rows(b.path).items()} == want  # digests, formats, keys, tokens, weights config
    assert want[("default", OLD)][4] == 1 and want[("default", "van")][4] == 2
    for query, ns in QUERIES:
        want_hits = [(h.id, h.score, h.text) for h in a.recall(query, top_k=5, namespace=ns)]
        assert [(h.id, h.score, h.text) for h in b.recall(query, top_k=5, namespace=ns)] == want_hits
    assert b.verify().ok and b.stats().embedder == a.stats().embedder
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:  # no decoded text anywhere in the archive
        blob = b"".join(zf.read(n) for n in zf.namelist())
    for ep in [e for e in EPISODES + WORK if len(e["text"]) > 8]:
        assert ep["text"].encode() not in blob and json.dumps(ep["text"]).encode() not in blob
    # And back: B (SQLite, or PostgreSQL) -> archive -> a new SQLite store, byte-exact.
    b.export(tmp_path / "b.zip")
    c = make_sqlite_memory("c")
    assert c.import_archive(tmp_path / "b.zip").imported == 9
    assert {k: r[2:] for k, r in _db_rows(c.path).items()} == want
    for query, ns in QUERIES:
        assert [(h.id, h.score, h.text) for h in c.recall(query, top_k=5, namespace=ns)] == \
               [(h.id, h.score, h.text) for h in a.recall(query, top_k=5, namespace=ns)]  # fmt: skip


def test_import_twice_changes_nothing(source, make_memory, small_batches_archive: Path) -> None:
    b = make_memory("b")
    assert b.import_archive(small_batches_archive).imported == 9
    before = _files(b.path)
    again = b.import_archive(small_batches_archive)
    assert (again.imported, again.skipped) == (0, 9)
    assert _files(b.path) == before and len(b) == 9


def test_namespace_export_holds_only_that_namespace(source, make_memory, tmp_path: Path) -> None:
    a, _ = source
    assert a.export(tmp_path / "w.zip", namespace="work").namespaces == {"work": 2}
    assert archive.read_manifest(tmp_path / "w.zip").namespace == "work"
    b = make_memory("b")
    assert b.import_archive(tmp_path / "w.zip").imported == 2
    assert b.count("default") == 0 and [e.text for e in b.list("work")] == [e["text"] for e in WORK]


def _rewrite(src: Path, dst: Path, *, edit_member=None, edit_manifest=None, rehash: bool = True) -> None:
    """Copy an archive, changing a member's bytes or the manifest (and, with ``rehash``, the manifest's hashes)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(archive.MANIFEST))
    if edit_member is not None:
        name, change = edit_member
        members[name] = change(members[name])
        if rehash:
            manifest["files"][name]["sha256"] = hashlib.sha256(members[name]).hexdigest()
    if edit_manifest is not None:
        edit_manifest(manifest)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(archive.MANIFEST, json.dumps(manifest))


def _flip_weight(data: bytes) -> bytes:
    """Flip one byte inside the last episode's int8 weights (past the safetensors header)."""
    header = 8 + int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:header])
    _, end = meta["stream.int8"]["data_offsets"]
    pos = header + end - 3
    return data[:pos] + bytes([data[pos] ^ 0x5A]) + data[pos + 1 :]


def _damage(case: str, good: Path, bad: Path) -> None:
    last = "arrays/000004.safetensors"  # the last batch: earlier ones would be committed by a one-pass import
    if case == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    elif case == "flipped byte in the file":
        raw = bytearray(good.read_bytes())
        with zipfile.ZipFile(good) as zf:
            info = zf.getinfo(last)
        pos = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
        raw[pos] ^= 0xFF
        bad.write_bytes(bytes(raw))
    elif case == "flipped weight, manifest rehashed":  # only decoding against the digest can catch this
        _rewrite(good, bad, edit_member=(last, _flip_weight))
    elif case == "flipped weight, manifest not rehashed":
        _rewrite(good, bad, edit_member=(last, _flip_weight), rehash=False)
    elif case == "wrong digest":
        def swap(data: bytes) -> bytes:
            lines = data.decode().splitlines(keepends=True)
            obj = json.loads(lines[-1])
            obj["digest"] = "00" * DIGEST_SIZE
            return b"".join(x.encode() for x in lines[:-1]) + (json.dumps(obj) + "\n").encode()

        _rewrite(good, bad, edit_member=(archive.EPISODES, swap))
    elif case == "newer format version":
        _rewrite(good, bad, edit_manifest=lambda m: m.update(version=archive.VERSION + 1))
    elif case == "deeply nested manifest":
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
            for name in src.namelist():
                if name != archive.MANIFEST:
                    dst.writestr(name, src.read(name))
            dst.writestr(archive.MANIFEST, "[" * 100_000 + "]" * 100_000)
    elif case == "not an archive":
        bad.write_text('[{"keywords": "k", "text": "t"}]')
    elif case == "a member missing":
        _rewrite(good, bad, edit_manifest=lambda m: m["files"].update({"arrays/000005.safetensors": m["files"][last]}))
    else:
        raise AssertionError(case)


DAMAGE = {
    "truncated": "not a complete ZIP file",
    "flipped byte in the file": "arrays/000004.safetensors",
    "flipped weight, manifest rehashed": "digest mismatch",
    "flipped weight, manifest not rehashed": "does not match its SHA-256",
    "wrong digest": "digest mismatch",
    "newer format version": "Upgrade rememory",
    "not an archive": "not a complete ZIP file",
    "deeply nested manifest": "RecursionError",
    "a member missing": "arrays/000005.safetensors",
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_archive_is_a_clear_error_and_stores_nothing(
    case: str, source, make_memory, small_batches_archive: Path, tmp_path: Path
) -> None:
    a, _ = source
    b = make_memory("b")
    a.export(tmp_path / "w.zip", namespace="work")
    b.import_archive(tmp_path / "w.zip")  # B already holds something that must stay as it is
    before = _files(b.path)
    bad = tmp_path / "bad.zip"
    _damage(case, small_batches_archive, bad)
    with pytest.raises(ArchiveError) as err:
        b.import_archive(bad)
    assert DAMAGE[case] in str(err.value) and "Nothing" in str(err.value)
    assert _files(b.path) == before and len(b) == 2


def test_another_embedder_is_refused_and_stores_nothing(source, make_memory, small_batches_archive, tmp_path) -> None:
    other = tmp_path / "other.zip"
    _rewrite(small_batches_archive, other, edit_manifest=lambda m: m["embedder"].update(id="acme/other-model"))
    empty = make_memory("empty")
    with pytest.raises(EmbedderMismatchError, match=r"acme/other-model.*--embedder"):
        empty.import_archive(other)
    assert len(empty) == 0 and empty.stats().dim == 0  # not bound to anything
    bound = make_memory("bound")
    bound.import_archive(small_batches_archive)
    before = _files(bound.path)
    with pytest.raises(EmbedderMismatchError, match="acme/other-model"):
        bound.import_archive(other)
    assert _files(bound.path) == before


def test_an_episode_that_conflicts_with_the_store_stores_nothing(source, make_memory, small_batches_archive) -> None:
    b = make_memory("b")
    b.add("other", "A different episode under an id the archive also uses.", id="x")  # "x" is in the last batch
    before = _files(b.path)
    with pytest.raises(DuplicateIdError, match=r"'x'.*differs.*nothing from the archive was stored"):
        b.import_archive(small_batches_archive)
    assert _files(b.path) == before and len(b) == 1


def test_a_damaged_source_memory_is_not_exported(source, make_sqlite_memory, tmp_path: Path) -> None:
    _, root = source
    shutil.copytree(root / "a", tmp_path / "c")
    with sqlite3.connect(tmp_path / "c" / DB_NAME) as db:
        db.execute("UPDATE episodes SET digest = ? WHERE id = 'van'", (b"\x00" * DIGEST_SIZE,))
    c = make_sqlite_memory("c", read_only=True)
    with pytest.raises(IntegrityError, match=r"'van'.*rememory verify"):
        c.export(tmp_path / "c.zip")
    assert not (tmp_path / "c.zip").exists() and list(tmp_path.glob(".c.zip*")) == []


def test_jsonl_export_trains_into_a_new_store_with_the_same_texts(source, make_memory, tmp_path: Path) -> None:
    a, _ = source
    assert a.export(tmp_path / "a.jsonl", format="jsonl").episodes == 9
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 10
    assert set(json.loads(lines[0])) == {"namespace", "id", "keywords", "text", "time"}
    assert is_jsonl(tmp_path / "a.jsonl")
    items = load_jsonl_file(tmp_path / "a.jsonl")
    b = make_memory("b")
    b.add_many(items)  # namespaces may share ids: one call takes them all
    for ns in ("default", "work"):
        assert [(e.id, e.text, e.time) for e in b.list(ns)] == [(e.id, e.text, e.time) for e in a.list(ns)]


def test_jsonl_of_namespaces_sharing_an_id_trains_in_one_call(source, make_memory, tmp_path: Path) -> None:
    a, _ = source
    a.export(tmp_path / "a.jsonl", format="jsonl")  # "bridge" is an id in both namespaces
    b = make_memory("b")
    b.add_many(load_jsonl_file(tmp_path / "a.jsonl"))
    assert b.count("default") == 7 and b.count("work") == 2


def test_jsonl_reader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "eps.txt"  # no .jsonl suffix: recognised by its content
    path.write_text('{"keywords": "a", "text": "b"}\n\n{"keywords": "c", "text": \n')
    assert is_jsonl(path)
    with pytest.raises(InvalidEpisodeError, match=r"line 3 is not valid JSON"):
        load_jsonl_file(path)
    path.write_text('{"keywords": "a", "text": "b"}\n[1, 2]\n')
    with pytest.raises(InvalidEpisodeError, match=r"line 2 holds a JSON list"):
        load_jsonl_file(path)
    path.write_text('{"keywords": "a", "text": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InvalidEpisodeError, match=r"line 2 nests JSON .* too deeply"):
        load_jsonl_file(path)
    path.write_text('[{"keywords": "a", "text": "b"}]')
    assert not is_jsonl(path)
    path.write_text('{"keywords": "a",\n "text": "b"}')  # one JSON document: the JSON reader's to report
    assert not is_jsonl(path)


def test_unknown_export_format_is_an_error(source, tmp_path: Path) -> None:
    from rememory.errors import ConfigError

    a, _ = source
    with pytest.raises(ConfigError, match=r"'csv'.*archive.*jsonl"):
        a.export(tmp_path / "a.csv", format="csv")


# --- the CLI, as real subprocesses ---


def _run(args: list[str], store: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REMEMORY_STORE": str(store)}
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def _documented_commands() -> list[list[str]]:
    """The shell commands of docs/archive.md (also in the README), without their comments."""
    doc = (REPO / "docs" / "archive.md").read_text("utf-8")
    block = doc.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_documented_commands_work(source, tmp_path: Path) -> None:
    a, _ = source
    a.export(tmp_path / "default.rmz", namespace="default")
    res = _run(["import", str(tmp_path / "default.rmz")], tmp_path / "old-store")  # the store the docs move
    assert res.returncode == 0, res.stderr
    commands = _documented_commands()
    assert commands[0][:4] == ["rememory", "--store", "old-store", "export"]
    for cmd in commands:
        res = subprocess.run([str(BIN), *cmd[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env={k: v for k, v in os.environ.items() if k != "REMEMORY_STORE"})  # fmt: skip
        assert res.returncode == 0, (cmd, res.stderr)
        assert res.stdout == "" and "Traceback" not in res.stderr
    res = _run(["recall", QUERIES[0][0], "--json", "-k", "3"], tmp_path / "new-store")
    assert [h["id"] for h in json.loads(res.stdout)["hits"]] == [h.id for h in a.recall(QUERIES[0][0], top_k=3)]
    assert _run(["verify"], tmp_path / "new-store").returncode == 0
    res = _run(["show", "dacha", "--json"], tmp_path / "other-store")  # trained from the JSONL export
    assert json.loads(res.stdout)["text"] == EPISODES[2]["text"]


def test_cli_import_twice_and_a_namespace_as_jsonl(source, tmp_path: Path) -> None:
    _, root = source
    res = _run(["export", str(tmp_path / "a.zip")], root / "a")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and "Exported 9 memories" in res.stderr and "exporting" in res.stderr
    for imported, skipped in ((9, 0), (0, 9)):
        res = _run(["import", str(tmp_path / "a.zip")], tmp_path / "b")
        assert res.returncode == 0, res.stderr
        assert f"Imported {imported} memories" in res.stderr and f"({skipped} already there)" in res.stderr
        assert "checking" in res.stderr and res.stdout == ""
    res = _run(["export", "--format", "jsonl", "--namespace", "work", str(tmp_path / "w.jsonl")], root / "a")
    assert res.returncode == 0, res.stderr
    res = _run(["train", str(tmp_path / "w.jsonl")], tmp_path / "c")
    assert res.returncode == 0, res.stderr
    res = _run(["show", "deploy", "--namespace", "work", "--json"], tmp_path / "c")
    assert json.loads(res.stdout)["text"] == WORK[0]["text"]


def test_cli_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    res = _run(["import", str(bad)], tmp_path / "b")
    assert res.returncode == 2 and "is damaged" in res.stderr and "Traceback" not in res.stderr
    res = _run(["import", str(tmp_path / "missing.zip")], tmp_path / "b")
    assert res.returncode == 2 and "There is no archive" in res.stderr
    lines = tmp_path / "eps.jsonl"
    lines.write_text('{"keywords": "a", "text": "fine"}\n{"keywords": "b", "text": "broken\n')
    res = _run(["train", str(lines)], tmp_path / "b")
    assert res.returncode == 2 and "line 2 is not valid JSON" in res.stderr
    assert not (tmp_path / "b" / DB_NAME).exists() or _run(["stats", "--json"], tmp_path / "b").returncode == 0


# --- issue 14: an archive carries the engines' shared models ---


def test_an_archive_of_a_mixed_engine_store_carries_its_models(make_sqlite_memory, make_memory, tmp_path: Path) -> None:
    from .enginekit import NAME

    a = make_sqlite_memory("a")
    a.add_many(EPISODES[:2])  # mlp-cell/1
    a.close()
    a = make_sqlite_memory("a", engine=NAME)
    a.add_many(EPISODES[2:])
    a.add_many(WORK, namespace="work")
    a.reencode(NAME, namespace="work", retrain=True)  # work: episodes on model version 2, version 1 kept too
    rep = a.export(tmp_path / "a.zip")
    assert rep.episodes == 9
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        manifest = json.loads(zf.read("manifest.json"))
        models = [json.loads(line) for line in zf.read("models.jsonl").splitlines()]
    assert manifest["version"] == 2 and {"models.jsonl", "models/000000.bin"} <= set(manifest["files"])
    assert [(m["namespace"], m["version"]) for m in models] == [("default", 1), ("work", 1), ("work", 2)]
    b = make_memory("b")
    got = b.import_archive(tmp_path / "a.zip")
    assert (got.imported, got.skipped) == (9, 0) and b.verify().ok
    for ns in ("default", "work"):
        assert [(e.id, e.text) for e in b.list(ns)] == [(e.id, e.text) for e in a.list(ns)]
        assert [s.model for s in b._store.list_models(ns)] == [s.model for s in a._store.list_models(ns)]
    assert b.recall("when is the design review", namespace="work")[0].id == "bridge"
    again = b.import_archive(tmp_path / "a.zip")  # the models too are already there: nothing changes
    assert (again.imported, again.skipped) == (0, 9) and len(b._store.list_models()) == 3
    # A store whose namespace holds another model under the same version cannot take the archive's.
    c = make_sqlite_memory("c", engine=NAME)
    c.add("x", "a text that makes another model", id="other", namespace="work")
    with pytest.raises(DuplicateIdError, match="version 1 of the 'table-trace/1' model of namespace 'work'"):
        c.import_archive(tmp_path / "a.zip")
    assert c.count() == 1 and len(c._store.list_models()) == 1


def test_an_archive_without_shared_models_stays_version_1(source, tmp_path: Path) -> None:
    mem, _ = source
    mem.export(tmp_path / "a.zip", namespace="work")
    assert archive.read_manifest(tmp_path / "a.zip").version == 1  # older rememory still reads it
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert not any(n.startswith("models") for n in zf.namelist())


def test_a_damaged_model_in_an_archive_stores_nothing(make_sqlite_memory, make_memory, tmp_path: Path) -> None:
    from .enginekit import NAME

    a = make_sqlite_memory("a", engine=NAME)
    a.add_many(EPISODES)
    a.export(tmp_path / "a.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(tmp_path / "a.zip") as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[::-1] if info.filename == "models/000000.bin" else data)
    b = make_memory("b")
    with pytest.raises(ArchiveError, match=r"models/000000\.bin does not match its SHA-256"):
        b.import_archive(bad)
    assert b.count() == 0 and b._store.list_models() == []
