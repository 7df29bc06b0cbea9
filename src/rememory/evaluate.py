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
from dataclasses import dataclass, field
from typing import Any

from .cells.train import TrainProgress
from .config import resolve_max_text_bytes
from .episodes import load_episodes_file, validate_many
from .errors import ConfigError, InvalidEpisodeError
from .memory import Memory
from .records import Episode

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
    """A progress event. ``stage`` "train": ``done``/``total`` are text bytes; "recall": queries."""

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
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Train ``episodes``, recall every query and score the rankings.

    With ``pool_by_id_prefix``, each id prefix before the first '/' is its own namespace and a
    query searches only the pool of its own id; otherwise everything shares one namespace.
    ``memory`` is a store to fill (left open) or a factory called once inputs are checked
    (the store it makes is closed at the end). The namespaces must not hold other episodes.
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
        return _run(mem, groups, qs, spaces, ks, top_k, pool_by_id_prefix, len(eps), progress)
    finally:
        if mem is not memory:
            mem.close()


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
) -> EvalReport:
    def emit(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(EvalProgress(stage, done, total))

    sizes = {ns: sum(len(e.text.encode("utf-8")) for e in eps) for ns, eps in groups.items()}
    total_bytes = sum(sizes.values())
    base = 0
    start = time.perf_counter()
    for ns, eps in groups.items():

        def relay(ev: TrainProgress, base: int = base) -> None:
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
