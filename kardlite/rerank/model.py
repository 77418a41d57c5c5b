"""The reranker's public entry point: :class:`Reranker` and the names other code imports, gathered in one place.

The code lives by part: :mod:`kardlite.rerank.base` (the API every kind shares and the kind registry),
:mod:`kardlite.rerank.cross` (the cross-encoder, the default kind), :mod:`kardlite.rerank.late` (late interaction),
:mod:`kardlite.rerank.cache` (late interaction's passage cache and its file), :mod:`kardlite.rerank.encoder`
(encoder, tokeniser and ONNX helpers both kinds use) and :mod:`kardlite.rerank.metrics`. ``Reranker.load`` and
``Reranker.from_pretrained`` return the class of the requested kind.
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
    "Reranker",
    "default_base_model",
    "mean_pool",
    "reranker_class",
]
