"""The memory cell: f(key, position) -> logits over the episode's own byte alphabet.

Architecture (per cell, shapes for a text of n bytes with alphabet size A):

    x   = sin(w * (p - c) + phi)        (n, r)  fixed, seeded by the key, never stored
    z   = sin(x @ W1 + b1)              (n, h)  trainable, stored int8
    out = z @ W2 + b2                   (n, A)  trainable, stored int8
    byte[p] = alphabet[argmax(out[p])]

The fixed random-feature layer costs nothing to store, so the stored parameters are only
W1 (r*h), b1 (h), W2 (h*A) and b2 (A). Sine activations memorise a sequence several times
faster than GELU at the same size (measured in bench/cells.py's development).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..config import dataclass_from_dict
from ..errors import ConfigError
from .codec import from_alphabet
from .features import position_features


@dataclass(frozen=True)
class CellConfig:
    """Hyperparameters of the cell engine. Defaults were tuned on LoCoMo turns (50-700 bytes)."""

    params_per_byte: float = 3.0  # stored parameters per text byte; ~2.5 is the edge of reliable exactness
    feature_ratio: int = 4  # width of the fixed feature layer, in multiples of h (free: never stored)
    freq_std: float = 1.6  # std of the fixed features' frequencies, radians per position
    min_hidden: int = 4  # smallest hidden width h
    lr: float = 0.2  # Adam learning rate: tiny sine networks converge fastest near 0.2 (0.5 diverges)
    margin: float = 0.5  # a position is learnt when its byte's logit beats every other by this much
    max_steps: int = 3000  # steps before a cell is retried with more capacity
    attempts: int = 3  # tries per cell; each retry grows capacity by ``growth`` and halves the rate
    growth: float = 1.5
    batch_cells: int = 128  # cells trained together in one batch
    batch_positions: int = 24576  # cap on cells * longest text in a batch (bounds memory)

    def __post_init__(self) -> None:
        if self.params_per_byte <= 0 or self.feature_ratio < 1 or self.min_hidden < 1:
            raise ConfigError("CellConfig needs params_per_byte > 0, feature_ratio >= 1 and min_hidden >= 1.")
        if self.max_steps < 1 or self.attempts < 1 or self.batch_cells < 1:
            raise ConfigError("CellConfig needs max_steps, attempts and batch_cells of at least 1.")

    @classmethod
    def from_dict(cls, d: dict) -> CellConfig:
        """Build from a dict, naming any unknown keys."""
        return dataclass_from_dict(cls, d, "cell config")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CellShape:
    """The sizes of one cell: its text length n, alphabet size a, feature width r and hidden width h."""

    n: int
    a: int
    r: int
    h: int

    @property
    def n_params(self) -> int:
        return self.r * self.h + self.h + self.h * self.a + self.a

    @classmethod
    def for_text(cls, n: int, a: int, cfg: CellConfig, scale: float = 1.0) -> CellShape:
        """The smallest shape with at least ``params_per_byte * scale * n`` stored parameters."""
        if n == 0:
            return cls(0, 0, 0, 0)
        target = cfg.params_per_byte * scale * n
        k = cfg.feature_ratio
        # Solve k*h^2 + (1 + a)*h + a >= target for the smallest integer h.
        h = (-(1 + a) + math.sqrt((1 + a) ** 2 + 4 * k * max(target - a, 0))) / (2 * k)
        h = max(cfg.min_hidden, math.ceil(h))
        if scale > 1:
            # With a large alphabet the output layer dominates and the width barely moves with
            # the budget, so a retry also widens the network itself.
            h = max(h, math.ceil(cls.for_text(n, a, cfg).h * scale))
        return cls(n, a, k * h, h)


@dataclass
class QuantizedCell:
    """A trained cell as stored: int8 weights with float16 per-tensor scales, and the alphabet."""

    shape: CellShape
    alphabet: bytes  # (a,) the text's distinct bytes, sorted
    w1: np.ndarray  # (r, h) int8
    b1: np.ndarray  # (h,) int8
    w2: np.ndarray  # (h, a) int8
    b2: np.ndarray  # (a,) int8
    scales: np.ndarray  # (4,) float16: scales of w1, b1, w2, b2

    def logits(self, seed: bytes, freq_std: float) -> np.ndarray:
        """Output logits, shape (n, a), float32: the exact computation used to verify a cell."""
        s = self.shape
        x = position_features(seed, s.n, s.r, freq_std)  # (n, r)
        sc = self.scales.astype(np.float32)
        w1 = self.w1.astype(np.float32) * sc[0]
        b1 = self.b1.astype(np.float32) * sc[1]
        w2 = self.w2.astype(np.float32) * sc[2]
        b2 = self.b2.astype(np.float32) * sc[3]
        z = np.sin(x @ w1 + b1)  # (n, h)
        return z @ w2 + b2  # (n, a)

    def decode(self, seed: bytes, freq_std: float) -> bytes:
        """Reconstruct the text's bytes."""
        if self.shape.n == 0:
            return b""
        return from_alphabet(self.alphabet, self.logits(seed, freq_std).argmax(axis=1))

    # --- flat streams: the engine-neutral form the store keeps in safetensors shards ---

    def to_streams(self) -> dict[str, np.ndarray]:
        i8 = np.concatenate([self.w1.ravel(), self.b1, self.w2.ravel(), self.b2]).astype(np.int8)
        return {
            "int8": i8,
            "float16": self.scales.astype(np.float16),
            "uint8": np.frombuffer(self.alphabet, dtype=np.uint8).copy(),
        }

    @classmethod
    def from_streams(cls, shape: CellShape, streams: dict[str, np.ndarray]) -> QuantizedCell:
        n, a, r, h = shape.n, shape.a, shape.r, shape.h
        i8 = np.asarray(streams.get("int8", np.zeros(0, np.int8)))
        want = r * h + h + h * a + a
        if i8.size != want or streams.get("uint8", np.zeros(0)).size != a:
            raise ValueError(f"cell streams do not match its shape {shape} (int8 has {i8.size}, expected {want})")
        o = np.cumsum([0, r * h, h, h * a, a])
        return cls(
            shape=shape,
            alphabet=np.asarray(streams["uint8"], dtype=np.uint8).tobytes(),
            w1=i8[o[0] : o[1]].reshape(r, h),
            b1=i8[o[1] : o[2]],
            w2=i8[o[2] : o[3]].reshape(h, a),
            b2=i8[o[3] : o[4]],
            scales=np.asarray(streams.get("float16", np.ones(4, np.float16)), dtype=np.float16).reshape(4)
            if n
            else np.ones(4, np.float16),
        )
