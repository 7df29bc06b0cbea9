"""Train the trace engine's shipped base model from text the project may ship.

    PYTHONPATH=src .venv/bin/python scripts/train_trace_base.py            # writes src/rememory/trace/base-1.*

The corpus is the project's own writing (README.md, examples/, bench/data/multilingual/, all
written for this project) and the package descriptions (METADATA) of installed distributions
under a permissive license (MIT, BSD, Apache, PSF). No evaluation data goes in: a base model
trained on LoCoMo would carry that data into every install. The sources and their sizes are
written beside the weights (base-1.json) so the model's provenance can be checked.

Not part of the library: run once when the base model changes, then bump BASE_MODEL in
rememory/trace/engine.py (a shipped model file never changes once released).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from importlib import metadata
from pathlib import Path

import torch

from rememory.trace.config import TraceConfig
from rememory.trace.model import ModelShape, model_digest
from rememory.trace.train import quantize, train_float

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "rememory" / "trace"
PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC)\b", re.I)
EVAL_WORDS = re.compile(r"locomo|conv-\d|caroline|melanie|heldout", re.I)
MAX_PIECE = 400  # bytes: about a conversational turn, the size of the episodes the model meets


def pieces(text: str) -> list[bytes]:
    """Paragraphs, split further at sentence ends so no piece is much longer than a turn."""
    out: list[bytes] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        while para:
            cut = len(para)
            if len(para.encode()) > MAX_PIECE:
                ends = [m.end() for m in re.finditer(r"[.!?] ", para[:MAX_PIECE])]
                cut = ends[-1] if ends else MAX_PIECE // 2
            piece, para = para[:cut].strip(), para[cut:].strip()
            if len(piece) >= 20:
                out.append(piece.encode())
    return out


def corpus(max_package_bytes: int) -> tuple[list[bytes], dict[str, int]]:
    texts: list[bytes] = []
    sources: dict[str, int] = {}

    def add(name: str, ps: list[bytes]) -> None:
        texts.extend(ps)
        sources[name] = sum(map(len, ps))

    # The README quotes a few LoCoMo keys and ids as format examples: those paragraphs stay out.
    readme = [p for p in pieces((REPO / "README.md").read_text()) if not EVAL_WORDS.search(p.decode())]
    add("README.md (paragraphs naming evaluation data left out)", readme)
    for rel in ("examples/episodes.json", "bench/data/multilingual/episodes.json"):
        eps = json.loads((REPO / rel).read_text())
        add(rel, [e["text"].encode() for e in eps if e.get("text")])
    used = 0
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        meta = dist.metadata
        lic = " ".join(
            [meta.get("License") or "", meta.get("License-Expression") or "", *(meta.get_all("Classifier") or [])]
        )
        body = meta.get_payload() if hasattr(meta, "get_payload") else ""  # type: ignore[attr-defined]
        if not body or not PERMISSIVE.search(lic) or used >= max_package_bytes:
            continue
        ps = [p for p in pieces(str(body)) if not p.startswith((b"```", b"|", b"[!", b"<"))]
        add(f"{meta['Name']} {meta['Version']} METADATA", ps)
        used += sources[f"{meta['Name']} {meta['Version']} METADATA"]
    return texts, sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package-bytes", type=int, default=300_000, help="text taken from package descriptions")
    ap.add_argument("--seconds", type=float, default=600.0, help="training budget")
    ap.add_argument("--name", default="base-1")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a script may set it; the library never does
    texts, sources = corpus(args.package_bytes)
    cfg = TraceConfig(max_seconds=args.seconds, epochs=60)
    t0 = time.perf_counter()
    model = quantize(train_float(texts, cfg), ModelShape(cfg.hidden, cfg.embed), cfg.weight_levels)
    data = model.to_bytes()
    (OUT / f"{args.name}.safetensors").write_bytes(data)
    manifest = {
        "name": args.name,
        "shape": ModelShape(cfg.hidden, cfg.embed).to_config(),
        "digest": model_digest(data),
        "bytes": len(data),
        "trained_on_bytes": sum(map(len, texts)),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "sources": sources,
    }
    (OUT / f"{args.name}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "sources"}))


if __name__ == "__main__":
    main()
