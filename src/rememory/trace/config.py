"""The trace engine's training settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TraceConfig:
    """How :meth:`TraceEngine.fit <rememory.trace.engine.TraceEngine.fit>` trains a model version.

    The defaults are tuned on conversational turns (LoCoMo dev, 2,760 turns): they give the
    fewest total stored bytes with the model's own weights counted.
    """

    hidden: int = 64  # GRU state size
    embed: int = 16  # input byte embedding size
    weight_levels: int = 31  # weights are integers in -31..31 (6 bits): 20% fewer model bytes, +1% trace bytes
    epochs: int = 200  # passes over the episodes; max_seconds usually binds first
    lr: float = 4e-3  # Adam, cosine-decayed to 5% of this over the epochs or the seconds, whichever binds
    batch_tokens: int = 4096  # bytes per training batch (episodes of similar length batched together)
    seed: int = 0
    max_seconds: float = 240.0  # wall-clock budget of one fit; 0 means no limit
    batch: int = 512  # episodes encoded or decoded in one vectorised step
