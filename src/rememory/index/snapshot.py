"""Snapshots of large namespaces' recall indexes, so a new process starts in well under a second.

A snapshot is a small ``.npz`` manifest plus ``.npy`` arrays and the two usearch graphs (no
pickle), each written to a temporary file and renamed into place; a new process maps the
large parts instead of reading them. It is only a cache: on load, the index is synced
against the store's current row ids, so rows added or forgotten since are applied, and a
missing snapshot just means building from the store again, and an unreadable one is
reported (a warning naming it) and rebuilt.

A snapshot never holds a forgotten episode: ``save`` writes only live slots' data (dead
slots' ids, postings and keys are dropped or zeroed, and an HNSW graph that ever held one is
rebuilt without it), and ``forget`` discards the namespace's snapshot under the same lock.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import logging
import os
import struct
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..fsutil import private_dir
from .config import RankingConfig
from .dense import DenseIndex, unit_scales
from .lexical import LexicalIndex
from .live import KeySource, NamespaceIndex

logger = logging.getLogger(__name__)

FORMAT = 3  # 3: each slot's episode time; older snapshots lack it and are rebuilt from the store
LOCK_FILE = ".lock"
MAPPED = ("tok", "doc", "tf", "own_q8", "own_scale", "ctx_q8", "ctx_scale")  # the large arrays


def _stem(directory: Path, namespace: str) -> Path:
    return directory / hashlib.blake2b(namespace.encode("utf-8"), digest_size=8).hexdigest()


def _part(stem: Path, version: str, name: str) -> Path:
    return stem.with_name(f"{stem.name}-{version}.{name}")


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the snapshot directory's lock (across processes): saving and discarding never interleave."""
    private_dir(directory)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def discard(directory: Path, namespace: str) -> None:
    """Delete every file of ``namespace``'s snapshot (call under :func:`locked`)."""
    stem = _stem(directory, namespace)
    for p in [stem.with_suffix(".npz"), *directory.glob(f"{stem.name}-*"), stem.with_suffix(".own.usearch"),
              stem.with_suffix(".ctx.usearch")]:  # fmt: skip
        p.unlink(missing_ok=True)


def _sealed(directory: Path, namespace: str) -> Path:
    """An encrypted store's snapshot: one sealed file (``<stem>-sealed.bin``, so :func:`discard` removes it)."""
    return _part(_stem(directory, namespace), "sealed", "bin")


def write_sealed(directory: Path, namespace: str, data: bytes) -> None:
    """Replace ``namespace``'s sealed snapshot with ``data`` (call under :func:`locked`)."""
    private_dir(directory)
    _atomic(_sealed(directory, namespace), lambda p: Path(p).write_bytes(data))


def read_sealed(directory: Path, namespace: str) -> bytes | None:
    try:
        return _sealed(directory, namespace).read_bytes()
    except FileNotFoundError:
        return None


def _atomic(target: Path, write: Callable[[str], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _save_graph(graph: Any, path: str) -> None:
    graph.save(path)


def _save_array(arr: np.ndarray, path: str) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to a path
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def save(idx: NamespaceIndex, directory: Path, namespace: str, embedder: str = "") -> None:
    """Write ``idx`` under ``directory``: versioned array files first, then the manifest that names them.

    A reader opens the manifest, then the files of its version, memory-mapped: a new process
    starts without reading the arrays, and only the pages a query touches become resident.
    """
    private_dir(directory)
    stem = _stem(directory, namespace)
    version = uuid.uuid4().hex[:12]
    big, rowids = _live_arrays(idx)
    lex, live = idx.lex, idx.lex.alive
    for name, arr in big.items():
        _atomic(_part(stem, version, f"{name}.npy"), functools.partial(_save_array, arr))
    if idx.own.ann:
        for name, dense in (("own", idx.own), ("ctx", idx.ctx)):
            graph = dense._graph() if dense.alive.all() else _live_graph(dense)
            _atomic(_part(stem, version, f"{name}.usearch"), functools.partial(_save_graph, graph))
    ids = [i if live[s] else "" for s, i in enumerate(idx.ids)]
    manifest = {
        "format": np.array([FORMAT]),
        "dim": np.array([idx.dim]),
        "embedder": np.frombuffer(embedder.encode("utf-8"), dtype=np.uint8),  # the model that made the keys
        "version": np.frombuffer(version.encode("ascii"), dtype=np.uint8),
        "ann": np.array([idx.own.ann]),
        "rowids": rowids,
        "ids": np.frombuffer("\n".join(ids).encode("utf-8"), dtype=np.uint8),
        "alive": lex.alive,
        "dl": lex.dl,
        "own_alive": idx.own.alive,
        "ctx_alive": idx.ctx.alive,
        "times": _live_times(idx),
        **idx.coherence_arrays(),
    }

    def write_manifest(p: str) -> None:
        with open(p, "wb") as fh:  # a file object: np.savez would append ".npz" to a path
            np.savez(fh, **cast(dict[str, Any], manifest))

    _atomic(stem.with_suffix(".npz"), write_manifest)
    stale = [p for p in directory.glob(f"{stem.name}-*") if not p.name.startswith(f"{stem.name}-{version}.")]
    stale += [stem.with_suffix(".own.usearch"), stem.with_suffix(".ctx.usearch")]  # format 1
    for old in stale:  # on POSIX, processes that mapped them keep their view
        try:
            old.unlink(missing_ok=True)
        except OSError:  # still mapped where that forbids deletion (Windows): the next save retries
            continue


def _live_arrays(idx: NamespaceIndex) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The large arrays of ``idx`` holding live slots' data only (dead slots' postings dropped, keys zeroed),
    and the rowid of each slot (-1 for none)."""
    lex = idx.lex
    lex._merge()
    rowids = np.full(lex.n, -1, dtype=np.int64)
    for rowid, slot in idx.slot_of.items():
        rowids[slot] = rowid
    live = lex.alive
    keep = live[lex._doc]  # postings of live slots only: a forgotten episode's tokens are never written
    big: dict[str, np.ndarray] = {"tok": lex._tok[keep], "doc": lex._doc[keep], "tf": lex._tf[keep]}
    for name, dense in (("own", idx.own), ("ctx", idx.ctx)):
        if not dense.held:  # the store keeps the keys: none to write (the snapshot shrinks by ~770 bytes a slot)
            big[f"{name}_q8"], big[f"{name}_scale"] = dense._q8, dense._scale
            continue
        big[f"{name}_q8"] = np.where(live[:, None], dense._q8, 0).astype(np.int8)
        big[f"{name}_scale"] = np.where(live, dense._scale, 0).astype(dense._scale.dtype)
    return big, rowids


def _live_times(idx: NamespaceIndex) -> np.ndarray:
    """(n,) each slot's episode time in epoch seconds, NaN for none and for dead slots."""
    return np.where(idx.lex.alive, idx.times[: idx.lex.n], np.nan)


def _times(a: dict[str, np.ndarray], n: int) -> np.ndarray:
    times = np.array(a["times"], dtype=np.float64)
    if times.shape != (n,):
        raise ValueError(f"it has {times.size} episode times for {n} slots")
    return times


def to_bytes(idx: NamespaceIndex) -> bytes:
    """``idx`` as one ``.npz`` (no pickle, no HNSW graph), for a store that keeps snapshots itself.

    Only live slots' data goes in, as in :func:`save`; postings are narrowed to 32 bits.
    """
    big, rowids = _live_arrays(idx)
    big["doc"] = big["doc"].astype(np.int32)
    big["tf"] = big["tf"].astype(np.float32)
    live = idx.lex.alive
    ids = [i if live[s] else "" for s, i in enumerate(idx.ids)]
    arrays = {
        **big, "format": np.array([FORMAT]), "dim": np.array([idx.dim]), "rowids": rowids,
        "ids": np.frombuffer("\n".join(ids).encode("utf-8"), dtype=np.uint8), "alive": live, "dl": idx.lex.dl,
        "own_alive": idx.own.alive, "ctx_alive": idx.ctx.alive, "times": _live_times(idx),
        **idx.coherence_arrays(),
    }  # fmt: skip
    buf = io.BytesIO()
    np.savez(buf, **cast(dict[str, Any], arrays))
    return buf.getvalue()


def from_bytes(
    data: bytes, dim: int, cfg: RankingConfig, nearest: Callable[[np.ndarray, int, bool], list[int]] | None,
    keys: KeySource | None = None,
) -> NamespaceIndex:
    """The index :func:`to_bytes` wrote; ``ValueError`` (or ``KeyError``, ``zipfile.BadZipFile``) if it is unusable.

    The large arrays stay views of ``data`` (read-only, never written: keys and postings); the ones an index
    changes in place (alive flags, lengths, times) are copied. A snapshot of an index whose store held the
    keys has none: it is usable only by an index that reads them from the store too (``nearest`` and ``keys``).
    """
    a = _views(data)
    if int(a["format"][0]) != FORMAT or int(a["dim"][0]) != dim:
        raise ValueError(f"it has format {int(a['format'][0])} and {int(a['dim'][0])} dimensions")
    idx = NamespaceIndex(dim, cfg, nearest, keys)
    ids = bytes(a["ids"]).decode("utf-8")
    idx.ids = ids.split("\n") if ids else []
    idx.slot_of = _slot_of(a["rowids"], a["alive"])
    idx.rowids = np.array(a["rowids"], dtype=np.int64)
    lex = LexicalIndex()
    lex.n, lex.alive, lex.dl = len(a["alive"]), a["alive"].copy(), a["dl"].copy()
    lex._tok, lex._doc, lex._tf = a["tok"], a["doc"].astype(np.int64), a["tf"].astype(np.float64)
    idx.lex = lex
    idx.times = _times(a, lex.n)
    keyless = lex.n > 0 and a["own_q8"].shape[0] == 0 and a["ctx_q8"].shape[0] == 0
    for name in ("own", "ctx"):
        dense = DenseIndex(dim, ann=False, held=not keyless)
        dense.n = len(a[f"{name}_alive"])
        dense._q8, dense._scale, dense.alive = a[f"{name}_q8"], a[f"{name}_scale"], a[f"{name}_alive"].copy()
        setattr(idx, name, dense)
    if len(idx.ids) != lex.n or idx.rowids.shape != (lex.n,) or (
            not keyless and idx.own._q8.shape != (lex.n, dim)):  # fmt: skip
        raise ValueError(f"it lists {len(idx.ids)} ids and {len(idx.own._q8)} keys for {lex.n} slots")
    idx.restore_coherence(a)
    if keyless and keys is not None and idx.size <= cfg.ann_threshold:
        _read_keys(idx, keys)  # a process that holds keys at this size (a higher ann_threshold): read them once
    idx.convert_if_large()
    if keyless and (idx.own.held or not idx.own.ann):
        raise ValueError("it holds no keys (its store serves them), and this index keeps them in memory")
    if not keyless and not idx.own.held:  # a snapshot with keys that are now dropped: free the blob (~100 MB)
        lex._tok = lex._tok.copy()
    return idx


def _read_keys(idx: NamespaceIndex, keys: KeySource, batch: int = 8192) -> None:
    """Give a keyless snapshot's index every alive slot's keys, read from the store by rowid, in batches.

    A row deleted since the snapshot gets a zero key (it scores nothing, and the next sync tombstones it).
    """
    n, dim = idx.lex.n, idx.dim
    q8 = {k: np.zeros((n, dim), dtype=np.int8) for k in ("own", "ctx")}
    unit = {k: np.zeros(n, dtype=np.float32) for k in ("own", "ctx")}
    slots = np.flatnonzero(idx.own.alive)
    for start in range(0, slots.size, batch):
        part = slots[start : start + batch]
        got = keys.rows(idx.rowids[part].tolist(), dim, context=True)
        where = dict(zip(idx.rowids[part].tolist(), part.tolist()))
        at = np.array([where[r] for r in got.rowids.tolist()], dtype=np.int64)
        for k, key, scale in (("own", got.key, got.key_scale), ("ctx", got.ctx_key, got.ctx_key_scale)):
            q8[k][at], unit[k][at] = key, unit_scales(key, scale)
    for name in ("own", "ctx"):
        dense = DenseIndex(dim, ann=False)
        dense.n, dense._q8, dense._scale, dense.alive = n, q8[name], unit[name], getattr(idx, name).alive
        setattr(idx, name, dense)


def _views(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of the uncompressed ``.npz`` in ``data`` (as :func:`to_bytes` writes it), each a read-only
    view of ``data``: np.load would copy all ~100 MB of a 100k-episode index once more on a cold start."""
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"its member {info.filename!r} is not a stored .npy array")
            at = info.header_offset
            if data[at : at + 4] != b"PK\x03\x04" or at + 30 > len(data):
                raise ValueError(f"its member {info.filename!r} has no local header")
            name_len, extra_len = struct.unpack_from("<HH", data, at + 26)
            start = at + 30 + name_len + extra_len  # the member's bytes: an .npy header, then the array
            head = io.BytesIO(data[start : start + min(info.file_size, 65536)])
            version = np.lib.format.read_magic(head)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
            else:
                raise ValueError(f"its member {info.filename!r} has .npy version {version}")
            count = int(np.prod(shape, dtype=np.int64))
            if fortran or dtype.hasobject or head.tell() + count * dtype.itemsize != info.file_size:
                raise ValueError(f"its member {info.filename!r} is not a plain array of its stated size")
            out[info.filename[: -len(".npy")]] = np.frombuffer(data, dtype, count, start + head.tell()).reshape(shape)
    return out


def _slot_of(rowids: np.ndarray, alive: np.ndarray) -> dict[int, int]:
    """Store rowid -> slot for the live slots (vectorised: a Python loop over 100k numpy scalars took ~0.1 s)."""
    rowids, alive = np.asarray(rowids, dtype=np.int64), np.asarray(alive, dtype=bool)
    if rowids.shape != alive.shape:
        raise ValueError(f"it has {rowids.size} rowids for {alive.size} slots")
    keep = (rowids >= 0) & alive
    return dict(zip(rowids[keep].tolist(), np.flatnonzero(keep).tolist()))


def _live_graph(dense: DenseIndex) -> Any:
    """A new HNSW graph of ``dense``'s live slots: usearch keeps a removed vector's bytes in its file."""
    from usearch.index import Index

    graph = Index(ndim=dense.dim, metric="cos", dtype="i8", connectivity=16, expansion_add=64, expansion_search=128)
    slots = np.flatnonzero(dense.alive)
    if slots.size:
        graph.add(slots, dense._q8[slots])
    return graph


def load(directory: Path, namespace: str, dim: int, cfg: RankingConfig, embedder: str = "") -> NamespaceIndex | None:
    """The snapshot of ``namespace``, or None if there is none usable (then the caller rebuilds).

    A snapshot whose keys another embedder made is not usable: a reembed that stopped between switching
    the store and discarding the snapshots must not leave recall on the old keys.
    """
    stem = _stem(directory, namespace)
    path = stem.with_suffix(".npz")
    if not path.exists():
        return None
    try:
        return _load(stem, path, dim, cfg, embedder)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    # A damaged or half-replaced cache is rebuilt from the store, the source of truth; say so.
    logger.warning("The recall snapshot %s is unreadable (%s); rebuilding the index from the store.", path, why)
    return None


def _load(stem: Path, path: Path, dim: int, cfg: RankingConfig, embedder: str) -> NamespaceIndex | None:
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or int(z["format"][0]) != FORMAT or int(z["dim"][0]) != dim:
            return None
        if "embedder" not in z.files or bytes(z["embedder"]).decode("utf-8") != embedder:
            return None
        a = {k: z[k] for k in z.files}
    version = bytes(a["version"]).decode("ascii")
    for name in MAPPED:
        a[name] = np.load(_part(stem, version, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
    idx = NamespaceIndex(dim, cfg)
    ids = bytes(a["ids"]).decode("utf-8")
    idx.ids = ids.split("\n") if ids else []
    idx.slot_of = _slot_of(a["rowids"], a["alive"])
    idx.rowids = np.array(a["rowids"], dtype=np.int64)
    lex = LexicalIndex()
    lex.n, lex.alive, lex.dl = len(a["alive"]), a["alive"].copy(), a["dl"].copy()
    lex._tok, lex._doc, lex._tf = a["tok"], a["doc"], a["tf"]
    idx.lex = lex
    idx.times = _times(a, lex.n)
    # The graphs serve only if this ranking wants ANN at this size (snapshots outlive settings).
    ann = bool(a["ann"][0]) and int(a["alive"].sum()) > cfg.ann_threshold
    for name in ("own", "ctx"):
        dense = DenseIndex(dim, ann=ann)
        dense.n = len(a[f"{name}_alive"])
        dense._q8, dense._scale, dense.alive = a[f"{name}_q8"], a[f"{name}_scale"], a[f"{name}_alive"].copy()
        if ann:
            from usearch.index import Index

            dense._hnsw = Index.restore(str(_part(stem, version, f"{name}.usearch")), view=True)
            if dense._hnsw is None:
                raise ValueError(f"its {name} graph is unreadable")
            dense._hnsw_is_view = True
        setattr(idx, name, dense)
    if len(idx.ids) != lex.n:
        raise ValueError(f"it lists {len(idx.ids)} ids for {lex.n} slots")
    idx.restore_coherence(a)
    return idx
