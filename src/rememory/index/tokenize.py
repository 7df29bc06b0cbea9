"""Tokens for the lexical index: words, stop words dropped, stemmed per script, then hashed.

The store keeps only 32-bit hashes of the stemmed tokens, never words: the lexical index
must not become a verbatim copy of the episodes. Cyrillic words get the Russian stemmer
and stop words, everything else the English ones (PyStemmer's Snowball stemmers).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")


@lru_cache(maxsize=1)
def _tools() -> tuple[object, object, frozenset[str], frozenset[str]]:
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_RUSSIAN

    return Stemmer.Stemmer("english"), Stemmer.Stemmer("russian"), frozenset(STOPWORDS_EN), frozenset(STOPWORDS_RUSSIAN)


@lru_cache(maxsize=200_000)
def _hash(token: str) -> int:
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "little")


def words(text: str) -> list[str]:
    """Lower-cased stemmed words without stop words.

    >>> words("When did Caroline go to the support groups?")
    ['when', 'did', 'carolin', 'go', 'support', 'group']
    """
    en, ru, stop_en, stop_ru = _tools()
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if _CYRILLIC.search(w):
            if w not in stop_ru:
                out.append(ru.stemWord(w))  # type: ignore[attr-defined]
        elif w not in stop_en and not (len(w) == 1 and not w.isdigit()):
            out.append(en.stemWord(w))  # type: ignore[attr-defined]
    return out


def token_hashes(text: str) -> np.ndarray:
    """One uint32 hash per token occurrence (order kept), for storage and indexing."""
    return np.array([_hash(w) for w in words(text)], dtype=np.uint32)
