"""A whole file sealed under a key derived from a secret: how archives of encrypted stores travel.

Layout: ``MAGIC | header length (4, little-endian) | header JSON | nonce (12) | AES-256-GCM ciphertext``.
The header names Argon2id's parameters and salt; it is authenticated as associated data. The file
is sealed in one piece (AES-GCM takes up to 2**31 - 1 bytes per call in ``cryptography``), so an
archive of an encrypted store is built in memory.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import asdict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import WrongSecretError
from .format import NONCE_SIZE
from .keyring import KdfParams, derive_kek, secret_bytes

MAGIC = b"rememory-sealed/1\n"
MAX_BYTES = (1 << 31) - 1


def is_sealed(head: bytes) -> bool:
    return head.startswith(MAGIC)


def seal_bytes(data: bytes, secret: str | bytes, kdf: KdfParams, what: str) -> bytes:
    """``data`` sealed under Argon2id(``secret``) with a fresh salt; ``what`` is bound in the header."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"{len(data)} bytes is more than one sealed file holds ({MAX_BYTES})")
    salt = os.urandom(16)
    header = json.dumps({"what": what, "kdf": {"name": "argon2id", **asdict(kdf)},
                         "salt": base64.b64encode(salt).decode("ascii")}).encode("utf-8")  # fmt: skip
    key = derive_kek(secret_bytes(secret), salt, kdf)
    nonce = os.urandom(NONCE_SIZE)
    ad = MAGIC + header
    return MAGIC + struct.pack("<I", len(header)) + header + nonce + AESGCM(key).encrypt(nonce, data, ad)


def open_bytes(blob: bytes, secret: str | bytes, where: str) -> bytes:
    """The plaintext of a sealed file: ``ValueError`` if damaged, :class:`WrongSecretError` for a wrong secret."""
    if not is_sealed(blob) or len(blob) < len(MAGIC) + 4:
        raise ValueError("it is not a sealed file")
    (n,) = struct.unpack_from("<I", blob, len(MAGIC))
    start = len(MAGIC) + 4
    header = blob[start : start + n]
    h = json.loads(header.decode("utf-8"))
    k = h["kdf"]
    if k.get("name") != "argon2id":
        raise ValueError(f"its key derivation {k.get('name')!r} is unknown")
    kdf = KdfParams(int(k["iterations"]), int(k["lanes"]), int(k["memory_kib"]))
    key = derive_kek(secret_bytes(secret), base64.b64decode(h["salt"]), kdf)
    body = blob[start + n :]
    try:
        return AESGCM(key).decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], MAGIC + header)
    except InvalidTag:
        raise WrongSecretError(
            f"{where} does not open with this secret: the secret is wrong, or the file was altered. Give the secret "
            "it was sealed with (the store's secret when it was exported)."
        ) from None
