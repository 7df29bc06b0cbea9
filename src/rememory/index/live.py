"""The recall index of one namespace: lexical and dense indexes kept in step with the store.

The store is the source of truth. Before answering, the index compares the namespace's
row ids with the ones it holds: new rows are appended (their hashed tokens and int8 keys
come from SQLite, no cell is decoded), and rows gone from the store become tombstones,
so a forgotten episode can never be recalled again, whichever process forgot it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import RankingConfig
from .dense import DenseIndex
from .lexical import LexicalIndex, _window_sum

WINDOWS = (0, 1, 2, 8)


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

    def sync(self, rowids: np.ndarray, fetch) -> None:
        """Bring the index to exactly ``rowids``; ``fetch(new_rowids)`` returns their index rows."""
        current = set(rowids.tolist())
        for rowid in [r for r in self.slot_of if r not in current]:
            slot = self.slot_of.pop(rowid)
            self.lex.remove(slot)
            self.own.remove(slot)
            self.ctx.remove(slot)
        new = [r for r in rowids.tolist() if r not in self.slot_of]
        if new:
            rows = fetch(new)
            base = self.lex.n
            for i, row in enumerate(rows):
                self.slot_of[row[0]] = base + i
                self.ids.append(row[1])
            self.lex.add([np.frombuffer(r[6], dtype="<u4") for r in rows])
            self.own.add(np.frombuffer(b"".join(r[2] for r in rows), dtype=np.int8), np.array([r[3] for r in rows]))
            self.ctx.add(np.frombuffer(b"".join(r[4] for r in rows), dtype=np.int8), np.array([r[5] for r in rows]))
        if not self.own.ann and self.size > self.cfg.ann_threshold:
            self.own = _to_ann(self.own)
            self.ctx = _to_ann(self.ctx)

    def search(self, q: np.ndarray, q_tokens: np.ndarray, top_k: int) -> list[Scored]:
        """The ``top_k`` best slots for unit query vector ``q`` and query token hashes."""
        cfg = self.cfg
        alive = self.lex.alive
        if not alive.any():
            return []
        lex = self.lex.scores(q_tokens, WINDOWS)  # {w: (n,)}
        if self.own.ann:
            c = cfg.candidates
            pools = [self.own.candidates(q, c), self.ctx.candidates(q, c)]
            pools += [np.argpartition(-lex[w], min(c, self.lex.n) - 1)[:c] for w in WINDOWS]
            cand = np.unique(np.concatenate(pools))
            cand = cand[alive[cand]]
        else:
            cand = np.nonzero(alive)[0]
        weights = {0: cfg.bm25_own, 1: cfg.bm25_ctx1, 2: cfg.bm25_ctx2, 8: cfg.bm25_ctx8}
        fused = np.zeros(cand.size)
        for w, weight in weights.items():
            if weight:
                top = float(lex[w].max())
                if top > 0:
                    fused += weight * lex[w][cand] / top
        if cfg.dense_own or cfg.dense_near or cfg.dense_far:
            near = np.unique(np.clip((cand[:, None] + np.arange(-8, 9)[None, :]).ravel(), 0, self.lex.n - 1))
            own_full = np.zeros(self.lex.n)
            own_full[near] = np.maximum(self.own.cosine(q, near), 0.0) * alive[near]
            if cfg.dense_own:
                fused += cfg.dense_own * own_full[cand]
            count = alive.astype(np.float64)
            for w, weight in ((2, cfg.dense_near), (8, cfg.dense_far)):
                if weight:
                    fused += weight * (_window_sum(own_full, w) / np.maximum(_window_sum(count, w), 1))[cand]
        if cfg.dense_ctx:
            fused += cfg.dense_ctx * np.maximum(self.ctx.cosine(q, cand), 0.0)
        total = sum(weights.values()) + cfg.dense_own + cfg.dense_ctx + cfg.dense_near + cfg.dense_far
        if cfg.prf and cand.size:
            # Pseudo-relevance feedback: the best hits' context keys sharpen the query.
            top = cand[np.argsort(-fused, kind="stable")[: cfg.prf_docs]]
            q2 = q + cfg.prf * self.ctx.unit(top).mean(axis=0)
            q2 /= max(float(np.linalg.norm(q2)), 1e-12)
            fused += cfg.prf * np.maximum(self.ctx.cosine(q2, cand), 0.0)
            total += cfg.prf
        order = np.argsort(-fused, kind="stable")[:top_k]
        total = max(total, 1e-12)
        return [Scored(int(cand[i]), self.ids[cand[i]], float(min(max(fused[i] / total, 0.0), 1.0))) for i in order]


def _to_ann(dense: DenseIndex) -> DenseIndex:
    """Rebuild a grown namespace's keys as an HNSW index (once, when it crosses the threshold)."""
    ann = DenseIndex(dense.dim, ann=True)
    ann.add_unit(dense)
    return ann
