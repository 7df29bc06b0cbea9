"""Dense key search: exact cosine for small namespaces, an HNSW index for large ones.

Keys arrive int8-quantised from the store. The exact path keeps them as a float32 matrix;
the ANN path keeps an int8 HNSW graph plus the int8 keys for exact rescoring of candidates,
so memory stays near 2 bytes per dimension per key and no cell weights are ever loaded.
Where the store searches keys itself (pgvector), the ANN path asks it for candidates instead
and builds no graph; where it also serves keys by rowid, the index holds no key at all
(``held=False``: only each slot's alive flag) and recall reads the keys it scores from the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..quant import quantize_int8


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

    def cosine(self, q: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        """Exact cosine of unit query ``q`` to every slot (or to ``slots``); tombstones score -1."""
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
        if not self.ann:
            sims = self.cosine(q)
            return np.argpartition(-sims, k - 1)[:k]
        if self.remote is not None:
            return self.remote(q, k)
        q8, _ = quantize_int8(q)
        found = self._graph().search(q8, k)
        return np.asarray(found.keys, dtype=np.int64)
