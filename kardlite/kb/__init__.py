"""Knowledge base: passages in SQLite, BM25 (bm25s), dense (ONNX encoder + hnswlib) and hybrid (RRF) search."""

from __future__ import annotations

from kardlite.kb.base import KnowledgeBase
from kardlite.kb.config import BM25Config, DenseConfig, HNSWConfig, HybridConfig, KBConfig
from kardlite.kb.ingest import read_passages
from kardlite.kb.passage import Hit, Passage

__all__ = ["BM25Config", "DenseConfig", "HNSWConfig", "Hit", "HybridConfig", "KBConfig", "KnowledgeBase", "Passage",
           "read_passages"]
