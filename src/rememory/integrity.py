"""Episode digests: the proof that a memory reconstructed its exact text, for its own owner.

Format 2 (every new episode) binds the namespace and the id to the text, so a row moved to
another tenant, or given another id, fails verification. Format 1 (stores written before
it) covers the text alone and is still checked as such. Format 3 (encrypted stores) is format 2's
framing under HMAC-SHA256 with the namespace's digest key, truncated to 16 bytes: without the key,
a guessed text cannot be confirmed against a stored digest.
"""

from __future__ import annotations

import hashlib
import hmac

DIGEST_SIZE = 16  # BLAKE2b-128: a wrong reconstruction slipping past it is a 2**-128 event
CURRENT_FORMAT = 2


KEYED_FORMAT = 3


def episode_digest(
    namespace: str, id: str, data: bytes, fmt: int = CURRENT_FORMAT, *, key: bytes | None = None
) -> bytes:
    """The digest of an episode's text ``data`` in digest format ``fmt``.

    >>> episode_digest("a", "x", b"hi") != episode_digest("b", "x", b"hi")
    True
    """
    if fmt == 1:
        return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()
    if fmt == KEYED_FORMAT:
        if key is None:
            raise ValueError("digest format 3 is keyed: the namespace's digest key is needed")
        h3 = hmac.new(key, b"rememory-ep/3", "sha256")
        for part in (namespace.encode("utf-8"), id.encode("utf-8")):
            h3.update(len(part).to_bytes(4, "little") + part)
        h3.update(data)
        return h3.digest()[:DIGEST_SIZE]
    if fmt != 2:
        raise ValueError(f"unknown digest format {fmt}")
    h = hashlib.blake2b(digest_size=DIGEST_SIZE, person=b"rememory-ep/2")
    for part in (namespace.encode("utf-8"), id.encode("utf-8")):
        h.update(len(part).to_bytes(4, "little") + part)  # length-prefixed: ("ab", "c") != ("a", "bc")
    h.update(data)
    return h.digest()
