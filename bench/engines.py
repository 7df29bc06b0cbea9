"""Side-by-side benchmark of the memory engines: mlp-cell/1, byte-trace/1 and zstd -19 with a trained dictionary.

For each dataset and engine, in one run: total stored bytes per text byte (everything an episode
needs counted: shared model or dictionary, every per-episode stream and its config JSON as the
store writes it), decode ms per episode (batched, as recall reads), add ms per episode with the
model frozen (batched, and one at a time), model training time, and the fraction byte-exact.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/engines.py --cell-sample 100
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/engines.py --first-model 20,1000,2760

mlp-cell/1 trains one network per episode (about 0.1 s each on a free core): ``--cell-sample N``
measures it on the first N episodes of each dataset and says so; its bytes per text byte are
per-episode sizes, so the sample's ratio is an estimate for the whole set.

Not a test: timings are noisy and the machine may be shared, so the load average is printed
and only the ratios of one run are meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# Like the CLI: one thread per op before numpy and torch load (a pool of BLAS threads on tiny
# matrices collapses as soon as another process competes for a core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from rememory.engine import DecodeItem, InMemoryModels
from rememory.trace import TraceConfig, TraceEngine

REPO = Path(__file__).resolve().parent.parent
LOCOMO = REPO.parent / "shared" / "data" / "locomo-dev" / "episodes.json"


@dataclass
class Row:
    engine: str
    note: str
    episodes: int  # measured on this many (mlp-cell: a sample)
    bytes_per_byte: float
    shared_bytes: int  # model or dictionary
    episode_bytes: int  # streams + config JSON of the measured episodes
    decode_ms: float  # per episode, batched
    add_ms: float  # per episode, batched, frozen model
    add_one_ms: float  # per episode, one call per episode
    train_s: float
    exact: float


def _cfg_bytes(cfg: dict) -> int:
    return len(json.dumps(cfg, separators=(",", ":")))  # as the store writes it


def bench_zstd(texts: Sequence[bytes]) -> Row:
    import zstandard as zstd

    tb = sum(map(len, texts))
    t0 = time.perf_counter()
    # A dictionary about a tenth of the text, as zstd's guide suggests; small sets get a small one.
    size = max(1024, min(112_640, tb // 10))
    try:
        d = zstd.train_dictionary(size, list(texts), level=19)
        dict_data: zstd.ZstdCompressionDict | None = d
        dict_bytes = len(d.as_bytes())
        note = f"trained dictionary of {dict_bytes} B, magicless frames"
    except zstd.ZstdError as exc:
        dict_data, dict_bytes = None, 0
        note = f"no dictionary ({exc}), magicless frames"
    train_s = time.perf_counter() - t0
    kw = {"dict_data": dict_data} if dict_data is not None else {}
    params = zstd.ZstdCompressionParameters.from_level(
        19, format=zstd.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_dict_id=0
    )
    comp = zstd.ZstdCompressor(compression_params=params, **kw)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    frames = [comp.compress(t) for t in texts]
    add_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    dec = zstd.ZstdDecompressor(format=zstd.FORMAT_ZSTD1_MAGICLESS, **kw)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    back = [dec.decompress(f) for f in frames]
    decode_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    eb = sum(map(len, frames))
    exact = sum(a == b for a, b in zip(back, texts)) / len(texts)
    return Row(
        "zstd-19+dict",
        note,
        len(texts),
        (dict_bytes + eb) / tb,
        dict_bytes,
        eb,
        decode_ms,
        add_ms,
        add_ms,
        train_s,
        exact,
    )


def bench_trace(texts: Sequence[bytes], cfg: TraceConfig, *, fit: bool, warm: bool = True, note: str = "") -> Row:
    tb = sum(map(len, texts))
    repo = InMemoryModels()
    eng = TraceEngine(repo, cfg)
    train_s = 0.0
    shared = 0
    if fit:
        if warm:
            eng.current()  # the shipped model as version 1: fit fine-tunes from it
        t0 = time.perf_counter()
        model = eng.fit(texts)
        train_s = time.perf_counter() - t0
        shared = len(model.data)
    else:
        shared = len(eng.current().data)  # 0: the shipped model is stored by name
    keys = ["k"] * len(texts)
    t0 = time.perf_counter()
    arts = eng.encode(keys, texts)
    add_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    one = list(range(0, len(texts), max(1, len(texts) // 40)))  # ~40 single adds
    t0 = time.perf_counter()
    for i in one:
        eng.encode([keys[i]], [texts[i]])
    add_one_ms = (time.perf_counter() - t0) * 1000 / len(one)
    dec = TraceEngine(repo, cfg)  # a fresh engine: model loading counted in the decode time
    t0 = time.perf_counter()
    back = dec.decode_batch([DecodeItem(a, k, len(t)) for a, k, t in zip(arts, keys, texts)])
    decode_ms = (time.perf_counter() - t0) * 1000 / len(texts)
    eb = sum(int(a.streams["uint8"].size) + _cfg_bytes(a.config) for a in arts)
    exact = sum(a == b for a, b in zip(back, texts)) / len(texts)
    return Row(
        "byte-trace/1", note, len(texts), (shared + eb) / tb, shared, eb, decode_ms, add_ms, add_one_ms, train_s, exact
    )


def bench_cell(texts: Sequence[bytes], sample: int) -> Row:
    from rememory.cells.engine import MlpCellEngine

    part = list(texts[:sample])
    tb = sum(map(len, part))
    eng = MlpCellEngine()
    keys = [f"key {i}" for i in range(len(part))]
    t0 = time.perf_counter()
    arts = eng.encode(keys, part)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    back = [eng.decode(a, k) for a, k in zip(arts, keys)]
    decode_ms = (time.perf_counter() - t0) * 1000 / len(part)
    eb = sum(a.nbytes + _cfg_bytes(a.config) for a in arts)
    exact = sum(a == b for a, b in zip(back, part)) / len(part)
    note = "trained per episode" if sample >= len(texts) else f"measured on {len(part)} of {len(texts)}, extrapolated"
    add = train_s * 1000 / len(part)
    full_train = train_s * len(texts) / len(part)
    return Row("mlp-cell/1", note, len(part), eb / tb, 0, eb, decode_ms, add, add, full_train, exact)


def print_table(name: str, n: int, tb: int, rows: list[Row]) -> None:
    print(f"\n### {name}: {n} episodes, {tb} text bytes\n")
    base = next((r for r in rows if r.engine == "zstd-19+dict"), rows[0])
    cols = ["engine", "bytes / text byte", "vs zstd+dict", "decode ms/ep", "add ms/ep (batch / one)", "training s"]
    print("| " + " | ".join([*cols, "byte-exact", "note"]) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.engine} | {r.bytes_per_byte:.3f} | {r.bytes_per_byte / base.bytes_per_byte:.2f}x | "
            f"{r.decode_ms:.3f} | {r.add_ms:.3f} / {r.add_one_ms:.3f} | {r.train_s:.1f} | {r.exact:.0%} | {r.note} |"
        )
    sys.stdout.flush()


def first_model(texts: Sequence[bytes], cfg: TraceConfig, sizes: list[int]) -> None:
    """What each way of making a namespace's first model costs, as the namespace grows."""
    print("\n### first model of a namespace (locomo-dev prefixes): total bytes per text byte\n")
    print("| episodes | shipped base model | fit from scratch | fit from the base model |")
    print("|---|---|---|---|")
    for n in sizes:
        part = texts[:n]
        base = bench_trace(part, cfg, fit=False)
        scratch = bench_trace(part, cfg, fit=True, warm=False)
        warm = bench_trace(part, cfg, fit=True, warm=True)
        print(
            f"| {n} | {base.bytes_per_byte:.3f} | {scratch.bytes_per_byte:.3f} ({scratch.train_s:.0f} s) | "
            f"{warm.bytes_per_byte:.3f} ({warm.train_s:.0f} s) |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--locomo", type=Path, default=LOCOMO)
    ap.add_argument("--cell-sample", type=int, default=300, help="mlp-cell/1 episodes measured per dataset")
    ap.add_argument("--trace-seconds", type=float, default=TraceConfig.max_seconds, help="training budget of one fit")
    ap.add_argument("--datasets", default="all,300,examples", help="comma list of: all, 300, examples")
    ap.add_argument(
        "--first-model",
        metavar="SIZES",
        help="only measure the first-model choices at these locomo-dev prefixes (20,1000)",
    )
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # a script may; the library never does
    cfg = replace(TraceConfig(), max_seconds=args.trace_seconds)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; trace config {asdict(cfg)}")
    locomo = [e["text"].encode() for e in json.loads(args.locomo.read_text("utf-8"))] if args.locomo.exists() else []
    if args.first_model:
        first_model(locomo, cfg, [int(n) for n in args.first_model.split(",")])
        return
    datasets: dict[str, list[bytes]] = {}
    wanted = set(args.datasets.split(","))
    if "all" in wanted and locomo:
        datasets[f"locomo-dev, all {len(locomo)} turns"] = locomo
    if "300" in wanted and locomo:
        datasets["locomo-dev, first 300 turns"] = locomo[:300]
    if "examples" in wanted:
        datasets["examples/episodes.json"] = [
            e["text"].encode() for e in json.loads((REPO / "examples" / "episodes.json").read_text())
        ]
    out: dict[str, list[dict]] = {}
    for name, texts in datasets.items():
        rows = [bench_zstd(texts)]
        rows.append(bench_trace(texts, cfg, fit=False, note="shipped base model, no training"))
        if len(texts) >= 100:  # a model of its own pays for its weights only on a grown namespace
            rows.append(bench_trace(texts, cfg, fit=True, note="model fit on this set (fine-tuned from the base)"))
        if args.cell_sample > 0:
            rows.append(bench_cell(texts, args.cell_sample))
        print_table(name, len(texts), sum(map(len, texts)), rows)
        out[name] = [asdict(r) for r in rows]
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
