"""BM25 over the passages with bm25s, saved in bm25s's own numpy/JSON format (no pickles)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kardlite.errors import ArtifactError, InputError
from kardlite.kb.config import BM25Config

DIRNAME = "bm25"
# bm25s's default token pattern: words of two or more word characters.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class Tokenizer:
    """Lower-case, split into words, drop stop words, stem. The same function for passages and queries."""

    def __init__(self, stemmer: str | None = "english", stopwords: str | list[str] | None = "en") -> None:
        if stemmer:
            import Stemmer

            try:
                self._stemmer = Stemmer.Stemmer(stemmer)
            except KeyError:
                raise InputError(f"PyStemmer has no stemmer {stemmer!r} (try 'english')",
                                 field="bm25.stemmer") from None
        else:
            self._stemmer = None
        self._stop = _stopwords(stopwords)

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _TOKEN.findall(text.lower()) if w not in self._stop]
        return self._stemmer.stemWords(words) if self._stemmer is not None else words


def _stopwords(stopwords: str | list[str] | None) -> frozenset[str]:
    if stopwords is None:
        return frozenset()
    if isinstance(stopwords, str):
        if stopwords not in ("en", "english"):
            raise InputError(f"unknown stop-word list {stopwords!r} (use 'en', a list of words, or none)",
                             field="bm25.stopwords")
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN)
    return frozenset(w.lower() for w in stopwords)


class BM25Index:
    """A bm25s index whose document n is row n of the passage store."""

    def __init__(self, retriever: object, config: BM25Config) -> None:
        self._bm25 = retriever
        self.config = config
        self.tokenize = Tokenizer(config.stemmer, config.stopwords)
        self._vocab: dict[str, int] = retriever.vocab_dict  # type: ignore[attr-defined]
        scores = retriever.scores  # type: ignore[attr-defined]
        self._data, self._indices, self._indptr = scores["data"], scores["indices"], scores["indptr"]
        self.count = int(scores["num_docs"])

    @classmethod
    def build(cls, texts: Sequence[str], config: BM25Config, *, progress: bool = True) -> BM25Index:
        """Index texts (document n = texts[n]).

        Args:
            texts: what to index, usually ``Passage.contents`` (title + text).
            config: k1, b, stemmer and stop words.
            progress: show bm25s's progress bars.

        Returns:
            The index.
        """
        bm25s = _import_bm25s()
        tokenize = Tokenizer(config.stemmer, config.stopwords)
        corpus_tokens = [tokenize(t) for t in texts]
        if texts and not any(corpus_tokens):
            # bm25s fails with "max() arg is an empty sequence" on an empty vocabulary.
            raise InputError(f"none of the {len(texts)} passages has a word BM25 can index (only stop words, "
                             "one-letter words or punctuation)", field="text")
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method="lucene")
        # A document with no indexable word (only stop words) still counts as a document: rows stay aligned.
        retriever.index(corpus_tokens, show_progress=progress)
        return cls(retriever, config)

    def save(self, folder: Path) -> None:
        # allow_pickle=False: bm25s writes .npy arrays and JSON only (checked by the tests).
        self._bm25.save(str(folder), allow_pickle=False, show_progress=False)  # type: ignore[attr-defined]

    @classmethod
    def load(cls, folder: Path, config: BM25Config) -> BM25Index:
        bm25s = _import_bm25s()
        try:
            retriever = bm25s.BM25.load(str(folder), allow_pickle=False, load_corpus=False, show_progress=False)
        except (OSError, ValueError, KeyError) as err:
            raise ArtifactError(f"cannot load the BM25 index in {folder}: {err}") from None
        return cls(retriever, config)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of a free text against every document (float32, length ``count``).

        A query word repeated counts once per occurrence (as Lucene sums repeated clauses); words not in the
        index contribute nothing, so a query with none scores 0 everywhere.
        """
        ids = [self._vocab[t] for t in self.tokenize(query) if t in self._vocab]
        if not ids:
            return np.zeros(self.count, dtype=np.float32)
        # Gather every posting of the query's words and sum per document: one bincount instead of bm25s's
        # per-word np.add.at (several times faster; same sums up to float rounding).
        starts, ends = self._indptr[ids], self._indptr[np.asarray(ids) + 1]
        if len(ids) == 1:
            sel = slice(int(starts[0]), int(ends[0]))
            docs, weights = self._indices[sel], self._data[sel]
        else:
            docs = np.concatenate([self._indices[s:e] for s, e in zip(starts, ends, strict=True)])
            weights = np.concatenate([self._data[s:e] for s, e in zip(starts, ends, strict=True)])
        return np.bincount(docs, weights=weights, minlength=self.count).astype(np.float32)

    def top(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best documents with a positive score: (rows, scores), best first."""
        return self.best(self.scores(query), k)

    @staticmethod
    def best(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best positive entries of a ``scores`` vector: (rows, scores), best first, ties in row order."""
        return _top_positive(scores, k)


def _import_bm25s() -> Any:
    import bm25s

    # bm25s sets its own logger to DEBUG, which prints "Building index" lines wherever logging is configured.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def _top_positive(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, len(scores))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    # Sort by score, then by row so equal scores come out in corpus order (deterministic).
    order = np.lexsort((part, -scores[part]))
    rows = part[order]
    keep = scores[rows] > 0
    return rows[keep], scores[rows][keep]
