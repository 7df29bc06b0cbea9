"""The memory-engine interface: how an episode's bytes become stored artifacts and come back.

The store, the index and :class:`~rememory.Memory` only see :class:`Artifact` objects, so a new
engine (for example a shared byte model with arithmetic-coded traces) plugs in beside the
per-episode cell without touching them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


class MemoryEngine(ABC):
    """Encodes batches of episodes into artifacts and decodes them back to exact bytes."""

    name: str

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
