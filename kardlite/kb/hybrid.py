"""Reciprocal-rank fusion: combine rankings without calibrating their scores against each other."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def rrf(rankings: Sequence[Sequence[Key]], *, k: int = 60, weights: Sequence[float] | None = None) -> dict[Key, float]:
    """Fuse ranked lists of documents (rows or ids).

    A document at 1-based rank r in list i gains ``weights[i] / (k + r)``; absent documents gain nothing.

    Args:
        rankings: each a list of documents, best first.
        k: the RRF constant (60 in Cormack et al. 2009); larger flattens the head of each list.
        weights: one per ranking (default all 1).

    Returns:
        Document -> fused score, in no particular order.
    """
    weights = weights if weights is not None else [1.0] * len(rankings)
    fused: dict[Key, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + weight / (k + rank)
    return fused
