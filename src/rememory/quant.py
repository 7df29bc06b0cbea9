"""Symmetric int8 quantisation of key vectors, shared by the store and the dense index."""

from __future__ import annotations

import numpy as np


def quantize_int8(vec: np.ndarray) -> tuple[np.ndarray, float]:
    """``vec`` as int8 with one scale (``vec ~= q * scale``): a quarter of float32, cosine error around 1e-3.

    >>> q, s = quantize_int8(np.array([0.5, -1.0, 0.25], dtype=np.float32))
    >>> q.tolist(), round(s * 127, 6)
    ([64, -127, 32], 1.0)
    """
    amax = float(np.abs(vec).max()) if vec.size else 0.0
    scale = (amax or 1.0) / 127.0
    return np.clip(np.round(vec / scale), -127, 127).astype(np.int8), scale
