"""Dense key search: exact cosine for small namespaces, an HNSW index for large ones.

Keys arrive int8-quantised from the store. The exact path keeps them as a float32 matrix;
the ANN path keeps an int8 HNSW graph plus the int8 keys for exact rescoring of candidates,
so memory stays near 2 bytes per dimension per key and no cell weights are ever loaded.
Where the store searches keys itself (pgvector), the ANN path asks it for candidates instead
and builds no graph; where it also serves keys by rowid, the index holds no key at all
(``held=False``: only each slot's alive flag) and recall reads the keys it scores from the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..quant import quantize_int8


@dataclass(frozen=True)
class Shaping:
    """How keys and queries are compared: cosine after taking out what every key of the namespace shares.

    ``centre`` (a) subtracts a times the mean of the namespace's alive keys from each key and from the
    query; ``drop`` (D) then projects out the top D principal directions of the keys ("all-but-the-top",
    Mu & Viswanath 2018). A sentence embedder's keys share a common direction and, in a namespace of two
    languages, a language axis along which every cosine across languages is lower: a question in Russian
    about an English memory loses to any Russian one. Without them the cosine measures what the texts say.
    a = 0 and D = 0 is the plain cosine.
    """

    centre: float = 0.0
    drop: int = 0

    @property
    def plain(self) -> bool:
        return self.centre == 0 and self.drop == 0


@dataclass(frozen=True)
class _Frame:
    """The namespace's key statistics under a :class:`Shaping`, as of ``version``."""

    version: tuple[int, int, int]
    mean: np.ndarray  # (dim,) float32, already multiplied by the centre a
    axes: np.ndarray  # (D, dim) float32, orthonormal rows: the directions projected out
    norms: np.ndarray | None  # (n,) the shaped length of every slot's key (exact path), or None (computed per call)


class _KeyStats:
    """Sum and Gram matrix of a DenseIndex's alive unit keys, kept current: O(new keys x dim^2) per append."""

    CHUNK = 4096

    def __init__(self, dim: int, *, gram: bool) -> None:
        self.dim = dim
        self._reset(gram=gram)

    def _reset(self, *, gram: bool) -> None:
        self.n = 0  # slots seen
        self.count = 0  # alive among them
        self.removed_seen = 0  # removals accounted for
        self.total = np.zeros(self.dim, np.float64)
        # Only to find principal directions (Shaping.drop): O(dim^2) per key, ~0.6 s for 100k keys here.
        self.gram: np.ndarray | None = np.zeros((self.dim, self.dim), np.float64) if gram else None

    def carried(self, removed_seen: int) -> _KeyStats:
        """A copy for another index over the same slots, whose removal count is ``removed_seen``."""
        out = _KeyStats(self.dim, gram=False)
        out.n, out.count, out.removed_seen = self.n, self.count, removed_seen
        out.total = self.total.copy()
        out.gram = None if self.gram is None else self.gram.copy()
        return out

    def update(self, dense: DenseIndex) -> None:
        unit = dense.stats_units or dense.unit  # the keys where they are: here, or in the store
        if dense.removals != self.removed_seen:  # a removal: start over (rare; O(n x dim) or O(n x dim^2))
            self._reset(gram=self.gram is not None)
            self.removed_seen = dense.removals
        n = dense.n
        for lo in range(self.n, n, self.CHUNK):
            slots = np.arange(lo, min(lo + self.CHUNK, n))
            slots = slots[dense.alive[slots]]
            u = unit(slots)  # (b, dim) float32
            self.total += u.sum(axis=0, dtype=np.float64)
            if self.gram is not None:
                self.gram += (u.T @ u).astype(np.float64)
            self.count += slots.size
        self.n = max(self.n, n)


def unit_scales(q8: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(m,) float32 factors that make int8 keys ``q8`` (m, dim), stored with ``scales``, unit vectors.

    Keys read from the store per query go through this too, so they score exactly as held ones.
    """
    norms = np.linalg.norm(q8.astype(np.float32), axis=1) * np.asarray(scales, dtype=np.float32)
    return np.asarray(scales, dtype=np.float32) / np.maximum(norms, 1e-12)  # int8 * unit -> unit vector


class DenseIndex:
    """Unit-norm keys of one namespace in insertion order (slot = position)."""

    def __init__(self, dim: int, *, ann: bool, remote: Callable[[np.ndarray, int], np.ndarray] | None = None,
                 held: bool = True) -> None:  # fmt: skip
        self.dim = dim
        self.ann = ann
        self.remote = remote  # ANN candidates from the store: (unit query, k) -> slots; then no graph here
        # False: the store keeps the keys and serves them by rowid; here only n and alive (no key is read here)
        self.held = held
        self.n = 0
        self.alive = np.zeros(0, dtype=bool)
        self._q8 = np.zeros((0, dim), dtype=np.int8)  # (n, dim) quantised keys
        self._q8_own = False  # whether _q8 is the first n rows of a buffer of ours with room to grow
        self._scale = np.zeros(0, dtype=np.float32)  # (n,) per-key scale to unit norm
        self._f32: np.ndarray | None = None  # exact path: (n, dim) float32, built lazily
        self._hnsw: Any = None  # a usearch Index once built or mapped
        self._hnsw_is_view = False  # a memory-mapped snapshot graph: copied into memory before any change
        self.shaping = Shaping()  # set by the owner (NamespaceIndex) from its RankingConfig
        self.removals = 0  # slots removed so far (the key statistics start over after one)
        self._stats: _KeyStats | None = None
        self._frame: _Frame | None = None
        self._frame_lock = threading.Lock()  # recalls of one namespace run side by side
        # Where the store keeps the keys (held False): reads unit keys of slots from it, for the key statistics.
        self.stats_units: Callable[[np.ndarray], np.ndarray] | None = None

    def add(self, q8: np.ndarray, scales: np.ndarray) -> None:
        """Append keys (int8 rows with their dequantisation scales)."""
        if len(q8) == 0:
            return
        q8 = np.array(q8, dtype=np.int8).reshape(-1, self.dim)  # a copy: the caller's array may change
        self._append(q8, unit_scales(q8, scales))

    def _append(self, q8: np.ndarray, unit: np.ndarray) -> None:
        """Append int8 keys with the scales that make them unit vectors."""
        if not self.held:  # the store serves them: only the slots are counted
            self.alive = np.concatenate([self.alive, np.ones(len(q8), dtype=bool)])
            self.n += len(q8)
            return
        slots = np.arange(self.n, self.n + len(q8))
        n, k = self.n, len(q8)
        if n == 0:  # the first keys are taken as they are (keys are never written in place): no 40 MB copy
            self._q8, self._scale, self._q8_own = q8, np.asarray(unit, dtype=np.float32), False
        else:
            # Rows past n of a buffer of our own take the new keys: one key added to 100k no longer copies all
            # (38 MB) each time. Views handed out earlier end at their n and never see a write.
            buf = self._q8.base if self._q8_own else None
            if buf is None or n + k > len(buf):
                buf = np.empty((max(n + k, n + n // 4 + 64), self.dim), dtype=np.int8)
                buf[:n] = self._q8
                self._q8_own = True
            buf[n : n + k] = q8
            self._q8 = buf[: n + k]
            self._scale = np.concatenate([self._scale, unit])
        self.alive = np.concatenate([self.alive, np.ones(len(q8), dtype=bool)])
        self.n += len(q8)
        if self.ann and self.remote is None:
            self._writable_graph().add(slots, q8)
        else:
            self._f32 = None

    def add_unit(self, other: DenseIndex) -> None:
        """Append every slot of ``other`` (tombstones stay tombstones), e.g. to switch to ANN."""
        start = self.n
        if not other.held or not self.held:  # no keys to copy: count the slots
            self.alive = np.concatenate([self.alive, np.ones(other.n, dtype=bool)])
            self.n += other.n
        elif other.n:  # its unit scales are known: no norms to compute (~0.5 s for 100k keys)
            self._append(other._q8, other._scale)
        for slot in np.nonzero(~other.alive)[0]:
            self.remove(int(start + slot))
        st = other._stats
        if start == 0 and st is not None and st.n == other.n and st.removed_seen == other.removals:
            # The same keys: their statistics carry over (an index that holds none would read them all back).
            self._stats = st.carried(self.removals)

    def key_bytes(self) -> int:
        """Bytes of per-key data this index holds: int8 keys, scales, the float32 matrix and the HNSW graph."""
        graph = self._hnsw.memory_usage if self._hnsw is not None and not self._hnsw_is_view else 0
        f32 = self._f32.nbytes if self._f32 is not None else 0
        return int(self._q8.nbytes + self._scale.nbytes + f32 + graph)

    def unit(self, slots: np.ndarray) -> np.ndarray:
        """Unit key vectors of ``slots``: (len(slots), dim) float32."""
        return self._q8[slots].astype(np.float32) * self._scale[slots, None]

    def rows(self, slots: np.ndarray) -> np.ndarray:
        """Like :meth:`unit`, but the exact path hands out its own matrix when ``slots`` are all of them."""
        if not self.ann and slots.size == self.n and (self.n == 0 or slots[-1] == self.n - 1):
            return self._matrix()  # slots are sorted and distinct: that is exactly 0 .. n - 1
        return self.unit(slots)

    def remove(self, slot: int) -> None:
        if self.alive[slot]:
            self.removals += 1
        self.alive[slot] = False
        if self.ann and self.remote is None and self._hnsw is not None:
            self._writable_graph().remove(int(slot))

    def _graph(self):
        if self._hnsw is None:
            from usearch.index import Index

            self._hnsw = Index(ndim=self.dim, metric="cos", dtype="i8", connectivity=16, expansion_add=64,
                               expansion_search=128)  # fmt: skip
        return self._hnsw

    def _writable_graph(self):
        graph = self._graph()
        if self._hnsw_is_view:
            graph = self._hnsw = graph.copy()
            self._hnsw_is_view = False
        return graph

    def _matrix(self) -> np.ndarray:
        if self._f32 is None:
            self._f32 = self._q8.astype(np.float32) * self._scale[:, None]  # (n, dim) unit rows
        return self._f32

    def frame(self) -> _Frame | None:
        """The key statistics :attr:`shaping` compares with, current as of the last append (None: plain cosine)."""
        shaping = self.shaping
        if shaping.plain:
            return None
        n = self.n  # read once: a sync in another thread may append meanwhile
        with self._frame_lock:
            version = (n, self.removals, hash(shaping))
            frame = self._frame
            if frame is not None and frame.version == version:
                return frame
            stats = self._stats
            if stats is None or (shaping.drop and stats.gram is None):
                stats = self._stats = _KeyStats(self.dim, gram=bool(shaping.drop))
            stats.update(self)
            if stats.count < 2:
                return None
            mean = stats.total / stats.count  # (dim,)
            axes = np.zeros((0, self.dim), np.float32)
            if stats.gram is not None and shaping.drop:
                cov = stats.gram / stats.count - np.outer(mean, mean)  # (dim, dim)
                _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
                axes = vecs[:, ::-1][:, : shaping.drop].T.astype(np.float32)  # (D, dim)
            m = (shaping.centre * mean).astype(np.float32)
            norms = None
            if not self.ann:
                norms = self._shaped_norms(self._matrix()[:n], m, axes)
            frame = self._frame = _Frame(version, m, axes, norms)
            return frame

    def stats_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The key statistics as arrays for a snapshot (none while the shaping is plain)."""
        if self.frame() is None or self._stats is None:
            return {}
        st = self._stats
        return {f"{prefix}_stats_seen": np.array([st.n, st.count], dtype=np.int64), f"{prefix}_stats_total": st.total}

    def restore_stats(self, a: Mapping[str, np.ndarray], prefix: str) -> None:
        """Take the statistics :meth:`stats_arrays` gave if they cover exactly this index's slots (else compute them
        when first needed). The principal directions' Gram matrix is not kept: ``Shaping.drop`` recomputes it."""
        seen, total = a.get(f"{prefix}_stats_seen"), a.get(f"{prefix}_stats_total")
        if seen is None or total is None:
            return
        seen, total = np.asarray(seen), np.asarray(total, dtype=np.float64)
        if seen.shape != (2,) or total.shape != (self.dim,) or not np.isfinite(total).all():
            return
        if int(seen[0]) != self.n or int(seen[1]) != int(self.alive[: self.n].sum()):
            return
        st = _KeyStats(self.dim, gram=False)
        st.n, st.count, st.removed_seen, st.total = self.n, int(seen[1]), self.removals, total.copy()
        with self._frame_lock:
            self._stats, self._frame = st, None

    @staticmethod
    def shape_rows(units: np.ndarray, frame: _Frame) -> np.ndarray:
        """Unit keys (rows) in the shaped space: P(k - m), normalised; zero rows (deleted keys) stay zero."""
        v = units - frame.mean
        if frame.axes.size:
            v = v - (v @ frame.axes.T) @ frame.axes
        v = np.where(np.abs(units).sum(axis=1, keepdims=True) > 0, v, np.float32(0.0))
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    @staticmethod
    def shaped(frame: _Frame, qs: np.ndarray, dots: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Shaped cosines from ``dots`` = units . qs (``qs`` from :meth:`shape_query`) and the unit keys."""
        return (dots - float(frame.mean @ qs)) / DenseIndex._shaped_norms(units, frame.mean, frame.axes)

    @staticmethod
    def _shaped_norms(keys: np.ndarray, m: np.ndarray, axes: np.ndarray) -> np.ndarray:
        """|P(k - m)| for each unit key row k, P the projection that drops ``axes``: (rows,)."""
        sq = 1.0 - 2.0 * (keys @ m) + float(m @ m)  # |k - m|^2
        if axes.size:
            along = keys @ axes.T - axes @ m  # (rows, D) components along the dropped axes
            sq = sq - (along * along).sum(axis=1)
        return np.sqrt(np.maximum(sq, 1e-12)).astype(np.float32)

    def shape_query(self, q: np.ndarray, frame: _Frame | None) -> np.ndarray:
        """The unit query in the shaped space: P(q - m), normalised (``q`` itself when plain)."""
        return q if frame is None else self.shape_rows(q[None, :], frame)[0]

    def cosine(self, q: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        """Cosine of unit query ``q`` to every slot (or to ``slots``) under :attr:`shaping`; tombstones score -1."""
        frame = self.frame()
        if frame is None:
            return self._cosine(q, slots)
        qs = self.shape_query(q, frame)
        # P(k - m) . qs = (k - m) . qs, since qs is already orthogonal to the dropped axes: one product with the
        # stored keys, then each key's shaped length.
        dots = self._cosine(qs, slots)  # tombstones -1
        alive = self.alive if slots is None else self.alive[slots]
        if frame.norms is not None and frame.version[0] == self.n:  # the exact path's lengths, computed once
            norms = frame.norms if slots is None else frame.norms[slots]
            return np.where(alive, (dots - float(frame.mean @ qs)) / norms, -1.0)
        return np.where(alive, self.shaped(frame, qs, dots, self.unit(np.arange(self.n) if slots is None else slots)),
                        -1.0)  # fmt: skip

    def _cosine(self, q: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        """Exact plain cosine of unit query ``q`` to every slot (or to ``slots``); tombstones score -1."""
        if slots is None:
            sims = (self._q8.astype(np.float32) @ q) * self._scale if self.ann else self._matrix() @ q
            return np.where(self.alive, sims, -1.0)
        if self.ann:
            sims = self._q8[slots].astype(np.float32) @ q * self._scale[slots]
        elif slots.size * 4 > self.n:  # many slots: one product over the matrix beats copying its rows
            sims = (self._matrix() @ q)[slots]
        else:
            sims = self._matrix()[slots] @ q
        return np.where(self.alive[slots], sims, -1.0)

    def candidates(self, q: np.ndarray, k: int) -> np.ndarray:
        """Slots of (about) the ``k`` nearest keys: exact for small namespaces, HNSW for large ones."""
        k = min(k, int(self.alive.sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        # An index of plain cosines, searched with the shaped query: it ranks by P(k - m) . qs up to each
        # key's shaped length, close enough to gather candidates that are then scored exactly.
        q = self.shape_query(q, self.frame()) if self.ann else q
        if not self.ann:
            sims = self.cosine(q)
            return np.argpartition(-sims, k - 1)[:k]
        if self.remote is not None:
            return self.remote(q, k)
        q8, _ = quantize_int8(q)
        found = self._graph().search(q8, k)
        return np.asarray(found.keys, dtype=np.int64)
