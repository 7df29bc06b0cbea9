"""Recall quality on a labelled set: recall@k, NDCG@10 and MRR, overall and per category.

The metric functions are pure (a ranked list of ids against a set of relevant ids). :func:`evaluate`
trains the episodes into a store, runs every query through :meth:`Memory.recall` and scores the
rankings. It reports progress through a callback and never prints.

    >>> eps, qs = load_eval_episodes("episodes.json"), load_queries_file("queries.json")  # doctest: +SKIP
    >>> report = evaluate(lambda: Memory(tmp_path / "store"), eps, qs, pool_by_id_prefix=True)  # doctest: +SKIP
    >>> report.overall.recall[5], report.by_category["2"].mrr  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .config import resolve_max_text_bytes
from .episodes import load_episodes_file, validate_many
from .errors import ConfigError, InvalidEpisodeError, NotFoundError
from .index.config import WEIGHTS, RankingConfig
from .index.live import RankingFeatures, best_positions, fuse, normalise
from .memory import Memory
from .records import EncodeProgress, Episode

DEFAULT_KS = (1, 5, 10)
NDCG_K = 10
DEFAULT_NAMESPACE = "default"
_QUERY_FIELDS = {"id", "query", "relevant", "category", "answer", "adversarial_answer"}
_QUERY_EXAMPLE = '[{"id": "conv-1/q0", "query": "...", "relevant": ["conv-1/D1:3"], "category": 2}]'


# --- metrics (pure) ---


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Fraction of the relevant ids found among the first ``k`` ranked ids."""
    rel = set(relevant)
    if not rel:
        raise ConfigError("recall@k needs at least one relevant id.")
    return len(rel.intersection(ranked[:k])) / len(rel)


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int = NDCG_K) -> float:
    """Binary-relevance NDCG@k; the ideal ranking puts min(|relevant|, k) relevant ids first."""
    rel = set(relevant)
    if not rel:
        raise ConfigError("NDCG needs at least one relevant id.")
    seen: set[str] = set()
    dcg = 0.0
    for i, id_ in enumerate(ranked[:k]):
        if id_ in rel and id_ not in seen:  # a repeated id earns nothing the second time
            dcg += 1.0 / math.log2(i + 2)
        seen.add(id_)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
    return dcg / ideal


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """1 / (rank of the first relevant id), or 0 if the ranked list holds none."""
    rel = set(relevant)
    for i, id_ in enumerate(ranked):
        if id_ in rel:
            return 1.0 / (i + 1)
    return 0.0


@dataclass(frozen=True)
class Metrics:
    """Means over ``queries`` queries: ``recall[k]`` is recall@k."""

    queries: int
    recall: dict[int, float]
    ndcg10: float
    mrr: float

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"queries": self.queries}
        d.update({f"recall@{k}": v for k, v in sorted(self.recall.items())})
        d["ndcg@10"] = self.ndcg10
        d["mrr"] = self.mrr
        return d


def score_rankings(
    rankings: Sequence[Sequence[str]], relevants: Sequence[Collection[str]], ks: Sequence[int] = DEFAULT_KS
) -> Metrics:
    """Mean recall@k (each k in ``ks``), NDCG@10 and MRR of rankings against their relevant ids."""
    if len(rankings) != len(relevants):
        raise ConfigError(f"Got {len(rankings)} rankings for {len(relevants)} queries; pass one ranking per query.")
    n = len(rankings)
    if n == 0:
        return Metrics(0, {k: 0.0 for k in ks}, 0.0, 0.0)
    pairs = list(zip(rankings, relevants))
    return Metrics(
        queries=n,
        recall={k: sum(recall_at_k(r, rel, k) for r, rel in pairs) / n for k in ks},
        ndcg10=sum(ndcg_at_k(r, rel, NDCG_K) for r, rel in pairs) / n,
        mrr=sum(reciprocal_rank(r, rel) for r, rel in pairs) / n,
    )


# --- inputs ---


@dataclass(frozen=True)
class EvalQuery:
    """One labelled query: the ids of the episodes that answer it, and an optional category."""

    query: str
    relevant: tuple[str, ...]
    id: str | None = None
    category: str | None = None  # kept as a string: JSON object keys are strings anyway


def _query_error(index: int, item: Any, message: str) -> ConfigError:
    qid = item.get("id") if isinstance(item, Mapping) else None
    name = f"query #{index}" + (f" ({qid!r})" if isinstance(qid, str) else "")
    return ConfigError(f"{name}: {message}")


def validate_queries(items: Iterable[Any]) -> list[EvalQuery]:
    """Check raw query items (``query``, non-empty ``relevant``; optional ``id``, ``category``)."""
    out: list[EvalQuery] = []
    for i, item in enumerate(items):
        if isinstance(item, EvalQuery):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise _query_error(i, item, f"must be an object like {_QUERY_EXAMPLE[1:-1]}, got {type(item).__name__}.")
        unknown = sorted(set(item) - _QUERY_FIELDS)
        if unknown:
            raise _query_error(i, item, f"unknown field(s) {unknown}; allowed fields are {sorted(_QUERY_FIELDS)}.")
        q = item.get("query")
        if not isinstance(q, str) or not q.strip():
            raise _query_error(i, item, f"'query' must be a non-empty string, got {q!r}.")
        rel = item.get("relevant")
        if not isinstance(rel, list) or not rel or not all(isinstance(r, str) and r for r in rel):
            raise _query_error(i, item, f"'relevant' must be a non-empty list of episode ids (strings), got {rel!r}.")
        qid = item.get("id")
        if qid is not None and (not isinstance(qid, str) or not qid):
            raise _query_error(i, item, f"'id' must be a non-empty string, got {qid!r}.")
        cat = item.get("category")
        if cat is not None and (isinstance(cat, bool) or not isinstance(cat, (int, str))):
            raise _query_error(i, item, f"'category' must be an integer or a string, got {cat!r}.")
        out.append(EvalQuery(q, tuple(dict.fromkeys(rel)), qid, None if cat is None else str(cat)))
    return out


def load_queries_file(path: str | os.PathLike[str]) -> list[EvalQuery]:
    """Read and check a JSON list of queries."""
    try:
        items = load_episodes_file(path, what="queries", example=_QUERY_EXAMPLE)
    except InvalidEpisodeError as exc:
        raise ConfigError(f"Cannot read the queries file: {exc}") from None
    return validate_queries(items)


def load_eval_episodes(path: str | os.PathLike[str]) -> list[Episode]:
    """Read and check a JSON list of episodes (ids kept verbatim, file order kept)."""
    return validate_many(
        load_episodes_file(path), namespace=DEFAULT_NAMESPACE, max_text_bytes=resolve_max_text_bytes(None)
    )


def pool_of(id_: str) -> str | None:
    """The pool of an id: its prefix before the first '/', or ``None`` if it has none."""
    head, sep, _ = id_.partition("/")
    return head if sep and head.strip() else None


def _plan(
    episodes: Sequence[Episode], queries: Sequence[EvalQuery], pooled: bool
) -> tuple[dict[str, list[Episode]], list[str]]:
    """Episodes grouped by namespace (file order kept) and each query's namespace."""
    groups: dict[str, list[Episode]] = {}
    for i, ep in enumerate(episodes):
        ns = pool_of(ep.id) if pooled else DEFAULT_NAMESPACE
        if ns is None:
            raise InvalidEpisodeError(
                f"id {ep.id!r} has no pool prefix; with pooling by id prefix every id looks like "
                "'POOL/REST'. Fix the ids or evaluate without --pool-by-id-prefix.",
                index=i,
                field="id",
            )
        groups.setdefault(ns, []).append(ep)
    known = {ep.id for ep in episodes}
    spaces: list[str] = []
    for i, q in enumerate(queries):
        name = f"query #{i}" + (f" ({q.id!r})" if q.id else "")
        missing = [r for r in q.relevant if r not in known]
        if missing:
            raise ConfigError(
                f"{name}: relevant id(s) {missing[:5]} are not among the {len(known)} episodes. "
                "Check that the queries file belongs to this episodes file."
            )
        if not pooled:
            spaces.append(DEFAULT_NAMESPACE)
            continue
        ns = pool_of(q.id) if q.id else None
        if ns is None:
            raise ConfigError(
                f"{name}: with pooling by id prefix every query needs an 'id' like 'POOL/q0' naming the "
                "pool it searches. Add ids or evaluate without --pool-by-id-prefix."
            )
        if ns not in groups:
            raise ConfigError(f"{name}: no episode is in its pool {ns!r}. Check the query id's prefix.")
        spaces.append(ns)
    return groups, spaces


# --- the runner ---


@dataclass(frozen=True)
class EvalProgress:
    """A progress event. ``stage`` "train": ``done``/``total`` are text bytes; "recall" and "features":
    queries; "tune": folds (the last one tunes on all pools)."""

    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class QueryResult:
    """One query's ranking (the ids recall returned, best first)."""

    query: EvalQuery
    namespace: str
    ranked: tuple[str, ...]


@dataclass(frozen=True)
class EvalReport:
    """Metrics overall and per category, with what produced them."""

    overall: Metrics
    by_category: dict[str, Metrics]
    episodes: int
    top_k: int
    pool_by_id_prefix: bool
    ranking: dict[str, Any]
    embedder: str
    build_s: float  # training and embedding every episode
    recall_s: float  # all queries, end to end
    results: list[QueryResult] = field(default_factory=list)

    @property
    def queries(self) -> int:
        return self.overall.queries

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (per-query rankings left out)."""
        return {
            "overall": self.overall.to_dict(),
            "by_category": {c: m.to_dict() for c, m in self.by_category.items()},
            "queries": self.queries,
            "episodes": self.episodes,
            "top_k": self.top_k,
            "pool_by_id_prefix": self.pool_by_id_prefix,
            "ranking": self.ranking,
            "embedder": self.embedder,
            "build_s": self.build_s,
            "recall_s": self.recall_s,
        }


def score_results(results: Sequence[QueryResult], ks: Sequence[int] = DEFAULT_KS) -> tuple[Metrics, dict[str, Metrics]]:
    """Metrics over all results, and per category (numeric categories in numeric order).

    A query without a category counts in the overall metrics only.
    """
    overall = score_rankings([r.ranked for r in results], [r.query.relevant for r in results], ks)
    cats = sorted({r.query.category for r in results if r.query.category is not None}, key=_category_order)
    by_category = {}
    for c in cats:
        sub = [r for r in results if r.query.category == c]
        by_category[c] = score_rankings([r.ranked for r in sub], [r.query.relevant for r in sub], ks)
    return overall, by_category


def _category_order(c: str) -> tuple[int, float, str]:
    try:
        return (0, float(c), c)
    except ValueError:
        return (1, 0.0, c)


def evaluate(
    memory: Memory | Callable[[], Memory],
    episodes: Sequence[Episode | Mapping[str, Any]],
    queries: Sequence[EvalQuery | Mapping[str, Any]],
    *,
    pool_by_id_prefix: bool,
    ks: Sequence[int] = DEFAULT_KS,
    top_k: int | None = None,
    reuse_store: bool = False,
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Train ``episodes``, recall every query and score the rankings.

    With ``pool_by_id_prefix``, each id prefix before the first '/' is its own namespace and a
    query searches only the pool of its own id; otherwise everything shares one namespace.
    ``memory`` is a store to fill (left open) or a factory called once inputs are checked
    (the store it makes is closed at the end). The namespaces must not hold other episodes.
    With ``reuse_store`` nothing is trained: the store must already hold exactly these episodes
    (one kept by an earlier evaluation), and only recall runs.
    ``top_k`` (default max(ks, 10)) is how many hits each query retrieves.
    """
    ks = tuple(sorted(set(ks)))
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"ks must be positive whole numbers, got {ks!r}.")
    top_k = max(*ks, NDCG_K) if top_k is None else top_k
    if top_k < max(*ks, NDCG_K):
        raise ConfigError(f"top_k={top_k} retrieves too few hits for recall@{max(ks)} and NDCG@10; use at least "
                          f"{max(*ks, NDCG_K)}.")  # fmt: skip
    eps = validate_many(episodes, namespace=DEFAULT_NAMESPACE, max_text_bytes=resolve_max_text_bytes(None))
    qs = validate_queries(queries)
    groups, spaces = _plan(eps, qs, pool_by_id_prefix)  # every input check runs before any training

    mem = memory if isinstance(memory, Memory) else memory()
    try:
        return _run(mem, groups, qs, spaces, ks, top_k, pool_by_id_prefix, len(eps), progress, reuse_store)
    finally:
        if mem is not memory:
            mem.close()


def _fill(
    mem: Memory, groups: dict[str, list[Episode]], reuse: bool, progress: Callable[[EvalProgress], None] | None
) -> None:
    """Train every pool's episodes into ``mem``; with ``reuse``, check that it already holds exactly them."""

    def emit(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(EvalProgress(stage, done, total))

    sizes = {ns: sum(len(e.text.encode("utf-8")) for e in eps) for ns, eps in groups.items()}
    total_bytes = sum(sizes.values())
    base = 0
    for ns, eps in groups.items():
        if reuse:
            stored = mem.count(ns)
            missing = [e.id for e in eps[:: max(1, len(eps) // 8)] if not _holds(mem, e.id, ns)]
            if stored != len(eps) or missing:
                raise ConfigError(
                    f"Namespace {ns!r} of {mem.location} holds {stored} episodes, not the {len(eps)} of the "
                    f"evaluation set{f' (missing e.g. {missing[:3]})' if missing else ''}: it was built from "
                    "other episodes. Reuse a store kept by an eval of these episodes, or build a new one."
                )
            continue

        def relay(ev: EncodeProgress, base: int = base) -> None:
            emit("train", base + ev.bytes_done, total_bytes)

        items = [{"id": e.id, "keywords": e.keywords, "text": e.text, "time": e.time} for e in eps]
        mem.add_many(items, namespace=ns, progress=relay)
        base += sizes[ns]
        emit("train", base, total_bytes)
        stored = mem.count(ns)
        if stored != len(eps):
            raise ConfigError(
                f"Namespace {ns!r} of {mem.location} holds {stored} episodes, but the evaluation set puts "
                f"{len(eps)} there: the store is not fresh. Evaluate on a new, empty store."
            )


def _holds(mem: Memory, id_: str, namespace: str) -> bool:
    try:
        mem.get(id_, namespace=namespace)
    except NotFoundError:
        return False
    return True


def _run(
    mem: Memory,
    groups: dict[str, list[Episode]],
    qs: list[EvalQuery],
    spaces: list[str],
    ks: tuple[int, ...],
    top_k: int,
    pooled: bool,
    n_episodes: int,
    progress: Callable[[EvalProgress], None] | None,
    reuse: bool = False,
) -> EvalReport:
    def emit(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(EvalProgress(stage, done, total))

    start = time.perf_counter()
    _fill(mem, groups, reuse, progress)
    build_s = time.perf_counter() - start

    results: list[QueryResult] = []
    start = time.perf_counter()
    for i, (q, ns) in enumerate(zip(qs, spaces)):
        hits = mem.recall(q.query, top_k=top_k, namespace=ns)
        results.append(QueryResult(q, ns, tuple(h.id for h in hits)))
        emit("recall", i + 1, len(qs))
    recall_s = time.perf_counter() - start

    overall, by_category = score_results(results, ks)
    return EvalReport(
        overall=overall, by_category=by_category, episodes=n_episodes, top_k=top_k, pool_by_id_prefix=pooled,
        ranking=mem.ranking.to_dict(), embedder=mem.embedder.id, build_s=build_s, recall_s=recall_s,
        results=results,
    )  # fmt: skip


# --- cross-validated tuning of the ranking weights ---

TUNE_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # values tried for each weight (only their ratios matter)
# Further settings the tuner sweeps besides the weights: how strongly the query's lexical evidence scales the BM25
# weights. Sweeping prf_docs and prf_mix too ({"prf_docs": (1, 2, 3, 5, 8), "prf_mix": (0.5, 1.0, 2.0)}) lowered
# locomo-dev's held-out mean (R@5 .733 -> .730), so those are not swept.
TUNE_EXTRA: dict[str, tuple[float, ...]] = {"bm25_evidence": (0.0, 0.5, 1.0, 2.0)}
TUNE_ROUNDS = 3  # coordinate-ascent sweeps over the weights at most (it stops early once a sweep changes nothing)


@dataclass(frozen=True)
class CachedQuery:
    """One labelled query with every ranking signal of its candidates, computed once per store."""

    query: EvalQuery
    pool: str
    features: RankingFeatures | None  # None: the namespace was empty
    normalised: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # norm -> signal -> values


def cache_features(
    mem: Memory,
    queries: Sequence[EvalQuery],
    spaces: Sequence[str],
    top_k: int,
    progress: Callable[[EvalProgress], None] | None = None,
) -> list[CachedQuery]:
    """Every query's raw signals (:meth:`Memory.ranking_features`), so tuning never re-runs recall."""
    out = []
    for i, (q, ns) in enumerate(zip(queries, spaces)):
        out.append(CachedQuery(q, ns, mem.ranking_features(q.query, namespace=ns, top_k=top_k)))
        if progress is not None:
            progress(EvalProgress("features", i + 1, len(queries)))
    return out


def rank_cached(c: CachedQuery, cfg: RankingConfig, top_k: int) -> tuple[str, ...]:
    """The ids recall would return for ``c`` under ``cfg``: the same :func:`fuse` over the cached signals."""
    if c.features is None:
        return ()
    f = c.features.features
    norm = c.normalised.get(cfg.norm)
    if norm is None:
        norm = c.normalised[cfg.norm] = {k: normalise(v, cfg.norm) for k, v in f.raw.items()}
    scores = fuse(f, cfg, norm).scores
    return tuple(c.features.ids[i] for i in best_positions(scores, top_k).tolist())


def _objective(cached: Sequence[CachedQuery], cfg: RankingConfig, top_k: int) -> float:
    """What tuning maximises: mean recall@5 plus mean recall@10."""
    total = 0.0
    for c in cached:
        ranked = rank_cached(c, cfg, top_k)
        total += recall_at_k(ranked, c.query.relevant, 5) + recall_at_k(ranked, c.query.relevant, 10)
    return total / max(len(cached), 1)


@dataclass(frozen=True)
class TuneResult:
    """Weights chosen by coordinate ascent, the objective they reach, and the queries they were tuned on."""

    ranking: RankingConfig
    objective: float
    tuned_on: tuple[str, ...]  # ids (or texts) of the queries tuning saw
    configs_tried: int


def tune_weights(
    cached: Sequence[CachedQuery],
    base: RankingConfig,
    *,
    top_k: int = NDCG_K,
    grid: Sequence[float] = TUNE_GRID,
    rounds: int = TUNE_ROUNDS,
    extra: Mapping[str, Sequence[float]] = TUNE_EXTRA,
) -> TuneResult:
    """Coordinate ascent over the fusion weights on cached signals, maximising mean R@5 + R@10.

    It starts from every weight at 1 whatever ``base`` holds, so that its result does not depend
    on the shipped defaults; a weight that is 0 in ``base`` stays 0 (to tune without a signal).
    Each sweep tries every grid value for one weight at a time, keeping a change only if it
    strictly improves the objective; ties keep the current weights, so the result is deterministic.
    ``extra`` names further settings to sweep with their values (none by default: see TUNE_EXTRA).
    """
    on = [name for name in WEIGHTS if getattr(base, name)]
    if not on:
        raise ConfigError("Every ranking weight is 0: tuning needs at least one signal switched on.")
    axes = [(name, tuple(grid)) for name in on] + [(name, tuple(values)) for name, values in extra.items()]
    if not cached:
        raise ConfigError("Tuning needs at least one labelled query.")
    equal: dict[str, Any] = {name: 1.0 for name in on}
    best = replace(base, **equal)
    best_obj, tried = _objective(cached, best, top_k), 1
    for _ in range(rounds):
        changed = False
        for name, values in axes:
            for value in values:
                if value == getattr(best, name):
                    continue
                cand = replace(best, **{name: type(getattr(best, name))(value)})
                if sum(getattr(cand, n) for n in WEIGHTS) == 0:
                    continue
                obj = _objective(cached, cand, top_k)
                tried += 1
                if obj > best_obj + 1e-12:
                    best, best_obj, changed = cand, obj, True
        if not changed:
            break
    return TuneResult(best, best_obj, tuple(c.query.id or c.query.query for c in cached), tried)


@dataclass(frozen=True)
class Fold:
    """One leave-one-pool-out fold: weights tuned on the other pools, scored on ``pool``."""

    pool: str
    tuned: TuneResult
    held_out: Metrics
    results: list[QueryResult]


@dataclass(frozen=True)
class CrossValidation:
    """Leave-one-pool-out tuning: per-fold held-out metrics, and all held-out rankings pooled."""

    folds: list[Fold]
    mean_held_out: Metrics  # the mean over folds of each fold's held-out metrics
    overall: Metrics  # every held-out ranking pooled
    by_category: dict[str, Metrics]
    all_pools: TuneResult  # weights tuned on every pool (in-sample)
    median: RankingConfig  # per weight, the median of the folds' choices
    base: dict[str, Any]
    episodes: int
    top_k: int
    embedder: str

    def to_dict(self) -> dict[str, Any]:
        def weights(cfg: RankingConfig) -> dict[str, float]:
            return {n: getattr(cfg, n) for n in (*WEIGHTS, "prf_docs", "prf_mix", "bm25_evidence")}

        return {
            "folds": [{"pool": f.pool, "weights": weights(f.tuned.ranking), "tuned_on": len(f.tuned.tuned_on),
                       "train_objective": f.tuned.objective, "held_out": f.held_out.to_dict()}
                      for f in self.folds],
            "mean_held_out": self.mean_held_out.to_dict(),
            "overall": self.overall.to_dict(),
            "by_category": {c: m.to_dict() for c, m in self.by_category.items()},
            "all_pools": {"weights": weights(self.all_pools.ranking), "objective": self.all_pools.objective},
            "median": weights(self.median),
            "base": self.base,
            "episodes": self.episodes,
            "top_k": self.top_k,
            "embedder": self.embedder,
        }


def _mean_metrics(ms: Sequence[Metrics]) -> Metrics:
    n = len(ms)
    return Metrics(
        queries=sum(m.queries for m in ms),
        recall={k: sum(m.recall[k] for m in ms) / n for k in ms[0].recall},
        ndcg10=sum(m.ndcg10 for m in ms) / n,
        mrr=sum(m.mrr for m in ms) / n,
    )


def cross_validate_cached(
    cached: Sequence[CachedQuery],
    base: RankingConfig,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    top_k: int = NDCG_K,
    grid: Sequence[float] = TUNE_GRID,
    rounds: int = TUNE_ROUNDS,
    extra: Mapping[str, Sequence[float]] = TUNE_EXTRA,
    progress: Callable[[EvalProgress], None] | None = None,
) -> tuple[list[Fold], TuneResult]:
    """Leave-one-pool-out over cached queries, then the weights tuned on all of them."""
    pools = list(dict.fromkeys(c.pool for c in cached))
    if len(pools) < 2:
        raise ConfigError(f"Cross-validation needs at least 2 pools, got {pools}; pool queries by id prefix.")
    folds = []
    for i, pool in enumerate(pools):
        train = [c for c in cached if c.pool != pool]
        test = [c for c in cached if c.pool == pool]
        tuned = tune_weights(train, base, top_k=top_k, grid=grid, rounds=rounds, extra=extra)
        results = [QueryResult(c.query, c.pool, rank_cached(c, tuned.ranking, top_k)) for c in test]
        folds.append(Fold(pool, tuned, score_results(results, ks)[0], results))
        if progress is not None:
            progress(EvalProgress("tune", i + 1, len(pools) + 1))
    everything = tune_weights(cached, base, top_k=top_k, grid=grid, rounds=rounds, extra=extra)
    if progress is not None:
        progress(EvalProgress("tune", len(pools) + 1, len(pools) + 1))
    return folds, everything


def cross_validate(
    memory: Memory | Callable[[], Memory],
    episodes: Sequence[Episode | Mapping[str, Any]],
    queries: Sequence[EvalQuery | Mapping[str, Any]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    top_k: int | None = None,
    reuse_store: bool = False,
    grid: Sequence[float] = TUNE_GRID,
    rounds: int = TUNE_ROUNDS,
    extra: Mapping[str, Sequence[float]] = TUNE_EXTRA,
    progress: Callable[[EvalProgress], None] | None = None,
) -> CrossValidation:
    """Leave-one-pool-out tuning of the ranking weights over the id-prefix pools.

    The store is built once (or reused, see :func:`evaluate`); every query's signals are cached,
    then for each pool the weights are tuned (:func:`tune_weights`, starting from the memory's
    ranking) on the other pools' queries only and scored on that pool's. Also reports the weights
    tuned on all pools and the per-weight median of the folds' choices.
    """
    ks = tuple(sorted(set(ks)))
    top_k = max(*ks, NDCG_K) if top_k is None else top_k
    eps = validate_many(episodes, namespace=DEFAULT_NAMESPACE, max_text_bytes=resolve_max_text_bytes(None))
    qs = validate_queries(queries)
    groups, spaces = _plan(eps, qs, True)
    mem = memory if isinstance(memory, Memory) else memory()
    try:
        _fill(mem, groups, reuse_store, progress)
        cached = cache_features(mem, qs, spaces, top_k, progress)
        base = mem.ranking
        embedder = mem.embedder.id
    finally:
        if mem is not memory:
            mem.close()
    folds, everything = cross_validate_cached(cached, base, ks=ks, top_k=top_k, grid=grid, rounds=rounds,
                                              extra=extra, progress=progress)  # fmt: skip
    pooled = [r for f in folds for r in f.results]
    overall, by_category = score_results(pooled, ks)
    median = replace(base, **{n: type(getattr(base, n))(np.median([getattr(f.tuned.ranking, n) for f in folds]))
                              for n in (*WEIGHTS, *extra)})  # fmt: skip
    return CrossValidation(
        folds=folds, mean_held_out=_mean_metrics([f.held_out for f in folds]), overall=overall,
        by_category=by_category, all_pools=everything, median=median, base=base.to_dict(), episodes=len(eps),
        top_k=top_k, embedder=embedder,
    )  # fmt: skip
