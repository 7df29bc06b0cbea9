"""``rememory eval``: build a fresh store from labelled episodes and report recall quality."""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path

import click

from ..errors import ConfigError
from ..evaluate import (
    TUNE_EXTRA,
    CrossValidation,
    EvalReport,
    Metrics,
    evaluate,
    load_eval_episodes,
    load_queries_file,
)
from ..evaluate import cross_validate as run_cross_validation
from ..index.config import WEIGHTS, RankingConfig
from ..memory import Memory
from .progress import BYTES, StageBars


def _parse_value(key: str, raw: str, default: object) -> object:
    """A ``--ranking`` value, typed like the field's default (numbers accept 1e9 and 0.5)."""
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            num = float(raw)
            if not num.is_integer():
                raise ValueError(raw)
            return int(num)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}[type(default)]
        raise ConfigError(f"--ranking {key}={raw}: the value must be {kind} (default {default!r}).") from None
    return raw


def parse_ranking(pairs: tuple[str, ...]) -> RankingConfig:
    """Build a :class:`RankingConfig` from ``KEY=VALUE`` strings (unknown keys are an error)."""
    defaults = {f.name: getattr(RankingConfig(), f.name) for f in fields(RankingConfig)}
    values: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--ranking {pair!r} is not KEY=VALUE; for example --ranking dense_ctx=0.")
        values[key] = _parse_value(key, raw.strip(), defaults[key]) if key in defaults else raw
    return RankingConfig.from_dict(values)


def _table(rows: list[tuple[str, Metrics]], first: str = "category") -> list[str]:
    ks = sorted(rows[0][1].recall)
    head = [first, "queries", *(f"R@{k}" for k in ks), "NDCG@10", "MRR"]
    table = [head] + [
        [name, str(m.queries), *(f"{m.recall[k]:.3f}" for k in ks), f"{m.ndcg10:.3f}", f"{m.mrr:.3f}"]
        for name, m in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table]


def render_report(report: EvalReport) -> str:
    """The metrics as a plain-text table: one row overall, one per category."""
    lines = _table([("all", report.overall), *report.by_category.items()])
    pooling = "pooled by id prefix" if report.pool_by_id_prefix else "one namespace"
    title = (f"{report.queries} queries over {report.episodes} episodes ({pooling}, top {report.top_k} "
             f"retrieved, embedder {report.embedder})")  # fmt: skip
    timing = f"build {report.build_s:.1f} s, recall {1000 * report.recall_s / max(report.queries, 1):.1f} ms/query"
    return "\n".join([title, "", *lines, "", timing]) + "\n"


def render_cross_validation(cv: CrossValidation) -> str:
    """Held-out metrics per fold and pooled per category, and the weights each fold chose."""
    def weights(cfg: RankingConfig) -> str:
        return " ".join(f"{n}={getattr(cfg, n):g}" for n in (*WEIGHTS, "prf_docs", "prf_mix", *TUNE_EXTRA))

    folds = [(f.pool, f.held_out) for f in cv.folds] + [("mean", cv.mean_held_out)]
    out = [f"Leave-one-pool-out over {len(cv.folds)} pools, {cv.overall.queries} queries, {cv.episodes} episodes "
           f"(top {cv.top_k}, embedder {cv.embedder}, norm {cv.base['norm']})", "",
           "Held out, per fold (mean: of the folds' metrics):", *_table(folds, "pool"), "",
           "Held out, all folds' rankings pooled:", *_table([("all", cv.overall), *cv.by_category.items()]), "",
           "Weights tuned per fold (on the other pools):"]  # fmt: skip
    out += [f"  {f.pool}: {weights(f.tuned.ranking)}" for f in cv.folds]
    out += [f"  median: {weights(cv.median)}", f"  all pools: {weights(cv.all_pools.ranking)}"]
    return "\n".join(out) + "\n"


@click.command()
@click.option(
    "--episodes",
    "episodes_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSON list of episodes ({id, keywords, text, time?}); ids are kept verbatim.",
)
@click.option(
    "--queries",
    "queries_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSON list of queries ({id?, query, relevant: [episode ids], category?}).",
)
@click.option(
    "--pool-by-id-prefix",
    is_flag=True,
    help="One namespace per id prefix before '/'; each query searches only its own id's pool.",
)
@click.option(
    "--ranking",
    "ranking",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a ranking weight, e.g. --ranking dense_ctx=0 (repeatable; for ablations).",
)
@click.option(
    "--top-k-max",
    default=10,
    show_default=True,
    type=click.IntRange(10, 1000),
    help="Hits retrieved per query (MRR counts a first relevant hit anywhere in them).",
)
@click.option(
    "--keep-store",
    type=click.Path(file_okay=False),
    help="Build the store in this new or empty directory and keep it (default: a temporary one).",
)
@click.option(
    "--reuse-store",
    type=click.Path(file_okay=False, exists=True),
    help="Recall from this store, kept by an earlier eval of the same episodes (--keep-store), without training.",
)
@click.option(
    "--cross-validate",
    is_flag=True,
    help="Leave one id-prefix pool out: tune the ranking weights on the other pools, score the held-out one "
    "(implies --pool-by-id-prefix; --ranking sets where tuning starts).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def eval_command(ctx: click.Context, episodes_file: str, queries_file: str, pool_by_id_prefix: bool,
                 ranking: tuple[str, ...], top_k_max: int, keep_store: str | None, reuse_store: str | None,
                 cross_validate: bool, as_json: bool) -> None:  # fmt: skip
    """Train EPISODES into a fresh store, recall every query, and report R@k, NDCG@10 and MRR.

    The store is always new (--store is ignored), so results never mix with your memories, unless
    --reuse-store names one that an earlier eval of the same episodes kept.
    """
    config = parse_ranking(ranking)
    if keep_store is not None and reuse_store is not None:
        raise ConfigError("--keep-store builds a new store and --reuse-store reads a kept one; give one of them.")
    episodes = load_eval_episodes(episodes_file)
    queries = load_queries_file(queries_file)
    if keep_store is not None:
        kept = Path(keep_store)
        if kept.exists() and any(kept.iterdir()):
            raise ConfigError(f"--keep-store {kept} is not empty; give a new or empty directory.")
    bars = StageBars(units={"train": BYTES, "tune": {"unit": "fold"}}, unit="q")
    with tempfile.TemporaryDirectory(prefix="rememory-eval-") as tmp:
        path = Path(keep_store or reuse_store or Path(tmp) / "store")

        def open_memory() -> Memory:
            return Memory(path, embedder=ctx.obj["embedder"], ranking=config)

        reuse = reuse_store is not None
        try:
            if cross_validate:
                cv = run_cross_validation(open_memory, episodes, queries, top_k=top_k_max, reuse_store=reuse,
                                          progress=bars.on)  # fmt: skip
            else:
                report = evaluate(open_memory, episodes, queries, pool_by_id_prefix=pool_by_id_prefix, top_k=top_k_max,
                                  reuse_store=reuse, progress=bars.on)  # fmt: skip
        finally:
            bars.close()
    if cross_validate:
        click.echo(json.dumps(cv.to_dict(), ensure_ascii=False) if as_json else render_cross_validation(cv),
                   nl=as_json)  # fmt: skip
    elif as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        click.echo(render_report(report), nl=False)
    if keep_store is not None:
        click.echo(f"Kept the store in {keep_store}.", err=True)
