"""The sealed-value format's constants and its error, importable without loading ``cryptography``."""

from __future__ import annotations

import struct

SEAL_VERSION = 1
KEY_ID_SIZE = 8
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = 1 + KEY_ID_SIZE + NONCE_SIZE + TAG_SIZE  # bytes a sealed value adds to its plaintext


class SealError(ValueError):
    """A sealed value cannot be opened: it is damaged, was moved, or is under another (erased) key."""


def frame(*parts: str | bytes) -> bytes:
    """Length-prefixed concatenation: ("ab", "c") and ("a", "bc") never frame alike."""
    out = bytearray()
    for p in parts:
        b = p.encode("utf-8") if isinstance(p, str) else p
        out += struct.pack("<I", len(b)) + b
    return bytes(out)
