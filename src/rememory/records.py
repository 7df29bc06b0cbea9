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
class TrainProgress:
    """A training progress event, emitted after every finished batch. The trainer itself never prints."""

    cells_done: int
    cells_total: int
    bytes_done: int
    bytes_total: int
    elapsed_s: float


@dataclass(frozen=True)
class StoreStats:
    """Sizes of a store. Byte counts are on-disk sizes; ``*_per_text_byte`` divide by ``text_bytes``."""

    episodes: int
    text_bytes: int
    cell_bytes: int
    store_bytes: int
    embedder: str
    dim: int
    namespaces: dict[str, int] = field(default_factory=dict)
    engine: str = ""  # the memory engine that new episodes are trained with, e.g. "mlp-cell/1"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        tb = max(self.text_bytes, 1)
        d["cell_bytes_per_text_byte"] = self.cell_bytes / tb
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
