"""Embedding models that turn keys and queries into vectors."""

from .base import Embedder
from .sentence_transformers import SentenceTransformerEmbedder, load_embedder

__all__ = ["Embedder", "SentenceTransformerEmbedder", "load_embedder"]
