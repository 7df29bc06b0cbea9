"""BM25 over hashed tokens, for an episode and for windows of its neighbours.

Documents sit in insertion order. A window field treats "the episode and its ``w``
neighbours on each side" as one document: its term frequencies and length are sums over
the window, computed at query time by convolution, so one set of postings serves every
window width exactly. Adds append to a small unsorted tail that is merged into the sorted
postings once it grows; removals are tombstones. Neither rebuilds the index.
"""

from __future__ import annotations

import numpy as np

K1 = 1.2
B = 0.75


class LexicalIndex:
    """Incremental BM25 postings for one namespace."""

    def __init__(self) -> None:
        self.n = 0  # slots, including tombstones
        self.alive = np.zeros(0, dtype=bool)  # (n,)
        self.dl = np.zeros(0, dtype=np.float64)  # (n,) document lengths (0 for tombstones)
        self._tok = np.zeros(0, dtype=np.uint32)  # sorted postings: token, slot, term frequency
        self._doc = np.zeros(0, dtype=np.int64)
        self._tf = np.zeros(0, dtype=np.float64)
        self._tail: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._tail_size = 0

    def add(self, tokens: list[np.ndarray]) -> None:
        """Append documents (each an array of uint32 token hashes) at the end, in order."""
        if not tokens:
            return
        slots = np.repeat(np.arange(self.n, self.n + len(tokens)), [len(t) for t in tokens])
        flat = np.concatenate([np.asarray(t, dtype=np.uint32) for t in tokens])
        # one (token, slot) pair per distinct token of each document, with its count
        pairs, counts = np.unique(np.stack([slots, flat.astype(np.int64)], axis=1), axis=0, return_counts=True)
        self._tail.append((pairs[:, 1].astype(np.uint32), pairs[:, 0], counts.astype(np.float64)))
        self._tail_size += len(pairs)
        self.dl = np.concatenate([self.dl, [float(len(t)) for t in tokens]])
        self.alive = np.concatenate([self.alive, np.ones(len(tokens), dtype=bool)])
        self.n += len(tokens)
        if self._tail_size > max(4096, self._tok.size // 8):
            self._merge()

    def remove(self, slot: int) -> None:
        """Tombstone a document: it no longer matches or counts in any statistic."""
        self.alive[slot] = False
        self.dl[slot] = 0.0

    def _merge(self) -> None:
        if not self._tail:
            return
        tok = np.concatenate([self._tok] + [t for t, _, _ in self._tail])
        doc = np.concatenate([self._doc] + [d for _, d, _ in self._tail])
        tf = np.concatenate([self._tf] + [f for _, _, f in self._tail])
        order = np.argsort(tok, kind="stable")
        self._tok, self._doc, self._tf = tok[order], doc[order], tf[order]
        self._tail, self._tail_size = [], 0

    def _postings(self, token: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(self._tok, [token, token + 1])
        docs, tfs = [self._doc[lo:hi]], [self._tf[lo:hi]]
        for t, d, f in self._tail:
            m = t == token
            if m.any():
                docs.append(d[m])
                tfs.append(f[m])
        return np.concatenate(docs), np.concatenate(tfs)

    def scores(self, query: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        """BM25 of every slot for each window width (0 = the episode alone): {w: (n,) scores}."""
        out = {w: np.zeros(self.n) for w in windows}
        live = int(self.alive.sum())
        if live == 0 or len(query) == 0:
            return out
        dl_w = {w: _window_sum(self.dl, w) for w in windows}
        avg_w = {w: max(float(dl_w[w][self.alive].mean()), 1e-9) for w in windows}
        for token in np.unique(np.asarray(query, dtype=np.uint32)):
            docs, tfs = self._postings(int(token))
            keep = self.alive[docs]
            if not keep.any():
                continue
            tf = np.bincount(docs[keep], weights=tfs[keep], minlength=self.n)  # (n,)
            for w in windows:
                tf_w = _window_sum(tf, w)
                df = int(np.count_nonzero(tf_w[self.alive]))
                idf = np.log(1.0 + (live - df + 0.5) / (df + 0.5))
                norm = K1 * (1.0 - B + B * dl_w[w] / avg_w[w])
                out[w] += idf * tf_w * (K1 + 1.0) / (tf_w + norm)
        for w in windows:
            out[w][~self.alive] = 0.0
        return out


def _window_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum of ``x`` over each slot and its ``w`` neighbours on each side."""
    if w == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(x.size)
    lo = np.clip(idx - w, 0, x.size)
    hi = np.clip(idx + w + 1, 0, x.size)
    return c[hi] - c[lo]
