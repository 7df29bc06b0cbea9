"""Plain records exchanged through the public API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Episode:
    """One episode: a semantic key (keywords) and the exact text it recalls."""

    id: str
    keywords: str
    text: str
    time: str | None = None
    namespace: str = "default"


# What ``RecallHit.score`` means, in the words every interface (REST, MCP, CLI) documents it with.
SCORE_DOC = (
    "Relevance in [0, 1], higher is better: the hybrid ranking score, a weighted mean of BM25 scores "
    "(each divided by its best in the namespace) and cosines of the query to the episode's keys. It "
    "ranks the hits of one recall; it is not a cosine similarity and is not comparable across queries."
)


@dataclass(frozen=True)
class RecallHit:
    """A recalled episode, with its exact text.

    ``score`` is the hybrid relevance in [0, 1] that ranked it (see :data:`SCORE_DOC`): higher is
    better, but it is not a similarity and compares hits of one recall, not across queries.
    """

    id: str
    score: float
    keywords: str
    text: str
    time: str | None = None
    namespace: str = "default"
    # recall(..., explain=True): each ranking signal's share of ``score`` (they sum to it); None otherwise
    explain: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "score": self.score, "keywords": self.keywords, "text": self.text, "time": self.time}
        if self.explain is not None:
            d["explain"] = dict(self.explain)
        return d


@dataclass(frozen=True)
class EncodeProgress:
    """An engine-neutral progress event, emitted by any memory engine while it encodes a batch (and by
    ``Memory.reencode``). Engines never print; the CLI draws bars and servers report jobs from these."""

    done: int  # episodes finished
    total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float
    stage: str = "encode"  # e.g. "train-model", "encode"

    # Deprecated names of TrainProgress (one release): callbacks written for the cell trainer keep working.
    @property
    def cells_done(self) -> int:
        return self.done

    @property
    def cells_total(self) -> int:
        return self.total


# Deprecated alias (one release): progress events are engine-neutral now.
TrainProgress = EncodeProgress


@dataclass(frozen=True)
class StoreStats:
    """Sizes of a store. Byte counts are on-disk sizes; ``*_per_text_byte`` divide by ``text_bytes``.

    ``memory_bytes`` counts what every memory costs to keep, whichever engine made it: per-episode
    artifacts (weights, traces, their configs) and the engines' shared models.
    """

    episodes: int
    text_bytes: int
    memory_bytes: int
    store_bytes: int
    embedder: str
    dim: int
    namespaces: dict[str, int] = field(default_factory=dict)
    engine: str = ""  # the memory engine that new episodes are encoded with, e.g. "mlp-cell/1"

    @property
    def cell_bytes(self) -> int:
        """Deprecated alias of ``memory_bytes`` (one release)."""
        return self.memory_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        tb = max(self.text_bytes, 1)
        d["memory_bytes_per_text_byte"] = self.memory_bytes / tb
        d["cell_bytes"] = self.memory_bytes  # deprecated alias (one release)
        d["cell_bytes_per_text_byte"] = self.memory_bytes / tb
        d["store_bytes_per_text_byte"] = self.store_bytes / tb
        return d


@dataclass(frozen=True)
class EpisodeView:
    """An episode as a viewer shows it: its metadata, sizes, and its text if its memory reconstructs it.

    ``verified`` is true when the text was just reconstructed and matched its digest; a damaged
    memory has ``text=None`` and ``damage`` says why.
    """

    id: str
    namespace: str
    keywords: str
    time: str | None
    added_at: int  # unix seconds, when it was stored
    text_bytes: int  # the text's size in UTF-8 bytes
    cell_bytes: int  # its memory's stored size: weights and config
    text: str | None
    damage: str | None = None

    @property
    def verified(self) -> bool:
        return self.damage is None


@dataclass(frozen=True)
class EpisodePage:
    """A page of :meth:`rememory.Memory.browse`: newest first."""

    items: list[EpisodeView]
    total: int  # episodes in the namespace that match the filter
    offset: int
    next_offset: int | None  # None on the last page


@dataclass(frozen=True)
class EpisodeDetail:
    """One episode with its neighbours in the conversation (the episodes stored just before and after it)."""

    episode: EpisodeView
    before: list[EpisodeView]  # oldest first
    after: list[EpisodeView]  # oldest first


@dataclass(frozen=True)
class DayCount:
    """How many episodes of a namespace were stored on one UTC day."""

    day: str  # YYYY-MM-DD
    episodes: int


@dataclass(frozen=True)
class VerifyFailure:
    """One damaged memory found by :meth:`rememory.Memory.verify`."""

    namespace: str
    id: str
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :meth:`rememory.Memory.verify`: how many memories were checked, and every one that failed."""

    checked: int
    failures: list[VerifyFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed(self) -> dict[str, str]:
        """Id -> reason. Ids are unique per namespace: for a whole-store report, use ``failures``."""
        return {f.id: f.reason for f in self.failures}


@dataclass(frozen=True)
class ReembedReport:
    """Result of :meth:`rememory.Memory.reembed`: the embedder the store now uses, and the one it replaced."""

    embedder: str
    previous: str | None
    episodes: int  # keys rebuilt by this call (a resumed reembed counts only what it embedded)


@dataclass(frozen=True)
class ReencodeReport:
    """Result of :meth:`rememory.Memory.reencode`: what was converted to ``engine``, and what could not be."""

    engine: str
    episodes: int  # episodes looked at
    reencoded: int  # converted by this call (a resumed reencode counts only what it converted)
    unchanged: int  # already made by ``engine`` (and, for an engine with shared models, its newest model)
    failures: list[VerifyFailure] = field(default_factory=list)  # damaged: left as they were
    models: dict[str, int] = field(default_factory=dict)  # namespace -> model version trained by this call

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d
