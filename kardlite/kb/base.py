"""KnowledgeBase: one folder holding passages (SQLite), a BM25 index, and optionally a dense encoder + HNSW index.

Layout of a knowledge-base folder (self-contained; a runtime bundle copies it as is)::

    manifest.json      schema version, counts, settings, models, sha256 of every file, provenance
    passages.sqlite    the passages; row n is document n of both indexes
    bm25/              bm25s arrays (.npy) and vocabulary/parameters (.json)
    encoder/           ONNX encoder (int8 by default), tokenizer.json, encoder.json   (dense only)
    hnsw.bin           hnswlib cosine index over the passage embeddings               (dense only)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kardlite._io import atomic_dir, atomic_write_json, sha256_file, unique_keys
from kardlite.errors import ArtifactError, InputError
from kardlite.kb import bm25 as _bm25
from kardlite.kb import encoder as _encoder
from kardlite.kb import hnsw as _hnsw
from kardlite.kb import store as _store
from kardlite.kb.config import KBConfig
from kardlite.kb.hybrid import rrf
from kardlite.kb.passage import Hit, Passage
from kardlite.settings import FIRST_STAGES, KBRetriever

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
Retriever = KBRetriever
RETRIEVERS = FIRST_STAGES


class KnowledgeBase:
    """A searchable passage collection on disk. Create with ``build``, open with ``load``.

    Example:
        >>> from kardlite.kb import KnowledgeBase, read_passages
        >>> kb = KnowledgeBase.build(read_passages("openbook.txt"), "runs/obqa/kb")   # doctest: +SKIP
        >>> kb.search("Which animals pollinate flowers?", k=3)[0]["text"]              # doctest: +SKIP
        'A bee is a pollinating animal'
    """

    def __init__(self, path: Path, manifest: dict[str, Any], config: KBConfig, store: _store.PassageStore,
                 bm25: _bm25.BM25Index, encoder: _encoder.Encoder | None, hnsw: _hnsw.HNSWIndex | None) -> None:
        # Use build() or load(); the constructor only wires loaded parts together.
        self._path = path
        self._manifest = manifest
        self.config = config
        self._store = store
        self._bm25 = bm25
        self._encoder = encoder
        self._hnsw = hnsw

    # --- building ---------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, passages: Iterable[Passage], out_dir: str | Path, *, config: KBConfig | None = None,
              progress: bool = True) -> KnowledgeBase:
        """Build a knowledge base folder (atomically) and open it.

        The folder is built under a temporary name and swapped in at the end: an error or a crash part-way
        leaves a previous knowledge base at ``out_dir`` untouched.

        Args:
            passages: the corpus (e.g. from ``read_passages``); ids unique, texts non-empty. Read once.
            out_dir: the folder to create or replace. An existing folder must be a knowledge base (or empty).
            config: settings; None for the defaults (BM25 k1 0.9 / b 0.4, int8 all-MiniLM-L6-v2, HNSW, RRF).
            progress: show progress bars.

        Returns:
            The opened knowledge base.

        Raises:
            InputError: an empty corpus, a duplicate id, an empty text, a bad setting, or an ``out_dir`` that
                exists and is not a knowledge base.
            MissingExtraError: a dense index was asked for but optimum (the ``train`` extra) is missing.
        """
        config = config if config is not None else KBConfig()
        config.validate()
        out = Path(out_dir)
        _check_replaceable(out)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        with atomic_dir(out) as tmp:
            tick = time.perf_counter()
            contents = [p.contents for p in _progress(_store.write_store(tmp / _store.FILENAME, passages),
                                                      progress, "reading passages")]
            if not contents:
                raise InputError("no passages to index (empty corpus)")
            timings["store_s"] = time.perf_counter() - tick

            tick = time.perf_counter()
            bm25 = _bm25.BM25Index.build(contents, config.bm25, progress=progress)
            bm25.save(tmp / _bm25.DIRNAME)
            timings["bm25_s"] = time.perf_counter() - tick

            models: dict[str, Any] = {}
            embed_rate = None
            if config.dense is not None:
                tick = time.perf_counter()
                meta = _encoder.export_encoder(config.dense, tmp / _encoder.DIRNAME)
                timings["encoder_export_s"] = time.perf_counter() - tick
                encoder = _encoder.Encoder(tmp / _encoder.DIRNAME, meta=meta)
                tick, cpu_tick = time.perf_counter(), time.process_time()
                vectors = encoder.encode(contents, batch_size=config.dense.batch_size, progress=progress)
                timings["embed_s"] = time.perf_counter() - tick
                # CPU seconds (all threads) too: on a shared machine wall time says little about the encoder.
                timings["embed_cpu_s"] = time.process_time() - cpu_tick
                embed_rate = len(contents) / max(timings["embed_s"], 1e-9)
                tick = time.perf_counter()
                _hnsw.HNSWIndex.build(vectors, config.hnsw).save(tmp / _hnsw.FILENAME)
                timings["hnsw_s"] = time.perf_counter() - tick
                models["encoder"] = meta
            timings["total_s"] = time.perf_counter() - started

            manifest = _manifest(config, len(contents), models, timings, embed_rate)
            manifest["files"] = {rel: {"sha256": sha256_file(tmp / rel), "bytes": (tmp / rel).stat().st_size}
                                 for rel in _files(tmp)}
            atomic_write_json(tmp / MANIFEST, manifest)
        return cls.load(out, verify=False)

    # --- loading ----------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> KnowledgeBase:
        """Open a knowledge base folder.

        Args:
            path: the folder ``build`` wrote.
            verify: check every file against the sha256 in the manifest first (about 1 s per 500 MB).

        Returns:
            The knowledge base.

        Raises:
            ArtifactError: not a knowledge base, another schema version, or a file missing or altered (named).
        """
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"no knowledge base at {path} (not a folder)")
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactError(f"{path} is not a knowledge base: {MANIFEST} is missing")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (ValueError, OSError) as err:
            raise ArtifactError(f"{manifest_path} is unreadable: {err}") from None
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(f"{manifest_path}: schema version {manifest.get('schema_version')!r}, this kardlite "
                                f"reads {SCHEMA_VERSION}; rebuild the knowledge base")
        files = manifest.get("files")
        if not isinstance(files, dict) or _store.FILENAME not in files:
            raise ArtifactError(f"{manifest_path}: no file list; rebuild the knowledge base")
        if verify:
            _verify(path, files)
        try:
            config = KBConfig.from_dict(manifest["config"])
        except (InputError, KeyError, TypeError) as err:
            raise ArtifactError(f"{manifest_path}: bad settings ({err})") from None

        store = _store.PassageStore(path / _store.FILENAME)
        bm25 = _bm25.BM25Index.load(path / _bm25.DIRNAME, config.bm25)
        encoder = hnsw = None
        if config.dense is not None:
            encoder = _encoder.Encoder(path / _encoder.DIRNAME)
            hnsw = _hnsw.HNSWIndex.load(path / _hnsw.FILENAME, encoder.dim, config.hnsw)
        counts = manifest.get("counts", {})
        expected = counts.get("passages")
        # after removals (kardlite.kb.update) the indexes keep a document per row ever used; SQLite only live ones
        rows = counts.get("rows", expected)
        found = {"passages.sqlite": store.count, "bm25": bm25.count} | ({"hnsw": hnsw.count} if hnsw else {})
        wanted = {"passages.sqlite": expected, "bm25": rows, "hnsw": rows}
        if any(n != wanted[k] for k, n in found.items()):
            store.close()
            raise ArtifactError(f"{path}: inconsistent passage counts {found}, manifest says {expected} passages "
                                f"in {rows} rows")
        if hnsw is not None:
            hnsw.live = store.count
        return cls(path, manifest, config, store, bm25, encoder, hnsw)

    # --- reading ----------------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The knowledge-base folder."""
        return self._path

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json`` (a copy)."""
        return json.loads(json.dumps(self._manifest))

    @property
    def has_dense(self) -> bool:
        return self._hnsw is not None

    def __len__(self) -> int:
        return self._store.count

    def __iter__(self) -> Iterator[Passage]:
        return iter(self._store)

    def __repr__(self) -> str:
        kind = "bm25+dense" if self.has_dense else "bm25"
        return f"KnowledgeBase({str(self._path)!r}, passages={len(self)}, {kind})"

    def get(self, ids: Sequence[str]) -> list[Passage]:
        """Passages by id, in the order given.

        Raises:
            InputError: an id that is not in the knowledge base.
        """
        if isinstance(ids, str):
            raise InputError("expected a list of ids, got one string", field="ids")
        return self._store.by_rows(self._store.rows_of(list(ids)))

    def close(self) -> None:
        """Release the database connection."""
        self._store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- searching --------------------------------------------------------------------------------------------

    def bm25_scores(self, query: str, passage_ids: Sequence[str]) -> np.ndarray:
        """The BM25 score of any text against given passages, exactly as ``search(retriever="bm25")`` scores them.

        KARD's reranker labels: the score of a teacher rationale against each candidate passage.

        Args:
            query: any text (a question, a rationale).
            passage_ids: ids of passages in this knowledge base.

        Returns:
            float32 array aligned with ``passage_ids`` (0 where no query word occurs).
        """
        rows = self._store.rows_of(list(passage_ids))
        return self._bm25.scores(query)[np.asarray(rows, dtype=np.int64)]

    def dense_scores(self, query: str, passage_ids: Sequence[str]) -> np.ndarray:
        """The cosine of any text with given passages, as ``search(retriever="dense")`` scores them.

        An alternative reranker label (``CandidateConfig(labels="dense")``): the rationale's similarity to each
        candidate under this KB's encoder.

        Args:
            query: any text (a question, a rationale).
            passage_ids: ids of passages in this knowledge base.

        Returns:
            float32 array aligned with ``passage_ids``.

        Raises:
            InputError: the KB was built without a dense index.
        """
        if self._encoder is None or self._hnsw is None:
            raise InputError("this knowledge base has no dense index (built with dense=None)", path=self.path,
                             field="dense")
        rows = np.asarray(self._store.rows_of(list(passage_ids)), dtype=np.int64)
        return (self._hnsw.vectors(rows) @ self._encoder.encode([query])[0]).astype(np.float32)

    def search(self, query: str, k: int = 5, retriever: Retriever = "hybrid") -> list[Hit]:
        """The k passages that best match a query.

        Args:
            query: free text (for OBQA, the linearised question with its options).
            k: how many hits.
            retriever: "bm25" (lexical; only passages sharing a word), "dense" (cosine of embeddings), or
                "hybrid" (reciprocal-rank fusion of both; needs a dense index).

        Returns:
            Hits, best first, ``rank`` from 1. ``score`` is the retriever's score (BM25, cosine, or RRF);
            ``scores`` holds each available one: hybrid hits carry all of "bm25", "dense" and "rrf".
        """
        if not isinstance(query, str):
            raise InputError(f"expected a query string, got {type(query).__name__}", field="query")
        return self.search_many([query], k, retriever)[0]

    def search_many(self, queries: Sequence[str], k: int = 5, retriever: Retriever = "hybrid", *,
                    progress: bool = False) -> list[list[Hit]]:
        """``search`` for many queries at once (queries are embedded in batches).

        Args:
            queries: the query texts.
            k: hits per query.
            retriever: "bm25", "dense" or "hybrid".
            progress: show a progress bar.

        Returns:
            One list of hits per query, in query order.
        """
        if isinstance(queries, str):
            raise InputError("expected a list of queries, got one string (use search())", field="queries")
        queries = list(queries)
        if retriever not in RETRIEVERS:
            raise InputError(f"unknown retriever {retriever!r} (expected one of {', '.join(RETRIEVERS)})",
                             field="retriever")
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}", field="k")
        if retriever != "bm25" and self._hnsw is None:
            raise InputError(f"{self._path} was built without a dense index; use retriever='bm25' or rebuild "
                             "with dense enabled", field="retriever")
        if not queries:
            return []

        pool = max(k, self.config.hybrid.pool)
        qvecs = dense_rows = dense_sims = None
        if retriever != "bm25":
            assert self._encoder is not None and self._hnsw is not None
            batch = self.config.dense.batch_size if self.config.dense else 64
            qvecs = self._encoder.encode(queries, batch_size=batch, progress=progress and len(queries) > batch)
            dense_rows, dense_sims = self._hnsw.search(qvecs, k if retriever == "dense" else pool)

        ranked: list[list[tuple[int, float, dict[str, float]]]] = []
        for i, query in enumerate(_progress(queries, progress, "searching")):
            if retriever == "bm25":
                rows, scores = self._bm25.top(query, k)
                ranked.append([(int(r), float(s), {"bm25": float(s)}) for r, s in zip(rows, scores, strict=True)])
            elif retriever == "dense":
                assert dense_rows is not None and dense_sims is not None
                ranked.append([(int(r), float(s), {"dense": float(s)})
                               for r, s in zip(dense_rows[i], dense_sims[i], strict=True)])
            else:
                assert dense_rows is not None and dense_sims is not None and qvecs is not None
                ranked.append(self._hybrid(query, qvecs[i], dense_rows[i], dense_sims[i], k, pool))

        # One database read for all hits of all queries.
        rows_needed = list(dict.fromkeys(r for hits in ranked for r, _, _ in hits))
        passages = dict(zip(rows_needed, self._store.by_rows(rows_needed), strict=True))
        return [[_hit(passages[r], score, rank, scores) for rank, (r, score, scores) in enumerate(hits, start=1)]
                for hits in ranked]

    def _hybrid(self, query: str, qvec: np.ndarray, dense_rows: np.ndarray, dense_sims: np.ndarray, k: int,
                pool: int) -> list[tuple[int, float, dict[str, float]]]:
        cfg = self.config.hybrid
        bm25_all = self._bm25.scores(query)
        bm25_rows, _ = self._bm25.best(bm25_all, pool)
        fused = rrf([bm25_rows.tolist(), dense_rows.tolist()], k=cfg.rrf_k, weights=[cfg.bm25_weight, cfg.dense_weight])
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        # Every hit gets both first-stage scores, also when only one stage retrieved it.
        sims = dict(zip(dense_rows.tolist(), dense_sims.tolist(), strict=True))
        missing = np.asarray([r for r, _ in best if r not in sims], dtype=np.int64)
        if len(missing):
            assert self._hnsw is not None
            sims.update(zip(missing.tolist(), (self._hnsw.vectors(missing) @ qvec).tolist(), strict=True))
        return [(r, s, {"bm25": float(bm25_all[r]), "dense": float(sims[r]), "rrf": s}) for r, s in best]


def _hit(passage: Passage, score: float, rank: int, scores: dict[str, float]) -> Hit:
    return Hit(id=passage.id, title=passage.title, text=passage.text, score=score, rank=rank, scores=scores)


def _progress(items: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="item", leave=False)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _verify(path: Path, files: dict[str, Any]) -> None:
    for rel, info in files.items():
        file = path / rel
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the knowledge base; rebuild it")
        if file.stat().st_size != info.get("bytes"):
            raise ArtifactError(f"{file}: size {file.stat().st_size} bytes, manifest says {info.get('bytes')}: "
                                "the file was altered or truncated; rebuild the knowledge base")
        if sha256_file(file) != info.get("sha256"):
            raise ArtifactError(f"{file}: sha256 differs from the manifest: the file was altered; rebuild the "
                                "knowledge base")


def _check_replaceable(out: Path) -> None:
    if out.is_file():
        raise InputError("exists and is a file, not a knowledge-base folder", path=out)
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise InputError("exists and is not a knowledge base (no manifest.json); refusing to replace it", path=out)


def _manifest(config: KBConfig, count: int, models: dict[str, Any], timings: dict[str, float],
              embed_rate: float | None) -> dict[str, Any]:
    import kardlite
    from kardlite._versions import package_versions

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "kardlite.knowledge_base",
        "kardlite_version": kardlite.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {"passages": count},
        "retrievers": ["bm25", "dense", "hybrid"] if config.dense is not None else ["bm25"],
        "config": config.to_dict(),
        "models": models,
        "build": {
            "seconds": {name: round(value, 3) for name, value in timings.items()},
            "passages_per_s": round(count / max(timings["total_s"], 1e-9), 1),
            "embedding_passages_per_s": round(embed_rate, 1) if embed_rate is not None else None,
        },
        "versions": package_versions("bm25s", "hnswlib", "onnxruntime", "tokenizers"),
        "files": {},
    }
