"""The per-episode memory cell as a :class:`~rememory.engine.MemoryEngine`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..engine import Artifact, MemoryEngine, ModelRepository
from ..errors import ConfigError, IntegrityError
from .features import seed_from_key
from .model import CellConfig, CellShape, QuantizedCell

# Constants of the stored format "mlp-cell/1". Never change them: old cells decode with them.
# (CellConfig's defaults may change; a cell that differs from these stores its own values.)
FORMAT_FEATURE_RATIO = 4
FORMAT_FREQ_STD = 1.6
MAX_FEATURES = 1 << 27  # n * r: far above any real cell; bounds what a damaged config makes decode allocate


class MlpCellEngine(MemoryEngine):
    """One small sine network per episode, int8 weights, trained in batches.

    >>> eng = MlpCellEngine()
    >>> [art] = eng.encode(["greeting"], [b"hello"])
    >>> eng.decode(art, "greeting")
    b'hello'
    """

    name = "mlp-cell/1"
    description = "One small int8 sine network per episode, trained to regenerate its text (~4 bytes per text byte)."

    def __init__(self, config: CellConfig | None = None, models: ModelRepository | None = None):
        super().__init__(models)
        if config is not None and not isinstance(config, CellConfig):
            raise ConfigError(f"The engine {self.name!r} takes a CellConfig, got {type(config).__name__}.")
        self.config = config or CellConfig()

    def encode(
        self, keys: Sequence[str], texts: Sequence[bytes], progress: Callable[[Any], None] | None = None
    ) -> list[Artifact]:
        # torch loads here, when training starts: opening a store, recalling and decoding never need it.
        from .train import train_cells

        seeds = [seed_from_key(k) for k in keys]
        cells = train_cells(list(zip(seeds, texts)), self.config, progress)
        return [
            Artifact(
                engine=self.name,
                # freq_std is stored per cell: decoding must not depend on today's defaults.
                config=self._cell_config(c.shape),
                streams=c.to_streams(),
            )
            for c in cells
        ]

    def _cell_config(self, shape: CellShape) -> dict[str, Any]:
        # Per-cell metadata is a real cost for short texts: store only what differs from the
        # format's fixed constants. The alphabet size is the length of the uint8 stream.
        cfg: dict[str, Any] = {"n": shape.n, "h": shape.h}
        if shape.r != FORMAT_FEATURE_RATIO * shape.h:
            cfg["r"] = shape.r
        if self.config.freq_std != FORMAT_FREQ_STD:
            cfg["f"] = self.config.freq_std
        return cfg

    def decode(self, artifact: Artifact, key: str, *, n_bytes: int | None = None) -> bytes:
        cfg = artifact.config
        alphabet = artifact.streams.get("uint8")
        n, h = _whole(cfg, "n"), _whole(cfg, "h")
        r = _whole(cfg, "r") if "r" in cfg else FORMAT_FEATURE_RATIO * h
        freq = cfg.get("f", FORMAT_FREQ_STD)
        if not isinstance(freq, int | float) or not math.isfinite(freq):
            raise IntegrityError(f"cell config 'f' is {freq!r}, not a number")
        # Checked before anything is allocated: the feature matrix alone is n * r floats.
        if n_bytes is not None and n != n_bytes:
            raise IntegrityError(f"the cell says its text has {n} bytes, the store says {n_bytes}")
        if n and not (h >= 1 and r >= 1 and n * r <= MAX_FEATURES):
            raise IntegrityError(f"the cell's shape (n={n}, h={h}, r={r}) is out of range")
        shape = CellShape(n, 0 if alphabet is None else int(alphabet.size), r, h)
        try:
            cell = QuantizedCell.from_streams(shape, artifact.streams)
        except ValueError as exc:
            raise IntegrityError(str(exc)) from None
        return cell.decode(seed_from_key(key), float(freq))


def _whole(cfg: dict[str, Any], name: str) -> int:
    v = cfg.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise IntegrityError(f"cell config {name!r} is {v!r}, not a whole number")
    return v
