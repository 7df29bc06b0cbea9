"""A small but real second memory engine, registered through the registry as a plugin would be.

``table-trace/1`` keeps one shared model per namespace, trained by ``fit``: a byte table ranking the
namespace's bytes by frequency (a stand-in for a shared byte model). Each episode's trace is its
bytes mapped through that table and XORed with a stream derived from its key; the artifact names
the model version it was encoded with, and decodes only with exactly that version. It round-trips
any bytes, including ones the table never saw.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rememory.engine import Artifact, EncodeProgress, MemoryEngine, ModelRepository, SharedModel, register_engine
from rememory.errors import IntegrityError

NAME = "table-trace/1"
KILL_AT = "TABLE_TRACE_KILL_AT"  # env: SIGKILL this process at its Nth encode call (1-based)
_encode_calls = 0


def register() -> None:
    """Register the engine lazily, by import path, the way a built-in one is listed."""
    register_engine(NAME, "tests.enginekit:TableTraceEngine")


def _stream(key: str, n: int) -> np.ndarray:
    return np.frombuffer(hashlib.shake_256(key.encode("utf-8")).digest(n), dtype=np.uint8)


class TableTraceEngine(MemoryEngine):
    name = NAME
    description = "Test engine: a shared byte table per namespace, and an XOR-coded trace per episode."
    uses_models = True

    def __init__(self, models: ModelRepository | None = None, config: Any = None) -> None:
        super().__init__(models)
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # version -> (rank -> byte, byte -> rank)

    def fit(
        self, texts: Sequence[bytes], progress: Callable[[EncodeProgress], None] | None = None
    ) -> SharedModel | None:
        assert self.models is not None
        counts = np.zeros(256, np.int64)
        for t in texts:
            counts += np.bincount(np.frombuffer(t, np.uint8), minlength=256)
        order = np.argsort(-counts, kind="stable").astype(np.uint8)
        total = sum(len(t) for t in texts)
        if progress is not None:
            progress(EncodeProgress(len(texts), len(texts), total, total, 0.0, stage="train-model"))
        return self.models.put(self.name, {"kind": "rank"}, order.tobytes(), len(texts))

    def _table(self, version: object) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(version, bool) or not isinstance(version, int):
            raise IntegrityError(f"the trace names model version {version!r}")
        if version not in self._tables:
            assert self.models is not None
            order = np.frombuffer(self.models.get(self.name, version).data, np.uint8)
            if order.size != 256 or len(set(order.tolist())) != 256:
                raise IntegrityError(f"model version {version} is not a byte permutation")
            rank = np.empty(256, np.uint8)
            rank[order] = np.arange(256, dtype=np.uint8)
            self._tables[version] = (order, rank)
        return self._tables[version]

    def encode(
        self, keys: Sequence[str], texts: Sequence[bytes], progress: Callable[[Any], None] | None = None
    ) -> list[Artifact]:
        global _encode_calls
        _encode_calls += 1
        if os.environ.get(KILL_AT) == str(_encode_calls):
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash, in the middle of a run
        assert self.models is not None
        start = time.perf_counter()
        version = self.models.latest_version(self.name)
        if version is None:  # a new namespace's first model: fitted on its first batch
            model = self.fit(texts)
            assert model is not None
            version = model.version
        _, rank = self._table(version)
        out = []
        for key, text in zip(keys, texts, strict=True):
            trace = rank[np.frombuffer(text, np.uint8)] ^ _stream(key, len(text))
            out.append(Artifact(self.name, {"v": version, "n": len(text)}, {"uint8": trace.astype(np.uint8)}))
        if progress is not None:
            n = sum(len(t) for t in texts)
            progress(EncodeProgress(len(texts), len(texts), n, n, time.perf_counter() - start))
        return out

    def decode(self, artifact: Artifact, key: str, *, n_bytes: int | None = None) -> bytes:
        n = artifact.config.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise IntegrityError(f"the trace's length is {n!r}")
        if n_bytes is not None and n != n_bytes:
            raise IntegrityError(f"the trace says {n} bytes, the store says {n_bytes}")
        trace = artifact.streams.get("uint8", np.zeros(0, np.uint8))
        if trace.size != n:
            raise IntegrityError(f"the trace holds {trace.size} bytes, not {n}")
        order, _ = self._table(artifact.config.get("v"))
        return bytes(order[trace ^ _stream(key, n)].tobytes())

    def model_version(self, artifact: Artifact) -> int | None:
        v = artifact.config.get("v")
        return v if isinstance(v, int) and not isinstance(v, bool) else None


register()
