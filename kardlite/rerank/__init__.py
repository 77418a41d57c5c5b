"""The KARD reranker (docs/method.md §6): scores passages from the question alone the way BM25 would score them
against the teacher's (unseen) rationale; a cross-encoder (default) or late interaction (ColBERT-style).

Parts: ``data`` (candidates + rationale-BM25 labels, question-disjoint split), ``model`` (``Reranker``: torch or
ONNX backend), ``late`` (the late-interaction kind and its passage cache), ``train`` (``train_reranker``, the KL/CE
objective), ``retriever`` (``RerankRetriever``: first stage → rerank → n_docs), ``onnx``
(``export_reranker_onnx``). Importing this package imports no torch.
"""

from __future__ import annotations

from kardlite.rerank.model import Reranker
from kardlite.rerank.retriever import RerankRetriever

__all__ = ["RerankRetriever", "Reranker"]
