"""How an episode's content is keyed: the cell's seed, the token hashes and the digest.

A plaintext store seeds a cell with its keywords, hashes tokens with unkeyed BLAKE2b and digests
texts in format 2. An encrypted store does all three under its namespace's key
(:class:`rememory.crypto.NamespaceCipher`), so neither the weights, nor the hashes, nor the digest
say anything to whoever lacks the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from .index.tokenize import token_hashes, words
from .integrity import CURRENT_FORMAT, KEYED_FORMAT, episode_digest

if TYPE_CHECKING:
    from .crypto.cipher import NamespaceCipher


class ContentKeys(Protocol):
    """The keyed (or plain) functions of one namespace's content."""

    digest_format: int  # the format new episodes' digests are made in

    def seed(self, keywords: str) -> str:
        """What the engine gets as an episode's key (its cell's seed derives from it)."""
        ...

    def tokens(self, text: str) -> np.ndarray:
        """The lexical index's uint32 hashes of ``text``'s words (episodes and queries alike)."""
        ...

    def digest(self, namespace: str, id: str, data: bytes, fmt: int) -> bytes: ...


class PlainKeys:
    """A plaintext store's: the keywords seed the cell, hashes and digests are unkeyed."""

    digest_format = CURRENT_FORMAT

    def seed(self, keywords: str) -> str:
        return keywords

    def tokens(self, text: str) -> np.ndarray:
        return token_hashes(text)

    def digest(self, namespace: str, id: str, data: bytes, fmt: int) -> bytes:
        return episode_digest(namespace, id, data, fmt)


class SealedKeys:
    """An encrypted namespace's: the seed, the hashes and the digest are keyed by its data key."""

    digest_format = KEYED_FORMAT

    def __init__(self, cipher: NamespaceCipher):
        self.cipher = cipher

    def seed(self, keywords: str) -> str:
        return self.cipher.seed(keywords)

    def tokens(self, text: str) -> np.ndarray:
        return self.cipher.token_hashes(words(text))

    def digest(self, namespace: str, id: str, data: bytes, fmt: int) -> bytes:
        return episode_digest(namespace, id, data, fmt, key=self.cipher.digest_key if fmt == KEYED_FORMAT else None)


PLAIN_KEYS = PlainKeys()
