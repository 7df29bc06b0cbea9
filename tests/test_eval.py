"""Recall-quality evaluation: metrics on hand-made rankings, input checks, and `rememory eval` end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rememory import ConfigError, InvalidEpisodeError
from rememory.cli.eval import parse_ranking
from rememory.cli.main import cli
from rememory.evaluate import (
    EvalQuery,
    QueryResult,
    cache_features,
    cross_validate,
    cross_validate_cached,
    evaluate,
    load_queries_file,
    ndcg_at_k,
    pool_of,
    rank_cached,
    recall_at_k,
    reciprocal_rank,
    score_rankings,
    score_results,
    validate_queries,
)
from rememory.index.config import WEIGHTS, RankingConfig

from .conftest import REPO

BIN = Path(sys.executable).parent / "rememory"

# Two pools of four episodes; every query repeats distinctive words of exactly the episodes it wants.
EPISODES = [
    {"id": "a/1", "keywords": "Nina, 2 May 2023", "text": "Nina: My axolotl Pickles finally ate the bloodworms today."},
    {"id": "a/2", "keywords": "Omar, 2 May 2023", "text": "Omar: I bought a secondhand accordion at the flea market."},
    {"id": "a/3", "keywords": "Nina, 2 May 2023",
     "text": "Nina: We climbed the lighthouse stairs and counted two hundred steps."},
    {"id": "a/4", "keywords": "Omar, 3 May 2023",
     "text": "Omar: My grandmother taught me to bake baklava with pistachios."},
    {"id": "b/1", "keywords": "Lena, 9 June 2023",
     "text": "Lena: I repaired the carburetor of my old motorcycle myself."},
    {"id": "b/2", "keywords": "Tom, 9 June 2023", "text": "Tom: The volcano hike in Iceland was cold and windy."},
    {"id": "b/3", "keywords": "Lena, 9 June 2023", "text": "Lena: I started learning the cello in the evenings."},
    {"id": "b/4", "keywords": "Tom, 10 June 2023", "text": "Tom: Our beehives produced thirty jars of honey."},
]  # fmt: skip
QUERIES = [
    {"id": "a/q0", "query": "What is the name of Nina's axolotl?", "relevant": ["a/1"], "category": 1},
    {"id": "a/q1", "query": "Who bought an accordion and who climbed the lighthouse?", "relevant": ["a/2", "a/3"],
     "category": 1},
    {"id": "b/q0", "query": "Who fixed a motorcycle carburetor?", "relevant": ["b/1"], "category": 2},
    # Its answer lives in pool a: searching only pool b must not find it.
    {"id": "b/q1", "query": "Who bakes baklava with pistachios?", "relevant": ["a/4"], "category": 2},
    {"id": "b/q2", "query": "Whose beehives made jars of honey?", "relevant": ["b/4"]},  # no category
]  # fmt: skip


def _never() -> None:
    raise AssertionError("the store must not be built when the inputs are invalid")


# --- metrics ---


def test_recall_at_k_counts_the_fraction_of_relevant_found() -> None:
    ranked = ["x", "a", "y", "b"]
    assert recall_at_k(ranked, {"a", "b", "c"}, 1) == 0.0
    assert recall_at_k(ranked, {"a", "b", "c"}, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, {"a", "b", "c"}, 10) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, ["a", "a"], 2) == 1.0  # duplicates in the labels count once
    with pytest.raises(ConfigError, match="at least one relevant"):
        recall_at_k(ranked, [], 1)


def test_ndcg_binary_with_ideal_over_min_relevant_and_k() -> None:
    ranked = ["x", "a", "y", "b"]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert ndcg_at_k(ranked, {"a", "b"}) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b"], {"a", "b"}) == pytest.approx(1.0)
    assert ndcg_at_k(["b", "a"], {"a", "b"}) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], {"a"}) == 0.0
    assert ndcg_at_k(["a", "a"], {"a", "b"}) == pytest.approx(1 / (1 + 1 / math.log2(3)))  # a repeat earns nothing
    # 12 relevant ids: the ideal DCG is over 10 positions, so 10 relevant hits on top score 1.
    many = [f"r{i}" for i in range(12)]
    assert ndcg_at_k(many[:10], many) == pytest.approx(1.0)
    # A relevant id at rank 11 is outside NDCG@10.
    assert ndcg_at_k([f"x{i}" for i in range(10)] + ["a"], {"a"}) == 0.0


def test_reciprocal_rank() -> None:
    assert reciprocal_rank(["a", "b"], {"a"}) == 1.0
    assert reciprocal_rank(["x", "y", "b", "a"], {"a", "b"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(["x", "y"], {"a"}) == 0.0
    assert reciprocal_rank([], {"a"}) == 0.0


def test_score_rankings_averages_over_queries() -> None:
    m = score_rankings([["a", "x"], ["x", "y", "b"]], [{"a"}, {"b", "c"}], ks=(1, 5))
    assert m.queries == 2
    assert m.recall == {1: pytest.approx(0.5), 5: pytest.approx((1 + 0.5) / 2)}
    assert m.mrr == pytest.approx((1 + 1 / 3) / 2)
    assert m.ndcg10 == pytest.approx((1 + (1 / math.log2(4)) / (1 + 1 / math.log2(3))) / 2)
    assert m.to_dict() == {"queries": 2, "recall@1": m.recall[1], "recall@5": m.recall[5], "ndcg@10": m.ndcg10,
                           "mrr": m.mrr}  # fmt: skip
    with pytest.raises(ConfigError, match="2 rankings for 1 queries"):
        score_rankings([["a"], ["b"]], [{"a"}])


def test_score_results_by_category_leaves_uncategorised_in_all_only() -> None:
    def res(ranked: list[str], relevant: list[str], cat: str | None) -> QueryResult:
        return QueryResult(EvalQuery("q", tuple(relevant), None, cat), "default", tuple(ranked))

    results = [res(["a"], ["a"], "10"), res(["x", "b"], ["b"], "2"), res(["x"], ["c"], "2"), res(["d"], ["d"], None)]
    overall, by_cat = score_results(results, ks=(1, 5))
    assert list(by_cat) == ["2", "10"]  # numeric categories sort numerically
    assert overall.queries == 4 and overall.recall[1] == pytest.approx(0.5) and overall.mrr == pytest.approx(0.625)
    assert by_cat["2"].queries == 2 and by_cat["2"].recall == {1: 0.0, 5: pytest.approx(0.5)}
    assert by_cat["2"].mrr == pytest.approx(0.25)
    assert by_cat["10"].queries == 1 and by_cat["10"].mrr == 1.0


# --- input checks (all run before any store is built) ---


@pytest.mark.parametrize(
    ("queries", "pooled", "match"),
    [
        ([{"id": "a/q0", "relevant": ["a/1"]}], False, r"query #0 \('a/q0'\): 'query' must be a non-empty"),
        ([QUERIES[0], {"query": "x", "relevant": []}], False, r"query #1: 'relevant' must be a non-empty"),
        ([{"query": "x", "relevant": [3]}], False, r"'relevant' must be a non-empty list of episode ids"),
        ([{"query": "x", "relevant": "a/1"}], False, r"'relevant' must be a non-empty list"),
        ([{"query": "x", "relevant": ["a/1"], "colour": 1}], False, r"unknown field\(s\) \['colour'\]"),
        ([{"query": "x", "relevant": ["a/1"], "category": True}], False, r"'category' must be"),
        (["just text"], False, r"query #0: must be an object"),
        ([{"id": "b/q9", "query": "x", "relevant": ["a/1", "a/9"]}], False,
         r"query #0 \('b/q9'\): relevant id\(s\) \['a/9'\] are not among the 8 episodes"),
        ([{"query": "x", "relevant": ["a/1"]}], True, r"query #0: with pooling by id prefix every query"),
        ([{"id": "c/q0", "query": "x", "relevant": ["a/1"]}], True, r"no episode is in its pool 'c'"),
    ],
)  # fmt: skip
def test_bad_queries_are_named(queries: list, pooled: bool, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        evaluate(_never, EPISODES, queries, pool_by_id_prefix=pooled)


def test_bad_episodes_are_named() -> None:
    with pytest.raises(InvalidEpisodeError, match=r"episode #1: missing 'text'"):
        evaluate(_never, [EPISODES[0], {"id": "a/2", "keywords": "k"}], QUERIES[:1], pool_by_id_prefix=False)
    plain = [*EPISODES, {"id": "plain", "keywords": "k", "text": "t"}]
    with pytest.raises(InvalidEpisodeError, match=r"episode #8: id 'plain' has no pool prefix"):
        evaluate(_never, plain, QUERIES, pool_by_id_prefix=True)
    evaluate_args = {"pool_by_id_prefix": False}
    with pytest.raises(ConfigError, match=r"top_k=5 retrieves too few hits"):
        evaluate(_never, EPISODES, QUERIES, top_k=5, **evaluate_args)
    with pytest.raises(ConfigError, match=r"ks must be positive"):
        evaluate(_never, EPISODES, QUERIES, ks=(0, 5), **evaluate_args)


def test_queries_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "q.json"
    f.write_text('{"query": "x"}')
    with pytest.raises(ConfigError, match=r"Cannot read the queries file: .* holds a dict"):
        load_queries_file(f)
    f.write_text(json.dumps(QUERIES))
    assert [q.id for q in load_queries_file(f)] == ["a/q0", "a/q1", "b/q0", "b/q1", "b/q2"]
    assert load_queries_file(f)[0] == EvalQuery("What is the name of Nina's axolotl?", ("a/1",), "a/q0", "1")


def test_parse_ranking_types_values_like_the_defaults() -> None:
    cfg = parse_ranking(("dense_ctx=0", "prf=0.5", "ann_threshold=1e9", "prf_docs=2"))
    assert cfg.dense_ctx == 0.0 and cfg.prf == 0.5
    assert cfg.ann_threshold == 10**9 and isinstance(cfg.ann_threshold, int) and cfg.prf_docs == 2
    with pytest.raises(ConfigError, match=r"Unknown ranking keys \['nope'\]; valid keys are"):
        parse_ranking(("nope=1",))
    with pytest.raises(ConfigError, match=r"--ranking prf_docs=2.5: the value must be a whole number"):
        parse_ranking(("prf_docs=2.5",))
    with pytest.raises(ConfigError, match=r"is not KEY=VALUE"):
        parse_ranking(("prf",))


def test_cli_rejects_bad_options_before_building(tmp_path: Path) -> None:
    eps, qs = tmp_path / "e.json", tmp_path / "q.json"
    eps.write_text(json.dumps(EPISODES))
    qs.write_text(json.dumps(QUERIES))
    runner = CliRunner()
    args = ["eval", "--episodes", str(eps), "--queries", str(qs)]
    res = runner.invoke(cli, [*args, "--ranking", "nope=1"])
    assert res.exit_code == 2 and "Unknown ranking keys ['nope']" in res.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    res = runner.invoke(cli, [*args, "--keep-store", str(full)])
    assert res.exit_code == 2 and "is not empty; give a new or empty directory" in res.stderr
    qs.write_text(json.dumps([{"query": "x", "relevant": ["zzz"]}]))
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and "relevant id(s) ['zzz'] are not among the 8 episodes" in res.stderr


# --- end to end with the real model ---


@pytest.mark.model
def test_eval_command_pooled_json(tmp_path: Path) -> None:
    eps, qs = tmp_path / "e.json", tmp_path / "q.json"
    eps.write_text(json.dumps(EPISODES))
    qs.write_text(json.dumps(QUERIES))
    env = {**os.environ, "REMEMORY_STORE": str(tmp_path / "must-not-be-used")}
    keep = tmp_path / "kept"
    res = subprocess.run(
        [str(BIN), "eval", "--episodes", str(eps), "--queries", str(qs), "--pool-by-id-prefix", "--json",
         "--ranking", "ann_threshold=1e9", "--keep-store", str(keep)],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["queries"], out["episodes"], out["top_k"], out["pool_by_id_prefix"]) == (5, 8, 10, True)
    assert out["ranking"]["ann_threshold"] == 10**9
    # a/q0, b/q0, b/q2: first; a/q1: its two relevant first and second; b/q1: its answer is in the other pool.
    a_q1 = 1.0
    assert out["overall"] == {"queries": 5, "recall@1": pytest.approx(0.7), "recall@5": pytest.approx(0.8),
                              "recall@10": pytest.approx(0.8), "ndcg@10": pytest.approx((3 + a_q1) / 5),
                              "mrr": pytest.approx(0.8)}  # fmt: skip
    assert out["by_category"] == {
        "1": {"queries": 2, "recall@1": 0.75, "recall@5": 1.0, "recall@10": 1.0,
              "ndcg@10": pytest.approx((1 + a_q1) / 2), "mrr": 1.0},
        "2": {"queries": 2, "recall@1": 0.5, "recall@5": 0.5, "recall@10": 0.5, "ndcg@10": pytest.approx(0.5),
              "mrr": 0.5},
    }  # fmt: skip
    assert "train" in res.stderr and "recall" in res.stderr  # progress goes to stderr
    assert (keep / "rememory.db").exists() and not (tmp_path / "must-not-be-used").exists()


@pytest.mark.model
def test_evaluate_one_namespace_finds_across_pools_and_needs_a_fresh_store(make_memory) -> None:
    mem = make_memory()
    mem.add("extra", "A stray episode that the evaluation set does not know.", id="stray")
    with pytest.raises(ConfigError, match=r"holds 9 episodes, but the evaluation set puts 8 there"):
        evaluate(mem, EPISODES, QUERIES, pool_by_id_prefix=False)
    mem.forget("stray")
    events = []
    report = evaluate(mem, EPISODES, QUERIES, pool_by_id_prefix=False, progress=events.append)  # resumes
    assert len(mem) == 8  # a Memory passed in stays open
    ranked = {r.query.id: r.ranked for r in report.results}
    assert ranked["b/q1"][0] == "a/4" and report.by_category["2"].recall[1] == 1.0
    assert set(ranked["a/q1"][:2]) == {"a/2", "a/3"} and report.by_category["1"].ndcg10 == pytest.approx(1.0)
    assert report.overall.recall[1] == pytest.approx(0.9) and report.overall.mrr == 1.0
    assert events[-1].stage == "recall" and (events[-1].done, events[-1].total) == (5, 5)
    assert any(e.stage == "train" for e in events)


# --- cross-validated tuning (leave one pool out), with the real model and a real store ---

# A third pool, so that every fold tunes on two pools.
EPISODES_C = [
    {"id": "c/1", "keywords": "Ravi, 1 July 2023", "text": "Ravi: I planted tomatoes and basil on the balcony."},
    {"id": "c/2", "keywords": "Mia, 1 July 2023", "text": "Mia: The chess tournament in Prague lasted five rounds."},
    {"id": "c/3", "keywords": "Ravi, 2 July 2023", "text": "Ravi: My kayak flipped over on the rapids last weekend."},
    {"id": "c/4", "keywords": "Mia, 2 July 2023", "text": "Mia: I knitted a green scarf for my brother."},
]  # fmt: skip
QUERIES_C = [
    {"id": "c/q0", "query": "Who grows basil on a balcony?", "relevant": ["c/1"], "category": 1},
    {"id": "c/q1", "query": "Where was the chess tournament held?", "relevant": ["c/2"], "category": 2},
]
CV_EPISODES, CV_QUERIES = EPISODES + EPISODES_C, QUERIES + QUERIES_C
SMALL_GRID = {"grid": (0.0, 1.0, 4.0), "rounds": 1}


@pytest.fixture
def cv_store(make_sqlite_memory):
    """A store holding the three pools, trained once (evaluate with the default ranking fills it)."""
    mem = make_sqlite_memory()
    evaluate(mem, CV_EPISODES, CV_QUERIES, pool_by_id_prefix=True)
    return mem


def _cached(mem, queries):
    qs = validate_queries(queries)
    return cache_features(mem, qs, [pool_of(q.id) for q in qs], 10)


@pytest.mark.model
def test_cross_validation_never_tunes_a_fold_on_its_own_pool(cv_store) -> None:
    folds, everything = cross_validate_cached(_cached(cv_store, CV_QUERIES), RankingConfig(), **SMALL_GRID)
    assert [f.pool for f in folds] == ["a", "b", "c"]  # each pool held out exactly once
    ids = {q["id"] for q in CV_QUERIES}
    for f in folds:
        own = {q["id"] for q in CV_QUERIES if q["id"].startswith(f.pool + "/")}
        assert {r.query.id for r in f.results} == own  # scored on its own pool only
        assert set(f.tuned.tuned_on) == ids - own  # tuned on the other pools' queries only
    assert set(everything.tuned_on) == ids
    # Relabelling pool a's queries changes what fold a scores, never the weights fold a chose.
    wrong = [{**q, "relevant": ["a/4"]} if q["id"].startswith("a/") else q for q in CV_QUERIES]
    again, _ = cross_validate_cached(_cached(cv_store, wrong), RankingConfig(), **SMALL_GRID)
    assert again[0].tuned == folds[0].tuned
    assert again[0].held_out != folds[0].held_out
    # Tuning starts from equal weights whatever the defaults are, and leaves a signal switched off alone.
    cached = _cached(cv_store, CV_QUERIES)
    other_start, _ = cross_validate_cached(cached, RankingConfig(bm25_own=3.0, dense_own=0.5), **SMALL_GRID)
    assert [f.tuned for f in other_start] == [f.tuned for f in folds]
    off, _ = cross_validate_cached(cached, RankingConfig(prf=0.0), **SMALL_GRID)
    assert all(f.tuned.ranking.prf == 0.0 for f in off)


@pytest.mark.model
def test_tuned_weights_rank_through_recall_exactly_as_the_tuner_predicted(cv_store, make_sqlite_memory) -> None:
    cached = _cached(cv_store, CV_QUERIES)
    # Some pool's neighbour signals are scaled down (its turns are unrelated): the tuner must scale them too.
    assert min(c.features.features.coherence for c in cached if c.features) < 1.0
    _, everything = cross_validate_cached(cached, RankingConfig(), **SMALL_GRID)
    odd = RankingConfig(bm25_own=4.0, bm25_ctx8=0.0, dense_own=0.25, dense_ctx=0.0, prf=4.0, prf_docs=1,
                        norm="rank")  # fmt: skip
    # The lexical evidence and the dense contrast are fused by the tuner exactly as by recall, too.
    contrast = RankingConfig(dense_contrast=4.0, bm25_evidence=2.0)
    for cfg in (everything.ranking, odd, contrast):
        predicted = [QueryResult(c.query, c.pool, rank_cached(c, cfg, 10)) for c in cached]
        mem = make_sqlite_memory(ranking=cfg)  # the same store, recalled with these weights
        report = evaluate(mem, CV_EPISODES, CV_QUERIES, pool_by_id_prefix=True, reuse_store=True)
        assert [r.ranked for r in report.results] == [r.ranked for r in predicted]
        assert (report.overall, report.by_category) == score_results(predicted)


@pytest.mark.model
def test_cross_validate_report_and_reuse_checks(cv_store) -> None:
    events = []
    cv = cross_validate(cv_store, CV_EPISODES, CV_QUERIES, reuse_store=True, progress=events.append, **SMALL_GRID)
    assert len(cv.folds) == 3 and cv.overall.queries == len(CV_QUERIES) and cv.episodes == len(CV_EPISODES)
    assert cv.mean_held_out.recall[5] == pytest.approx(sum(f.held_out.recall[5] for f in cv.folds) / 3)
    assert set(cv.by_category) == {"1", "2"}
    d = json.loads(json.dumps(cv.to_dict()))
    assert [f["pool"] for f in d["folds"]] == ["a", "b", "c"] and set(d["folds"][0]["weights"]) >= set(WEIGHTS)
    assert "bm25_evidence" in d["folds"][0]["weights"] and "bm25_evidence" in d["median"]  # swept by the tuner
    assert set(d) >= {"mean_held_out", "overall", "by_category", "all_pools", "median", "base"}
    stages = [e.stage for e in events]
    assert stages.count("tune") == 4 and stages.count("features") == len(CV_QUERIES) and "train" not in stages
    with pytest.raises(ConfigError, match=r"holds 4 episodes, not the 3 of the evaluation set"):
        cross_validate(cv_store, CV_EPISODES[:-1], CV_QUERIES[:-1], reuse_store=True)
    with pytest.raises(ConfigError, match="at least 2 pools"):
        cross_validate(cv_store, EPISODES_C, QUERIES_C, reuse_store=True)


@pytest.mark.model
def test_eval_command_cross_validates_a_kept_store(tmp_path: Path) -> None:
    eps, qs = tmp_path / "e.json", tmp_path / "q.json"
    eps.write_text(json.dumps(CV_EPISODES))
    qs.write_text(json.dumps(CV_QUERIES))
    keep = tmp_path / "kept"
    base = [str(BIN), "eval", "--episodes", str(eps), "--queries", str(qs), "--pool-by-id-prefix"]
    res = subprocess.run([*base, "--keep-store", str(keep)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*base, "--cross-validate", "--reuse-store", str(keep)], capture_output=True, text=True,
                         timeout=300, cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Held out, per fold" in res.stdout and "all pools: bm25_own=" in res.stdout
    assert "train" not in res.stderr  # nothing retrained
    res = subprocess.run([*base, "--reuse-store", str(keep), "--keep-store", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert res.returncode != 0 and "give one of them" in res.stderr
