"""The KARD reranker (docs/method.md §6): scores passages from the question alone the way BM25 would score them
against the teacher's (unseen) rationale; a cross-encoder (default) or late interaction (ColBERT-style).

Parts, in the order a reranker is made and used: ``data`` (candidates + rationale-BM25 labels), ``encoder`` (the
encoder, tokeniser and ONNX helpers both kinds share), ``base`` (``Reranker``: the API of every kind and the
kind -> class registry), ``cross`` (the cross-encoder kind), ``late`` (the late-interaction kind), ``cache`` (late
interaction's passage cache and its file), ``train`` (``train_reranker``, the KL/CE objective), ``metrics``
(top-1/top-3/NDCG/KL on labelled queries), ``onnx`` (``export_reranker_onnx``), ``retriever`` (``Retriever``:
first stage -> rerank -> n_docs, for the runtime and eval alike). This package gathers the public names
(``kardlite.rerank.model``, their former home, re-exports them). Importing it registers both kinds and imports no
torch.
"""

from __future__ import annotations

from kardlite.rerank.base import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_DIM,
    DEFAULT_QUERY_MAX_LENGTH,
    KINDS,
    Kind,
    Reranker,
    reranker_class,
)
from kardlite.rerank.cross import HEAD_FILE, HEAD_KIND, HEAD_NPZ, QUERY_FORMAT, CrossEncoderReranker
from kardlite.rerank.encoder import (
    CONFIG_NAME,
    DEFAULT_MAX_LENGTH,
    FORMAT_VERSION,
    ONNX_NAMES,
    Backend,
    PassageLike,
    default_base_model,
    mean_pool,
)
from kardlite.rerank.late import LateInteractionReranker
from kardlite.rerank.retriever import RerankRetriever, Retrieved, Retriever

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_DIM",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_QUERY_MAX_LENGTH",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "HEAD_KIND",
    "HEAD_NPZ",
    "KINDS",
    "ONNX_NAMES",
    "QUERY_FORMAT",
    "Backend",
    "CrossEncoderReranker",
    "Kind",
    "LateInteractionReranker",
    "PassageLike",
    "RerankRetriever",
    "Reranker",
    "Retrieved",
    "Retriever",
    "default_base_model",
    "mean_pool",
    "reranker_class",
]
