"""The reranker's public names' former home: they live in :mod:`kardlite.rerank` now; kept so old imports work."""

from __future__ import annotations

from kardlite.rerank import (
    CONFIG_NAME,
    DEFAULT_CACHE_SIZE,
    DEFAULT_DIM,
    DEFAULT_MAX_LENGTH,
    DEFAULT_QUERY_MAX_LENGTH,
    FORMAT_VERSION,
    HEAD_FILE,
    HEAD_KIND,
    HEAD_NPZ,
    KINDS,
    ONNX_NAMES,
    QUERY_FORMAT,
    Backend,
    CrossEncoderReranker,
    Kind,
    LateInteractionReranker,
    PassageLike,
    Reranker,
    default_base_model,
    mean_pool,
    reranker_class,
)

__all__ = ["CONFIG_NAME", "DEFAULT_CACHE_SIZE", "DEFAULT_DIM", "DEFAULT_MAX_LENGTH", "DEFAULT_QUERY_MAX_LENGTH",
           "FORMAT_VERSION", "HEAD_FILE", "HEAD_KIND", "HEAD_NPZ", "KINDS", "ONNX_NAMES", "QUERY_FORMAT", "Backend",
           "CrossEncoderReranker", "Kind", "LateInteractionReranker", "PassageLike", "Reranker",
           "default_base_model", "mean_pool", "reranker_class"]
