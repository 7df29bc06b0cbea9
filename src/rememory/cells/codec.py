"""Byte codec: a text as indices into its own byte alphabet, plus the digest that proves exactness."""

from __future__ import annotations

import hashlib

import numpy as np

DIGEST_SIZE = 16  # BLAKE2b-128: a wrong reconstruction slipping past it is a 2**-128 event


def digest(data: bytes) -> bytes:
    """BLAKE2b-128 of ``data``, stored beside every cell and checked at every recall."""
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def to_alphabet(data: bytes) -> tuple[bytes, np.ndarray]:
    """Split ``data`` into its sorted byte alphabet and one class index per position.

    >>> to_alphabet(b"abca")
    (b'abc', array([0, 1, 2, 0]))
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    alphabet, idx = np.unique(arr, return_inverse=True)
    return alphabet.astype(np.uint8).tobytes(), idx.astype(np.int64).reshape(-1)


def from_alphabet(alphabet: bytes, idx: np.ndarray) -> bytes:
    """Inverse of :func:`to_alphabet`."""
    if len(idx) == 0:
        return b""
    table = np.frombuffer(alphabet, dtype=np.uint8)
    return table[np.asarray(idx, dtype=np.int64)].tobytes()
