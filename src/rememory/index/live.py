"""The recall index of one namespace: lexical and dense indexes kept in step with the store.

The store is the source of truth. Before answering, the index asks the store what changed in
the namespace since the change number it last applied: new rows are appended (their hashed
tokens and int8 keys come from the store, no cell is decoded), and deleted rows become
tombstones, so a forgotten episode can never be recalled again, whichever process forgot it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from ..store.records import Changes, IndexRow, KeyRows
from .config import BM25_SIGNALS, NEIGHBOUR_SIGNALS, WEIGHTS, RankingConfig
from .dense import DenseIndex, Shaping, unit_scales
from .lexical import LexicalIndex, _cover, _window_sum

SIGNALS = WEIGHTS
_BM25_WIDTHS = {"bm25_own": 0, "bm25_ctx1": 1, "bm25_ctx2": 2, "bm25_ctx8": 8}
_REMOVALS = 512  # removals from which the coherence tracker starts over instead of updating per removal
_CHUNK = 1024  # keys per step of the coherence tracker: its float64 copies stay in the CPU's caches
Units = Callable[[np.ndarray], np.ndarray]  # slots -> (len(slots), dim) unit keys


class KeySource(Protocol):
    """A namespace's keys where the store holds them (``MemoryStore.server_keys``): an index past
    ``ann_threshold`` then keeps none, and reads those each query scores from here."""

    def rows(self, rowids: list[int], dim: int, *, context: bool) -> KeyRows:
        """The own keys (and context keys, if ``context``) of ``rowids``, in rowid order (``key_rows``)."""
        ...

    def nearest(self, q: np.ndarray, k: int, dim: int, *, context: bool) -> KeyRows:
        """Both keys of about the ``k`` rows whose own (or context) keys are nearest to unit vector ``q``."""
        ...


Pool = tuple[np.ndarray, KeyRows | None]  # dense candidates' slots, and their keys where the store read them too


@dataclass(frozen=True)
class Scored:
    slot: int
    id: str
    score: float  # hybrid relevance in [0, 1]
    # With explain: each signal's share of ``score`` (weight x normalised value / total weight); they sum to it.
    signals: dict[str, float] | None = None


@dataclass(frozen=True)
class Span:
    """Times [start, end) in epoch seconds; ``None`` leaves that side open."""

    start: float | None
    end: float | None


@dataclass(frozen=True)
class TimeSignal:
    """A query's time: ``window`` a since/until filter, ``named`` the range its words name (either may be None)."""

    window: Span | None = None
    named: Span | None = None


@dataclass(frozen=True)
class Features:
    """One query's raw signals over its candidates: what :func:`fuse` ranks, cacheable for tuning.

    ``raw[name]`` holds signal ``name`` (one of :data:`SIGNALS` but ``prf``) for every slot of
    ``cand``; ``ctx_keys`` are the candidates' unit context keys, which pseudo-relevance feedback re-queries.
    """

    cand: np.ndarray  # (c,) slots
    raw: dict[str, np.ndarray]  # signal -> (c,) values before normalisation
    q: np.ndarray  # (dim,) unit query vector
    ctx_keys: np.ndarray  # (c, dim) unit context keys of cand
    coherence: float = 1.0  # the namespace's Coherence.factor: scales the neighbour signals' weights (if switched on)
    evidence: float = 1.0  # Lexical.evidence of the query: scales the BM25 signals' weights (``bm25_evidence``)


@dataclass(frozen=True)
class Lexical:
    """A query's BM25 over one namespace: ``scores[w]`` (n,) for window width ``w``, and its lexical evidence.

    ``evidence`` is the share of the query's IDF mass that occurs in the namespace at all (see LexicalQuery).
    """

    scores: dict[int, np.ndarray]
    evidence: float


@dataclass(frozen=True)
class Coherence:
    """How related a namespace's neighbouring episodes are, from its stored own keys.

    ``adjacent`` is the mean cosine of alive episodes 1 and 2 apart in store order (2 too: in a
    dialogue the next turn is the other speaker, the one after often closer), ``baseline`` the
    mean cosine of all pairs of alive episodes (|sum of keys|^2 less the self pairs: exact, no
    sampling). ``gain`` is (adjacent - baseline) / (1 - baseline): the share of the distance to
    identical that adjacency closes, which takes out an embedder's cosine offset (e5's cosines
    of unrelated texts sit near .8). :meth:`factor` maps it to [0, 1].
    """

    adjacent: float
    baseline: float
    pairs: int  # adjacent pairs measured (0: fewer than 3 alive episodes, too few to judge)

    @property
    def gain(self) -> float:
        return (self.adjacent - self.baseline) / max(1.0 - self.baseline, 1e-6)

    def factor(self, cfg: RankingConfig) -> float:
        """0 at ``gain <= coherence_lo``, 1 at ``gain >= coherence_hi``, linear between; 1 with too few episodes.

        Computed whatever ``cfg.scale_neighbours`` says (the tuner re-fuses features under both); :func:`fuse`
        applies it only when it is on.

        Measured with multilingual-e5-small: LoCoMo conversations gain .20-.30, a diary of unrelated
        events .06 (its episodes grouped by language, which alone lifts adjacent pairs).
        """
        if self.pairs == 0:
            return 1.0
        return float(min(max((self.gain - cfg.coherence_lo) / (cfg.coherence_hi - cfg.coherence_lo), 0.0), 1.0))


class _KeyNeighbours:
    """The ``k`` nearest alive own keys of every slot (by cosine, itself excluded), kept current on demand.

    Appends cost O(new x n) (new keys against all; an old slot's list takes a new key only if it is nearer);
    a removal rebuilds from scratch, O(n^2), in row blocks so memory stays O(block x n). Only for namespaces
    up to ``RankingConfig.contrast_max`` episodes.
    """

    BLOCK = 512  # rows of the similarity matrix computed at a time

    def __init__(self) -> None:
        self._lock = threading.Lock()  # recalls of one namespace run side by side: one updates, the rest wait
        self.n = 0  # slots covered
        self.alive = 0  # alive slots among them
        self.k = 0
        self.nn = np.zeros((0, 0), dtype=np.int64)  # (n, k) slots, nearest first
        self.sims = np.zeros((0, 0), dtype=np.float32)  # (n, k) their cosines

    def update(self, dense: DenseIndex, k: int) -> np.ndarray | None:
        """(n, k') neighbour slots of every slot, k' = min(k, alive - 1); None with fewer than 3 alive slots."""
        with self._lock:
            return self._update(dense, k)

    def _update(self, dense: DenseIndex, k: int) -> np.ndarray | None:
        n = dense.n  # read once: a sync in another thread may append meanwhile
        alive = dense.alive[:n]
        count = int(alive.sum())
        k = min(k, count - 1)
        if count < 3:
            return None
        if k != self.k or self.alive + (n - self.n) != count:  # first use, or a removal: start over
            self.n, self.alive, self.k = 0, 0, k
            self.nn = np.zeros((0, k), dtype=np.int64)
            self.sims = np.zeros((0, k), dtype=np.float32)
        if n > self.n:
            self._extend(dense, n, alive, k)
        return self.nn

    def _extend(self, dense: DenseIndex, n: int, alive: np.ndarray, k: int) -> None:
        old = self.n
        keys = dense.unit(np.arange(n))  # (n, dim)
        dead = ~alive
        nn = np.concatenate([self.nn, np.zeros((n - old, k), dtype=np.int64)])
        sims = np.concatenate([self.sims, np.full((n - old, k), -np.inf, dtype=np.float32)])
        for lo in range(old, n, self.BLOCK):
            hi = min(lo + self.BLOCK, n)
            s = (keys[lo:hi] @ keys.T).astype(np.float32)  # (b, n) new keys against all
            s[:, dead] = -np.inf
            s[np.arange(hi - lo), np.arange(lo, hi)] = -np.inf  # not its own neighbour
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            nn[lo:hi], sims[lo:hi] = top, np.take_along_axis(s, top, axis=1)
            if old:  # the old slots may gain a new key as a neighbour
                cat_s = np.concatenate([sims[:old], s[:, :old].T], axis=1)  # (old, k + b)
                cat_n = np.concatenate([nn[:old], np.broadcast_to(np.arange(lo, hi), (old, hi - lo))], axis=1)
                top = np.argpartition(-cat_s, k - 1, axis=1)[:, :k]
                nn[:old], sims[:old] = np.take_along_axis(cat_n, top, axis=1), np.take_along_axis(cat_s, top, axis=1)
        self.nn, self.sims, self.n, self.alive = nn, sims, n, int(alive.sum())


class _CoherenceTracker:
    """Keeps a namespace's :class:`Coherence` current: O(new keys) per append, O(n / 8) bool scans per removal.

    Where the store holds the keys (``DenseIndex.held`` False), a removal starts over from every alive key,
    read from the store: the removed episode's key, which its pairs and the sum would need, is gone with it.
    """

    def __init__(self, dim: int) -> None:
        self._reset(dim)

    def _reset(self, dim: int) -> None:
        self.n = 0  # slots seen
        self.alive = 0  # alive slots among them
        self.seen = np.zeros(0, dtype=bool)  # (n,) which slots were alive when last seen
        self.total = np.zeros(dim, np.float64)  # sum of the alive unit keys
        self.sums = [0.0, 0.0]  # sum of cosines of alive pairs 1 and 2 apart
        self.counts = [0, 0]
        self.last: list[np.ndarray] = []  # the last two alive unit keys, oldest first

    def update(self, dense: DenseIndex, unit: Units | None = None) -> Coherence:
        """Bring the state to ``dense``'s alive slots; ``unit(slots)`` gives their unit keys (``dense.unit``)."""
        unit = unit or dense.unit
        alive = dense.alive
        gone = np.flatnonzero(self.seen & ~alive[: self.n])
        # Many removals at once: one pass over every key costs less. (A slot alive again cannot happen: then too.)
        if (gone.size > _REMOVALS or self.alive - gone.size != int(alive[: self.n].sum())
                or (gone.size and not dense.held)):  # fmt: skip
            self._reset(dense.dim)
        else:
            for slot in gone.tolist():
                self._remove(unit, slot)
        if dense.n > self.n:
            new = np.arange(self.n, dense.n)
            new = new[alive[new]]
            # In chunks: a new process's first sync meets every key (100k x 384 at once was 300 MB of float64).
            for start in range(0, new.size, _CHUNK):
                self._extend(unit(new[start : start + _CHUNK]).astype(np.float64))
            self.seen = np.concatenate([self.seen, alive[self.n : dense.n]])
            self.n = dense.n
            self.alive += int(new.size)
        return self.current()

    def _remove(self, unit: Units, slot: int) -> None:
        """Take one alive slot out: its pairs go, and its alive neighbours on each side become pairs."""
        before = np.flatnonzero(self.seen[:slot])[-2:].tolist()  # the alive slots before it, nearest last
        after = (np.flatnonzero(self.seen[slot + 1 :])[:2] + slot + 1).tolist()
        order = [*before, slot, *after]
        at = len(before)  # slot's position in order
        units = unit(np.array(order)).astype(np.float64)

        def cos(i: int, j: int) -> float:
            return float(units[i] @ units[j])

        for g, gap in enumerate((1, 2)):
            # Pairs `gap` apart that hold the slot, or straddle it, are replaced by those of the sequence without it.
            old = [(i, i + gap) for i in range(max(at - gap, 0), at + 1) if i + gap < len(order)]
            rest = [i for i in range(len(order)) if i != at]
            new = [(rest[i], rest[i + gap]) for i in range(len(rest) - gap)
                   if rest[i] < at < rest[i + gap]]  # fmt: skip
            self.sums[g] += sum(cos(i, j) for i, j in new) - sum(cos(i, j) for i, j in old)
            self.counts[g] += len(new) - len(old)
        self.total -= units[at]
        self.seen[slot] = False
        self.alive -= 1
        if not after:  # it was the last alive slot: the last two are the ones before it now
            self.last = [units[i] for i in range(len(before))][-2:]
        elif len(after) == 1:  # it was second to last
            self.last = [units[i] for i in (*range(len(before))[-1:], at + 1)]

    def _extend(self, keys: np.ndarray) -> None:
        if not keys.size:
            return
        seq = np.concatenate([np.asarray(self.last).reshape(-1, keys.shape[1]), keys]) if self.last else keys
        head = len(self.last)  # pairs whose later key is new start here
        for i, gap in enumerate((1, 2)):
            lo = max(head - gap, 0)
            if seq.shape[0] > lo + gap:
                dots = (seq[lo:-gap] * seq[lo + gap:]).sum(axis=1)
                self.sums[i] += float(dots.sum())
                self.counts[i] += dots.size
        self.total += keys.sum(axis=0)
        self.last = list(seq[-2:])

    def arrays(self) -> dict[str, np.ndarray]:
        """The state as arrays, for a snapshot: a new process then need not read every key to know it."""
        return {
            "coh_seen": np.array([self.n, self.alive], dtype=np.int64),
            "coh_total": self.total,
            "coh_sums": np.array(self.sums, dtype=np.float64),
            "coh_counts": np.array(self.counts, dtype=np.int64),
            "coh_last": np.asarray(self.last, dtype=np.float64).reshape(-1, self.total.size),
        }

    def restore(self, a: Mapping[str, np.ndarray], dense: DenseIndex) -> bool:
        """Take the state :meth:`arrays` gave if it is whole and covers exactly ``dense``'s slots (else keep none).

        A snapshot written before the state was kept lacks it: the next update reads every key, as it always did.
        """
        if not all(k in a for k in ("coh_seen", "coh_total", "coh_sums", "coh_counts", "coh_last")):
            return False
        seen, total, sums, counts, last = (np.asarray(a[k]) for k in
                                           ("coh_seen", "coh_total", "coh_sums", "coh_counts", "coh_last"))  # fmt: skip
        dim = dense.dim
        if (seen.shape != (2,) or total.shape != (dim,) or sums.shape != (2,) or counts.shape != (2,)
                or last.ndim != 2 or last.shape[0] > 2 or last.shape[1] != dim):  # fmt: skip
            return False
        if int(seen[0]) != dense.n or int(seen[1]) != int(dense.alive.sum()):
            return False
        if not (np.isfinite(total).all() and np.isfinite(sums).all() and np.isfinite(last).all()):
            return False
        self.n, self.alive = int(seen[0]), int(seen[1])
        self.seen = dense.alive[: self.n].copy()
        self.total = total.astype(np.float64)
        self.sums = [float(x) for x in sums]
        self.counts = [int(x) for x in counts]
        self.last = list(last.astype(np.float64))
        return True

    def current(self) -> Coherence:
        m = self.alive
        pairs = sum(self.counts)
        if m < 3 or not pairs:
            return Coherence(1.0, 0.0, 0)
        baseline = (float(self.total @ self.total) - m) / (m * (m - 1))
        return Coherence(sum(self.sums) / pairs, baseline, pairs)


@dataclass(frozen=True)
class DenseAhead:
    """A query's dense candidates, searched by the store while the caller computes its other signals.

    From :meth:`NamespaceIndex.search_ahead`: both of the store's key searches (own and context keys)
    are in flight at once, and :meth:`NamespaceIndex.features` collects them instead of searching again.
    """

    q: np.ndarray  # (dim,) the unit query they were started for
    own: Future[Pool]  # slots of the nearest own keys (with their keys, where the store holds them)
    ctx: Future[Pool]  # slots of the nearest context keys (likewise)


@dataclass(frozen=True)
class RankingFeatures:
    """:class:`Features` of one query with the episode id of every candidate (``ids[i]`` is ``cand[i]``'s)."""

    features: Features
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Fused:
    """Scores of every candidate of one query, and each signal's share of them."""

    scores: np.ndarray  # (c,) hybrid relevance in [0, 1]
    parts: dict[str, np.ndarray]  # signal -> (c,) weight x normalised value / total weight


def normalise(x: np.ndarray, how: str) -> np.ndarray:
    """``x`` mapped into [0, 1] over the candidates of one query, so that no signal's scale sets its weight.

    ``minmax``: (x - min) / (max - min). ``zscore``: the logistic of (x - mean) / std. ``rank``:
    1 for the best candidate down to 0 for the worst (ties share their best rank). ``max``: x / max(x),
    negatives 0, which keeps a signal's spread (kept for comparison). A constant signal is 0 (but under ``max``).
    """
    if x.size == 0:
        return x.astype(np.float64)
    x = x.astype(np.float64)
    if how == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if how == "max":  # no spread normalisation (how fusion was before): scaled by the best, negatives 0
        hi = float(x.max())
        return np.maximum(x, 0.0) / hi if hi > 0 else np.zeros_like(x)
    if how == "zscore":
        sd = float(x.std())
        return 1.0 / (1.0 + np.exp(-(x - x.mean()) / sd)) if sd > 0 else np.zeros_like(x)
    if how == "rank":
        if x.size == 1 or float(x.max()) == float(x.min()):
            return np.zeros_like(x)
        below = np.searchsorted(np.sort(x), x, side="left")  # candidates strictly worse: ties share the rank
        return below / (x.size - 1)
    raise ValueError(f"unknown normalisation {how!r}")


def weights_of(cfg: RankingConfig, coherence: float = 1.0, evidence: float = 1.0) -> dict[str, float]:
    """The fusion weight of every signal in :data:`SIGNALS`: the neighbour signals' times ``coherence``, the
    BM25 signals' times ``evidence ** cfg.bm25_evidence``."""
    lexical = float(evidence) ** cfg.bm25_evidence if cfg.bm25_evidence else 1.0
    return {name: float(getattr(cfg, name)) * (coherence if name in NEIGHBOUR_SIGNALS else 1.0)
            * (lexical if name in BM25_SIGNALS else 1.0) for name in SIGNALS}  # fmt: skip


def fuse(f: Features, cfg: RankingConfig, normalised: dict[str, np.ndarray] | None = None) -> Fused:
    """Normalise every signal over the candidates and sum them with ``cfg``'s weights.

    The one fusion both recall and the tuner (:mod:`rememory.tune`) run: tuned weights rank
    exactly as they scored. ``normalised`` (the tuner's cache) is ``normalise(f.raw[name], cfg.norm)``
    per signal, computed once. Feedback (``prf``) re-queries the context keys with the query moved
    towards the ``prf_docs`` best candidates of the other signals, so it depends on their weights too.
    The neighbour signals' weights are scaled by ``f.coherence`` (1 unless ``cfg.scale_neighbours``), the BM25
    signals' by the query's lexical evidence (``cfg.bm25_evidence``): where the query's words are not the
    namespace's, min-max would still make an incidental match the best BM25 score, so the dense signals decide.
    """
    w = weights_of(cfg, f.coherence if cfg.scale_neighbours else 1.0, f.evidence)
    if "dense_contrast" not in f.raw:  # a namespace too large (or too small) for it: as if it did not exist
        w["dense_contrast"] = 0.0
    if "time_match" not in f.raw:  # a query that names no time ranks exactly as if the signal did not exist
        w["time_match"] = 0.0
    total = max(sum(w.values()), 1e-12)
    parts: dict[str, np.ndarray] = {}
    fused = np.zeros(f.cand.size)
    for name, values in f.raw.items():
        if w[name]:
            value = normalised[name] if normalised is not None else normalise(values, cfg.norm)
            parts[name] = (w[name] / total) * value
            fused += parts[name]
    if w["prf"] and f.cand.size:
        top = _best(fused, cfg.prf_docs)
        q2 = f.q + cfg.prf_mix * f.ctx_keys[top].mean(axis=0)
        q2 /= max(float(np.linalg.norm(q2)), 1e-12)
        parts["prf"] = (w["prf"] / total) * normalise(f.ctx_keys @ q2, cfg.norm)
        fused += parts["prf"]
    return Fused(fused, parts)


class _QueryKeys:
    """The keys one query scores: the index's own, or, where the store holds them, read from it by rowid.

    Each slot's keys are read at most once per query, one round trip per :meth:`load` (the candidates'
    own and context keys, then their neighbours' own keys). They score exactly as held keys would:
    the same int8 values, the same unit scales (:func:`unit_scales`), the same arithmetic.
    """

    def __init__(self, idx: NamespaceIndex) -> None:
        self._dense = {"own": idx.own, "ctx": idx.ctx}
        self.fetched = not idx.own.held
        self._fetch = idx.fetch_keys
        self._dim = idx.dim
        self._rowids = idx.rowids  # slot -> rowid, read once: a sync in another thread replaces it
        n = self._rowids.size if self.fetched else 0  # (held keys need none of this)
        self._pos = {k: np.full(n, -1, dtype=np.int64) for k in self._dense}  # slot -> row of _q8, -1: not read
        self._q8 = {k: np.zeros((0, idx.dim), dtype=np.int8) for k in self._dense}
        self._scale = {k: np.zeros(0, dtype=np.float32) for k in self._dense}

    def load(self, slots: np.ndarray, *, context: bool) -> None:
        """Read the own keys (and context keys, if ``context``) of the alive ``slots`` not read yet."""
        if not self.fetched:
            return
        assert self._fetch is not None
        kind = "ctx" if context else "own"
        slots = slots[slots < self._rowids.size]
        need = slots[(self._pos[kind][slots] < 0) & self._dense[kind].alive[slots]]
        if not need.size:
            return
        rowids = self._rowids[need]
        got = self._fetch.rows(rowids.tolist(), self._dim, context=context)
        where = dict(zip(rowids.tolist(), need.tolist()))
        self.put(np.array([where[r] for r in got.rowids.tolist()], dtype=np.int64), got)  # deleted rows: absent

    def put(self, at: np.ndarray, got: KeyRows) -> None:
        """Keep keys the store read for slots ``at`` (``got``'s rows in that order; context keys if it has them)."""
        if not self.fetched:
            return
        parts = [("own", got.key, got.key_scale)]
        if got.ctx_key.shape[0] == got.key.shape[0]:
            parts.append(("ctx", got.ctx_key, got.ctx_key_scale))
        for k, q8, scales in parts:
            self._pos[k][at] = self._q8[k].shape[0] + np.arange(at.size)
            self._q8[k] = np.concatenate([self._q8[k], q8])
            self._scale[k] = np.concatenate([self._scale[k], unit_scales(q8, scales)])

    def _rows(self, kind: str, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = self._pos[kind][slots]
        ok = self._dense[kind].alive[slots] & (pos >= 0)  # a row deleted since the sync scores as a tombstone
        return ok, np.where(ok, pos, 0)

    def cosine(self, kind: str, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """As ``DenseIndex.cosine(q, slots)`` of the ``kind`` ("own" or "ctx") keys; tombstones score -1."""
        if not self.fetched:
            return self._dense[kind].cosine(q, slots)
        if not self._q8[kind].shape[0]:
            return np.full(slots.size, -1.0, dtype=np.float32)
        ok, at = self._rows(kind, slots)
        dense = self._dense[kind]
        frame = dense.frame()
        qs = dense.shape_query(q, frame)
        # The arithmetic of DenseIndex.cosine on held keys, so both score alike.
        sims = self._q8[kind][at].astype(np.float32) @ qs * self._scale[kind][at]
        if frame is not None:
            sims = dense.shaped(frame, qs, sims, self._q8[kind][at].astype(np.float32) * self._scale[kind][at, None])
        return np.where(ok, sims, -1.0)

    def rows(self, kind: str, slots: np.ndarray) -> np.ndarray:
        """As ``DenseIndex.rows(slots)``: (len(slots), dim) unit keys (zeros for a row deleted since the sync)."""
        if not self.fetched:
            return self._dense[kind].rows(slots)
        if not self._q8[kind].shape[0]:
            return np.zeros((slots.size, self._dim), dtype=np.float32)
        ok, at = self._rows(kind, slots)
        unit = self._q8[kind][at].astype(np.float32) * self._scale[kind][at, None]
        return np.where(ok[:, None], unit, np.float32(0.0))


class NamespaceIndex:
    """Hybrid BM25 + dense recall over one namespace."""

    def __init__(
        self, dim: int, cfg: RankingConfig, nearest: Callable[[np.ndarray, int, bool], list[int]] | None = None,
        keys: KeySource | None = None,
    ) -> None:  # fmt: skip
        self.dim = dim
        self.cfg = cfg
        # The store's own key search, if it has one: (unit query, k, context keys?) -> row ids.
        # Past ann_threshold, dense candidates come from it and no HNSW graph is built in memory.
        self.nearest = nearest
        # The store's keys, if it serves them: with ``nearest``, past ann_threshold the index holds no key;
        # each query reads those of its candidates (with the searches) and their neighbours (_QueryKeys).
        self.fetch_keys = keys
        self.slot_of: dict[int, int] = {}  # store rowid -> slot
        self.rowids = np.zeros(0, dtype=np.int64)  # slot -> store rowid (a tombstone's stays)
        self.ids: list[str] = []  # slot -> episode id
        # slot -> the episode's time (the store's event_time, epoch seconds); NaN: none, or a tombstone
        self.times = np.zeros(0, dtype=np.float64)
        self.lex = LexicalIndex()
        self.own = DenseIndex(dim, ann=False)
        self.ctx = DenseIndex(dim, ann=False)
        self.generation = -1
        self.seq: int | None = None  # the store's change number applied last (None: never synced)
        self.snapshot_size = 0  # slots covered by the last snapshot written or read
        self._coherence = _CoherenceTracker(dim)
        self.coherence = Coherence(1.0, 0.0, 0)  # of the alive own keys, as of the last sync
        self._neighbours = _KeyNeighbours()  # nearest own keys of every slot, for dense_contrast (built on demand)

    @property
    def size(self) -> int:
        return int(self.lex.alive.sum())

    def key_bytes(self) -> int:
        """Bytes of key vectors this index holds in memory (0 where the store serves them: see ``fetch_keys``)."""
        return self.own.key_bytes() + self.ctx.key_bytes()

    def coherence_arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`restore_coherence` takes back (snapshots keep it, and the key statistics of the shaping:
        both sum over every key, which an index whose keys the store holds would otherwise read back)."""
        self._shape(self.cfg)
        return {**self._coherence.arrays(), **self.own.stats_arrays("own"), **self.ctx.stats_arrays("ctx")}

    def restore_coherence(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Resume the coherence and key statistics of a snapshot's keys, where ``arrays`` hold them for exactly them."""
        if self._coherence.restore(arrays, self.own):
            self.coherence = self._coherence.current()
        self.own.restore_stats(arrays, "own")
        self.ctx.restore_stats(arrays, "ctx")

    def apply(self, changes: Changes, fetch: Callable[[list[int]], list[IndexRow]]) -> list[IndexRow]:
        """Apply the store's ``changes`` (O(changes) unless they are ``complete``); as :meth:`sync` otherwise."""
        if changes.complete:
            damaged = self.sync(np.asarray(changes.added, dtype=np.int64), fetch)
        else:
            for rowid in changes.removed:
                slot = self.slot_of.pop(rowid, None)
                if slot is not None:
                    self._tombstone(slot)
            damaged = self._append([r for r in changes.added if r not in self.slot_of], fetch)
        self.seq = changes.seq
        return damaged

    def sync(self, rowids: np.ndarray, fetch: Callable[[list[int]], list[IndexRow]]) -> list[IndexRow]:
        """Bring the index to exactly ``rowids``; ``fetch(new_rowids)`` returns their index rows.

        Returns the damaged rows met: each takes its slot as a tombstone (so it is neither
        recalled nor fetched again), and the caller reports it.
        """
        current = set(rowids.tolist())
        for rowid in [r for r in self.slot_of if r not in current]:
            self._tombstone(self.slot_of.pop(rowid))
        return self._append([r for r in rowids.tolist() if r not in self.slot_of], fetch)

    def _append(self, new: list[int], fetch: Callable[[list[int]], list[IndexRow]]) -> list[IndexRow]:
        damaged: list[IndexRow] = []
        fresh: DenseIndex | None = None
        base = self.lex.n
        if new:
            rows = fetch(new)
            base = self.lex.n
            for i, row in enumerate(rows):
                self.slot_of[row.rowid] = base + i
                self.ids.append(row.id)
            self.rowids = np.concatenate([self.rowids, np.array([r.rowid for r in rows], dtype=np.int64)])
            times = [np.nan if r.event_time is None else float(r.event_time) for r in rows]
            self.times = np.concatenate([self.times, np.array(times, dtype=np.float64)])
            self.lex.add([r.tokens for r in rows])
            zero = np.zeros(self.dim, dtype=np.int8)
            for name, key, scale in (("own", "key", "key_scale"), ("ctx", "ctx_key", "ctx_key_scale")):
                keys = [zero if r.damage else getattr(r, key) for r in rows]
                q8 = np.concatenate(keys) if keys else zero[:0]
                scales = np.array([1.0 if r.damage else getattr(r, scale) for r in rows])
                getattr(self, name).add(q8, scales)
                if name == "own" and not self.own.held:  # the new own keys, for the coherence tracker alone
                    fresh = DenseIndex(self.dim, ann=False)
                    fresh.add(q8, scales)
            for i, row in enumerate(rows):
                if row.damage:
                    self._tombstone(base + i)
                    damaged.append(row)
        # Before a conversion drops the keys: the tracker reads the new ones from where they are.
        self.coherence = self._coherence.update(self.own, self._units(fresh, base))
        self.convert_if_large()
        return damaged

    def _units(self, fresh: DenseIndex | None, base: int) -> Units:
        """Unit own keys of slots, for the coherence tracker: the held ones; where the store holds them, those
        of the rows just appended (``fresh``, slots from ``base``) and the store's for older slots."""
        if self.own.held:
            return self.own.unit
        fetch, dim = self.fetch_keys, self.dim
        assert fetch is not None

        def unit(slots: np.ndarray) -> np.ndarray:
            out = np.zeros((slots.size, dim), dtype=np.float32)  # a row deleted meanwhile adds nothing until the
            new = slots >= base  # next sync, whose removal starts the tracker over
            if fresh is not None and new.any():
                out[new] = fresh.unit(slots[new] - base)
            if not new.all():
                rowids = self.rowids[slots[~new]].tolist()
                got = fetch.rows(rowids, dim, context=False)
                where = dict(zip(rowids, np.flatnonzero(~new).tolist()))
                at = [where[r] for r in got.rowids.tolist()]
                out[at] = got.key.astype(np.float32) * unit_scales(got.key, got.key_scale)[:, None]
            return out

        return unit

    def convert_if_large(self) -> None:
        """Past ``ann_threshold``, dense candidates come from an HNSW index (once, when it crosses)."""
        if not self.own.ann and self.size > self.cfg.ann_threshold:
            # Where the store searches keys and serves them by rowid, no key stays here (~770 bytes an episode).
            held = self.nearest is None or self.fetch_keys is None
            self.own = _to_ann(self.own, self._remote(context=False), held=held)
            self.ctx = _to_ann(self.ctx, self._remote(context=True), held=held)

    def _remote(self, *, context: bool) -> Callable[[np.ndarray, int], np.ndarray] | None:
        nearest = self.nearest
        if nearest is None:
            return None

        def slots(q: np.ndarray, k: int) -> np.ndarray:
            # Rows committed since the last sync are not indexed yet: the next recall has them.
            found = [self.slot_of.get(r) for r in nearest(q, k, context)]
            return np.array([s for s in found if s is not None], dtype=np.int64)

        return slots

    def _shape(self, cfg: RankingConfig) -> None:
        """Point both key indexes at the shaping ``cfg`` asks for (they keep their statistics per shaping)."""
        self.own.shaping = Shaping(float(cfg.key_centre), int(cfg.key_drop))
        self.ctx.shaping = Shaping(float(cfg.ctx_centre), int(cfg.key_drop))
        for dense, context in ((self.own, False), (self.ctx, True)):
            if not dense.held and dense.stats_units is None:
                dense.stats_units = self._store_units(context)

    def _store_units(self, context: bool) -> Units:
        """Unit keys of slots read from the store (zeros for rows deleted meanwhile), for the key statistics
        of an index that holds none: read once per process, and again after a removal."""
        fetch, dim = self.fetch_keys, self.dim
        assert fetch is not None

        def unit(slots: np.ndarray) -> np.ndarray:
            out = np.zeros((slots.size, dim), dtype=np.float32)
            rowids = self.rowids[slots].tolist()
            got = fetch.rows(rowids, dim, context=context)
            where = dict(zip(rowids, range(slots.size)))
            at = [where[r] for r in got.rowids.tolist()]
            q8, scale = (got.ctx_key, got.ctx_key_scale) if context else (got.key, got.key_scale)
            out[at] = q8.astype(np.float32) * unit_scales(q8, scale)[:, None]
            return out

        return unit

    def search_ahead(self, q: np.ndarray, start: Callable[[Callable[[], Pool]], Future[Pool]]) -> DenseAhead | None:
        """Start the store's key searches for unit query ``q`` now (``start`` runs a call on another thread).

        Only where the store searches the keys (past ``ann_threshold``, with ``nearest``): each search is
        a round trip whose time the database spends on its own cores, so the caller overlaps both with
        the signals it computes itself (the query's time, BM25) and passes the result to :meth:`search`.
        None where there is nothing to start.
        """
        own, ctx = self.own, self.ctx
        if not (own.ann and own.remote is not None and ctx.remote is not None):
            return None
        self._shape(self.cfg)
        c = min(self.cfg.candidates, self.lex.n)
        return DenseAhead(q, start(lambda: self._pool(own, q, c, context=False)),
                          start(lambda: self._pool(ctx, q, c, context=True)))  # fmt: skip

    def _pool(self, dense: DenseIndex, q: np.ndarray, k: int, *, context: bool) -> Pool:
        """Slots of (about) the ``k`` keys nearest ``q``; where the store holds the keys, it reads the found
        rows' keys (both kinds) in the same search, and they come along (aligned with the slots)."""
        if dense.held or self.fetch_keys is None:
            return dense.candidates(q, k), None
        k = min(k, int(dense.alive.sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), None
        # Searched with the shaped query, as DenseIndex.candidates searches a held index's store.
        got = self.fetch_keys.nearest(dense.shape_query(q, dense.frame()), k, self.dim, context=context)
        # Rows committed since the last sync are not indexed yet: the next recall has them.
        found = [self.slot_of.get(r) for r in got.rowids.tolist()]
        keep = np.array([s is not None for s in found], dtype=bool)
        slots = np.array([s for s in found if s is not None], dtype=np.int64)
        return slots, KeyRows(got.rowids[keep], got.key[keep], got.key_scale[keep], got.ctx_key[keep],
                              got.ctx_key_scale[keep])  # fmt: skip

    def _tombstone(self, slot: int) -> None:
        self.times[slot] = np.nan
        self.lex.remove(slot)
        self.own.remove(slot)
        self.ctx.remove(slot)

    def lexical(self, q_tokens: np.ndarray, *, every: bool = False) -> Lexical:
        """Raw BM25 of every slot for the window widths in use (all four with ``every``), and the query's evidence."""
        lq = self.lex.query(q_tokens)
        return Lexical({w: lq.scores(w) for name, w in _BM25_WIDTHS.items() if every or getattr(self.cfg, name)},
                       lq.evidence)  # fmt: skip

    def within(self, span: Span) -> np.ndarray:
        """(n,) which slots' times fall in ``span`` (a slot with no time, or a tombstone, never does)."""
        times = _fit_times(self.times, self.lex.n)
        with np.errstate(invalid="ignore"):  # NaN compares False: no time is never inside
            ok = ~np.isnan(times)
            if span.start is not None:
                ok &= times >= span.start
            if span.end is not None:
                ok &= times < span.end
        return ok

    def nearness(self, span: Span, decay: float, slots: np.ndarray) -> np.ndarray:
        """How near the times of ``slots`` are to ``span``: 1 inside, ``exp(-gap / scale)`` outside, 0 with no time.

        ``scale`` is ``decay`` times the span's length (at least a day; a week for an open span). Episodes are
        often written after what they tell: "the shelter event in February" may be an episode of March 2nd,
        which a plain inside/outside signal would rank with the ones of December.
        """
        times = _fit_times(self.times, self.lex.n)[slots]
        length = span.end - span.start if span.start is not None and span.end is not None else 7 * _DAY
        scale = max(length, _DAY) * decay
        gap = np.zeros_like(times)  # a slot with no time (NaN) keeps a NaN gap, and 0 below
        if span.start is not None:
            gap += np.maximum(span.start - times, 0.0)
        if span.end is not None:
            gap += np.maximum(times - span.end, 0.0)
        near = np.exp(-gap / scale) if scale > 0 else (gap == 0).astype(np.float64)
        return np.where(np.isnan(times), 0.0, near)

    def features(
        self,
        q: np.ndarray,
        lex: Lexical,
        top_k: int,
        *,
        every: bool = False,
        time: TimeSignal | None = None,
        ahead: DenseAhead | None = None,
    ) -> Features | None:
        """Raw signals for unit query ``q`` over its candidates (``None`` if nothing is alive).

        ``time.window`` (a since/until filter) restricts the candidates to the slots whose time is
        inside it; ``time.named`` (the range the query names) adds the ``time_match`` signal: 1 for
        the candidates inside it, less the farther outside (:meth:`nearness`). Without a named range (or
        when it holds all candidates or none) the signal is absent, and :func:`fuse` leaves its weight
        out of the sum, so such a query ranks as if it did not exist.

        ``lex`` is :meth:`lexical` of the query's tokens. Signals with weight 0 are skipped
        unless ``every`` (the tuner wants them all). Small namespaces take every alive slot as a
        candidate; past ``ann_threshold`` the candidates are the nearest keys of both kinds and the
        best BM25 windows, cut to ``rerank`` by the cheap signals before the neighbour-window ones.
        ``ahead`` (from :meth:`search_ahead` for this ``q``) holds the nearest keys already searched.
        """
        cfg = self.cfg
        alive = self.lex.alive
        if not alive.any():
            return None
        self._shape(cfg)
        factor = self.coherence.factor(cfg)
        n = alive.size
        allowed = alive if time is None or time.window is None else alive & self.within(time.window)
        if not allowed.any():
            return None
        # rows synced in by another thread since lexical() ran score 0
        lexical = {w: s if s.size >= n else np.concatenate([s, np.zeros(n - s.size, s.dtype)])
                   for w, s in lex.scores.items()}  # fmt: skip
        want = {name for name in SIGNALS if every or getattr(cfg, name)}
        keys = _QueryKeys(self)
        if self.own.ann:
            c = min(cfg.candidates, n)
            if ahead is not None and ahead.q is q:
                found = [ahead.own.result(), ahead.ctx.result()]
            else:
                found = [self._pool(self.own, q, c, context=False), self._pool(self.ctx, q, c, context=True)]
            for slots, got in found:
                if got is not None:
                    keys.put(slots, got)
            pools = [slots for slots, _ in found]
            summed = np.zeros(n)
            for s in lexical.values():
                top = float(s.max()) if s.size else 0.0
                if top > 0:
                    summed += s / top
            pools.append(np.argpartition(-summed, min(2 * c, n) - 1)[: 2 * c])
            cand = np.unique(np.concatenate(pools))
            cand = cand[allowed[cand]]
            if cand.size < top_k:  # a narrow time filter: its slots are few, score them all
                cand = np.flatnonzero(allowed)
        else:
            cand = np.flatnonzero(allowed)
        keys.load(cand, context=True)  # the candidates' keys the searches did not bring: one round trip
        raw: dict[str, np.ndarray] = {}
        if time is not None and time.named is not None and "time_match" in want:
            inside = self.within(time.named)[cand]
            # The same for every candidate, it ranks nothing: left out, so scores stay as for a query naming no
            # time (a range that holds no episode, or a number misread as a date, must not dilute them).
            if inside.any() and not inside.all():
                raw["time_match"] = self.nearness(time.named, cfg.time_decay, cand)
        for name, w in _BM25_WIDTHS.items():
            if name in want:
                raw[name] = lexical[w][cand]
        if "dense_ctx" in want:
            raw["dense_ctx"] = keys.cosine("ctx", q, cand)
        if self.own.ann:
            if "dense_own" in want:
                raw["dense_own"] = keys.cosine("own", q, cand)
            keep = max(cfg.rerank, top_k)
            if cand.size > keep:  # neighbour signals read 17 keys per candidate: only for the most promising
                cheap = replace(cfg, dense_near=0.0, dense_far=0.0, prf=0.0)
                pre = fuse(Features(cand, raw, q, np.zeros((cand.size, self.dim), np.float32), factor, lex.evidence),
                           cheap).scores  # fmt: skip
                sel = np.sort(np.argpartition(-pre, keep - 1)[:keep])
                cand, raw = cand[sel], {k: v[sel] for k, v in raw.items()}
        if "dense_near" in want or "dense_far" in want or ("dense_own" in want and not self.own.ann):
            far = 8 if "dense_far" in want else 2 if "dense_near" in want else 0
            near = _cover(cand, far, n)  # cand is sorted; its neighbours, sorted
            keys.load(near, context=False)
            own = keys.cosine("own", q, near) * alive[near]  # (len(near),); tombstones 0, and not counted below
            if "dense_own" in want and not self.own.ann:
                raw["dense_own"] = _at(near, own, cand)
            for name, w in (("dense_near", 2), ("dense_far", 8)):
                if name in want:
                    raw[name] = _window_mean(near, own, self.lex, cand, w)
        if "dense_contrast" in want and not self.own.ann and self.size <= cfg.contrast_max:
            nn = self._neighbours.update(self.own, cfg.contrast_k)
            if nn is not None and nn.shape[0] >= n:  # (a sync in another thread may not have added the keys yet)
                cos = self.own.cosine(q)  # (n,) tombstones -1, never anyone's neighbour
                raw["dense_contrast"] = cos[cand] - cos[nn[cand]].mean(axis=1)
        ctx_keys = keys.rows("ctx", cand) if "prf" in want else np.zeros((cand.size, self.dim), np.float32)
        q_prf = q
        frame = self.ctx.frame() if "prf" in want else None
        if frame is not None:  # feedback re-queries the context keys as dense_ctx compares them: shaped
            q_prf, ctx_keys = self.ctx.shape_query(q, frame), DenseIndex.shape_rows(ctx_keys, frame)
        return Features(cand, {k: raw[k] for k in SIGNALS if k in raw}, q_prf, ctx_keys, factor, lex.evidence)

    def search(self, q: np.ndarray, lexical: Lexical, top_k: int, *, explain: bool = False,
               time: TimeSignal | None = None, ahead: DenseAhead | None = None) -> list[Scored]:  # fmt: skip
        """The ``top_k`` best slots for unit query vector ``q``, given :meth:`lexical` of its tokens.

        With ``explain`` every hit carries each signal's share of its score in ``Scored.signals``.
        ``time`` filters and boosts, and ``ahead`` serves the dense candidates, as in :meth:`features`.
        """
        f = self.features(q, lexical, top_k, time=time, ahead=ahead)
        if f is None:
            return []
        fz = fuse(f, self.cfg)
        out = []
        for i in _best(fz.scores, top_k):
            signals = {k: float(v[i]) for k, v in fz.parts.items()} if explain else None
            out.append(Scored(int(f.cand[i]), self.ids[f.cand[i]], float(min(max(fz.scores[i], 0.0), 1.0)), signals))
        return out


_DAY = 86400.0


def _fit_times(times: np.ndarray, n: int) -> np.ndarray:
    """``times`` over ``n`` slots (a reader between the lexical and the times append sees no time)."""
    return times[:n] if times.size >= n else np.concatenate([times, np.full(n - times.size, np.nan)])


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties: lower position first)."""
    if k < scores.size:
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.lexsort((part, -scores[part]))]
    return np.argsort(-scores, kind="stable")


best_positions = _best  # for the tuner, which must rank exactly as recall does


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


def _to_ann(dense: DenseIndex, remote: Callable[[np.ndarray, int], np.ndarray] | None, *,
            held: bool = True) -> DenseIndex:  # fmt: skip
    """Rebuild a grown namespace's keys as an HNSW index, or hand its search to the store (once, at the threshold);
    without ``held``, the store also keeps the keys: only the slots' alive flags are kept."""
    ann = DenseIndex(dense.dim, ann=True, remote=remote, held=held)
    ann.add_unit(dense)
    return ann
