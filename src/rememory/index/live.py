"""The recall index of one namespace: lexical and dense indexes kept in step with the store.

The store is the source of truth. Before answering, the index compares the namespace's
row ids with the ones it holds: new rows are appended (their hashed tokens and int8 keys
come from SQLite, no cell is decoded), and rows gone from the store become tombstones,
so a forgotten episode can never be recalled again, whichever process forgot it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..store.records import IndexRow
from .config import RankingConfig
from .dense import DenseIndex
from .lexical import LexicalIndex, _cover, _window_sum


@dataclass(frozen=True)
class Scored:
    slot: int
    id: str
    score: float  # hybrid relevance in [0, 1]


class NamespaceIndex:
    """Hybrid BM25 + dense recall over one namespace."""

    def __init__(self, dim: int, cfg: RankingConfig) -> None:
        self.dim = dim
        self.cfg = cfg
        self.slot_of: dict[int, int] = {}  # store rowid -> slot
        self.ids: list[str] = []  # slot -> episode id
        self.lex = LexicalIndex()
        self.own = DenseIndex(dim, ann=False)
        self.ctx = DenseIndex(dim, ann=False)
        self.generation = -1
        self.snapshot_size = 0  # slots covered by the last snapshot written or read

    @property
    def size(self) -> int:
        return int(self.lex.alive.sum())

    def sync(self, rowids: np.ndarray, fetch: Callable[[list[int]], list[IndexRow]]) -> list[IndexRow]:
        """Bring the index to exactly ``rowids``; ``fetch(new_rowids)`` returns their index rows.

        Returns the damaged rows met: each takes its slot as a tombstone (so it is neither
        recalled nor fetched again), and the caller reports it.
        """
        current = set(rowids.tolist())
        for rowid in [r for r in self.slot_of if r not in current]:
            self._tombstone(self.slot_of.pop(rowid))
        new = [r for r in rowids.tolist() if r not in self.slot_of]
        damaged: list[IndexRow] = []
        if new:
            rows = fetch(new)
            base = self.lex.n
            for i, row in enumerate(rows):
                self.slot_of[row.rowid] = base + i
                self.ids.append(row.id)
            self.lex.add([r.tokens for r in rows])
            zero = np.zeros(self.dim, dtype=np.int8)
            for name, key, scale in (("own", "key", "key_scale"), ("ctx", "ctx_key", "ctx_key_scale")):
                keys = [zero if r.damage else getattr(r, key) for r in rows]
                getattr(self, name).add(np.concatenate(keys) if keys else zero[:0],
                                        np.array([1.0 if r.damage else getattr(r, scale) for r in rows]))  # fmt: skip
            for i, row in enumerate(rows):
                if row.damage:
                    self._tombstone(base + i)
                    damaged.append(row)
        if not self.own.ann and self.size > self.cfg.ann_threshold:
            self.own = _to_ann(self.own)
            self.ctx = _to_ann(self.ctx)
        return damaged

    def _tombstone(self, slot: int) -> None:
        self.lex.remove(slot)
        self.own.remove(slot)
        self.ctx.remove(slot)

    def lexical(self, q_tokens: np.ndarray) -> np.ndarray:
        """(n,) weighted BM25 of every slot over all window widths, each width scaled by its maximum."""
        lq = self.lex.query(q_tokens)
        out = np.zeros(self.lex.n, dtype=np.float32)
        for w, weight in self._bm25_weights().items():
            if weight:
                scores = lq.scores(w)
                top = float(scores.max()) if scores.size else 0.0
                if top > 0:
                    out += (weight / top) * scores
        return out

    def _bm25_weights(self) -> dict[int, float]:
        cfg = self.cfg
        return {0: cfg.bm25_own, 1: cfg.bm25_ctx1, 2: cfg.bm25_ctx2, 8: cfg.bm25_ctx8}

    def search(
        self, q: np.ndarray, lexical: np.ndarray, top_k: int, time: TimeSignal | None = None
    ) -> list[Scored]:
        """The ``top_k`` best slots for unit query vector ``q``, given :meth:`lexical` of its tokens.

        ``time`` restricts the candidates to its ``allowed`` slots and boosts its ``in_range`` ones.
        """
        cfg = self.cfg
        alive = self.lex.alive
        allowed = alive if time is None or time.allowed is None else alive & _fit(time.allowed, alive.size)
        if not allowed.any():
            return []
        if lexical.size < alive.size:  # rows synced in by another thread since lexical() ran
            lexical = np.concatenate([lexical, np.zeros(alive.size - lexical.size)])
        if self.own.ann:
            c = min(cfg.candidates, self.lex.n)
            pools = [self.own.candidates(q, c), self.ctx.candidates(q, c)]
            pools.append(np.argpartition(-lexical, min(2 * c, self.lex.n) - 1)[: 2 * c])
            cand = np.unique(np.concatenate(pools))
            cand = cand[allowed[cand]]
            if cand.size < top_k:  # a narrow time filter: its slots are few, score them all
                cand = np.flatnonzero(allowed)
        else:
            cand = np.flatnonzero(allowed)
        fused = lexical[cand].astype(np.float64)  # (c,)
        weights = self._bm25_weights()
        boost = time_boost(cfg, time, cand, alive.size)
        if boost is not None:
            fused += boost
        if cfg.dense_ctx:
            fused += cfg.dense_ctx * np.maximum(self.ctx.cosine(q, cand), 0.0)
        two_stage = self.own.ann and cfg.dense_own > 0
        if two_stage:
            fused += cfg.dense_own * np.maximum(self.own.cosine(q, cand), 0.0)
            keep = max(cfg.rerank, top_k)
            if cand.size > keep:  # neighbour signals read 17 keys per candidate: only for the most promising
                sel = np.sort(np.argpartition(-fused, keep - 1)[:keep])
                cand, fused = cand[sel], fused[sel]
        if cfg.dense_near or cfg.dense_far or (cfg.dense_own and not two_stage):
            far = 8 if cfg.dense_far else 2 if cfg.dense_near else 0
            near = _cover(cand, far, self.lex.n)  # cand is sorted; its neighbours, sorted
            own = np.maximum(self.own.cosine(q, near), 0.0) * alive[near]  # (len(near),)
            if cfg.dense_own and not two_stage:
                fused += cfg.dense_own * _at(near, own, cand)
            for w, weight in ((2, cfg.dense_near), (8, cfg.dense_far)):
                if weight:
                    fused += weight * _window_mean(near, own, self.lex, cand, w)
        total = sum(weights.values()) + cfg.dense_own + cfg.dense_ctx + cfg.dense_near + cfg.dense_far
        total += cfg.time_match if boost is not None else 0.0
        if cfg.prf and cand.size:
            # Pseudo-relevance feedback: the best hits' context keys sharpen the query.
            top = cand[_best(fused, cfg.prf_docs)]
            q2 = q + cfg.prf * self.ctx.unit(top).mean(axis=0)
            q2 /= max(float(np.linalg.norm(q2)), 1e-12)
            fused += cfg.prf * np.maximum(self.ctx.cosine(q2, cand), 0.0)
            total += cfg.prf
        order = _best(fused, top_k)
        total = max(total, 1e-12)
        return [Scored(int(cand[i]), self.ids[cand[i]], float(min(max(fused[i] / total, 0.0), 1.0))) for i in order]


@dataclass(frozen=True)
class TimeSignal:
    """A query's time, per slot: ``allowed`` masks a since/until filter, ``in_range`` marks the slots
    whose time falls in the range the query names (either may be None)."""

    allowed: np.ndarray | None = None  # (n,) bool
    in_range: np.ndarray | None = None  # (n,) bool


def time_boost(cfg: RankingConfig, time: TimeSignal | None, cand: np.ndarray, n: int) -> np.ndarray | None:
    """``cfg.time_match`` for the candidates inside the query's time range, or None when it names none."""
    if time is None or time.in_range is None or not cfg.time_match:
        return None
    return cfg.time_match * _fit(time.in_range, n)[cand].astype(np.float64)


def _fit(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` over ``n`` slots: slots synced in after it was made are False."""
    return mask[:n] if mask.size >= n else np.concatenate([mask, np.zeros(n - mask.size, dtype=bool)])


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties: lower position first)."""
    if k < scores.size:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.argsort(-scores, kind="stable")


def _at(slots: np.ndarray, vals: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``vals`` looked up at the slots ``at`` (0 where ``slots``, sorted, lacks one)."""
    if slots.size == 0:
        return np.zeros(at.size)
    pos = np.minimum(np.searchsorted(slots, at), slots.size - 1)
    return np.where(slots[pos] == at, vals[pos], 0.0)


def _window_mean(near: np.ndarray, vals: np.ndarray, lex: LexicalIndex, at: np.ndarray, w: int) -> np.ndarray:
    """Mean of ``vals`` (known on the sorted ``near``) over the alive slots within ``w`` of each slot of ``at``."""
    alive, n = lex.alive, lex.n
    if at.size * (2 * w + 1) > n:  # most slots: whole-array window sums beat per-neighbour lookups
        full = np.zeros(n)
        full[near] = vals
        return (_window_sum(full, w) / np.maximum(lex.alive_in_window(w), 1))[at]
    nb = at[:, None] + np.arange(-w, w + 1)[None, :]  # (len(at), 2w + 1) neighbour slots
    inside = (nb >= 0) & (nb < n)
    nb = np.where(inside, nb, 0)
    total = (_at(near, vals, nb.ravel()).reshape(nb.shape) * inside).sum(axis=1)
    count = (alive[nb] & inside).sum(axis=1)
    return total / np.maximum(count, 1)


def _to_ann(dense: DenseIndex) -> DenseIndex:
    """Rebuild a grown namespace's keys as an HNSW index (once, when it crosses the threshold)."""
    ann = DenseIndex(dense.dim, ann=True)
    ann.add_unit(dense)
    return ann
