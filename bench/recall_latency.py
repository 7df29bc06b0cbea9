"""Recall latency at 1k, 10k and 100k episodes: the default ranking (ANN above its threshold)
side by side with an exact brute-force dense scan, in the same run, on the same store.

Each size is one store with one namespace: the LoCoMo dev turns, then generated variations
(each recombines a sentence of a turn with a sentence of another turn of the set). Stores
are cached under --workdir, so a rerun skips building; a larger store starts from a copy
of the largest smaller one. Reports per size:

* p50 / p95 of ``recall(top_k=3)`` end to end (query embedding, search, decoding the hits),
  over LoCoMo questions, for the default ranking and for ``ann_threshold=10**9`` (exact);
* agree@10: the fraction of the exact top-10 ids that the default ranking's top 10 also has;
* cold start: a new process running ``rememory --store DIR recall PHRASE --json``, median of 3;
* memory: the peak RSS of a fresh process that opens the store and answers all the queries,
  and how much resident memory the store and its indexes add to the loaded model.

    .venv/bin/python bench/recall_latency.py --sizes 1000,5000
    .venv/bin/python bench/recall_latency.py --json recall_latency.json   # 1k, 10k, 100k

Building is the slow part: 100k episodes hold 9.3 MB of text, and a quiet 2-core machine
builds ~19 episodes/s (about 90 minutes for 100k, most of it embedding keys). Build once,
possibly on a bigger machine with the same code, and copy the --workdir; reruns reuse it.
Not a test: timings are noisy, so compare the two columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rememory import Memory
from rememory.embed import load_embedder
from rememory.index.config import RankingConfig
from rememory.records import EncodeProgress

REPO = Path(__file__).resolve().parent.parent
LOCOMO = REPO.parent / "shared" / "data" / "locomo-dev"
BIN = Path(sys.executable).parent / "rememory"
GENERATOR = 2  # bump when make_episodes changes: cached stores built by another version are rebuilt
MARKER = "bench-complete.json"
EXACT = RankingConfig(ann_threshold=10**9)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def make_episodes(turns: list[dict], n: int) -> list[dict]:
    """``n`` episodes: the turns as they are, then recombinations. Episode i never depends on n."""
    out: list[dict] = []
    seen: set[str] = set()
    split = [(t["text"].partition(": ")[0], _SENTENCE.split(t["text"].partition(": ")[2])) for t in turns]
    for i in range(n):
        base = turns[i % len(turns)]
        round_ = i // len(turns)
        if round_ == 0:
            ep = {"id": base["id"], "keywords": base["keywords"], "text": base["text"]}
        else:
            rng = random.Random(i)
            speaker, own = split[i % len(turns)]
            _, other = split[rng.randrange(len(turns))]
            text = f"{speaker}: {rng.choice(own)} {rng.choice(other)}"
            if text in seen:  # the same two sentences drawn twice: number the repeat
                k = 2
                while f"{text} ({k})" in seen:
                    k += 1
                text = f"{text} ({k})"
            ep = {"id": f"{base['id']}~{round_}", "keywords": base["keywords"], "text": text}
        seen.add(ep["text"])
        out.append(ep)
    return out


def load_questions(data: Path, count: int) -> list[str]:
    """``count`` LoCoMo questions, evenly spread over the file."""
    qs = [q["query"] for q in json.loads((data / "queries.json").read_text("utf-8"))]
    step = max(1, len(qs) // count)
    return qs[::step][:count]


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(workdir: Path, n: int, turns: list[dict], embedder) -> tuple[Path, float | None]:
    """The store of ``n`` episodes, built (or resumed) if not cached; returns it and the build seconds."""
    store = workdir / f"store-{n}"
    want = {"episodes": n, "generator": GENERATOR, "embedder": embedder.id}
    if _complete(store, want):
        return store, None
    if (store / MARKER).exists():  # built by another generator or embedder
        shutil.rmtree(store)
    if not store.exists():
        built = [int(p.name[6:]) for p in workdir.glob("store-*") if p.name[6:].isdigit()]
        ok = [m for m in built if m < n and _complete(workdir / f"store-{m}", {**want, "episodes": m})]
        if ok:
            seed = workdir / f"store-{max(ok)}"
            print(f"  starting from a copy of {seed.name}", file=sys.stderr, flush=True)
            shutil.copytree(seed, store, ignore=shutil.ignore_patterns(MARKER))
    episodes = make_episodes(turns, n)
    start = time.perf_counter()
    mem = Memory(store, embedder=embedder)
    bar = tqdm(desc=f"building {n}", unit="ep", file=sys.stderr, dynamic_ncols=True)

    def on_progress(ev: EncodeProgress) -> None:
        bar.total = ev.total  # a resumed build counts only what is left
        bar.update(ev.done - bar.n)

    try:
        # One call: recall uses the neighbours within an add_many call as context. It commits
        # batch by batch and skips what is already stored, so an interrupted build resumes.
        mem.add_many(episodes, progress=on_progress)
        if mem.count() != n:
            raise SystemExit(f"{store} holds {mem.count()} episodes, expected {n}; delete it and rerun.")
    finally:
        bar.close()
        mem.close()
    (store / MARKER).write_text(json.dumps(want))
    return store, time.perf_counter() - start


def _complete(store: Path, want: dict) -> bool:
    marker = store / MARKER
    return marker.exists() and json.loads(marker.read_text()) == want


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def measure(store: Path, questions: list[str], embedder, default: RankingConfig) -> dict:
    """Latencies (ms) of both rankings, interleaved query by query, and their top-10 agreement."""
    ann = Memory(store, embedder=embedder, ranking=default)
    exact = Memory(store, embedder=embedder, ranking=EXACT)
    try:
        first = {}
        for name, mem in (("default", ann), ("exact", exact)):
            t0 = time.perf_counter()
            mem.recall(questions[0], top_k=3)  # loads or builds the indexes
            first[name] = (time.perf_counter() - t0) * 1000
        lat: dict[str, list[float]] = {"default": [], "exact": []}
        for i, q in enumerate(questions):
            order = (("default", ann), ("exact", exact)) if i % 2 == 0 else (("exact", exact), ("default", ann))
            for name, mem in order:
                t0 = time.perf_counter()
                mem.recall(q, top_k=3)
                lat[name].append((time.perf_counter() - t0) * 1000)
        agree = []
        for q in questions:
            want = [h.id for h in exact.recall(q, top_k=10)]
            got = {h.id for h in ann.recall(q, top_k=10)}
            agree.append(len(got.intersection(want)) / max(len(want), 1))
        store_mb = ann.stats().store_bytes / 2**20
    finally:
        ann.close()
        exact.close()
    out = {"agree@10": statistics.fmean(agree), "store_mb": store_mb, "disk_mb": dir_bytes(store) / 2**20}
    for name, xs in lat.items():
        out[name] = {"first_ms": first[name], "p50_ms": percentile(xs, 0.5), "p95_ms": percentile(xs, 0.95),
                     "mean_ms": statistics.fmean(xs)}  # fmt: skip
    out["exact/default p50"] = out["exact"]["p50_ms"] / out["default"]["p50_ms"]
    return out


def cold_start(store: Path, phrase: str, runs: int, embedder: str | None) -> float:
    """Median seconds for a new ``rememory recall`` process to print its answer and exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [str(BIN), "--store", str(store)] + (["--embedder", embedder] if embedder else [])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = subprocess.run([*args, "recall", phrase, "--json"], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0 or not json.loads(res.stdout)["hits"]:
            raise SystemExit(f"rememory recall failed on {store}:\n{res.stderr}")
    return statistics.median(times)


def memory_use(store: Path, args: argparse.Namespace, mode: str) -> dict[str, float]:
    """RSS (MB) of a fresh process that opens the store and answers every question.

    ``peak_mb`` is its high-water mark (often set while the model loads); ``model_mb`` its
    resident size with only the model loaded and ``after_mb`` after the questions, so
    ``after_mb - model_mb`` is what the store and its indexes keep in memory.
    """
    cmd = [sys.executable, __file__, "--rss-child", str(store), "--rss-mode", mode, "--queries", str(args.queries),
           "--data", str(args.data)] + (["--embedder", args.embedder] if args.embedder else [])  # fmt: skip
    if args.ann_threshold is not None:
        cmd += ["--ann-threshold", str(args.ann_threshold)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise SystemExit(f"the memory probe failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _rss_now_mb() -> float:
    """Current resident size (Linux /proc; NaN elsewhere)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


def rss_child(args: argparse.Namespace) -> None:
    ranking = EXACT if args.rss_mode == "exact" else default_ranking(args)
    questions = load_questions(args.data, args.queries)
    embedder = load_embedder(args.embedder)
    embedder.embed(questions[0])
    model_mb = _rss_now_mb()
    with Memory(args.rss_child, embedder=embedder, ranking=ranking) as mem:
        for q in questions:
            mem.recall(q, top_k=3)
        after_mb = _rss_now_mb()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"peak_mb": peak_mb, "model_mb": model_mb, "after_mb": after_mb}))


def default_ranking(args: argparse.Namespace) -> RankingConfig:
    return RankingConfig() if args.ann_threshold is None else RankingConfig(ann_threshold=args.ann_threshold)


def render(rows: list[dict]) -> str:
    head = ["episodes", "ann", "p50 ms", "p95 ms", "exact p50", "exact p95", "exact/ann", "agree@10",
            "1st ms", "cold s", "RSS MB", "+store MB", "exact +store", "disk MB"]  # fmt: skip
    table = [head]
    for r in rows:
        d, e, rss = r["default"], r["exact"], r["rss_mb"]
        table.append([
            str(r["episodes"]), "yes" if r["ann_active"] else "no", f"{d['p50_ms']:.1f}", f"{d['p95_ms']:.1f}",
            f"{e['p50_ms']:.1f}", f"{e['p95_ms']:.1f}", f"{r['exact/default p50']:.2f}x", f"{r['agree@10']:.3f}",
            f"{d['first_ms']:.0f}", f"{r['cold_start_s']:.2f}", f"{rss['default']['peak_mb']:.0f}",
            f"{rss['default']['after_mb'] - rss['default']['model_mb']:.0f}",
            f"{rss['exact']['after_mb'] - rss['exact']['model_mb']:.0f}", f"{r['disk_mb']:.1f}",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table)


def main() -> None:
    import torch

    torch.set_num_threads(1)  # what the `rememory` command runs with (see README, Threads): measure that
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="comma-separated store sizes (episodes)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rememory-bench-recall"),
                    help="where built stores are cached between runs")  # fmt: skip
    ap.add_argument("--queries", type=int, default=200, help="LoCoMo questions timed per size")
    ap.add_argument("--cold-runs", type=int, default=3, help="cold-start processes per size (median reported)")
    ap.add_argument("--ann-threshold", type=int, help="the default ranking's ann_threshold (to try ANN on small sizes)")
    ap.add_argument("--embedder", help="embedding model (default: the shipped all-MiniLM-L6-v2)")
    ap.add_argument("--data", type=Path, default=LOCOMO, help="folder with LoCoMo episodes.json and queries.json")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--rss-mode", choices=("default", "exact"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rss_child is not None:
        rss_child(args)
        return
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        raise SystemExit(f"--sizes must be whole numbers separated by commas, got {args.sizes!r}") from None
    if not (args.data / "episodes.json").exists():
        raise SystemExit(f"{args.data}/episodes.json not found; pass --data FOLDER")
    turns = json.loads((args.data / "episodes.json").read_text("utf-8"))
    questions = load_questions(args.data, args.queries)
    embedder = load_embedder(args.embedder)
    embedder.embed("warm up")
    args.workdir.mkdir(parents=True, exist_ok=True)
    default = default_ranking(args)
    rows = []
    for n in sizes:
        print(f"== {n} episodes", file=sys.stderr, flush=True)
        store, build_s = build(args.workdir, n, turns, embedder)
        row = {"episodes": n, "ann_active": n > default.ann_threshold, "build_s": build_s, "queries": len(questions)}
        row.update(measure(store, questions, embedder, default))
        row["cold_start_s"] = cold_start(store, questions[0], args.cold_runs, args.embedder)
        row["rss_mb"] = {mode: memory_use(store, args, mode) for mode in ("default", "exact")}
        rows.append(row)
        built = "cached" if build_s is None else f"built in {build_s:.0f} s"
        print(f"   {built}; p50 {row['default']['p50_ms']:.1f} ms", file=sys.stderr, flush=True)
    print(f"\nrecall(top_k=3) over {len(questions)} LoCoMo questions; default ranking (ANN above "
          f"{default.ann_threshold} episodes) vs exact dense scan, same run")  # fmt: skip
    print(render(rows))
    print("\n1st ms: the first recall of the default ranking (index load). cold s: a new `rememory recall` process "
          f"(CLI default ranking), median of {args.cold_runs}.\nRSS MB: peak RSS of a fresh process answering every "
          "question; +store MB: its RSS after the questions minus its RSS with only the model loaded (exact +store: "
          "the same with the exact scan). disk MB: the store directory.")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"queries": len(questions), "embedder": embedder.id, "sizes": rows}, indent=2))


if __name__ == "__main__":
    main()
