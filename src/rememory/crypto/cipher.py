"""One namespace's cipher: AEAD for stored bytes, keyed hashes for what must stay searchable.

Every sub-key comes from the namespace's random 32-byte data key through HKDF-SHA256, one per
purpose, so no key is used for two things:

- ``aead``: AES-256-GCM for every sealed value (keywords, time, keys, tokens, engine config,
  weights, snapshots, shared models), with the namespace, the value's purpose and its owner (the
  episode id) as associated data: a blob moved to another episode, field or namespace fails.
- ``tokens``: HMAC-SHA256 of each stemmed word, truncated to 32 bits (the lexical index's hashes);
- ``seed``: HMAC-SHA256 of an episode's keywords, handed to the engine instead of the keywords;
- ``digest``: the key of the episodes' content digests (digest format 3, see rememory.integrity).

A sealed blob is ``version (1) | key id (8) | nonce (12) | ciphertext | tag (16)``. Only the
``cryptography`` package's primitives are used.
"""

from __future__ import annotations

import hmac
import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .format import KEY_ID_SIZE, NONCE_SIZE, OVERHEAD, SEAL_VERSION, TAG_SIZE, SealError, frame


def derive(key: bytes, purpose: str, length: int = 32) -> bytes:
    """A sub-key of ``key`` for one ``purpose`` (HKDF-SHA256, no salt: ``key`` is uniformly random)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"rememory/" + purpose.encode()).derive(key)


class NamespaceCipher:
    """Seals and opens one namespace's values; hashes its tokens, seeds and digests under its key."""

    def __init__(self, namespace: str, key_id: bytes, data_key: bytes):
        if len(data_key) != 32 or len(key_id) != KEY_ID_SIZE:
            raise ValueError("a namespace data key is 32 bytes with an 8-byte id")
        self.namespace = namespace
        self.key_id = key_id
        self._aead = AESGCM(derive(data_key, "aead"))
        self._token_key = derive(data_key, "tokens")
        self._seed_key = derive(data_key, "seed")
        self.digest_key = derive(data_key, "digest")
        self._tokens: dict[str, int] = {}

    def _ad(self, purpose: str, owner: str) -> bytes:
        return frame(b"rememory-seal/1", self.namespace, self.key_id, purpose, owner)

    def seal(self, data: bytes, purpose: str, owner: str = "") -> bytes:
        """``data`` encrypted and authenticated, bound to this namespace, ``purpose`` and ``owner``."""
        nonce = os.urandom(NONCE_SIZE)
        ct = self._aead.encrypt(nonce, bytes(data), self._ad(purpose, owner))
        return bytes([SEAL_VERSION]) + self.key_id + nonce + ct

    def open(self, blob: bytes, purpose: str, owner: str = "") -> bytes:
        """The plaintext of ``blob``; :class:`SealError` says why it cannot be opened."""
        if not isinstance(blob, bytes | bytearray | memoryview) or len(blob) < OVERHEAD:
            raise SealError("the sealed value is truncated")
        blob = bytes(blob)
        if blob[0] != SEAL_VERSION:
            raise SealError(f"the sealed value has an unknown format {blob[0]}")
        if blob[1 : 1 + KEY_ID_SIZE] != self.key_id:
            raise SealError("the value is sealed under another data key (one that was erased or replaced)")
        nonce = blob[1 + KEY_ID_SIZE : 1 + KEY_ID_SIZE + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, blob[1 + KEY_ID_SIZE + NONCE_SIZE :], self._ad(purpose, owner))
        except InvalidTag:
            raise SealError("the sealed value failed authentication (it was altered or moved)") from None

    def seed(self, keywords: str) -> str:
        """What an engine gets instead of the keywords to seed a cell: without the key, the weights decode nothing."""
        return hmac.digest(self._seed_key, keywords.encode("utf-8"), "sha256").hex()

    def token_hash(self, word: str) -> int:
        """The keyed 32-bit hash of one stemmed word (a dictionary attack needs the key)."""
        got = self._tokens.get(word)
        if got is None:
            got = int.from_bytes(hmac.digest(self._token_key, word.encode("utf-8"), "sha256")[:4], "little")
            if len(self._tokens) < 200_000:  # bounded, like the plaintext hash cache
                self._tokens[word] = got
        return got

    def token_hashes(self, words: list[str]) -> np.ndarray:
        return np.array([self.token_hash(w) for w in words], dtype=np.uint32)


def wrap_key(kek: bytes, data_key: bytes, ad: bytes) -> bytes:
    """``data_key`` sealed under the key-encryption key (AES-256-GCM), bound to ``ad``."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, ad)


def unwrap_key(kek: bytes, wrapped: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`wrap_key`; :class:`SealError` when ``kek`` or ``ad`` is not the one it was wrapped with."""
    if len(wrapped) < NONCE_SIZE + TAG_SIZE:
        raise SealError("the wrapped key is truncated")
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], ad)
    except InvalidTag:
        raise SealError("the wrapped key does not open with this key-encryption key") from None
