"""The embedder interface: one abstract method, conveniences derived from it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Embedder(ABC):
    """Maps texts to L2-normalised float32 vectors.

    ``id`` names the model (it is recorded with every stored key); ``dim`` is its vector size.
    """

    id: str

    @property
    @abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: shape (len(texts), dim), float32, unit norm."""

    def embed(self, text: str) -> np.ndarray:
        """Embed one text: shape (dim,)."""
        return self.embed_batch([text])[0]
