"""The passage record and the search-hit shape shared by the KB, reranker, runtime and app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict


@dataclass(frozen=True)
class Passage:
    """One knowledge-base passage.

    Attributes:
        id: unique within its KB.
        title: a short heading (may be empty); shown to the student before the text.
        text: the passage body.
        source: where it came from (file path, URL); empty if unknown.
        meta: anything else (e.g. chunk offsets ``start``/``end`` in ``source``), JSON-serialisable.
    """

    id: str
    title: str
    text: str
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def contents(self) -> str:
        """Title and text as one string: what retrievers index (docs/method.md §4: title + paragraph)."""
        return f"{self.title}. {self.text}" if self.title else self.text


class Hit(TypedDict):
    """One retrieved passage with its score. ``scores`` keeps each stage's score (e.g. bm25, dense, rerank)."""

    id: str
    title: str
    text: str
    score: float
    rank: int
    scores: dict[str, float]
