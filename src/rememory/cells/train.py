"""Batched training of many memory cells at once, on CPU.

Cells of similar length train together as one batch of independent networks (batched matmuls),
each with its own alphabet and hidden width, masked inside the padded batch tensors. A cell
leaves the batch the moment every position of its *quantised* forward pass clears the margin,
so the stored int8 cell is exactly the network that was checked. Cells that miss their step
budget are retried with more capacity; the caller decodes every returned cell before storing it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CellTrainingError
from ..records import EncodeProgress, TrainProgress
from .codec import to_alphabet
from .features import position_features
from .model import CellConfig, CellShape, QuantizedCell

ProgressFn = Callable[[EncodeProgress], None]
__all__ = ["EncodeProgress", "TrainProgress", "train_cells"]  # TrainProgress: deprecated alias (one release)


@dataclass(frozen=True)
class _Item:
    index: int
    seed: bytes
    text: bytes
    alphabet: bytes
    y: np.ndarray  # (n,) class index per position
    shape: CellShape


def _fake_quant(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-cell symmetric int8 quantisation with a float16 scale; straight-through gradient.

    w: (B, X, Y) -> (w_q float with STE, q int values (B, X, Y), scale (B, 1, 1))
    """
    amax = w.detach().abs().amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    scale = (amax / 127.0).clamp(min=1e-4).half().float()  # representable exactly as stored
    q = torch.clamp(torch.round(w.detach() / scale), -127, 127)
    return w + (q * scale - w).detach(), q, scale


def _plan_batches(items: list[_Item], cfg: CellConfig) -> list[list[_Item]]:
    """Group cells of similar length: sort by n, then cut by cell count and padded positions."""
    batches: list[list[_Item]] = []
    cur: list[_Item] = []
    for it in sorted(items, key=lambda it: (it.shape.n, it.shape.h)):
        longest = max(it.shape.n, cur[-1].shape.n if cur else 0)
        if cur and (len(cur) >= cfg.batch_cells or longest * (len(cur) + 1) > cfg.batch_positions):
            batches.append(cur)
            cur = []
        cur.append(it)
    if cur:
        batches.append(cur)
    return batches


def _train_batch(batch: list[_Item], cfg: CellConfig, lr: float) -> dict[int, QuantizedCell]:
    """Train one batch; returns the cells that reached the margin, keyed by item index."""
    b = len(batch)
    n_max = max(it.shape.n for it in batch)
    r_max = max(it.shape.r for it in batch)
    h_max = max(it.shape.h for it in batch)
    a_max = max(it.shape.a for it in batch)

    x = torch.zeros(b, n_max, r_max)  # fixed features, zero-padded
    y = torch.zeros(b, n_max, dtype=torch.long)
    valid = torch.zeros(b, n_max, dtype=torch.bool)
    hmask = torch.zeros(b, 1, h_max)
    neg = torch.full((b, 1, a_max), -1e4)  # masks classes outside each cell's alphabet
    w1 = torch.zeros(b, r_max, h_max)
    w2 = torch.zeros(b, h_max, a_max)
    gen = torch.Generator().manual_seed(int.from_bytes(batch[0].seed[:8], "little") & 0x7FFFFFFF)
    for j, it in enumerate(batch):
        n, a, r, h = it.shape.n, it.shape.a, it.shape.r, it.shape.h
        x[j, :n, :r] = torch.from_numpy(position_features(it.seed, n, r, cfg.freq_std))
        y[j, :n] = torch.from_numpy(it.y)
        valid[j, :n] = True
        hmask[j, 0, :h] = 1.0
        neg[j, 0, :a] = 0.0
        # Padding stays exactly zero: its gradients are zero, so Adam never moves it.
        w1[j, :r, :h] = torch.randn(r, h, generator=gen) / r**0.5
        w2[j, :h, :a] = torch.randn(h, a, generator=gen) / h**0.5
    params = [w1, torch.zeros(b, 1, h_max), w2, torch.zeros(b, 1, a_max)]
    for p in params:
        p.requires_grad_(True)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    ids = torch.arange(b)
    live = torch.ones(b, dtype=torch.bool)  # rows still training; finished rows wait for compaction
    counts = valid.sum(1).clamp(min=1)  # (b,)
    done: dict[int, QuantizedCell] = {}
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    for step in range(1, cfg.max_steps + 1):
        (w1q, q1, s1), (b1q, qb1, sb1), (w2q, q2, s2), (b2q, qb2, sb2) = (_fake_quant(p) for p in params)
        z = torch.sin(x @ w1q + b1q) * hmask  # (b, n, h)
        logits = z @ w2q + b2q + neg  # (b, n, a)
        with torch.no_grad():
            correct = logits.gather(2, y[..., None]).squeeze(2)  # (b, n)
            other = logits.scatter(2, y[..., None], -1e9).amax(2)  # (b, n)
            learnt = ((correct - other) > cfg.margin) | ~valid
            finished = learnt.all(1) & live  # (b,)
        if bool(finished.any()):
            for j in torch.nonzero(finished).flatten().tolist():
                it = batch[int(ids[j])]
                n, a, r, h = it.shape.n, it.shape.a, it.shape.r, it.shape.h
                done[it.index] = QuantizedCell(
                    shape=it.shape,
                    alphabet=it.alphabet,
                    w1=q1[j, :r, :h].to(torch.int8).numpy().copy(),
                    b1=qb1[j, 0, :h].to(torch.int8).numpy().copy(),
                    w2=q2[j, :h, :a].to(torch.int8).numpy().copy(),
                    b2=qb2[j, 0, :a].to(torch.int8).numpy().copy(),
                    scales=torch.stack([s1[j, 0, 0], sb1[j, 0, 0], s2[j, 0, 0], sb2[j, 0, 0]]).half().numpy(),
                )
            live &= ~finished
            n_live = int(live.sum())
            if n_live == 0:
                break
            # Compacting copies every batch tensor, so do it only once a quarter of the rows are done.
            if n_live <= 0.75 * live.numel():
                keep = live
                with torch.no_grad():
                    params = [p.detach()[keep].requires_grad_(True) for p in params]
                m1 = [m[keep] for m in m1]
                m2 = [m[keep] for m in m2]
                x, y, valid, hmask, neg, ids, counts = (t[keep] for t in (x, y, valid, hmask, neg, ids, counts))
                live = torch.ones(n_live, dtype=torch.bool)
                continue
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # (b, n)
        # Sum of per-cell means: each cell's gradient is independent of its batch mates.
        loss = ((ce * valid).sum(1) / counts * live).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            # Adam with the bias corrections folded into one scalar step size.
            lr_t = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
            for p, g, m, v in zip(params, grads, m1, m2):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.addcdiv_(m, v.sqrt().add_(eps), value=-lr_t)
    return done


def train_cells(
    items: Sequence[tuple[bytes, bytes]],
    cfg: CellConfig | None = None,
    progress: ProgressFn | None = None,
) -> list[QuantizedCell]:
    """Train one exact cell per ``(seed, text)`` pair, in batches; returns cells in input order.

    Every returned cell has been decoded with the storage-time decoder and compared with its
    text. Raises :class:`CellTrainingError` if a cell still misses after ``cfg.attempts`` tries.

    >>> from rememory.cells.features import seed_from_key
    >>> [cell] = train_cells([(seed_from_key("greeting"), b"hello")])
    >>> cell.decode(seed_from_key("greeting"), CellConfig().freq_std)
    b'hello'
    """
    cfg = cfg or CellConfig()
    return _train_all(items, cfg, progress, _batch_workers())


def _batch_workers() -> int:
    """How many batches train at once: the cores left over by torch's own per-op threads.

    torch's thread count is process-wide, so the trainer reads it and never sets it (a save and
    restore per call races with every other thread of a server). With one thread per op (the CLI
    and the server start that way) every core gets its own batch: on these tiny matmuls one op split
    over two threads gains little, and an op-level thread pool collapses (measured 36x slower) as
    soon as another process competes for a core. With torch's default of one thread per core, one
    batch runs at a time and its ops use them all, so the two never oversubscribe the cores.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores // max(1, torch.get_num_threads()), 8))


def _train_all(
    items: Sequence[tuple[bytes, bytes]], cfg: CellConfig, progress: ProgressFn | None, workers: int
) -> list[QuantizedCell]:
    start = time.perf_counter()
    total_bytes = sum(len(t) for _, t in items)
    results: list[QuantizedCell | None] = [None] * len(items)
    cells_done = bytes_done = 0
    pending = []
    for i, (seed, text) in enumerate(items):
        alphabet, y = to_alphabet(text)
        pending.append(_Item(i, seed, text, alphabet, y, CellShape.for_text(len(text), len(alphabet), cfg)))

    if progress is not None:
        progress(EncodeProgress(0, len(items), 0, total_bytes, 0.0))
    for attempt in range(cfg.attempts):
        failed: list[_Item] = []
        batches = _plan_batches([it for it in pending if it.shape.n > 0], cfg)
        # A cell that missed may have oscillated at a high rate: retries also calm the rate down.
        lr = cfg.lr * 0.5**attempt
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            futures = {pool.submit(_train_batch, batch, cfg, lr): batch for batch in batches}
            for fut in as_completed(futures):
                batch, trained = futures[fut], fut.result()
                for it in batch:
                    cell = trained.get(it.index)
                    if cell is not None and cell.decode(it.seed, cfg.freq_std) == it.text:
                        results[it.index] = cell
                        cells_done += 1
                        bytes_done += len(it.text)
                    else:
                        failed.append(it)
                if progress is not None:
                    elapsed = time.perf_counter() - start
                    progress(EncodeProgress(cells_done, len(items), bytes_done, total_bytes, elapsed))
        finally:
            # On Ctrl-C or an error, drop the batches not yet started instead of finishing them.
            pool.shutdown(wait=True, cancel_futures=True)
        for it in pending:
            if it.shape.n == 0:
                none = np.zeros(0, np.int8)
                results[it.index] = QuantizedCell(it.shape, b"", none, none, none, none, np.ones(4, np.float16))
                cells_done += 1
        scale = cfg.growth ** (attempt + 1)
        pending = [
            _Item(it.index, it.seed, it.text, it.alphabet, it.y, CellShape.for_text(it.shape.n, it.shape.a, cfg, scale))
            for it in failed
        ]
        if not pending:
            break
    if pending:
        raise CellTrainingError(
            f"{len(pending)} memory cell(s) did not reach exactness after {cfg.attempts} attempts "
            f"(item indices {[it.index for it in pending][:10]}). Nothing was stored for them; "
            "retry with a larger CellConfig(params_per_byte=..., max_steps=...)."
        )
    return [c for c in results if c is not None]
