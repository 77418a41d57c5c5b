"""The passage cache file on its own (no model): round trip, digests with zero bytes, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kardlite.errors import ArtifactError
from kardlite.rerank.cache import PassageCache, digest, read_cache_file, text_digests, write_cache_file


def test_cache_file_round_trip_and_refusals(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    texts = ["a camel lives in the desert", "frogs eat flies", "x"]
    mats = [rng.standard_normal((n, 8)).astype(np.float32) for n in (5, 3, 1)]
    path = tmp_path / "cache.npz"
    write_cache_file(path, text_digests(texts), mats, dim=8, fingerprint="f1")
    data = read_cache_file(path, dim=8, fingerprint="f1")
    rows = {d.tobytes(): i for i, d in enumerate(data["digests"])}
    for text, m in zip(texts, mats, strict=True):
        j = rows[digest(text)]
        got = data["vectors"][data["offsets"][j]:data["offsets"][j + 1]]
        np.testing.assert_allclose(got, m.astype(np.float16), rtol=0, atol=0)
    with pytest.raises(ArtifactError, match="other reranker weights"):
        read_cache_file(path, dim=8, fingerprint="f2")
    with pytest.raises(ArtifactError, match="dim 16"):
        read_cache_file(path, dim=16, fingerprint="f1")
    path.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a readable passage cache"):
        read_cache_file(path, dim=8, fingerprint="f1")


def test_passage_cache_is_a_bounded_lru() -> None:
    cache = PassageCache(2)
    cache.put_many({"a": np.zeros((1, 2)), "b": np.ones((1, 2))})
    assert set(cache.get_many(["a"])) == {"a"}  # a is now the most recent
    cache.put_many({"c": np.ones((2, 2))})
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.info()["hits"] == 1 and cache.info()["size"] == 2
