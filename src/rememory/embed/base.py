"""The embedder interface: one abstract method, conveniences derived from it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Embedder(ABC):
    """Maps texts to L2-normalised float32 vectors.

    ``id`` names the model (it is recorded with every stored key); ``dim`` is its vector size.
    Stored keys are *passages* (:meth:`embed_batch`); recall phrases are *queries*
    (:meth:`embed_queries`). Symmetric models embed both the same way; asymmetric ones (e5)
    prefix them differently.
    """

    id: str

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as stored passages: shape (len(texts), dim), float32, unit norm."""

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as recall queries: shape (len(texts), dim), float32, unit norm."""
        return self.embed_batch(texts)

    def embed(self, text: str) -> np.ndarray:
        """Embed one passage: shape (dim,)."""
        return self.embed_batch([text])[0]

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query: shape (dim,)."""
        return self.embed_queries([text])[0]
