"""The late-interaction reranker's passage cache: an in-memory LRU of token matrices, and its file on disk.

Passages are keyed by the text the reranker scores. The file (numpy ``.npz``, no pickles) holds float16 ``vectors``
(all passages' tokens, stacked), ``offsets``, the sha256 of each passage text (uint8 rows; numpy's fixed-width bytes
type would drop a digest's trailing zero bytes) and a fingerprint of the reranker weights that wrote it, so it is
only ever read back into that model. A bundle ships one (:data:`CACHE_FILE`) so that its runtime reads the matrices
instead of encoding its knowledge base at start-up.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from kardlite._io import atomic_write_bytes
from kardlite.errors import ArtifactError

CACHE_FILE = "passage_cache.npz"  # a bundle's precomputed passage matrices
CACHE_FORMAT = 1
# KBs up to this many passages are cached whole: at load by the runtime, and in a bundle's CACHE_FILE at export.
WARM_LIMIT = 20_000


def digest(text: str) -> bytes:
    """sha256 of a passage text: its key in a cache file."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class PassageCache:
    """Bounded LRU of passage token matrices keyed by passage text, safe to share between threads.

    A lock guards the table and the counters only; encoding happens outside it, so two threads that miss the same
    passage at once both encode it and store the same matrix.

    Args:
        max_entries: capacity; 0 turns caching off.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = int(max_entries)
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = {"hits": 0, "misses": 0, "encoded_passages": 0, "encoded_queries": 0}

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, text: object) -> bool:
        with self._lock:
            return text in self._data

    def get_many(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached matrices among ``texts`` (marked recently used); counts hits and misses."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for t in texts:
                m = self._data.get(t)
                if m is None:
                    self._stats["misses"] += 1
                    continue
                self._data.move_to_end(t)
                found[t] = m
                self._stats["hits"] += 1
        return found

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        """Store matrices, evicting the least recently used beyond ``max_entries``."""
        if self.max_entries <= 0:
            return
        with self._lock:
            for t, m in items.items():
                self._data[t] = m
                self._data.move_to_end(t)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def count(self, key: str, n: int) -> None:
        """Add ``n`` to one of the counters :meth:`info` reports."""
        with self._lock:
            self._stats[key] += n

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        with self._lock:
            self._data.clear()
            self._stats = dict.fromkeys(self._stats, 0)

    def info(self) -> dict[str, int]:
        """Size, capacity and the hit, miss and encoding counters."""
        with self._lock:
            return {"size": len(self._data), "max_entries": self.max_entries, **self._stats}


def text_digests(texts: Sequence[str]) -> np.ndarray:
    """sha256 of each text as the uint8 rows (n, 32) a cache file stores."""
    return np.frombuffer(b"".join(digest(t) for t in texts), dtype=np.uint8).reshape(len(texts), 32)


def write_cache_file(path: str | Path, digests: np.ndarray, matrices: Sequence[np.ndarray], *, dim: int,
                     fingerprint: str) -> None:
    """Write token matrices with their texts' digests (same order, :func:`text_digests`) to one ``.npz``, atomically."""
    offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([m.shape[0] for m in matrices])
    vectors = np.concatenate(matrices).astype(np.float16) if matrices else np.zeros((0, dim), np.float16)
    buf = io.BytesIO()
    np.savez(buf, vectors=vectors, offsets=offsets, digests=np.asarray(digests, dtype=np.uint8).reshape(-1, 32),
             model=np.array(fingerprint), format=np.array(CACHE_FORMAT))
    atomic_write_bytes(path, buf.getvalue())


def read_cache_file(path: str | Path, *, dim: int, fingerprint: str, model_path: Path | None = None
                    ) -> dict[str, np.ndarray]:
    """The arrays of a file of :func:`write_cache_file`: ``vectors``, ``offsets`` and ``digests``.

    Raises:
        ArtifactError: the file is unreadable, of another format or dim, or was written by other weights.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in ("vectors", "offsets", "digests", "model", "format")}
    except (OSError, ValueError, KeyError) as err:
        raise ArtifactError(f"{path}: not a readable passage cache ({err})") from None
    if (int(data["format"]) != CACHE_FORMAT or data["vectors"].ndim != 2 or data["vectors"].shape[1] != dim
            or data["digests"].shape != (len(data["offsets"]) - 1, 32)):
        raise ArtifactError(f"{path}: passage cache of format {int(data['format'])} with vectors "
                            f"{data['vectors'].shape}; expected format {CACHE_FORMAT}, dim {dim}")
    if str(data["model"]) != fingerprint:
        raise ArtifactError(f"{path}: written by other reranker weights than {model_path}; rebuild it "
                            f"(save_passage_cache, or re-export the bundle)")
    return {k: data[k] for k in ("vectors", "offsets", "digests")}
