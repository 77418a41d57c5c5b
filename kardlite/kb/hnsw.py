"""Approximate nearest neighbours over passage embeddings with hnswlib (cosine space)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kardlite.errors import ArtifactError
from kardlite.kb.config import HNSWConfig

FILENAME = "hnsw.bin"


class HNSWIndex:
    """An hnswlib index whose label n is row n of the passage store."""

    def __init__(self, index: object, config: HNSWConfig) -> None:
        self._index = index
        self.config = config
        self.count = index.get_current_count()  # type: ignore[attr-defined]
        self.live = self.count  # fewer after removals (marked deleted); the KB sets it from its passage count
        self._ef = config.ef
        index.set_ef(config.ef)  # type: ignore[attr-defined]

    @classmethod
    def build(cls, vectors: np.ndarray, config: HNSWConfig) -> HNSWIndex:
        """Index unit-length vectors; row n gets label n."""
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=int(vectors.shape[1]))
        index.init_index(max_elements=max(1, len(vectors)), ef_construction=config.ef_construction, M=config.M,
                         random_seed=config.seed)
        index.add_items(vectors, np.arange(len(vectors)))
        return cls(index, config)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: Path, dim: int, config: HNSWConfig) -> HNSWIndex:
        import hnswlib

        index = hnswlib.Index(space="cosine", dim=dim)
        try:
            index.load_index(str(path))
        except (RuntimeError, OSError) as err:
            raise ArtifactError(f"cannot load the HNSW index {path}: {err}") from None
        return cls(index, config)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest documents of each query: (rows, cosine similarities), both (len(queries), k), best first."""
        k = min(k, self.live)
        # hnswlib needs ef >= k to return k results.
        ef = max(self.config.ef, k)
        if ef != self._ef:
            self._index.set_ef(ef)  # type: ignore[attr-defined]
            self._ef = ef
        labels, distances = self._index.knn_query(queries, k=k)  # type: ignore[attr-defined]
        return labels.astype(np.int64), (1.0 - distances).astype(np.float32)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored (unit-length) vectors of documents."""
        return np.asarray(self._index.get_items(rows.tolist()), dtype=np.float32)  # type: ignore[attr-defined]
