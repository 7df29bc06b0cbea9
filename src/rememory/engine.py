"""The memory-engine interface: how an episode's bytes become stored artifacts and come back.

The store, the index and :class:`~rememory.Memory` only see :class:`Artifact` objects, so a new
engine (for example a shared byte model with arithmetic-coded traces) plugs in beside the
per-episode cell without touching them.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .cells.codec import digest
from .errors import ConfigError, IntegrityError, UnknownEngineError
from .records import EncodeProgress

DEFAULT_ENGINE = "mlp-cell/1"


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

    def latest_version(self, engine: str) -> int | None:
        """The newest version's number, without reading its data (None if there is none)."""
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

    def latest_version(self, engine: str) -> int | None:
        latest = self.latest(engine)
        return latest.version if latest else None

    def get(self, engine: str, version: int) -> SharedModel:
        try:
            return self._models[(engine, version)]
        except KeyError:
            raise IntegrityError(f"engine {engine!r} has no model version {version}") from None

    def put(self, engine: str, config: dict[str, Any], data: bytes, trained_on: int) -> SharedModel:
        latest = self.latest(engine)
        model = SharedModel(engine, (latest.version if latest else 0) + 1, dict(config), bytes(data), trained_on)
        self._models[(engine, model.version)] = model
        return model

    def add(self, model: SharedModel) -> None:
        """Keep ``model`` under its own version (an archive's models, checked before import)."""
        self._models[(model.engine, model.version)] = model


@dataclass(frozen=True)
class DecodeItem:
    """One episode to decode in a batch: its artifact, its seed key and the length the store recorded."""

    artifact: Artifact
    key: str
    n_bytes: int | None = None


class MemoryEngine(ABC):
    """Encodes batches of episodes into artifacts and decodes them back to exact bytes.

    An engine that needs shared models (``uses_models``) gets a :class:`ModelRepository` scoped to
    the namespace it works in; a per-episode engine ignores it. Engines are built by
    :func:`create_engine` as ``cls(models=..., config=...)`` (``config``: the engine's own settings
    object, or None for its defaults) and cached by :class:`~rememory.Memory` per (engine, namespace),
    so one instance serves many calls and threads: cache what is immutable (a model version's
    weights), and ask ``models`` for the latest version when encoding (another process may have
    trained a newer one).
    """

    name: str
    description: str = ""  # one line, listed by ``rememory engines``
    uses_models: bool = False

    def __init__(self, models: ModelRepository | None = None, config: Any = None) -> None:
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

    def fit(
        self, texts: Sequence[bytes], progress: Callable[[EncodeProgress], None] | None = None
    ) -> SharedModel | None:
        """Train a new shared model version on ``texts`` and ``put`` it into ``self.models``; return it.

        The default: None, for an engine without shared models. ``rememory reencode`` calls it on a
        namespace's texts before re-encoding them; later ``encode`` calls use the newest version.
        """
        return None

    def model_version(self, artifact: Artifact) -> int | None:
        """The shared model version ``artifact`` was encoded with (None: the engine uses no shared model)."""
        return None

    def verify(self, artifact: Artifact, key: str, expected_digest: bytes) -> bool:
        """Whether ``artifact`` reconstructs bytes with digest ``expected_digest``."""
        return digest(self.decode(artifact, key)) == expected_digest


# --- the registry ---

# name -> "module:Class". Modules import on first use, so listing or opening a store never imports
# torch. A new built-in engine is one line here; others call register_engine() before use.
_ENGINES: dict[str, str | type[MemoryEngine]] = {
    "mlp-cell/1": "rememory.cells.engine:MlpCellEngine",
    "byte-trace/1": "rememory.trace.engine:TraceEngine",
}
_registry_lock = threading.Lock()


@dataclass(frozen=True)
class EngineInfo:
    """A registered engine, as ``rememory engines`` lists it."""

    name: str
    description: str  # one line
    uses_models: bool  # keeps a shared model per namespace (trained by ``rememory reencode``)
    default: bool = False  # what new stores encode with


def register_engine(name: str, target: str | type[MemoryEngine]) -> None:
    """Register an engine under ``name`` (its ``MemoryEngine.name``): a class, or ``"module:Class"`` imported lazily.

    Registering a name again replaces it (a plugin may override a built-in in its own process).
    """
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ConfigError(f"An engine name must be a non-empty string without spaces, got {name!r}.")
    if isinstance(target, str) and (target.count(":") != 1 or not all(target.split(":"))):
        raise ConfigError(f"Register engine {name!r} as a class or as 'module:Class', got {target!r}.")
    with _registry_lock:
        _ENGINES[name] = target


def engine_names() -> list[str]:
    """The registered engines' names, sorted."""
    with _registry_lock:
        return sorted(_ENGINES)


def engine_class(name: str) -> type[MemoryEngine]:
    """The class registered as ``name``; an unknown name is an :class:`UnknownEngineError` listing the known ones."""
    with _registry_lock:
        target = _ENGINES.get(name)
    if target is None:
        raise UnknownEngineError(
            f"Unknown memory engine {name!r}; this rememory knows {', '.join(engine_names())} "
            "(rememory engines). Check the name, or upgrade rememory if a newer version made these memories."
        )
    if isinstance(target, str):
        module, attr = target.split(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, MemoryEngine)):
            raise ConfigError(f"The engine {name!r} is registered as {target!r}, which is not a MemoryEngine class.")
        with _registry_lock:
            _ENGINES[name] = cls
        target = cls
    if target.name != name:
        raise ConfigError(f"The engine registered as {name!r} names itself {target.name!r}; register it by its name.")
    return target


def engine_info() -> list[EngineInfo]:
    """Every registered engine with its one-line description, sorted by name (imports each engine's module)."""
    out = []
    for name in engine_names():
        cls = engine_class(name)
        out.append(EngineInfo(name, cls.description.strip().splitlines()[0] if cls.description.strip() else "",
                              cls.uses_models, name == DEFAULT_ENGINE))  # fmt: skip
    return out


def create_engine(name: str, *, models: ModelRepository | None = None, config: Any = None) -> MemoryEngine:
    """A new instance of the engine ``name``; one with shared models and no ``models`` keeps them in memory."""
    cls = engine_class(name)
    if models is None and cls.uses_models:
        models = InMemoryModels()
    return cls(models=models, config=config)


__all__ = [
    "DEFAULT_ENGINE", "Artifact", "DecodeItem", "EncodeProgress", "EngineInfo", "InMemoryModels", "MemoryEngine",
    "ModelRepository", "SharedModel", "create_engine", "engine_class", "engine_info", "engine_names",
    "register_engine",
]  # fmt: skip
