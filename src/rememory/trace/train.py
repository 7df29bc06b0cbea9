"""Training a trace model in torch, then freezing it into the integer model of :mod:`.model`.

Only :meth:`TraceEngine.fit <rememory.trace.engine.TraceEngine.fit>` imports this module: encoding
and decoding with a frozen model never load torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine import EncodeProgress
from .config import TraceConfig
from .model import BOS, EOS, Q_ACT, Q_LOGIT, Q_PRE, SHIFT, VOCAB_IN, VOCAB_OUT, IntGru, ModelShape


class FloatGru(nn.Module):
    """The float twin of :class:`~rememory.trace.model.IntGru`, with the same equations as torch's GRU."""

    def __init__(self, shape: ModelShape, gen: torch.Generator):
        super().__init__()
        self.emb = nn.Embedding(VOCAB_IN, shape.embed)
        self.gru = nn.GRU(shape.embed, shape.hidden, batch_first=True)
        self.out = nn.Linear(shape.hidden, VOCAB_OUT)
        # Seeded through a generator: the library never touches torch's global RNG.
        for p in self.parameters():
            bound = 1.0 / math.sqrt(shape.hidden) if p.dim() == 1 or p.shape[-1] == shape.hidden else 0.5
            with torch.no_grad():
                p.uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T) -> logits (B, T, 257)
        y, _ = self.gru(self.emb(x))
        return self.out(y)


def _batches(texts: Sequence[bytes], tokens: int, gen: np.random.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Episodes of similar length share a batch, so padding stays small.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    i = 0
    while i < len(order):
        longest = len(texts[order[min(i + 1, len(order)) - 1]]) + 1
        j = i
        while j < len(order) and (j - i + 1) * (len(texts[order[j]]) + 1) <= max(tokens, longest):
            j += 1
        j = max(j, i + 1)
        group = [texts[k] for k in order[i:j]]
        t = max(len(g) for g in group) + 1
        x = np.full((len(group), t), EOS, dtype=np.int64)
        y = np.full((len(group), t), -100, dtype=np.int64)
        for r, g in enumerate(group):
            arr = np.frombuffer(g, dtype=np.uint8)
            x[r, 0] = BOS
            x[r, 1 : len(g) + 1] = arr
            y[r, : len(g)] = arr
            y[r, len(g)] = EOS
        out.append((torch.from_numpy(x), torch.from_numpy(y)))
        i = j
    gen.shuffle(out)
    return out


def train_float(
    texts: Sequence[bytes],
    cfg: TraceConfig,
    init: dict[str, np.ndarray] | None = None,
    progress: Callable[[Any], None] | None = None,
) -> dict[str, np.ndarray]:
    """Train the float model on ``texts`` (or fine-tune ``init``): its state dict as float32 arrays."""
    shape = ModelShape(cfg.hidden, cfg.embed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = FloatGru(shape, gen)
    if init is not None:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in init.items()})
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(texts, cfg.batch_tokens, rng)
    total_bytes = sum(len(t) for t in texts)
    steps = max(1, cfg.epochs * len(batches))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    lossf = nn.CrossEntropyLoss(ignore_index=-100)
    t0 = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        if epoch:
            rng.shuffle(batches)
        for x, y in batches:
            # The learning rate anneals with whichever budget binds first, epochs or seconds, so a
            # fit cut short by its time budget still ends on a small learning rate.
            done = step / steps
            if cfg.max_seconds:
                done = max(done, (time.perf_counter() - t0) / cfg.max_seconds)
            if done >= 1.0:
                break
            lr = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = lossf(model(x).reshape(-1, VOCAB_OUT), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
        else:
            if progress is not None:
                progress(
                    EncodeProgress(
                        done=epoch + 1,
                        total=cfg.epochs,
                        bytes_done=total_bytes * (epoch + 1),
                        bytes_total=total_bytes * cfg.epochs,
                        elapsed_s=time.perf_counter() - t0,
                        stage="train-model",
                    )
                )
            continue
        break  # the time budget ran out
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _row_quant(w: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / levels, 1.0)
    return np.clip(np.round(w / scale[:, None]), -levels, levels).astype(np.int8), scale


def _mult(scale: np.ndarray) -> np.ndarray:
    return np.clip(np.round(scale * (1 << SHIFT)), 0, (1 << 28) - 1).astype(np.int32)


def quantize(sd: dict[str, np.ndarray], shape: ModelShape, levels: int = 127) -> IntGru:
    """Freeze float weights into an :class:`IntGru` (per-row int8 weights, integer multipliers).

    ``levels`` (at most 127) is the largest weight magnitude: fewer levels make the weights'
    coded size smaller (they are range-coded in the model file) at a small cost in prediction.
    """
    h = shape.hidden
    emb = sd["emb.weight"].astype(np.float64)
    s_emb = max(float(np.abs(emb).max()), 1e-12) / levels
    emb_q = np.clip(np.round(emb / s_emb), -levels, levels).astype(np.int8)
    w_ih_q, s_ih = _row_quant(sd["gru.weight_ih_l0"].astype(np.float64), levels)
    w_hh_q, s_hh = _row_quant(sd["gru.weight_hh_l0"].astype(np.float64), levels)
    w_out_q, s_out = _row_quant(sd["out.weight"].astype(np.float64), levels)
    b_ih = sd["gru.bias_ih_l0"].astype(np.float64)
    b_hh = sd["gru.bias_hh_l0"].astype(np.float64)
    b_x = b_ih.copy()
    b_x[: 2 * h] += b_hh[: 2 * h]
    q = float(1 << Q_PRE)
    tensors = {
        "emb": emb_q,
        "w_ih": w_ih_q,
        "m_ih": _mult(s_emb * s_ih * q),
        "b_ih": np.round(b_x * q).astype(np.int32),
        "w_hh": w_hh_q,
        "m_hh": _mult(s_hh * q / (1 << Q_ACT)),
        "b_hn": np.round(b_hh[2 * h :] * q).astype(np.int32),
        "w_out": w_out_q,
        "m_out": _mult(s_out * (1 << Q_LOGIT) / (1 << Q_ACT)),
        "b_out": np.round(sd["out.bias"].astype(np.float64) * (1 << Q_LOGIT)).astype(np.int32),
    }
    return IntGru(shape, tensors)


def dequantize(model: IntGru) -> dict[str, np.ndarray]:
    """Float weights that reproduce ``model`` closely: the start of a fine-tune (fit from a frozen version)."""
    t = {k: v.astype(np.float64) for k, v in model.t.items()}
    h = model.shape.hidden
    q = float(1 << Q_PRE)
    # emb and w_ih share the multiplier m_ih = s_emb * s_ih * 2**10 * 2**24: give emb scale 1/127.
    s_emb = 1.0 / 127.0
    s_ih = t["m_ih"] / (1 << SHIFT) / q / s_emb
    b_hh = np.zeros(3 * h)
    b_hh[2 * h :] = t["b_hn"] / q
    return {
        "emb.weight": (t["emb"] * s_emb).astype(np.float32),
        "gru.weight_ih_l0": (t["w_ih"] * s_ih[:, None]).astype(np.float32),
        "gru.weight_hh_l0": (t["w_hh"] * (t["m_hh"] / (1 << SHIFT) / q * (1 << Q_ACT))[:, None]).astype(np.float32),
        "gru.bias_ih_l0": (t["b_ih"] / q).astype(np.float32),
        "gru.bias_hh_l0": b_hh.astype(np.float32),
        "out.weight": (t["w_out"] * (t["m_out"] / (1 << SHIFT) / (1 << Q_LOGIT) * (1 << Q_ACT))[:, None]).astype(
            np.float32
        ),
        "out.bias": (t["b_out"] / (1 << Q_LOGIT)).astype(np.float32),
    }
