"""The trace engine: one shared byte model per namespace, and a short range-coded trace per episode."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from ..engine import Artifact, DecodeItem, EncodeProgress, MemoryEngine, ModelRepository, SharedModel
from ..errors import ConfigError, IntegrityError
from .coder import decode_streams, encode_texts
from .config import TraceConfig
from .model import IntGru, ModelShape, model_digest

# The model shipped in the package: a new namespace encodes with it (stored by name, not by
# bytes) until it has grown enough to pay for a model of its own. Never change this file:
# episodes name it. A better base model ships under a new name.
BASE_MODEL = "base-1"
BASE_MODEL_FILE = "base-1.safetensors"
BASE_MODEL_SHAPE = ModelShape(hidden=64, embed=16)
BASE_MODEL_DIGEST = "acded4f55b1ce6d8"  # blake2b-64 of the shipped file, checked at load


class TraceEngine(MemoryEngine):
    """A frozen integer GRU predicts each next byte; an episode is its range-coded trace under it.

    >>> from rememory.engine import InMemoryModels
    >>> eng = TraceEngine(InMemoryModels())
    >>> [art] = eng.encode(["greeting"], [b"hello"])
    >>> eng.decode(art, "greeting", n_bytes=5)
    b'hello'
    """

    name = "byte-trace/1"
    description = (
        "One shared integer GRU byte model per namespace and a range-coded trace per episode "
        "(~0.4 bytes per text byte once the model is trained on the store)."
    )
    uses_models = True

    def __init__(self, models: ModelRepository | None = None, config: TraceConfig | None = None):
        super().__init__(models)
        self.config = config or TraceConfig()
        self._cache: dict[tuple[int, str], IntGru] = {}

    # -- models ----------------------------------------------------------------------------------

    def _repo(self) -> ModelRepository:
        if self.models is None:
            raise ConfigError(
                f"engine {self.name!r} keeps a shared model per namespace: build it with a model "
                "repository (Memory does this; for standalone use pass rememory.engine.InMemoryModels())"
            )
        return self.models

    def current(self) -> SharedModel:
        """The model new episodes are encoded with: the newest version, or the shipped base model as version 1."""
        repo = self._repo()
        latest = repo.latest(self.name)
        if latest is None:
            latest = repo.put(self.name, base_model_config(), b"", trained_on=0)
        return latest

    def load(self, shared: SharedModel) -> IntGru:
        """The integer model of one stored version (cached per version and digest)."""
        cfg = shared.config
        digest = cfg.get("digest")
        if not isinstance(digest, str):
            raise IntegrityError(f"trace model version {shared.version} has no digest; the store is damaged")
        key = (shared.version, digest)
        model = self._cache.get(key)
        if model is None:
            shape = ModelShape.from_config(cfg)
            shipped = cfg.get("shipped")
            data = _shipped_bytes(shipped) if shipped is not None else shared.data
            if model_digest(data) != digest:
                raise IntegrityError(
                    f"trace model version {shared.version} does not match its digest (damaged weights); "
                    "restore the store from a backup"
                )
            model = IntGru.from_bytes(shape, data)
            self._cache[key] = model
        return model

    def model_version(self, artifact: Artifact) -> int | None:
        v = artifact.config.get("v")
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def fit(self, texts: Sequence[bytes], progress: Callable[[Any], None] | None = None) -> SharedModel:
        """Train a new model version on ``texts`` (fine-tuned from the current one) and store it.

        Episodes of older versions keep decoding with theirs; ``rememory reencode`` moves them over.
        """
        # torch loads here only: encoding and decoding with a frozen model never need it.
        from .train import dequantize, quantize, train_float

        if not texts:
            raise ConfigError("a trace model needs at least one episode to train on")
        shape = ModelShape(self.config.hidden, self.config.embed)
        base = self._repo().latest(self.name)
        init = None
        if base is not None and ModelShape.from_config(base.config) == shape:
            init = dequantize(self.load(base))
        model = quantize(train_float(texts, self.config, init, progress), shape, self.config.weight_levels)
        data = model.to_bytes()
        cfg = {**shape.to_config(), "digest": model_digest(data)}
        return self._repo().put(self.name, cfg, data, trained_on=len(texts))

    # -- episodes --------------------------------------------------------------------------------

    def encode(
        self, keys: Sequence[str], texts: Sequence[bytes], progress: Callable[[Any], None] | None = None
    ) -> list[Artifact]:
        shared = self.current()
        model = self.load(shared)
        total_bytes = sum(len(t) for t in texts)
        t0 = time.perf_counter()
        out: list[Artifact] = []
        done_bytes = 0
        step = max(1, self.config.batch)
        for lo in range(0, len(texts), step):
            chunk = list(texts[lo : lo + step])
            streams = encode_texts(model, chunk)  # each checked to decode back (see encode_texts)
            out.extend(Artifact(self.name, {"v": shared.version}, {"uint8": s}) for s in streams)
            done_bytes += sum(len(t) for t in chunk)
            if progress is not None:
                progress(EncodeProgress(len(out), len(texts), done_bytes, total_bytes, time.perf_counter() - t0))
        return out

    def decode(self, artifact: Artifact, key: str, *, n_bytes: int | None = None) -> bytes:
        [res] = self.decode_batch([DecodeItem(artifact, key, n_bytes)])
        if isinstance(res, Exception):
            raise res
        return res

    def decode_batch(self, items: Sequence[DecodeItem]) -> list[bytes | Exception]:
        out: list[bytes | Exception] = [IntegrityError("not decoded")] * len(items)
        by_version: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            try:
                by_version.setdefault(self._check(it), []).append(i)
            except IntegrityError as exc:
                out[i] = exc
        for version, idx in by_version.items():
            try:
                model = self.load(self._repo().get(self.name, version))
            except IntegrityError as exc:
                for i in idx:
                    out[i] = exc
                continue
            step = max(1, self.config.batch)
            for lo in range(0, len(idx), step):
                part = idx[lo : lo + step]
                res = decode_streams(
                    model, [items[i].artifact.streams["uint8"] for i in part], [items[i].n_bytes for i in part]
                )
                for i, r in zip(part, res):
                    out[i] = r
        return out

    def _check(self, it: DecodeItem) -> int:
        art = it.artifact
        if art.engine != self.name:
            raise IntegrityError(f"an artifact of engine {art.engine!r} was given to {self.name!r}")
        v = art.config.get("v")
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise IntegrityError(f"trace config 'v' is {v!r}, not a model version")
        if set(art.streams) != {"uint8"}:
            raise IntegrityError(f"a trace has streams {sorted(art.streams)}, expected ['uint8']")
        if it.n_bytes is not None and it.n_bytes < 0:
            raise IntegrityError(f"the store recorded a length of {it.n_bytes} bytes")
        return v


def base_model_config() -> dict[str, Any]:
    """The stored config of the shipped base model: it names the package file instead of copying it."""
    return {**BASE_MODEL_SHAPE.to_config(), "shipped": BASE_MODEL, "digest": BASE_MODEL_DIGEST}


def _shipped_bytes(name: Any) -> bytes:
    if name != BASE_MODEL:
        raise IntegrityError(
            f"this store's trace model names the shipped model {name!r}, unknown here; upgrade rememory"
        )
    return resources.files(__package__).joinpath(BASE_MODEL_FILE).read_bytes()
