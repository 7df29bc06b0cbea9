"""The response models and field descriptions that REST and MCP share, defined once.

Descriptions that state a limit read it from :mod:`rememory.limits`, or, for the episode text
whose limit each store opening may change, take the value in force when the app is built.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..limits import MAX_KEYWORDS_BYTES, MAX_TOP_K
from ..records import SCORE_DOC, RecallHit, StoreStats

KEYWORDS_DOC = (
    f"A few comma-separated words about the episode: people, places, topics (at most {MAX_KEYWORDS_BYTES} "
    "UTF-8 bytes; may be empty). Recall matches a query against the keywords and the text together."
)
TOP_K_DOC = f"How many episodes to return, best first (1-{MAX_TOP_K})."
TIME_DOC = "When it happened, as an ISO 8601 date-time, e.g. 2023-05-08T13:56:00. Optional."
_RANGE_NOTE = (
    "An episode's time is its `time`, or else a date written in its keywords; episodes with no time are "
    "left out when `since` or `until` is given."
)
SINCE_DOC = f"Only episodes from this ISO 8601 date or time on (inclusive), e.g. 2023-05-01. {_RANGE_NOTE}"
UNTIL_DOC = (
    "Only episodes up to this ISO 8601 date or time (inclusive; a date alone includes its whole day), "
    f"e.g. 2023-05-31. {_RANGE_NOTE}"
)


def text_doc(max_text_bytes: int) -> str:
    """The description of an episode's text, stating the limit this server enforces."""
    return (
        f"The exact text to remember, UTF-8, at most {max_text_bytes} bytes (this server's limit). "
        "Recall returns it byte-exact."
    )


class Hit(BaseModel):
    """One recalled episode."""

    id: str = Field(description="The episode's id.")
    score: float = Field(description=SCORE_DOC)
    keywords: str = Field(description="The episode's keywords.")
    text: str = Field(description="The episode's exact text, reconstructed from its memory cell.")
    time: str | None = Field(description="When it happened (ISO 8601), if it was given.")
    explain: dict[str, float] | None = Field(
        default=None,
        description="Only when the request asked to explain: each ranking signal's share of the score "
        "(bm25_own, bm25_ctx1/2/8, dense_own, dense_ctx, dense_near, dense_far, dense_contrast, prf, and time_match "
        "when the query names a time); the shares sum to it.",
    )

    @classmethod
    def of(cls, hit: RecallHit) -> Hit:
        more = {} if hit.explain is None else {"explain": hit.explain}  # left unset, hence out of the JSON
        return cls(id=hit.id, score=hit.score, keywords=hit.keywords, text=hit.text, time=hit.time, **more)


class Forgotten(BaseModel):
    id: str = Field(description="The id that was forgotten.")
    forgotten: bool = Field(default=True, description="Always true: a missing id is an error instead.")


class Stats(BaseModel):
    episodes: int = Field(description="Episodes stored.")
    text_bytes: int = Field(description="Total size of their texts, in UTF-8 bytes.")
    memory_bytes: int = Field(
        description="What their memories take, in bytes: every episode's artifact (of whichever engine made it) "
        "and the engines' shared models."
    )
    cell_bytes: int = Field(description="Deprecated alias of memory_bytes (kept for one release).")
    store_bytes: int = Field(description="Bytes on disk (0 for one namespace: the files are shared).")
    embedder: str = Field(description="The embedding model that makes the recall keys.")
    engine: str = Field(description="The memory engine that new episodes are trained with.")
    dim: int = Field(description="The size of its vectors.")
    namespaces: dict[str, int] = Field(description="Episodes per namespace.")
    memory_bytes_per_text_byte: float
    cell_bytes_per_text_byte: float = Field(description="Deprecated alias of memory_bytes_per_text_byte.")
    store_bytes_per_text_byte: float

    @classmethod
    def of(cls, stats: StoreStats) -> Stats:
        return cls(**stats.to_dict())
