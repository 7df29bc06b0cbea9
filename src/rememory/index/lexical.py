"""BM25 over hashed tokens, for an episode and for windows of its neighbours.

Documents sit in insertion order. A window field treats "the episode and its ``w``
neighbours on each side" as one document: its term frequencies and length are sums over
the window, computed at query time by convolution, so one set of postings serves every
window width exactly. Adds append to a small unsorted tail that is merged into the sorted
postings once it grows; removals are tombstones. Neither rebuilds the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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
        self._cached: _Stats | None = None

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
        self._cached = None
        if self._tail_size > max(4096, self._tok.size // 8):
            self._merge()

    def remove(self, slot: int) -> None:
        """Tombstone a document: it no longer matches or counts in any statistic."""
        self.alive[slot] = False
        self.dl[slot] = 0.0
        self._cached = None

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
        """Slots (ascending: the tail only holds slots newer than the sorted part) and term frequencies."""
        key = np.uint32(token)  # a Python int key would make numpy cast all postings to int64 per lookup
        lo, hi = int(np.searchsorted(self._tok, key, "left")), int(np.searchsorted(self._tok, key, "right"))
        docs, tfs = [self._doc[lo:hi]], [self._tf[lo:hi]]
        for t, d, f in self._tail:
            m = t == token
            if m.any():
                docs.append(d[m])
                tfs.append(f[m])
        return np.concatenate(docs), np.concatenate(tfs)

    def _stats(self) -> _Stats:
        """Per-index constants of every query, recomputed only after an add or a removal."""
        if self._cached is None:
            c_alive = np.concatenate([[0], np.cumsum(self.alive, dtype=np.int64)])
            self._cached = _Stats(int(c_alive[-1]), c_alive, {}, {})
        return self._cached

    def alive_in_window(self, w: int) -> np.ndarray:
        """(n,) how many alive slots each window of width ``w`` holds (cached until the next change)."""
        st = self._stats()
        got = st.alive_w.get(w)
        if got is None:
            got = st.alive_w[w] = _window_sum_cum(st.c_alive, w)
        return got

    def _norm(self, st: _Stats, w: int) -> np.ndarray:
        """(n,) float32 BM25 length normalisation of every window of width ``w``; infinite at tombstones."""
        norm = st.norm.get(w)
        if norm is None:
            dl_w = _window_sum(self.dl, w)
            avg = max(float(dl_w[self.alive].mean()), 1e-9)
            norm = (K1 * (1.0 - B + B * dl_w / avg)).astype(np.float32)
            norm[~self.alive] = np.inf  # a tombstone scores tf / (tf + inf) = 0
            st.norm[w] = norm
        return norm

    def query(self, query: np.ndarray) -> LexicalQuery:
        """The query's tokens looked up once, to score windows of any width from them.

        >>> idx = LexicalIndex()
        >>> idx.add([np.array([7, 8], dtype=np.uint32), np.array([9], dtype=np.uint32)])
        >>> idx.query(np.array([9], dtype=np.uint32)).scores(1) > 0
        array([ True,  True])
        """
        terms = []
        st = self._stats()
        found = total = 0.0  # IDF mass of the query's distinct tokens: in the namespace, and all of them
        for token in np.unique(np.asarray(query, dtype=np.uint32)):
            docs, tfs = self._postings(int(token))
            keep = self.alive[docs]
            df = int(keep.sum())
            idf = float(np.log(1.0 + (st.live - df + 0.5) / (df + 0.5)))  # a token no episode holds: the largest
            total += idf
            if df:
                found += idf
                terms.append(_Term(docs[keep], tfs[keep]))
        return LexicalQuery(self, st, terms, found / total if total > 0 else 0.0)

    def scores(self, query: np.ndarray, windows: tuple[int, ...]) -> dict[int, np.ndarray]:
        """BM25 of every slot for each window width (0 = the episode alone): {w: (n,) scores}."""
        lq = self.query(query)
        return {w: lq.scores(w) for w in windows}


@dataclass
class _Stats:
    live: int  # alive documents
    c_alive: np.ndarray  # (n + 1,) prefix counts of alive slots
    norm: dict[int, np.ndarray]  # window width -> (n,) length normalisation, filled on first use
    alive_w: dict[int, np.ndarray]  # window width -> (n,) alive slots per window, filled on first use


@dataclass
class _Term:
    docs: np.ndarray  # (m,) ascending alive slots holding the token
    tfs: np.ndarray  # (m,) its term frequency in each

    @cached_property
    def run(self) -> np.ndarray:
        """(m + 1,) prefix sums of ``tfs``, shared by every window width."""
        return np.concatenate([[0.0], np.cumsum(self.tfs)])


class LexicalQuery:
    """One query against a :class:`LexicalIndex`: BM25 of every slot, per window width.

    A rare token is scored only on the windows around its postings; a token whose windows
    cover much of the namespace is scored with whole-array operations, which are cheaper
    there than gathering slot by slot. Results are cached per width.
    """

    def __init__(self, index: LexicalIndex, st: _Stats, terms: list[_Term], evidence: float = 1.0) -> None:
        self.ix, self.st, self.terms = index, st, terms
        # The share of the query's IDF mass (over its distinct tokens) that occurs in the namespace at all:
        # near 0 when the query's words are not the namespace's (another language, other wording), so
        # that BM25's best window only matches incidental words; 1 when every word occurs somewhere.
        self.evidence = evidence
        self._scores: dict[int, np.ndarray] = {}
        self._cums: dict[int, np.ndarray] = {}

    def _cum(self, j: int) -> np.ndarray:
        """(n + 1,) int64 prefix sums of term ``j``'s frequency over all slots, shared by every width."""
        got = self._cums.get(j)
        if got is None:
            term = self.terms[j]
            got = np.zeros(self.ix.n + 1, dtype=np.int64)  # counts: exact at any size
            got[term.docs + 1] = term.tfs  # docs are distinct
            self._cums[j] = np.cumsum(got, out=got)
        return got

    def _df(self, term: _Term, w: int) -> int:
        """Alive slots whose window of width ``w`` holds the term (its document frequency)."""
        if w == 0:
            return term.docs.size
        start, length = _runs(term.docs, w, self.ix.n)
        if self.st.live == self.ix.n:  # no tombstones: every covered slot counts
            return int(length.sum())
        return int((self.st.c_alive[start + length] - self.st.c_alive[start]).sum())

    def scores(self, w: int) -> np.ndarray:
        """(n,) BM25 of every slot for windows of width ``w`` (0 = the episode alone); 0 at tombstones."""
        got = self._scores.get(w)
        if got is not None:
            return got
        n, norm = self.ix.n, self.ix._norm(self.st, w)
        acc = np.zeros(n, dtype=np.float32)  # float32 halves the memory traffic of the whole-array path
        for j, term in enumerate(self.terms):
            df = self._df(term, w)
            weight = np.log(1.0 + (self.st.live - df + 0.5) / (df + 0.5)) * (K1 + 1.0)  # idf * (k1 + 1)
            if w == 0:
                acc[term.docs] += weight * term.tfs / (term.tfs + norm[term.docs])
            elif term.docs.size * (2 * w + 1) < n // 8:
                slots = _cover(term.docs, w, n)
                hi, lo = np.searchsorted(term.docs, slots + w, "right"), np.searchsorted(term.docs, slots - w)
                tf = term.run[hi] - term.run[lo]
                acc[slots] += weight * tf / (tf + norm[slots])
            else:
                tf = _window_sum_cum(self._cum(j), w, np.float32)  # (n,)
                den = tf + norm
                np.divide(tf, den, out=tf)
                tf *= weight
                acc += tf
        self._scores[w] = acc
        return acc


def _runs(docs: np.ndarray, w: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint runs (start, length) covering the slots within ``w`` of the ascending ``docs``.

    Each doc contributes the part of its window that the previous doc's does not cover.
    """
    start = np.maximum(docs - w, 0)
    start[1:] = np.maximum(start[1:], docs[:-1] + w + 1)
    start = np.minimum(start, n)
    return start, np.maximum(np.minimum(docs + w, n - 1) - start + 1, 0)


def _cover(docs: np.ndarray, w: int, n: int) -> np.ndarray:
    """Sorted slots within ``w`` of any of the ascending ``docs``, inside [0, n), without a sort."""
    start, length = _runs(docs, w, n)
    offset = np.cumsum(length) - length  # where each run starts in the output
    return np.repeat(start - offset, length) + np.arange(int(length.sum()))


def _window_sum(x: np.ndarray, w: int) -> np.ndarray:
    """Sum of ``x`` over each slot and its ``w`` neighbours on each side."""
    return x if w == 0 else _window_sum_cum(np.concatenate([[0.0], np.cumsum(x)]), w)


def _window_sum_cum(c: np.ndarray, w: int, dtype: type = np.float64) -> np.ndarray:
    """Window sums from the prefix sums ``c`` (n + 1,) of a series: slot s sums s - w .. s + w, clipped."""
    n = c.size - 1
    out: np.ndarray = np.empty(n, dtype=dtype)
    a, b = min(w, n), max(n - w - 1, 0)  # slots before a clip at the start, slots from b + 1 at the end
    if a <= b:
        np.subtract(c[a + w + 1 : b + w + 2], c[a - w : b - w + 1], out=out[a : b + 1], casting="unsafe")
        np.copyto(out[:a], c[w + 1 : a + w + 1], casting="unsafe")
        np.subtract(c[n], c[b + 1 - w : n - w], out=out[b + 1 :], casting="unsafe")
    else:  # the window is wider than the namespace: every slot is clipped on some side
        idx = np.arange(n)
        np.subtract(c[np.minimum(idx + w + 1, n)], c[np.maximum(idx - w, 0)], out=out, casting="unsafe")
    return out
