"""Side-by-side benchmark: ReMemory's memory cells vs the research prototype's method.

Trains the same episodes both ways in one run and prints, per dataset: the fraction
byte-exact, stored bytes per text byte, training throughput and decode time, with ratios.

    .venv/bin/python bench/cells.py                       # LoCoMo first 300 + examples
    .venv/bin/python bench/cells.py --limit 50 --json out.json

Not a test: timings are noisy, so only the ratios of one run are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as a script, Python puts bench/ on the path, so the sibling reference module imports directly.
from prototype_ref import train_reference

from rememory import Memory
from rememory.cells.engine import MlpCellEngine
from rememory.embed import SentenceTransformerEmbedder

REPO = Path(__file__).resolve().parent.parent
LOCOMO = REPO.parent / "shared" / "data" / "locomo-dev" / "episodes.json"


def bench_ours(episodes: list[dict], embedder) -> dict:
    engine = MlpCellEngine()
    keys = [e["keywords"] for e in episodes]
    texts = [e["text"].encode("utf-8") for e in episodes]
    text_bytes = sum(map(len, texts))
    t0 = time.perf_counter()
    arts = engine.encode(keys, texts)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = [engine.decode(a, k) == t for a, k, t in zip(arts, keys, texts)]
    decode_ms = (time.perf_counter() - t0) * 1000 / len(arts)

    # The same episodes through the full stack: embedding, training, SQLite and shards.
    with tempfile.TemporaryDirectory() as tmp:
        mem = Memory(Path(tmp) / "store", embedder=embedder)
        t0 = time.perf_counter()
        ids = mem.add_many([{"keywords": e["keywords"], "text": e["text"]} for e in episodes])
        e2e_s = time.perf_counter() - t0
        st = mem.stats()
        t0 = time.perf_counter()
        got = [mem.get(i).text.encode("utf-8") for i in ids]
        get_ms = (time.perf_counter() - t0) * 1000 / len(ids)
        verified = mem.verify().ok and got == texts
        mem.close()
    return {
        "exact": float(np.mean(exact)),
        "stored_per_byte": st.memory_bytes / text_bytes,
        "store_per_byte": st.store_bytes / text_bytes,
        "weights_per_byte": sum(a.nbytes for a in arts) / text_bytes,
        "train_kb_s": text_bytes / 1024 / train_s,
        "e2e_kb_s": text_bytes / 1024 / e2e_s,
        "decode_ms": decode_ms,
        "get_ms": get_ms,
        "store_verified": verified,
    }


def bench_reference(episodes: list[dict], embedder) -> dict:
    # The prototype keyed each cell by its keywords' embedding.
    keys = embedder.embed_batch([e["keywords"] for e in episodes])
    texts = [e["text"].encode("utf-8") for e in episodes]
    # One thread: on tiny per-episode models extra threads only add overhead (the baseline gets its best case).
    res = train_reference(keys, texts, num_threads=1)
    return {
        "exact": float(np.mean(res.exact)),
        "stored_per_byte": res.stored_bytes / res.text_bytes,
        "train_kb_s": res.text_bytes / 1024 / res.train_seconds,
        "decode_ms": res.decode_ms_per_cell,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=300, help="LoCoMo episodes to use (the first N)")
    ap.add_argument("--locomo", type=Path, default=LOCOMO)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets = {}
    if args.locomo.exists():
        datasets[f"locomo-dev first {args.limit}"] = json.loads(args.locomo.read_text("utf-8"))[: args.limit]
    else:
        print(f"note: {args.locomo} not found; LoCoMo skipped", file=sys.stderr)
    datasets["examples/episodes.json"] = json.loads((REPO / "examples" / "episodes.json").read_text("utf-8"))
    embedder = SentenceTransformerEmbedder()
    results = {}
    for name, eps in datasets.items():
        tb = sum(len(e["text"].encode()) for e in eps)
        print(f"\n== {name}: {len(eps)} episodes, {tb} text bytes", file=sys.stderr, flush=True)
        ours = bench_ours(eps, embedder)
        print("   ours done; training the reference (one MLP per episode)...", file=sys.stderr, flush=True)
        ref = bench_reference(eps, embedder)
        results[name] = {"episodes": len(eps), "text_bytes": tb, "ours": ours, "reference": ref}
        print(f"\n{name} ({len(eps)} episodes, {tb / 1024:.1f} KB of text)")
        print(f"{'':28}{'ours':>12}{'reference':>12}{'ratio':>12}")
        rows = [
            ("byte-exact", "exact", "{:.1%}", None),
            ("cell bytes / text byte", "stored_per_byte", "{:.2f}", "ref/ours"),
            ("training KB/s", "train_kb_s", "{:.2f}", "ours/ref"),
            ("decode ms / cell", "decode_ms", "{:.2f}", "ref/ours"),
        ]
        for label, key, fmt, ratio in rows:
            a, b = ours[key], ref[key]
            r = "" if ratio is None else f"{(b / a if ratio == 'ref/ours' else a / b):.1f}x"
            print(f"{label:28}{fmt.format(a):>12}{fmt.format(b):>12}{r:>12}")
        print(f"{'store bytes / text byte':28}{ours['store_per_byte']:>12.2f}{'':>12}  (keys, metadata, indexes)")
        print(f"{'end-to-end add KB/s':28}{ours['e2e_kb_s']:>12.2f}{'':>12}  (embedding + training + commit)")
        print(f"{'Memory.get ms / episode':28}{ours['get_ms']:>12.2f}{'':>12}  (SQLite + shard read + decode)")
        print(f"{'store verify':28}{'ok' if ours['store_verified'] else 'FAILED':>12}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
