"""Snapshots of large namespaces' recall indexes, so a new process starts in well under a second.

A snapshot is an ``.npz`` of plain arrays (no pickle) plus the two usearch graphs, written to
temporary files and renamed into place. It is only a cache: on load, the index is synced
against the store's current row ids, so rows added or forgotten since are applied, and a
missing or unreadable snapshot just means building from SQLite again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .config import RankingConfig
from .dense import DenseIndex
from .lexical import LexicalIndex
from .live import NamespaceIndex

FORMAT = 1


def _stem(directory: Path, namespace: str) -> Path:
    return directory / hashlib.blake2b(namespace.encode("utf-8"), digest_size=8).hexdigest()


def save(idx: NamespaceIndex, directory: Path, namespace: str) -> None:
    """Write ``idx`` atomically under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = _stem(directory, namespace)
    lex = idx.lex
    lex._merge()
    rowids = np.full(lex.n, -1, dtype=np.int64)
    for rowid, slot in idx.slot_of.items():
        rowids[slot] = rowid
    arrays = {
        "format": np.array([FORMAT]),
        "dim": np.array([idx.dim]),
        "rowids": rowids,
        "ids": np.frombuffer("\n".join(idx.ids).encode("utf-8"), dtype=np.uint8),
        "alive": lex.alive,
        "dl": lex.dl,
        "tok": lex._tok,
        "doc": lex._doc,
        "tf": lex._tf,
    }
    for name, dense in (("own", idx.own), ("ctx", idx.ctx)):
        arrays[f"{name}_q8"] = dense._q8
        arrays[f"{name}_scale"] = dense._scale
        arrays[f"{name}_alive"] = dense.alive

    def write_npz(p: str) -> None:
        with open(p, "wb") as fh:  # a file object: np.savez would append ".npz" to a path
            np.savez(fh, **arrays)

    files = {stem.with_suffix(".npz"): write_npz}
    if idx.own.ann:
        files[stem.with_suffix(".own.usearch")] = lambda p: idx.own._graph().save(str(p))
        files[stem.with_suffix(".ctx.usearch")] = lambda p: idx.ctx._graph().save(str(p))
    for target, write in files.items():
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


def load(directory: Path, namespace: str, dim: int, cfg: RankingConfig) -> NamespaceIndex | None:
    """The snapshot of ``namespace``, or None if there is none usable (then the caller rebuilds)."""
    stem = _stem(directory, namespace)
    path = stem.with_suffix(".npz")
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"][0]) != FORMAT or int(z["dim"][0]) != dim:
                return None
            a = {k: z[k] for k in z.files}
        idx = NamespaceIndex(dim, cfg)
        ids = bytes(a["ids"]).decode("utf-8")
        idx.ids = ids.split("\n") if ids else []
        idx.slot_of = {int(r): s for s, r in enumerate(a["rowids"]) if r >= 0 and a["alive"][s]}
        lex = LexicalIndex()
        lex.n, lex.alive, lex.dl = len(a["alive"]), a["alive"].copy(), a["dl"].copy()
        lex._tok, lex._doc, lex._tf = a["tok"], a["doc"], a["tf"]
        idx.lex = lex
        ann = stem.with_suffix(".own.usearch").exists()
        for name in ("own", "ctx"):
            dense = DenseIndex(dim, ann=ann)
            dense.n = len(a[f"{name}_alive"])
            dense._q8, dense._scale, dense.alive = a[f"{name}_q8"], a[f"{name}_scale"], a[f"{name}_alive"].copy()
            if ann:
                from usearch.index import Index

                dense._hnsw = Index.restore(str(stem.with_suffix(f".{name}.usearch")))
            setattr(idx, name, dense)
        if len(idx.ids) != lex.n:
            return None
        return idx
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, RuntimeError):
        return None  # a damaged cache is rebuilt from the store, which is the source of truth
