"""The cell's fixed input layer: seeded random sinusoids of the position. Never stored.

The seed is derived from the episode's key, so a cell regenerates its text only from its
own key. The random numbers come from SHAKE-256 rather than a library RNG, whose streams
may change between releases: a stored cell must decode identically forever.
"""

from __future__ import annotations

import hashlib

import numpy as np

_TAG = b"rememory/cell-features/v1"


def seed_from_key(key: str) -> bytes:
    """A 32-byte seed for the cell of an episode with semantic key ``key``."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=32, person=b"rememory-key").digest()


def _uniform(seed: bytes, tag: bytes, k: int) -> np.ndarray:
    """``k`` floats in (0, 1), a pure function of (seed, tag)."""
    raw = hashlib.shake_256(_TAG + seed + tag).digest(8 * k)
    u = np.frombuffer(raw, dtype="<u8") >> np.uint64(11)  # 53 random bits per float
    return (u.astype(np.float64) + 0.5) / float(1 << 53)


def position_features(seed: bytes, n: int, r: int, freq_std: float) -> np.ndarray:
    """Features ``sin(w_j * (p - c) + phi_j)`` for positions ``p < n``: shape (n, r), float32.

    ``w_j ~ N(0, freq_std)`` radians per position and ``phi_j ~ U(0, 2pi)``; ``c`` centres the
    positions so that long texts do not push the phase arguments far from zero.
    """
    if r == 0 or n == 0:
        return np.zeros((n, r), dtype=np.float32)
    u1, u2, u3 = (_uniform(seed, t, r) for t in (b"u1", b"u2", b"phase"))
    w = freq_std * np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)  # (r,) Box-Muller normals
    phi = 2.0 * np.pi * u3  # (r,)
    p = np.arange(n, dtype=np.float64)[:, None] - (n - 1) / 2.0  # (n, 1)
    arg = np.remainder(p * w[None, :] + phi[None, :], 2.0 * np.pi)  # (n, r), reduced in float64
    return np.sin(arg).astype(np.float32)
