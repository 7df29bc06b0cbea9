"""Portable archives of a store (``rememory export`` / ``rememory import``), and decoded JSONL exports.

An archive is a ZIP file (format ``rememory-archive``, version 2, or 1 when it holds no shared
model; see docs/archive.md)::

    arrays/000000.safetensors   one batch of episodes: int8 keys and context keys, uint32 token
    arrays/000001.safetensors   hashes, and the engine's streams (the memories' weights, as stored)
    ...
    episodes.jsonl              one JSON object per episode: namespace, id, keywords, time, size,
                                digest and its format, engine and engine config, key scales, and
                                where its arrays sit in its batch file
    models.jsonl                (version 2) the engines' shared models: namespace, engine, version,
    models/000000.bin           config, trained_on; each model's data in its own member
    manifest.json               written last: format, version, embedder, counts, SHA-256 of every member

It holds no decoded text and no pickle. An archive of an encrypted store (or any archive exported with
a secret) is that ZIP sealed as a whole (rememory.crypto.sealed_file) under a key derived from the
secret; inside, the manifest also carries the data keys of its namespaces, so that it can be checked
and imported anywhere the secret is known (see docs/encryption.md).

Both directions stream one batch at a time, so a (plaintext) store of any size needs only one batch
in memory. Import checks the whole archive (hashes, structure, and every episode decoded against its
digest) before it stores anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .content import PLAIN_KEYS, ContentKeys, SealedKeys
from .engine import Artifact, InMemoryModels, MemoryEngine, SharedModel, create_engine
from .episodes import validate_episode
from .errors import (
    ArchiveError,
    DuplicateIdError,
    EmbedderMismatchError,
    IntegrityError,
    InvalidEpisodeError,
    RememoryError,
    SecretRequiredError,
)
from .integrity import DIGEST_SIZE
from .records import Episode
from .store.base import MemoryStore, check_duplicate
from .store.records import IndexRow, NewEpisode, Row, StoredModel
from .timeparse import episode_seconds

FORMAT = "rememory-archive"
VERSION = 2  # written when the archive holds shared models; without any, version 1 (older rememory reads it)
VERSIONS = (1, 2)
MANIFEST = "manifest.json"
EPISODES = "episodes.jsonl"
MODELS = "models.jsonl"
MODEL_DIR = "models/"
BATCH = 1000  # episodes per arrays file: bounds the memory an export or import needs
MAX_MEMBER_BYTES = 1 << 31  # an arrays file this large cannot come from a batch of BATCH episodes
_STREAM_PREFIX = "stream."
_STREAM_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "float16", "float32")
JSONL_FIELDS = ("namespace", "id", "keywords", "text", "time")


@dataclass(frozen=True)
class ArchiveProgress:
    """How far an export or import is: ``phase`` is "export", "verify" (import's checking pass) or "import"."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ExportReport:
    """What :meth:`rememory.Memory.export` wrote."""

    path: str
    format: str  # "archive" or "jsonl"
    episodes: int
    namespaces: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportReport:
    """What :meth:`rememory.Memory.import_archive` did: ``imported + skipped == episodes``."""

    path: str
    episodes: int  # in the archive
    imported: int  # newly stored
    skipped: int  # already stored with identical content
    embedder: str | None
    namespaces: dict[str, int] = field(default_factory=dict)  # episodes of the archive per namespace


@dataclass(frozen=True)
class Manifest:
    """The checked contents of an archive's ``manifest.json``."""

    version: int
    embedder: str | None
    dim: int | None
    namespace: str | None  # the one namespace exported, or None for a whole store
    episodes: int
    namespaces: dict[str, int]
    files: dict[str, str]  # member name -> SHA-256 (hex), every member but the manifest
    sealed: bool = False  # the archive file was sealed under a secret
    keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # namespace -> (key id, data key)


@dataclass(frozen=True)
class ArchivedEpisode:
    """One episode read from an archive, checked: its text decoded from ``artifact`` matched ``digest``."""

    line: int  # in episodes.jsonl, 1-based
    episode: Episode
    artifact: Artifact
    new: NewEpisode
    keyed: bool = False  # its namespace was encrypted: its seed, tokens and digest are under the archive's key


ProgressFn = Callable[[ArchiveProgress], None]


# --- shared checks ---


class Engines:
    """Engines by (name, namespace), each reading the shared models of its namespace from ``models``."""

    def __init__(self, models: Callable[[str], Any]):
        self._models = models
        self._engines: dict[tuple[str, str], MemoryEngine] = {}

    def get(self, name: str, namespace: str) -> MemoryEngine:
        """An unknown engine is an :class:`~rememory.errors.UnknownEngineError`."""
        key = (name, namespace)
        if key not in self._engines:
            self._engines[key] = create_engine(name, models=self._models(namespace))
        return self._engines[key]


def decode_checked(
    ns: str, id: str, keywords: str, n_bytes: int, digest: bytes, fmt: int, art: Artifact, engines: Engines,
    keys: ContentKeys = PLAIN_KEYS,
) -> bytes:  # fmt: skip
    """The episode's exact text from ``art``; :class:`IntegrityError` if it does not match its size and digest."""
    engine = engines.get(art.engine, ns)  # an unknown engine raises (a RememoryError), never reads as damage
    try:
        data = engine.decode(art, keys.seed(keywords), n_bytes=n_bytes)
    except RememoryError:
        raise
    except Exception as exc:  # any engine, any damage: an artifact that fails to decode is damaged
        raise IntegrityError(f"its memory does not decode ({type(exc).__name__}: {exc})", ids=[id]) from None
    try:
        want = keys.digest(ns, id, data, fmt)
    except ValueError:
        raise IntegrityError(f"its digest format {fmt!r} is unknown", ids=[id]) from None
    if len(data) != n_bytes or want != digest:
        raise IntegrityError("its memory did not reconstruct the text its digest names (digest mismatch)", ids=[id])
    return data


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a private temporary file in its directory, fsynced, then renamed into place."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # 0600: memories inside
    except OSError as exc:
        raise ArchiveError(f"Cannot write {path}: {exc.strerror or exc}. Choose a writable path.") from None
    try:
        with os.fdopen(fd, "w+b") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- export ---


def _source_damaged(r: Row, reason: object) -> IntegrityError:
    return IntegrityError(
        f"The memory {r.id!r} (namespace {r.namespace!r}) is damaged ({reason}), so nothing was exported. "
        "Run `rememory verify` to list every damaged memory, forget or re-add them, then export again.",
        ids=[r.id],
    )


KeysFor = Callable[[str], ContentKeys]  # a namespace's content keys (rememory.content)


def _export_batches(
    store: MemoryStore, namespace: str | None, keys: KeysFor
) -> Iterator[list[tuple[Row, Artifact, IndexRow]]]:
    """The store's episodes in insertion order, a batch at a time, each checked to decode to its digest."""
    engines = Engines(store.models)
    for rows in store.iter_rows(namespace, batch=BATCH):
        arts = store.load_artifacts(rows)
        index = {ir.rowid: ir for ir in store.index_rows([r.rowid for r in rows])}
        out = []
        for r in rows:
            art, ir = arts[r.rowid], index.get(r.rowid)
            if ir is None or (isinstance(art, IntegrityError) and not store.rows(r.namespace, [r.id])):
                continue  # forgotten while this export ran: it is not part of the store any more
            if isinstance(art, IntegrityError):
                raise _source_damaged(r, art)
            if ir.damage is not None:
                raise _source_damaged(r, ir.damage)
            try:
                decode_checked(r.namespace, r.id, r.keywords, r.n_bytes, r.digest, r.digest_format, art, engines,
                               keys(r.namespace))  # fmt: skip
            except IntegrityError as exc:
                raise _source_damaged(r, exc) from None
            out.append((r, art, ir))
        if out:
            yield out


def _pack(batch: int, items: list[tuple[Row, Artifact, IndexRow]]) -> tuple[bytes, list[dict[str, Any]]]:
    """One batch's safetensors bytes and its episodes' JSON lines."""
    tokens: list[np.ndarray] = []
    streams: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    n_tokens = 0
    lines = []
    for slot, (r, art, ir) in enumerate(items):
        spans: dict[str, list[int]] = {}
        for name in sorted(art.streams):
            arr = np.ascontiguousarray(art.streams[name]).reshape(-1)
            off = sizes.get(name, 0)
            spans[name] = [off, int(arr.size)]
            streams.setdefault(name, []).append(arr)
            sizes[name] = off + int(arr.size)
        tok = np.ascontiguousarray(ir.tokens, dtype="<u4").reshape(-1)
        tokens.append(tok)
        lines.append({
            "namespace": r.namespace, "id": r.id, "keywords": r.keywords, "time": r.time,
            "created_at": r.created_at, "n_bytes": r.n_bytes, "digest": r.digest.hex(),
            "digest_format": r.digest_format, "engine": art.engine, "config": art.config,
            "key_scale": ir.key_scale, "ctx_key_scale": ir.ctx_key_scale,
            "batch": batch, "slot": slot, "tokens": [n_tokens, int(tok.size)], "streams": spans,
        })  # fmt: skip
        n_tokens += int(tok.size)
    tensors = {
        "key": np.stack([ir.key for _, _, ir in items]).astype(np.int8),  # (n, dim)
        "ctx_key": np.stack([ir.ctx_key for _, _, ir in items]).astype(np.int8),  # (n, dim)
        "tokens": np.concatenate(tokens).astype("<u4"),  # (total tokens,)
    }
    for name, arrs in streams.items():
        tensors[_STREAM_PREFIX + name] = np.concatenate(arrs)
    return st_save(tensors, metadata={"format": f"{FORMAT}/1"}), lines  # (arrays files are as in version 1)


def _write_models(zf: zipfile.ZipFile, models: list[StoredModel], files: dict[str, dict[str, Any]]) -> None:
    """The shared models: each one's data in a member of its own, described by a line of ``models.jsonl``."""
    lines = []
    for k, sm in enumerate(models):
        member = f"{MODEL_DIR}{k:06d}.bin"
        zf.writestr(member, sm.model.data)
        files[member] = {"sha256": hashlib.sha256(sm.model.data).hexdigest(), "bytes": len(sm.model.data)}
        lines.append(json.dumps({
            "namespace": sm.namespace, "engine": sm.model.engine, "version": sm.model.version,
            "config": sm.model.config, "trained_on": sm.model.trained_on, "created_at": sm.created_at,
            "data": member,
        }, ensure_ascii=False, separators=(",", ":")))  # fmt: skip
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    zf.writestr(MODELS, raw)
    files[MODELS] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def write_archive(
    store: MemoryStore,
    path: str | os.PathLike[str],
    *,
    namespace: str | None = None,
    progress: ProgressFn | None = None,
    keys: KeysFor = lambda ns: PLAIN_KEYS,
    secret: str | bytes | None = None,
    data_keys: Callable[[str], tuple[bytes, bytes] | None] | None = None,
) -> ExportReport:
    """Write the store's (or one namespace's) episodes to an archive at ``path``, replacing it atomically.

    With ``secret`` the archive is sealed under it as a whole; ``data_keys`` (an encrypted store's)
    puts each namespace's data key in the sealed manifest, so its keyed memories can be read back.
    """
    if data_keys is not None and secret is None:
        raise ValueError("an archive carrying data keys must be sealed")
    bound = store.embedder_info()
    total = store.count(namespace)
    counts: dict[str, int] = {}
    files: dict[str, dict[str, Any]] = {}
    models = store.list_models(namespace)
    version = VERSION if models else 1

    def write(fh: IO[bytes]) -> None:
        done = 0
        with tempfile.TemporaryFile() as lines, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            for k, items in enumerate(_export_batches(store, namespace, keys)):
                data, meta = _pack(k, items)
                member = f"arrays/{k:06d}.safetensors"
                zf.writestr(member, data, compress_type=zipfile.ZIP_STORED)  # int8 weights barely compress
                files[member] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for line in meta:
                    lines.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
                    counts[line["namespace"]] = counts.get(line["namespace"], 0) + 1
                done += len(items)
                if progress is not None:
                    progress(ArchiveProgress("export", done, max(total, done)))
            # The lines went to a temporary file: one ZIP member is written at a time.
            lines.seek(0)
            h, size = hashlib.sha256(), 0
            info = zipfile.ZipInfo(EPISODES, date_time=datetime.now().timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as out:
                for chunk in iter(lambda: lines.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            files[EPISODES] = {"sha256": h.hexdigest(), "bytes": size}
            if models:
                _write_models(zf, models, files)
            manifest = {
                "format": FORMAT,
                "version": version,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "embedder": None if bound is None else {"id": bound[0], "dim": bound[1]},
                "namespace": namespace,
                "episodes": done,
                "namespaces": dict(sorted(counts.items())),
                "files": files,
            }
            if data_keys is not None:
                found = {ns: data_keys(ns) for ns in sorted(counts)}
                manifest["keys"] = {ns: {"id": got[0].hex(), "key": base64.b64encode(got[1]).decode("ascii")}
                                    for ns, got in found.items() if got is not None}  # fmt: skip
            zf.writestr(MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")

    if secret is None:
        _write_atomic(Path(path), write)
    else:  # sealed as a whole: the plaintext ZIP only ever exists in memory
        from .crypto.keyring import DEFAULT_KDF
        from .crypto.sealed_file import seal_bytes

        buf = io.BytesIO()
        write(buf)
        sealed = seal_bytes(buf.getvalue(), secret, DEFAULT_KDF, FORMAT)
        del buf

        def write_sealed(fh: IO[bytes]) -> None:
            fh.write(sealed)

        _write_atomic(Path(path), write_sealed)
    return ExportReport(str(path), "archive", sum(counts.values()), dict(sorted(counts.items())))


def write_jsonl(
    rows: Iterator[list[Row]],
    texts: Callable[[list[Row]], dict[int, bytes | IntegrityError]],
    path: str | os.PathLike[str],
    *,
    total: int,
    progress: ProgressFn | None = None,
) -> ExportReport:
    """Write decoded episodes (``JSONL_FIELDS``), one JSON object a line, to ``path`` (replaced atomically)."""
    counts: dict[str, int] = {}

    def write(fh: IO[bytes]) -> None:
        done = 0
        for batch in rows:
            got = texts(batch)
            for r in batch:
                data = got[r.rowid]
                if isinstance(data, IntegrityError):
                    raise _source_damaged(r, data)
                obj = {"namespace": r.namespace, "id": r.id, "keywords": r.keywords,
                       "text": data.decode("utf-8"), "time": r.time}  # fmt: skip
                fh.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
                counts[r.namespace] = counts.get(r.namespace, 0) + 1
            done += len(batch)
            if progress is not None:
                progress(ArchiveProgress("export", done, max(total, done)))

    _write_atomic(Path(path), write)
    return ExportReport(str(path), "jsonl", sum(counts.values()), dict(sorted(counts.items())))


# --- import ---


def _damaged(path: Path, problem: str) -> ArchiveError:
    return ArchiveError(
        f"The archive {path} is damaged: {problem}. Nothing from it was stored. "
        "Export it again from its store (rememory export), or use an intact copy."
    )


def _open_zip(path: Path, secret: str | bytes | None = None) -> tuple[zipfile.ZipFile, bool]:
    """The archive's ZIP, and whether it was sealed (then it is opened in memory with ``secret``)."""
    from .crypto.format import SealError

    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
        if head.startswith(b"rememory-sealed/"):
            from .crypto.sealed_file import open_bytes

            if secret is None:
                raise SecretRequiredError(
                    f"The archive {path} is sealed (it was exported from an encrypted store, or with a secret). Give "
                    "its secret: --secret-file FILE, REMEMORY_SECRET, or secret=... Nothing was stored."
                )
            try:
                plain = open_bytes(path.read_bytes(), secret, f"The archive {path}")
            except (ValueError, KeyError, TypeError, SealError, binascii.Error) as exc:
                raise _damaged(path, f"its sealed envelope is unreadable ({type(exc).__name__}: {exc})") from None
            return zipfile.ZipFile(io.BytesIO(plain)), True
        return zipfile.ZipFile(path), False
    except FileNotFoundError:
        raise ArchiveError(f"There is no archive at {path}. Check the path.") from None
    except OSError as exc:
        raise ArchiveError(f"Cannot read the archive {path}: {exc.strerror or exc}. Check the path.") from None
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:  # a truncated ZIP loses its directory, at the end
        raise _damaged(path, f"it is not a complete ZIP file ({exc}); it may be truncated") from None


def _read_member(zf: zipfile.ZipFile, path: Path, name: str, want_sha: str | None) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise _damaged(path, f"the member {name} is missing") from None
    if info.file_size > MAX_MEMBER_BYTES:
        raise _damaged(path, f"the member {name} claims {info.file_size} bytes, more than any batch holds")
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise _damaged(path, f"the member {name} is unreadable ({exc})") from None
    if want_sha is not None and hashlib.sha256(data).hexdigest() != want_sha:
        raise _damaged(path, f"the member {name} does not match its SHA-256 in the manifest")
    return data


def _want(cond: bool, path: Path, where: str, what: str) -> None:
    if not cond:
        raise _damaged(path, f"{where}: {what}")


def read_manifest(path: str | os.PathLike[str], secret: str | bytes | None = None) -> Manifest:
    """The checked manifest of the archive at ``path`` (an :class:`ArchiveError` if it is not one)."""
    path = Path(path)
    zf, sealed = _open_zip(path, secret)
    with zf:
        return _manifest(zf, path, sealed)


def _manifest(zf: zipfile.ZipFile, path: Path, sealed: bool = False) -> Manifest:
    raw = _read_member(zf, path, MANIFEST, None)
    try:
        m: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _damaged(path, f"{MANIFEST} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArchiveError(
            f"{path} is not a rememory archive ({MANIFEST} does not name the format {FORMAT!r}). "
            "Give a file written by `rememory export`; for episodes as JSON or JSONL use `rememory train`."
        )
    m = cast(Any, m)  # a checked dict from here on; each field is checked below
    version = m.get("version")
    if version not in VERSIONS or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        raise ArchiveError(
            f"The archive {path} has format version {version!r}; this rememory reads versions "
            f"{', '.join(map(str, VERSIONS))}. "
            + ("Upgrade rememory to import it." if newer else "Export it again with this rememory.")
            + " Nothing was stored."
        )
    where = MANIFEST
    emb = m.get("embedder")
    n = m.get("episodes")
    _want(isinstance(n, int) and not isinstance(n, bool) and n >= 0, path, where, f"episodes is {n!r}")
    _want(emb is None or (isinstance(emb, dict) and isinstance(emb.get("id"), str) and isinstance(emb.get("dim"), int)
                          and emb["dim"] > 0), path, where, f"embedder is {emb!r}")  # fmt: skip
    _want(emb is not None or n == 0, path, where, "it holds episodes but names no embedder")
    ns = m.get("namespace")
    _want(ns is None or isinstance(ns, str), path, where, f"namespace is {ns!r}")
    counts = m.get("namespaces")
    _want(isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values())
          and sum(counts.values()) == n, path, where, "its per-namespace counts do not add up")  # fmt: skip
    files = m.get("files")
    _want(isinstance(files, dict) and EPISODES in files, path, where, f"it lists no {EPISODES}")
    hashes: dict[str, str] = {}
    for name, entry in files.items():
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        _want(isinstance(sha, str) and len(sha) == 64, path, where, f"the SHA-256 of {name} is missing")
        hashes[name] = str(sha)
    present = set(zf.namelist()) - {MANIFEST}
    missing = sorted(set(hashes) - present)
    _want(not missing, path, "its contents", f"the member(s) {missing[:3]} listed in the manifest are missing")
    extra = sorted(present - set(hashes))
    _want(not extra, path, "its contents", f"the member(s) {extra[:3]} are not in the manifest")
    has_models = any(k == MODELS or k.startswith(MODEL_DIR) for k in hashes)
    _want(version >= 2 or not has_models, path, where, "a version 1 archive holds models")
    _want(MODELS in hashes or not has_models, path, where, f"it holds model data but no {MODELS}")
    keys: dict[str, tuple[bytes, bytes]] = {}
    raw_keys = m.get("keys", {})
    _want(isinstance(raw_keys, dict) and (sealed or not raw_keys), path, where, "its data keys are malformed")
    for kns, entry in raw_keys.items():
        try:
            keys[str(kns)] = (bytes.fromhex(entry["id"]), base64.b64decode(entry["key"], validate=True))
        except (KeyError, TypeError, ValueError, binascii.Error):
            _want(False, path, where, f"the data key of namespace {kns!r} is malformed")
        _want(len(keys[str(kns)][0]) == 8 and len(keys[str(kns)][1]) == 32, path, where,
              f"the data key of namespace {kns!r} is malformed")  # fmt: skip
    return Manifest(
        version=int(version), embedder=None if emb is None else emb["id"], dim=None if emb is None else emb["dim"],
        namespace=ns, episodes=n, namespaces=dict(counts), files=hashes, sealed=sealed, keys=keys,
    )  # fmt: skip


class ArchiveReader:
    """Reads and checks an archive, one batch of :class:`ArchivedEpisode` at a time.

    Every pass over :meth:`batches` checks everything again (hashes, structure, each episode's
    decoded text against its digest), so what is committed is what was checked.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_text_bytes: int, secret: str | bytes | None = None):
        self.path = Path(path)
        self._zf, sealed = _open_zip(self.path, secret)
        try:
            self.manifest = _manifest(self._zf, self.path, sealed)
            self.models = self._read_models()
        except BaseException:
            self._zf.close()
            raise
        self._max_text_bytes = max_text_bytes
        self._keys: dict[str, ContentKeys] = {}
        if self.manifest.keys:
            from .crypto.cipher import NamespaceCipher

            for kns, (kid, key) in self.manifest.keys.items():
                self._keys[kns] = SealedKeys(NamespaceCipher(kns, kid, key))
        repos: dict[str, InMemoryModels] = {}
        for sm in self.models:
            repos.setdefault(sm.namespace, InMemoryModels()).add(sm.model)
        # Episodes decode with the archive's own models (checked before any is stored).
        self._engines = Engines(lambda ns: repos.setdefault(ns, InMemoryModels()))

    def _read_models(self) -> list[StoredModel]:
        """The archive's shared models (version 2), each member checked against its SHA-256."""
        if MODELS not in self.manifest.files:
            return []
        raw = _read_member(self._zf, self.path, MODELS, self.manifest.files[MODELS])
        out: list[StoredModel] = []
        seen: set[tuple[str, str, int]] = set()
        used: set[str] = set()
        for no, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            where = f"{MODELS} line {no}"
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise _damaged(self.path, f"{where} is not valid JSON ({exc})") from None
            _want(isinstance(obj, dict), self.path, where, "it is not a JSON object")
            ns, engine, version, config = obj.get("namespace"), obj.get("engine"), obj.get("version"), obj.get("config")
            trained_on, created_at, member = obj.get("trained_on"), obj.get("created_at"), obj.get("data")
            whole = (version, trained_on, created_at)
            _want(isinstance(ns, str) and isinstance(engine, str) and isinstance(config, dict)
                  and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in whole) and version >= 1,
                  self.path, where, "its namespace, engine, version, config or counts are malformed")  # fmt: skip
            _want(isinstance(member, str) and member.startswith(MODEL_DIR) and member in self.manifest.files
                  and member not in used, self.path, where,
                  f"its data member {member!r} is not in the manifest")  # fmt: skip
            _want((ns, engine, version) not in seen, self.path, where, f"model {engine} v{version} of {ns!r} is twice")
            seen.add((ns, engine, version))
            used.add(member)
            data = _read_member(self._zf, self.path, member, self.manifest.files[member])
            out.append(StoredModel(ns, SharedModel(engine, version, config, data, trained_on), created_at))
        unused = sorted(k for k in self.manifest.files if k.startswith(MODEL_DIR) and k not in used)
        _want(not unused, self.path, MODELS, f"the model member(s) {unused[:3]} belong to no model")
        return out

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lines(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, object) of episodes.jsonl, streamed; its SHA-256 is checked when it ends."""
        h = hashlib.sha256()
        try:
            with self._zf.open(EPISODES) as raw:
                for no, line in enumerate(raw, start=1):
                    h.update(line)
                    try:
                        obj = json.loads(line.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                        raise _damaged(self.path, f"{EPISODES} line {no} is not valid JSON "
                                                  f"({type(exc).__name__}: {exc})") from None  # fmt: skip
                    _want(isinstance(obj, dict), self.path, f"{EPISODES} line {no}", "it is not a JSON object")
                    yield no, obj
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
            raise _damaged(self.path, f"{EPISODES} is unreadable ({exc})") from None
        if h.hexdigest() != self.manifest.files[EPISODES]:
            raise _damaged(self.path, f"{EPISODES} does not match its SHA-256 in the manifest")

    def batches(self) -> Iterator[list[ArchivedEpisode]]:
        """The archive's episodes, a batch at a time, each decoded and checked against its digest."""
        group: list[tuple[int, dict[str, Any]]] = []
        n = 0
        next_batch = 0
        seen: set[tuple[str, str]] = set()
        for no, obj in self._lines():
            b = obj.get("batch")
            if group and b != group[0][1].get("batch"):
                yield self._batch(next_batch, group, seen)
                next_batch += 1
                group = []
            group.append((no, obj))
            n += 1
        if group:
            yield self._batch(next_batch, group, seen)
            next_batch += 1
        arrays = {k for k in self.manifest.files if k.startswith("arrays/")}
        _want(n == self.manifest.episodes, self.path, EPISODES,
              f"it holds {n} episodes, the manifest says {self.manifest.episodes}")  # fmt: skip
        _want(len(arrays) == next_batch, self.path, "its contents",
              f"it has {len(arrays)} arrays files for {next_batch} batches")  # fmt: skip

    def _batch(
        self, k: int, group: list[tuple[int, dict[str, Any]]], seen: set[tuple[str, str]]
    ) -> list[ArchivedEpisode]:
        member = f"arrays/{k:06d}.safetensors"
        where = f"{EPISODES} line {group[0][0]}"
        _want(group[0][1].get("batch") == k, self.path, where, f"batch {group[0][1].get('batch')!r} is out of order")
        _want(member in self.manifest.files, self.path, where, f"its arrays file {member} is not in the manifest")
        try:
            tensors = st_load(_read_member(self._zf, self.path, member, self.manifest.files[member]))
        except SafetensorError as exc:
            raise _damaged(self.path, f"{member} is not a safetensors file ({exc})") from None
        dim = self.manifest.dim or 0
        keys, ctx, tokens = tensors.get("key"), tensors.get("ctx_key"), tensors.get("tokens")
        for name, arr, dtype in (("key", keys, np.int8), ("ctx_key", ctx, np.int8)):
            _want(arr is not None and arr.dtype == dtype and arr.shape == (len(group), dim), self.path, member,
                  f"its {name} array is not ({len(group)}, {dim}) int8")  # fmt: skip
        _want(tokens is not None and tokens.dtype == np.uint32 and tokens.ndim == 1, self.path, member,
              "its tokens array is not 1-D uint32")  # fmt: skip
        assert keys is not None and ctx is not None and tokens is not None
        streams = {k[len(_STREAM_PREFIX):]: v for k, v in tensors.items() if k.startswith(_STREAM_PREFIX)}
        out = []
        for slot, (no, obj) in enumerate(group):
            where = f"{EPISODES} line {no}"
            ep, art, item = self._episode(obj, where, slot, keys, ctx, tokens, streams)
            _want((ep.namespace, ep.id) not in seen, self.path, where,
                  f"the id {ep.id!r} of namespace {ep.namespace!r} appears twice")  # fmt: skip
            seen.add((ep.namespace, ep.id))
            out.append(ArchivedEpisode(no, ep, art, item, keyed=ep.namespace in self._keys))
        return out

    def _episode(
        self, obj: dict[str, Any], where: str, slot: int, keys: np.ndarray, ctx: np.ndarray, tokens: np.ndarray,
        streams: dict[str, np.ndarray],
    ) -> tuple[Episode, Artifact, NewEpisode]:  # fmt: skip
        p = self.path

        def get(name: str, *types: type) -> Any:
            v = obj.get(name)
            _want(isinstance(v, types) and not (isinstance(v, bool) and bool not in types), p, where,
                  f"'{name}' is {v!r}")  # fmt: skip
            return v

        ns, id_, keywords = get("namespace", str), get("id", str), get("keywords", str)
        time = get("time", str, type(None))
        n_bytes, fmt, engine = get("n_bytes", int), get("digest_format", int), get("engine", str)
        config, spans, tok = get("config", dict), get("streams", dict), get("tokens", list)
        _want(get("slot", int) == slot, p, where, f"its slot {obj.get('slot')!r} is not {slot}")
        try:
            digest = bytes.fromhex(get("digest", str))
        except ValueError:
            digest = b""
        _want(len(digest) == DIGEST_SIZE, p, where, f"its digest is not {DIGEST_SIZE} bytes of hex")
        scales = (get("key_scale", float, int), get("ctx_key_scale", float, int))
        _want(all(math.isfinite(s) and s > 0 for s in scales), p, where, f"its key scales {scales} are not positive")
        art_streams: dict[str, np.ndarray] = {}
        for name, span in [*spans.items(), ("tokens", tok)]:
            src = tokens if name == "tokens" else streams.get(name)
            ok = (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) and x >= 0 for x in span)
                  and src is not None and span[0] + span[1] <= src.size
                  and (name == "tokens" or name in _STREAM_DTYPES))
            _want(ok, p, where, f"its {name} span {span!r} does not fit the batch's arrays")  # fmt: skip
            assert src is not None
            if name != "tokens":
                art_streams[name] = src[span[0] : span[0] + span[1]]
        art = Artifact(engine, config, art_streams)
        try:
            data = decode_checked(ns, id_, keywords, n_bytes, digest, fmt, art, self._engines,
                                  self._keys.get(ns, PLAIN_KEYS))  # fmt: skip
        except IntegrityError as exc:
            raise _damaged(p, f"{where} (episode {id_!r} of namespace {ns!r}): {exc}") from None
        except RememoryError as exc:  # an engine this rememory does not know
            raise ArchiveError(f"{where} of {p} (episode {id_!r}): {exc} Nothing was stored.") from None
        try:
            ep = validate_episode({"namespace": ns, "id": id_, "keywords": keywords, "time": time,
                                   "text": data.decode("utf-8")}, index=None, namespace=ns,
                                  max_text_bytes=self._max_text_bytes)  # fmt: skip
        except (InvalidEpisodeError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{where} of {p} (episode {id_!r} of namespace {ns!r}): {exc} "
                               "Nothing from the archive was stored.") from None  # fmt: skip
        toks = tokens[tok[0] : tok[0] + tok[1]]
        # The archive holds no event_time: it is derived data, recomputed as at add.
        item = NewEpisode(ep, digest, n_bytes, keys[slot], float(scales[0]), toks, ctx[slot], float(scales[1]), fmt,
                          episode_seconds(ep.time, ep.keywords))  # fmt: skip
        return ep, art, item


def _conflict(path: Path, a: ArchivedEpisode) -> DuplicateIdError:
    ep = a.episode
    return DuplicateIdError(
        f"The archive {path} holds an episode {ep.id!r} of namespace {ep.namespace!r} that differs from the one "
        "this store already holds under that id, so nothing from the archive was stored. Forget the store's "
        f"episode first (rememory forget {ep.id} --namespace {ep.namespace}), or import into another store."
    )


def _existing(store: MemoryStore, batch: Sequence[ArchivedEpisode]) -> dict[tuple[str, str], Row]:
    out: dict[tuple[str, str], Row] = {}
    for ns in {a.episode.namespace for a in batch}:
        for r in store.rows(ns, [a.episode.id for a in batch if a.episode.namespace == ns]).values():
            out[(ns, r.id)] = r
    return out


def _is_new(store_row: Row | None, a: ArchivedEpisode, keys: KeysFor) -> bool:
    """Whether ``a`` must be stored: an identical stored episode (in its own digest format) is skipped."""
    if store_row is None:
        return True
    data = a.episode.text.encode("utf-8")
    try:
        dg = keys(a.episode.namespace).digest(a.episode.namespace, a.episode.id, data, store_row.digest_format)
    except ValueError:  # the stored row's format is damaged: it cannot be the same episode
        dg = b""
    return check_duplicate(store_row, a.episode, dg, replace=False)


def import_archive(
    store: MemoryStore, path: str | os.PathLike[str], *, embedder_id: str, max_text_bytes: int,
    progress: ProgressFn | None = None, secret: str | bytes | None = None, keys: KeysFor = lambda ns: PLAIN_KEYS,
    convert: Callable[[list[ArchivedEpisode]], tuple[list[NewEpisode], list[Artifact]]] | None = None,
) -> ImportReport:  # fmt: skip
    """Check the whole archive, then store its episodes that ``store`` lacks (see ``Memory.import_archive``).

    ``secret`` opens a sealed archive; ``keys`` are the store's content keys; ``convert`` turns checked
    episodes into what the store keeps (an encrypted store re-encodes them under its own keys).
    """
    path = Path(path)
    with ArchiveReader(path, max_text_bytes=max_text_bytes, secret=secret) as reader:
        m = reader.manifest
        bound = store.embedder_info()
        if m.embedder is not None and bound is not None and bound != (m.embedder, m.dim):
            raise EmbedderMismatchError(
                f"The archive {path} holds keys of the embedder {m.embedder!r} ({m.dim}-d), but this store uses "
                f"{bound[0]!r} ({bound[1]}-d); mixing them would make recall meaningless. Nothing was stored. "
                "Import it into a new, empty store (it takes the archive's embedder)."
            )
        if m.embedder is not None and m.embedder != embedder_id:
            raise EmbedderMismatchError(
                f"The archive {path} holds keys of the embedder {m.embedder!r}, but the store was opened with "
                f"{embedder_id!r}. Nothing was stored. Open the store with embedder={m.embedder!r} "
                f"(CLI: --embedder {m.embedder})."
            )
        # Pass 1 checks everything and stores nothing: a damaged archive, or an episode or a model
        # that conflicts with the store's, fails here with the store unchanged.
        for sm in reader.models:
            have = {(h.model.engine, h.model.version): h.model for h in store.list_models(sm.namespace)}
            old = have.get((sm.model.engine, sm.model.version))
            if old is not None and (old.config, old.data, old.trained_on) != (
                    sm.model.config, sm.model.data, sm.model.trained_on):  # fmt: skip
                raise DuplicateIdError(
                    f"The archive {path} holds version {sm.model.version} of the {sm.model.engine!r} model of "
                    f"namespace {sm.namespace!r}, and this store holds another model under that version: the "
                    "archive's memories cannot decode with it, so nothing was stored. Import into another store."
                )
        done = 0
        for batch in reader.batches():
            existing = _existing(store, batch)
            for a in batch:
                try:
                    _is_new(existing.get((a.episode.namespace, a.episode.id)), a, keys)
                except DuplicateIdError:
                    raise _conflict(path, a) from None
            done += len(batch)
            if progress is not None:
                progress(ArchiveProgress("verify", done, m.episodes))
        # Pass 2 reads (and checks) the archive again and commits it batch by batch, after the models
        # its episodes decode with (a model is immutable: one already stored is kept, not rewritten).
        for sm in reader.models:
            store.import_model(sm.namespace, sm.model, sm.created_at)
        imported = skipped = done = 0
        bound_now = False
        for batch in reader.batches():
            existing = _existing(store, batch)
            todo = []
            for a in batch:
                try:
                    if _is_new(existing.get((a.episode.namespace, a.episode.id)), a, keys):
                        todo.append(a)
                except DuplicateIdError:  # written by another process since pass 1
                    raise _conflict(path, a) from None
            skipped += len(batch) - len(todo)
            if todo:
                assert m.embedder is not None and m.dim is not None
                if not bound_now:
                    store.bind_embedder(m.embedder, m.dim)  # an empty store takes the archive's embedder
                    bound_now = True
                if convert is not None:
                    news, arts = convert(todo)
                else:
                    news, arts = [a.new for a in todo], [a.artifact for a in todo]
                got = store.commit_batch(news, arts, (m.embedder, m.dim), replace=False)
                imported += len(got)
                skipped += len(todo) - len(got)
            done += len(batch)
            if progress is not None:
                progress(ArchiveProgress("import", done, m.episodes))
        return ImportReport(str(path), m.episodes, imported, skipped, m.embedder, dict(m.namespaces))


__all__ = [
    "ArchiveProgress", "ArchiveReader", "ExportReport", "ImportReport", "Manifest", "import_archive",
    "read_manifest", "write_archive", "write_jsonl",
]  # fmt: skip
