"""The KARD reranker (docs/method.md §6): scores passages from the question alone the way BM25 would score them
against the teacher's (unseen) rationale; a cross-encoder (default) or late interaction (ColBERT-style).

Parts, in the order a reranker is made and used: ``data`` (candidates + rationale-BM25 labels), ``encoder`` (the
encoder, tokeniser and ONNX helpers both kinds share), ``base`` (``Reranker``: the API of every kind and the
kind -> class registry), ``cross`` (the cross-encoder kind), ``late`` (the late-interaction kind), ``cache`` (late
interaction's passage cache and its file), ``train`` (``train_reranker``, the KL/CE objective), ``metrics``
(top-1/top-3/NDCG/KL on labelled queries), ``onnx`` (``export_reranker_onnx``), ``retriever`` (``RerankRetriever``:
first stage → rerank → n_docs); ``model`` gathers the public names. Importing this package registers both kinds
and imports no torch.
"""

from __future__ import annotations

from kardlite.rerank.model import Reranker
from kardlite.rerank.retriever import RerankRetriever

__all__ = ["RerankRetriever", "Reranker"]
