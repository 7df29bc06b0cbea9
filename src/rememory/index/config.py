"""Ranking settings: which signals recall fuses, and with what weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import dataclass_from_dict


@dataclass(frozen=True)
class RankingConfig:
    """Weights of the hybrid ranking. A weight of 0 switches a signal off (used for ablations).

    Lexical signals are BM25 scores over an episode and over windows of its neighbours,
    each divided by its maximum over the namespace. Dense signals are cosine similarities.
    Defaults were tuned on conv-26/30/41 of locomo-dev and checked on conv-42/43 (README, "Recall quality").
    """

    bm25_own: float = 0.5  # BM25 of the episode's own keywords and text
    bm25_ctx1: float = 1.0  # BM25 of the window of the episode and its 1 neighbour on each side
    bm25_ctx2: float = 0.5  # ... 2 neighbours on each side
    bm25_ctx8: float = 1.0  # ... 8 neighbours on each side (the surrounding conversation)
    dense_own: float = 2.0  # cosine to the key of keywords + text
    dense_ctx: float = 2.0  # cosine to the context key (the episode with its neighbours, embedded at training)
    dense_near: float = 1.0  # mean cosine of the own keys within 2 neighbours
    dense_far: float = 1.0  # mean cosine of the own keys within 8 neighbours
    prf: float = 1.0  # pseudo-relevance feedback: re-query the context keys with the top hits mixed in
    prf_docs: int = 3  # how many top hits feed the feedback
    time_match: float = 2.0  # episodes whose time falls in the range a query names ("in May 2023", "last week")
    ann_threshold: int = 20000  # namespaces larger than this search dense keys with an ANN index
    candidates: int = 200  # hits taken from each index before fusion, when the ANN index is used
    rerank: int = 100  # ANN path: fused candidates that also get the neighbour-window dense signals

    @classmethod
    def from_dict(cls, d: dict) -> RankingConfig:
        """Build from a dict, naming unknown keys."""
        return dataclass_from_dict(cls, d, "ranking")

    def to_dict(self) -> dict:
        return asdict(self)
