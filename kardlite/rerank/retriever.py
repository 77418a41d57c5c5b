"""The test-time retriever, one object for ``kardlite eval`` and the runtime: a first-stage pool by question from
the KB, reranked when there is a reranker, keep ``n_docs``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from kardlite.data.records import QAItem
from kardlite.errors import InputError
from kardlite.kb.passage import Hit, Passage
from kardlite.rerank.base import Reranker
from kardlite.settings import FIRST_STAGES, KBRetriever

FirstStage = KBRetriever


class Retrieved(NamedTuple):
    """What one retrieval did: the first stage's hits, those shown (best first), and the time of each step."""

    pool: list[Hit]
    shown: list[Hit]
    first_stage_seconds: float
    rerank_seconds: float


class Retriever:
    """First stage (BM25, dense or hybrid from the knowledge base) → rerank (either kind; none: the first stage's
    order) → top ``n_docs``.

    With a late-interaction reranker, ``reranker.warm(kb)`` before the first question encodes every passage once;
    later questions then only encode the question.

    Used by ``kardlite eval`` (through :meth:`passages`, the ``(item, n_docs) -> list[Passage]`` callable) and by
    the runtime (through ``__call__``).

    Args:
        kb: a loaded ``kardlite.kb.KnowledgeBase``.
        reranker: a loaded :class:`Reranker` (torch or onnx backend), or None for the first stage alone.
        first_stage: which KB retriever builds the pool.
        pool: how many first-stage candidates are reranked (KARD uses 100; 50 is plenty for a small open book
            and halves the CPU cost).

    Example:
        >>> rr = RerankRetriever(kb, Reranker.load(path, backend="onnx"), pool=50)  # doctest: +SKIP
        >>> [h["id"] for h in rr(item, n_docs=3)]  # doctest: +SKIP
    """

    def __init__(self, kb: Any, reranker: Reranker | None, *, first_stage: FirstStage = "hybrid", pool: int = 50,
                 batch_size: int = 64) -> None:
        if first_stage not in FIRST_STAGES:
            raise InputError(f"first_stage must be bm25, dense or hybrid, got {first_stage!r}", field="first_stage")
        if pool < 1:
            raise InputError(f"pool must be >= 1, got {pool}", field="pool")
        self.kb = kb
        self.reranker = reranker
        self.first_stage = first_stage
        self.pool = int(pool)
        self.batch_size = batch_size

    @staticmethod
    def _query(query: str | QAItem) -> str:
        text = query.linearize() if isinstance(query, QAItem) else query
        if not isinstance(text, str) or not text.strip():
            raise InputError("the query is empty or not text", field="query")
        return text

    def __call__(self, query: str | QAItem, n_docs: int = 1) -> list[Hit]:
        """Retrieve and rerank.

        Args:
            query: the linearised question, or a QAItem (linearised here, as at training time).
            n_docs: how many passages to keep.

        Returns:
            Hits best first; ``scores`` keeps the first-stage score(s) and ``scores["rerank"]``.
        """
        return self.search(query, n_docs).shown

    def search(self, query: str | QAItem, n_docs: int = 1) -> Retrieved:
        """Retrieve and rerank, keeping the first stage's pool and the time of each step (what the runtime shows).

        Without a reranker the first stage retrieves ``n_docs`` only; with one, ``max(pool, n_docs)``.
        """
        if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1:
            raise InputError(f"n_docs must be >= 1, got {n_docs!r}", field="n_docs")
        text = self._query(query)
        t0 = time.perf_counter()
        pool = self.kb.search(text, max(self.pool, n_docs) if self.reranker is not None else n_docs,
                              retriever=self.first_stage)
        t1 = time.perf_counter()
        if self.reranker is None:
            return Retrieved(pool, pool[:n_docs], t1 - t0, 0.0)
        shown = self.reranker.rank(text, pool, top_k=n_docs, batch_size=self.batch_size)
        return Retrieved(pool, shown, t1 - t0, time.perf_counter() - t1)

    def search_many(self, queries: Sequence[str | QAItem], n_docs: int = 1) -> list[list[Hit]]:
        """:meth:`__call__` for many queries (the first stage runs as one batch)."""
        if n_docs < 1:
            raise InputError(f"n_docs must be >= 1, got {n_docs}", field="n_docs")
        texts = [self._query(q) for q in queries]
        if self.reranker is None:
            return [p[:n_docs] for p in self.kb.search_many(texts, n_docs, retriever=self.first_stage)]
        pools = self.kb.search_many(texts, max(self.pool, n_docs), retriever=self.first_stage)
        return [self.reranker.rank(t, p, top_k=n_docs, batch_size=self.batch_size)
                for t, p in zip(texts, pools, strict=True)]

    def passages(self, item: QAItem | str, n_docs: int = 1) -> list[Passage]:
        """The ``(item, n_docs) -> list[Passage]`` callable that ``kardlite eval`` takes as a retriever: the hits
        the runtime shows, as passages."""
        return [Passage(id=h["id"], title=h["title"], text=h["text"]) for h in self(item, n_docs)]


class RerankRetriever(Retriever):
    """A :class:`Retriever` that must have a reranker (the name ``kardlite eval`` and older code use)."""

    def __init__(self, kb: Any, reranker: Reranker, *, first_stage: FirstStage = "hybrid", pool: int = 50,
                 batch_size: int = 64) -> None:
        if reranker is None:
            raise InputError("a RerankRetriever needs a reranker", field="reranker")
        super().__init__(kb, reranker, first_stage=first_stage, pool=pool, batch_size=batch_size)
