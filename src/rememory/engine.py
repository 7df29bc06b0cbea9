"""The memory-engine interface: how an episode's bytes become stored artifacts and come back.

The store, the index and :class:`~rememory.Memory` only see :class:`Artifact` objects, so a new
engine (for example a shared byte model with arithmetic-coded traces) plugs in beside the
per-episode cell without touching them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .cells.codec import digest
from .errors import StoreError


@dataclass
class Artifact:
    """What an engine stores for one episode: a small JSON config and flat typed arrays.

    ``streams`` maps a numpy dtype name (``"int8"``, ``"float16"``, ...) to a 1-D array; the store
    packs the streams of many episodes into one safetensors shard.
    """

    engine: str
    config: dict[str, Any]
    streams: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.streams.values())


@dataclass(frozen=True)
class SharedModel:
    """A store-level artifact of an engine (a shared byte model), frozen once written.

    Scoped to one namespace (a tenant's model is trained on its own episodes only, so erasing the
    tenant erases what the model learnt from it). Episodes' artifacts name the ``version`` they were
    encoded with and keep decoding from it after a newer version appears.
    """

    engine: str
    version: int  # 1, 2, ... per (namespace, engine)
    config: dict[str, Any]  # JSON: the model's shape and format constants
    data: bytes  # the weights (an engine-defined blob, e.g. safetensors bytes)
    trained_on: int = 0  # episodes the model was trained on (0: shipped, not trained on this store)


class ModelRepository(Protocol):
    """Where an engine keeps its shared models for one namespace (backed by the store, or in memory)."""

    def latest(self, engine: str) -> SharedModel | None:
        """The newest version of ``engine``'s model, or None if it has none yet."""
        ...

    def get(self, engine: str, version: int) -> SharedModel:
        """One version; a missing one is an :class:`~rememory.errors.IntegrityError`."""
        ...

    def put(self, engine: str, config: dict[str, Any], data: bytes, trained_on: int) -> SharedModel:
        """Commit a new version (the next number) and return it."""
        ...


class InMemoryModels:
    """A :class:`ModelRepository` in a dict: for engines used without a store (tests, benchmarks)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int], SharedModel] = {}

    def latest(self, engine: str) -> SharedModel | None:
        versions = [v for e, v in self._models if e == engine]
        return self._models[(engine, max(versions))] if versions else None

    def get(self, engine: str, version: int) -> SharedModel:
        try:
            return self._models[(engine, version)]
        except KeyError:
            from .errors import IntegrityError

            raise IntegrityError(f"engine {engine!r} has no model version {version}") from None

    def put(self, engine: str, config: dict[str, Any], data: bytes, trained_on: int) -> SharedModel:
        latest = self.latest(engine)
        model = SharedModel(engine, (latest.version if latest else 0) + 1, dict(config), bytes(data), trained_on)
        self._models[(engine, model.version)] = model
        return model


@dataclass(frozen=True)
class EncodeProgress:
    """An engine-neutral progress event: emitted by any engine while it encodes a batch."""

    done: int  # episodes finished
    total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float
    stage: str = "encode"  # e.g. "train-model", "encode"


@dataclass(frozen=True)
class DecodeItem:
    """One episode to decode in a batch: its artifact, its seed key and the length the store recorded."""

    artifact: Artifact
    key: str
    n_bytes: int | None = None


class MemoryEngine(ABC):
    """Encodes batches of episodes into artifacts and decodes them back to exact bytes.

    An engine that needs shared models (``uses_models``) gets a :class:`ModelRepository` scoped to
    the namespace it works in; a per-episode engine ignores it.
    """

    name: str
    description: str = ""  # one line, listed by ``rememory engines``
    uses_models: bool = False

    def __init__(self, models: ModelRepository | None = None) -> None:
        self.models = models

    @abstractmethod
    def encode(
        self, keys: Sequence[str], texts: Sequence[bytes], progress: Callable[[Any], None] | None = None
    ) -> list[Artifact]:
        """One artifact per (key, text); each must already decode to its exact text."""

    @abstractmethod
    def decode(self, artifact: Artifact, key: str, *, n_bytes: int | None = None) -> bytes:
        """Reconstruct the bytes of one episode from its artifact and its key.

        ``n_bytes`` is the length the store recorded: an engine must check its artifact against
        it (and against its own streams) before allocating anything, and raise
        :class:`~rememory.errors.IntegrityError` for an artifact that does not fit.
        """

    def decode_batch(self, items: Sequence[DecodeItem]) -> list[bytes | Exception]:
        """Decode many episodes; a failing one yields its exception in its place, never stops the rest.

        Engines override this to share work (one model load, vectorised decoding).
        """
        out: list[bytes | Exception] = []
        for it in items:
            try:
                out.append(self.decode(it.artifact, it.key, n_bytes=it.n_bytes))
            except Exception as exc:  # reported per episode by the caller, which names it
                out.append(exc)
        return out

    def verify(self, artifact: Artifact, key: str, expected_digest: bytes) -> bool:
        """Whether ``artifact`` reconstructs bytes with digest ``expected_digest``."""
        return digest(self.decode(artifact, key)) == expected_digest


def get_engine(name: str) -> MemoryEngine:
    """The engine that reads artifacts tagged ``name``."""
    from .cells.engine import MlpCellEngine

    if name == MlpCellEngine.name:
        return MlpCellEngine()
    raise StoreError(
        f"This store holds memories made by engine {name!r}, which this version of rememory does not "
        "know. Upgrade rememory to read them."
    )
