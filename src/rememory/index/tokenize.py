"""Tokens for the lexical index: words, stop words dropped, stemmed per script, then hashed.

The store keeps only 32-bit hashes of the stemmed tokens, never words: the lexical index
must not become a verbatim copy of the episodes. Cyrillic words get the Russian stemmer
and stop words, everything else the English ones (PyStemmer's Snowball stemmers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")


@lru_cache(maxsize=1)
def _tools() -> tuple[object, object, frozenset[str], frozenset[str]]:
    import Stemmer

    stop = _bm25s_stopwords()
    en, ru = frozenset(stop.STOPWORDS_EN), frozenset(stop.STOPWORDS_RUSSIAN)
    return Stemmer.Stemmer("english"), Stemmer.Stemmer("russian"), en, ru


def _bm25s_stopwords() -> Any:
    """bm25s's ``stopwords`` module (plain lists), run without the package's ``__init__``.

    ``import bm25s.stopwords`` runs ``bm25s/__init__``, which imports scipy and tqdm: half a second
    of a new ``rememory recall`` process spent before its first query, for two word lists.
    """
    spec = importlib.util.find_spec("bm25s")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("bm25s is not installed; reinstall rememory (`pip install rememory`).")
    path = Path(next(iter(spec.submodule_search_locations))) / "stopwords.py"
    mod_spec = importlib.util.spec_from_file_location("rememory.index._bm25s_stopwords", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


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
