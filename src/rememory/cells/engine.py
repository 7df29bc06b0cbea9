"""The per-episode memory cell as a :class:`~rememory.engine.MemoryEngine`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..engine import Artifact, MemoryEngine
from .features import seed_from_key
from .model import CellConfig, CellShape, QuantizedCell

# Constants of the stored format "mlp-cell/1". Never change them: old cells decode with them.
# (CellConfig's defaults may change; a cell that differs from these stores its own values.)
FORMAT_FEATURE_RATIO = 4
FORMAT_FREQ_STD = 1.6


class MlpCellEngine(MemoryEngine):
    """One small sine network per episode, int8 weights, trained in batches.

    >>> eng = MlpCellEngine()
    >>> [art] = eng.encode(["greeting"], [b"hello"])
    >>> eng.decode(art, "greeting")
    b'hello'
    """

    name = "mlp-cell/1"

    def __init__(self, config: CellConfig | None = None):
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

    def decode(self, artifact: Artifact, key: str) -> bytes:
        cfg = artifact.config
        alphabet = artifact.streams.get("uint8")
        h = int(cfg["h"])
        r = int(cfg.get("r", FORMAT_FEATURE_RATIO * h))
        shape = CellShape(int(cfg["n"]), 0 if alphabet is None else int(alphabet.size), r, h)
        cell = QuantizedCell.from_streams(shape, artifact.streams)
        return cell.decode(seed_from_key(key), float(cfg.get("f", FORMAT_FREQ_STD)))
