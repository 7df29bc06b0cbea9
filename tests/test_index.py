"""The recall indexes on their own: BM25 against a reference library, windows, tombstones, ANN."""

import bm25s
import numpy as np
import pytest

from rememory.index.config import RankingConfig
from rememory.index.dense import DenseIndex, Shaping
from rememory.index.lexical import LexicalIndex, _window_sum
from rememory.index.tokenize import token_hashes, words

DOCS = [
    "the cat sat on the mat",
    "a dog chased the cat around the garden",
    "support group meeting on friday",
    "we painted a sunrise over the lake",
    "the lake was frozen in january",
]


def test_bm25_matches_bm25s() -> None:
    idx = LexicalIndex()
    idx.add([token_hashes(d) for d in DOCS])
    ref = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    ref.index([words(d) for d in DOCS], show_progress=False)
    for query in ("cat", "lake sunrise", "support friday cat"):
        ours = idx.scores(token_hashes(query), (0,))[0]
        theirs = ref.get_scores(words(query)) * (1.2 + 1)  # bm25s drops the constant (k1 + 1) factor
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_window_field_is_bm25_of_the_concatenated_neighbours() -> None:
    idx = LexicalIndex()
    idx.add([token_hashes(d) for d in DOCS])
    windows = [" ".join(DOCS[max(0, i - 1) : i + 2]) for i in range(len(DOCS))]
    ref = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    ref.index([words(d) for d in windows], show_progress=False)
    ours = idx.scores(token_hashes("lake"), (1,))[1]
    np.testing.assert_allclose(ours, ref.get_scores(words("lake")) * 2.2, rtol=1e-5, atol=1e-6)


def test_tombstones_and_incremental_adds() -> None:
    idx = LexicalIndex()
    idx.add([token_hashes(d) for d in DOCS])
    idx.remove(0)
    s = idx.scores(token_hashes("cat"), (0, 1))
    assert s[0][0] == 0 and s[1][0] == 0 and s[0][1] > 0
    for i in range(5000):  # enough to force a merge of the unsorted tail
        idx.add([token_hashes(f"filler document number {i}")])
    idx.add([token_hashes("a late cat")])
    s = idx.scores(token_hashes("cat"), (0,))[0]
    assert s[1] > 0 and s[-1] > 0 and s[0] == 0 and np.count_nonzero(s) == 2


def _reference_window_bm25(docs: list[np.ndarray], alive: np.ndarray, query: np.ndarray, w: int) -> np.ndarray:
    """BM25 of each alive slot's window (its alive neighbours within ``w``, concatenated), the slow way."""
    n = len(docs)
    empty = [np.zeros(0, np.uint32)]
    windows = [np.concatenate([docs[j] for j in range(max(0, i - w), min(n, i + w + 1)) if alive[j]] or empty)
               for i in range(n)]  # fmt: skip
    live = int(alive.sum())
    avg = np.mean([len(windows[i]) for i in range(n) if alive[i]])
    out = np.zeros(n)
    for t in np.unique(query):
        tf = np.array([np.count_nonzero(win == t) for win in windows], dtype=float)
        df = np.count_nonzero((tf > 0) & alive)
        idf = np.log(1 + (live - df + 0.5) / (df + 0.5))
        dl = np.array([len(win) for win in windows], dtype=float)
        out += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avg))
    return np.where(alive, out, 0.0)


def test_rare_and_frequent_tokens_score_like_a_direct_computation() -> None:
    # Zipf tokens: frequent ones take the whole-array path, rare ones the per-posting path.
    rng = np.random.default_rng(7)
    docs = [np.minimum(rng.zipf(1.4, size=rng.integers(1, 9)), 500).astype(np.uint32) for _ in range(1200)]
    idx = LexicalIndex()
    idx.add(docs[:700])
    idx.add(docs[700:])  # one part merged, one part still in the tail
    alive = np.ones(len(docs), dtype=bool)
    for slot in rng.choice(len(docs), 150, replace=False):
        idx.remove(int(slot))
        alive[slot] = False
    query = np.array([1, 2, 17, 61, 499, 12345], dtype=np.uint32)
    got = idx.scores(query, (0, 1, 2, 8))
    for w in (0, 1, 2, 8):
        np.testing.assert_allclose(got[w], _reference_window_bm25(docs, alive, query, w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 9, 17, 18, 100])
def test_window_sums_clip_at_both_ends(n: int) -> None:
    x = np.random.default_rng(n).random(n)
    for w in (0, 1, 2, 8, 20):
        want = [x[max(0, i - w) : i + w + 1].sum() for i in range(n)]
        np.testing.assert_allclose(_window_sum(x, w), want, rtol=1e-12)


def test_words_stem_per_script() -> None:
    assert words("Running dogs") == ["run", "dog"]
    assert words("собирали яблоки") == ["собира", "яблок"]


def _keys(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("ann", [False, True])
def test_dense_finds_nearest_and_skips_removed(ann: bool) -> None:
    keys = _keys(500)
    q8 = np.round(keys / np.abs(keys).max(axis=1, keepdims=True) * 127).astype(np.int8)
    scales = np.abs(keys).max(axis=1) / 127
    idx = DenseIndex(16, ann=ann)
    idx.add(q8, scales)
    assert idx.candidates(keys[42], 1)[0] == 42
    np.testing.assert_allclose(idx.cosine(keys[42], np.array([42])), [1.0], atol=2e-2)
    idx.remove(42)
    assert 42 not in idx.candidates(keys[42], 10).tolist()


def test_ranking_config_names_unknown_keys() -> None:
    with pytest.raises(Exception, match="dense_ownn"):
        RankingConfig.from_dict({"dense_ownn": 1})


def _int8(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys as the store keeps them: int8 rows and their dequantisation scales."""
    scales = np.abs(keys).max(axis=1) / 127
    return np.round(keys / scales[:, None]).astype(np.int8), scales


def test_coherence_in_chunks_equals_one_pass_and_its_state_restores(monkeypatch) -> None:
    from rememory.index import live

    dense = DenseIndex(16, ann=False)
    dense.add(*_int8(_keys(50, seed=3)))
    for slot in (4, 5, 31):  # tombstones: pairs skip them
        dense.remove(slot)
    whole = live._CoherenceTracker(16).update(dense)
    monkeypatch.setattr(live, "_CHUNK", 7)  # pairs straddling chunk borders must count once
    tracker = live._CoherenceTracker(16)
    chunked = tracker.update(dense)
    assert (chunked.adjacent, chunked.baseline, chunked.pairs) == pytest.approx(
        (whole.adjacent, whole.baseline, whole.pairs), abs=1e-12)  # fmt: skip
    # A snapshot's state resumes without reading the keys, and then extends as a full pass would.
    resumed = live._CoherenceTracker(16)
    assert resumed.restore(tracker.arrays(), dense)
    dense.add(*_int8(_keys(9, seed=4)))
    again, fresh = resumed.update(dense), live._CoherenceTracker(16).update(dense)
    assert (again.adjacent, again.baseline, again.pairs) == pytest.approx(
        (fresh.adjacent, fresh.baseline, fresh.pairs), abs=1e-12)  # fmt: skip
    # A state that does not cover exactly these slots (or lacks a part) is refused: the keys are read instead.
    assert not live._CoherenceTracker(16).restore(tracker.arrays(), dense)
    partial = {k: v for k, v in resumed.arrays().items() if k != "coh_last"}
    assert not live._CoherenceTracker(16).restore(partial, dense)


def test_switching_to_the_stores_key_search_keeps_every_key_and_tombstone() -> None:
    from rememory.index.live import _to_ann

    keys = _keys(40, seed=5)
    exact = DenseIndex(16, ann=False)
    exact.add(*_int8(keys))
    exact.remove(7)
    ann = _to_ann(exact, lambda q, k: np.arange(k))
    assert ann.ann and ann.n == 40 and not ann.alive[7] and ann.alive.sum() == 39
    np.testing.assert_allclose(ann.unit(np.arange(40)), exact.unit(np.arange(40)))
    np.testing.assert_allclose(ann.cosine(keys[3]), exact.cosine(keys[3]), atol=1e-6)
    exact.remove(8)  # the indexes share no mutable state
    assert ann.alive[8]


def test_dense_candidates_searched_ahead_rank_as_searched_in_place() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from rememory.index.live import NamespaceIndex
    from rememory.store.records import Changes

    rng = np.random.default_rng(6)
    own, ctx = _keys(60, seed=7), _keys(60, seed=8)
    rows = _index_rows(own, ctx)
    searched: list[bool] = []

    def nearest(q: np.ndarray, k: int, context: bool) -> list[int]:  # the store's search: exact, by rowid
        searched.append(context)
        sims = (ctx if context else own) @ q
        return [100 + int(i) for i in np.argsort(-sims)[:k]]

    idx = NamespaceIndex(16, RankingConfig(ann_threshold=10, candidates=8, rerank=6), nearest)
    idx.apply(Changes(seq=1, added=[r.rowid for r in rows], removed=[], complete=True),
              lambda ids: [r for r in rows if r.rowid in set(ids)])  # fmt: skip
    assert idx.own.ann and idx.own.remote is not None
    q = _keys(1, seed=9)[0] + 0.01 * rng.normal(size=16)
    q = (q / np.linalg.norm(q)).astype(np.float32)
    lexical = idx.lexical(token_hashes("note about the lake"))
    in_place = idx.search(q, lexical, 5, explain=True)
    assert sorted(searched) == [False, True]
    with ThreadPoolExecutor(max_workers=2) as pool:
        ahead = idx.search_ahead(q, pool.submit)
        assert ahead is not None
        assert idx.search(q, lexical, 5, explain=True, ahead=ahead) == in_place
        assert sorted(searched) == [False, False, True, True]  # each search ran once more, ahead, and not again
        small = NamespaceIndex(16, RankingConfig(), nearest)  # below the threshold: nothing to search ahead
        assert small.search_ahead(q, pool.submit) is None


def _index_rows(own: np.ndarray, ctx: np.ndarray) -> list:
    """Index rows (rowids from 100) with these unit keys, and tokens of a few shared words."""
    from rememory.store.records import IndexRow

    rows = []
    for i in range(len(own)):
        (k, ks), (c, cs) = _int8(own[i : i + 1]), _int8(ctx[i : i + 1])
        tokens = token_hashes(f"note {i} about {'lake' if i % 3 else 'garden'}")
        rows.append(IndexRow(100 + i, f"e{i}", k[0], float(ks[0]), c[0], float(cs[0]), tokens, None, 1e9 + i))
    return rows


def test_a_snapshot_blob_reads_back_as_views_and_a_damaged_one_is_refused() -> None:
    import zipfile

    from rememory.index import snapshot
    from rememory.index.live import NamespaceIndex
    from rememory.store.records import Changes

    rows = _index_rows(_keys(30, seed=10), _keys(30, seed=11))
    idx = NamespaceIndex(16, RankingConfig())
    idx.apply(Changes(seq=1, added=[r.rowid for r in rows], removed=[], complete=True),
              lambda ids: [r for r in rows if r.rowid in set(ids)])  # fmt: skip
    idx.apply(Changes(seq=2, added=[], removed=[105], complete=False), lambda ids: [])
    data = snapshot.to_bytes(idx)
    back = snapshot.from_bytes(data, 16, RankingConfig(), None)
    assert back.slot_of == idx.slot_of and (back.lex.alive == idx.lex.alive).all()
    assert back.ids == [i if idx.lex.alive[s] else "" for s, i in enumerate(idx.ids)]  # a forgotten id is not kept
    live = np.flatnonzero(idx.lex.alive)  # a forgotten episode's keys are zeroed
    np.testing.assert_array_equal(back.own.unit(live), idx.own.unit(live))
    assert not back.own._q8.flags.writeable  # a view of the blob, not a copy
    q = _keys(1, seed=12)[0]
    lexical = idx.lexical(token_hashes("note about the lake"))
    assert back.search(q, back.lexical(token_hashes("note about the lake")), 5) == idx.search(q, lexical, 5)
    back.apply(Changes(seq=3, added=[], removed=[100], complete=False), lambda ids: [])  # changes in place work
    assert not back.lex.alive[0] and not back.own.alive[0] and idx.lex.alive[0]
    for bad in (data[: len(data) // 2], data[:200] + bytes(len(data) - 200), b"not a snapshot"):
        with pytest.raises((ValueError, KeyError, zipfile.BadZipFile)):
            snapshot.from_bytes(bad, 16, RankingConfig(), None)


def test_keys_appended_one_at_a_time_leave_earlier_views_as_they_were() -> None:
    keys = _keys(30, seed=13)
    q8, scales = _int8(keys)
    dense = DenseIndex(16, ann=False)
    dense.add(q8[:10], scales[:10])
    views = []
    for i in range(10, 30):  # grows a buffer of its own in place, past what any earlier view shows
        views.append(dense._q8)
        dense.add(q8[i : i + 1], scales[i : i + 1])
    np.testing.assert_array_equal(dense._q8, q8)
    for j, view in enumerate(views):
        np.testing.assert_array_equal(view, q8[: 10 + j])
    np.testing.assert_allclose(dense.cosine(keys[25]), keys @ keys[25], atol=2e-2)


def test_coherence_after_removals_equals_a_fresh_pass(monkeypatch) -> None:
    from rememory.index import live

    rng = np.random.default_rng(14)
    dense = DenseIndex(16, ann=False)
    dense.add(*_int8(_keys(40, seed=15)))
    tracker = live._CoherenceTracker(16)
    tracker.update(dense)
    # The last, the second to last, the first, neighbours in a row, some at random; then appends and more.
    steps = [[39], [37], [0], [10, 11, 12], list(rng.choice(np.arange(13, 36), 5, replace=False)), [],
             [40, 43], [44], [1, 2, 3, 4, 5]]  # fmt: skip
    for i, gone in enumerate(steps):
        if i == 5:
            dense.add(*_int8(_keys(6, seed=16)))
        for slot in gone:
            dense.remove(int(slot))
        got, want = tracker.update(dense), live._CoherenceTracker(16).update(dense)
        assert got.pairs == want.pairs and tracker.alive == int(dense.alive.sum())
        assert (got.adjacent, got.baseline) == pytest.approx((want.adjacent, want.baseline), abs=1e-12)
    monkeypatch.setattr(live, "_REMOVALS", 2)  # many at once: one fresh pass instead
    for slot in (20, 22, 24):
        dense.remove(slot)
    got, want = tracker.update(dense), live._CoherenceTracker(16).update(dense)
    assert (got.adjacent, got.baseline, got.pairs) == pytest.approx((want.adjacent, want.baseline, want.pairs),
                                                                   abs=1e-12)  # fmt: skip


def _shaped_reference(keys: np.ndarray, alive: np.ndarray, q: np.ndarray, centre: float, drop: int) -> np.ndarray:
    """Cosine after centring and dropping the top principal directions, computed directly from the alive keys."""
    live = keys[alive]
    mean = live.mean(axis=0)
    _, _, vt = np.linalg.svd(live - mean, full_matrices=False)
    axes = vt[:drop]

    def shape(x: np.ndarray) -> np.ndarray:
        x = x - centre * mean
        x = x - (x @ axes.T) @ axes
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    return np.where(alive, shape(keys) @ shape(q), -1.0)


@pytest.mark.parametrize("ann", [False, True])
@pytest.mark.parametrize(("centre", "drop"), [(1.0, 0), (1.0, 1), (0.5, 2)])
def test_shaped_cosine_equals_centring_and_projecting_the_keys(ann: bool, centre: float, drop: int) -> None:
    rng = np.random.default_rng(7)
    # Two "languages": keys share a direction per group, as a multilingual embedder's do.
    base = rng.normal(size=(2, 32))
    raw = rng.normal(size=(60, 32)) * 0.3 + base[rng.integers(0, 2, 60)]
    keys = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    dense = DenseIndex(32, ann=ann)
    q8 = np.clip(np.round(keys * 127), -127, 127).astype(np.int8)
    dense.add(q8[:40], np.full(40, 1 / 127, np.float32))
    dense.shaping = Shaping(centre, drop)
    q = keys[3] + 0.1 * keys[50]
    q = (q / np.linalg.norm(q)).astype(np.float32)
    unit = dense.unit(np.arange(40))
    np.testing.assert_allclose(dense.cosine(q), _shaped_reference(unit, dense.alive, q, centre, drop), atol=1e-4)
    # Appends and removals keep the statistics current.
    dense.add(q8[40:], np.full(20, 1 / 127, np.float32))
    dense.remove(5)
    dense.remove(44)
    unit = dense.unit(np.arange(60))
    want = _shaped_reference(unit, dense.alive, q, centre, drop)
    np.testing.assert_allclose(dense.cosine(q), want, atol=1e-4)
    slots = np.array([0, 5, 17, 44, 59])
    np.testing.assert_allclose(dense.cosine(q, slots), want[slots], atol=1e-4)
    if not ann:  # (an HNSW graph of plain cosines only gathers candidates for the shaped query)
        assert set(dense.candidates(q, 5).tolist()) == set(np.argsort(-want)[:5].tolist())
    dense.shaping = Shaping()
    np.testing.assert_allclose(dense.cosine(q), np.where(dense.alive, unit @ q, -1.0), atol=1e-5)


def test_key_statistics_travel_with_a_snapshot_and_a_switch_to_ann() -> None:
    keys = _keys(50, dim=16, seed=3)
    q8 = np.round(keys * 127).astype(np.int8)
    exact = DenseIndex(16, ann=False)
    exact.add(q8, np.full(50, 1 / 127, np.float32))
    exact.remove(7)
    exact.shaping = Shaping(1.0, 0)
    q = keys[11]
    want = exact.cosine(q)
    arrays = exact.stats_arrays("own")
    assert set(arrays) == {"own_stats_seen", "own_stats_total"}

    def no_key_read(slots: np.ndarray) -> np.ndarray:
        raise AssertionError("statistics restored: no key is read for them")

    again = DenseIndex(16, ann=False)
    again.add(q8, np.full(50, 1 / 127, np.float32))
    again.remove(7)
    again.shaping, again.stats_units = Shaping(1.0, 0), no_key_read
    again.restore_stats(arrays, "own")
    np.testing.assert_allclose(again.cosine(q), want, atol=1e-6)
    ann = DenseIndex(16, ann=True)
    ann.add_unit(again)  # the switch to ANN at the threshold keeps them too
    ann.shaping, ann.stats_units = Shaping(1.0, 0), no_key_read
    np.testing.assert_allclose(ann.cosine(q), want, atol=1e-5)
    # Statistics of other keys are refused: computed from the keys instead.
    other = DenseIndex(16, ann=False)
    other.add(q8[:40], np.full(40, 1 / 127, np.float32))
    other.restore_stats(arrays, "own")
    assert other._stats is None
