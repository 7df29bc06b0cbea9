"""Context keys: an episode's own key blended with its neighbours' own keys, without embedding anything.

Recall scores each episode by its own key and by its context key (an episode alone often says little:
"No idea, tell me!" is about what came before it). The context key used to embed a second passage, the
episode with its previous and next episode, about three times the text of the own key and five times the
time: 84% of an add's embedding went to it. It is now the normalised weighted sum of the own keys of the
episode and its neighbours. e5 and sentence-transformers pool the token states of a passage by their mean,
so an embedded window is close to its parts' keys weighted by their lengths (mean cosine .974 to the
embedded windows on locomo-dev); cross-validated recall held (README, "Ingestion").

Every own key enters as it is stored (int8, dequantised), so a key blended from this batch's episodes and one
blended from episodes stored earlier are the same: ``add`` in one call or in several, and ``reembed``, make
the same context keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .quant import quantize_int8

# Neighbours on each side that a context key blends in, and the factor per step away: the previous and next
# episode count .75 as much as the episode (for their length), the ones two away .56. Chosen by locomo-dev's
# leave-one-conversation-out recall (mean held-out R@5 + R@10) among reach 1 (decay 1), reach 2 (decays .25,
# .5, .75, 1) and reach 3 (.75); README, "Ingestion".
CONTEXT_REACH = 2
CONTEXT_DECAY = 0.75


def key_bytes(keywords: str, n_bytes: int) -> int:
    """UTF-8 bytes of what the own key embedded (``memory.key_text``), from the keywords and the text's size.

    The weight of an episode in its neighbours' context keys: a pooled key averages the passage's tokens, so
    a long episode counts for more. Bytes, not characters: the stored size needs no decoding, and bytes per
    model token vary less across scripts (e5: Latin ~3.8, CJK ~4.2, Cyrillic ~5.6) than characters do
    (3.8, 1.4, 3.1).
    """
    return n_bytes + (len(keywords.encode("utf-8")) + 2 if keywords.strip() else 0)


@dataclass(frozen=True)
class OwnKey:
    """An episode's own key as stored (``key * scale``) and its weight (:func:`key_bytes`)."""

    key: np.ndarray  # (dim,) int8
    scale: float
    weight: float


def context_key(own: Mapping[int, OwnKey], at: int) -> tuple[np.ndarray, float]:
    """The int8 context key (and its scale) of the episode at position ``at`` of its namespace.

    ``own`` maps positions in the namespace's order to own keys; a position it lacks (no such neighbour,
    or one whose key is damaged) is left out of the blend. ``own`` must hold ``at``.
    """
    total = np.zeros(own[at].key.shape, dtype=np.float64)
    for d in range(-CONTEXT_REACH, CONTEXT_REACH + 1):
        k = own.get(at + d)
        if k is not None:
            total += (CONTEXT_DECAY ** abs(d) * k.weight * k.scale) * k.key.astype(np.float64)
    norm = float(np.linalg.norm(total))
    return quantize_int8((total / norm if norm > 0 else total).astype(np.float32))


def own_key(vec: np.ndarray, weight: float) -> OwnKey:
    """``vec`` (a unit own key just embedded) as it will be stored, with its weight."""
    q, scale = quantize_int8(vec)
    return OwnKey(q, scale, float(weight))
