"""Late-interaction (ColBERT-style) reranker: question and passage are encoded apart and scored by MaxSim.

This is the KARD paper's own reranker (docs/method.md §6). Unlike the cross-encoder's, a passage's token vectors do
not depend on the question, so they are computed once and cached (:mod:`kardlite.rerank.cache`): a repeated passage
costs a cache look-up, and the question is encoded once per ``rank`` call instead of once per candidate.

Scorer: the encoder (the cross-encoder's: all-MiniLM-L6-v2 by default, optional ``num_layers`` truncation and LoRA)
encodes the query (at most ``query_max_length`` = 64 tokens) and each passage (at most ``max_length``) separately →
``Linear(hidden, dim, bias=False)`` → L2-normalised token vectors E_q, E_p →

    score(q, p) = scale · mean over query tokens i of (max over passage tokens j of <E_q[i], E_p[j]>)

Padding is masked on both sides; [CLS] and [SEP] count as tokens (they are in the attention mask, and the ONNX
backend sees the same tokens as torch). The mean, not ColBERT's sum, so that the score does not grow with the
question's length and one τ2 fits every dataset; ``scale`` (exp of a trained parameter, at most 100, like CLIP's
logit scale) turns it into logits. All candidates of one query share the divisor, so the ranking is the one the sum
gives. The scale starts at 30 (:data:`INIT_SCALE`), which puts the untrained logits on the scale of the targets'
log-odds; why 30 and not 10 is measured in docs/results/reranker-obqa.md ("Design notes").

Saved folder: the encoder (``save_pretrained``), ``projection.safetensors`` (``weight`` (dim, hidden) and
``log_scale`` (1,)), ``tokenizer.json`` and ``reranker.json`` (``"kind": "late-interaction"``, ``"head": "maxsim"``,
``dim``, ``query_max_length``; format 2, like the cross-encoder). Its ONNX export (``export_reranker_onnx``) holds
the encoder in ONNX and ``projection.npz``; that backend gets token states from onnxruntime and does the
projection, normalisation and MaxSim in numpy, so it never imports torch.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kardlite._io import sha256_file
from kardlite.errors import ArtifactError, InputError
from kardlite.rerank.base import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_DIM,
    DEFAULT_QUERY_MAX_LENGTH,
    Kind,
    Reranker,
    register_kind,
)
from kardlite.rerank.cache import (  # noqa: F401 (CACHE_FILE, WARM_LIMIT: also imported from here)
    CACHE_FILE,
    CACHE_FORMAT,
    WARM_LIMIT,
    PassageCache,
    digest,
    read_cache_file,
    text_digests,
    write_cache_file,
)
from kardlite.rerank.encoder import (
    DEFAULT_MAX_LENGTH,
    FORMAT_VERSION,
    Backend,
    PassageLike,
    base_encoder,
    check_pairs,
    fast_tokenizer,
    load_torch_folder,
    model_device,
    onnx_model_file,
    onnx_session,
    read_npz,
    run_encoder,
    text_of,
)

KIND = "late-interaction"
HEAD_KIND = "maxsim"
PROJ_FILE = "projection.safetensors"  # torch folder: weight (dim, hidden), log_scale (1,)
PROJ_NPZ = "projection.npz"  # ONNX folder: the same arrays for numpy
INIT_SCALE = 30.0  # why 30: see the module docstring
MAX_SCALE = 100.0  # a cap, so that the scale cannot run away and make the softmax one-hot
QUERY_FORMAT = ("linearized question (stem, then 'A. option' lines) encoded alone, at most query_max_length tokens; "
                "passage contents encoded alone, at most max_length tokens")
SCORE = "scale * mean over query tokens of max over passage tokens of cos(E_q, E_p); masks skip padding"


def maxsim(query: np.ndarray, passages: Sequence[np.ndarray]) -> np.ndarray:
    """Unscaled MaxSim of one query against passages: mean over query rows of the best dot product with a passage row.

    Args:
        query: (Lq, dim) token vectors of the query, real tokens only.
        passages: one (Lp, dim) matrix per passage, real tokens only (any float dtype; computed in float32).

    Returns:
        float32 array of shape (len(passages),).
    """
    if not passages:
        return np.empty(0, dtype=np.float32)
    lengths = [len(p) for p in passages]
    if min(lengths) < 1 or len(query) < 1:
        raise ValueError("every query and passage needs at least one token")
    # one matmul over all passages' tokens, then a segmented max: no padding and no Python loop per passage
    sim = np.asarray(query, dtype=np.float32) @ np.concatenate(passages).astype(np.float32, copy=False).T
    starts = np.cumsum([0, *lengths[:-1]])
    return np.maximum.reduceat(sim, starts, axis=1).mean(axis=0).astype(np.float32)


def maxsim_torch(q: Any, q_mask: Any, p: Any, p_mask: Any) -> Any:
    """Batched, masked, unscaled MaxSim in torch (the training path; :func:`maxsim` is its numpy twin).

    Args:
        q: (N, Lq, dim) query token vectors; q_mask: (N, Lq) 1 for real tokens.
        p: (N, Lp, dim) passage token vectors; p_mask: (N, Lp) 1 for real tokens.

    Returns:
        (N,) tensor.
    """
    import torch

    sim = torch.einsum("nqd,npd->nqp", q, p)
    sim = sim.masked_fill(~p_mask.bool()[:, None, :], torch.finfo(sim.dtype).min)
    best = sim.max(dim=-1).values
    qm = q_mask.to(best.dtype)
    return (best * qm).sum(dim=-1) / qm.sum(dim=-1).clamp(min=1.0)


def project(hidden: np.ndarray, mask: np.ndarray, weight: np.ndarray) -> list[np.ndarray]:
    """Token states (N, T, H) → one L2-normalised (L_i, dim) matrix per row, real tokens only (numpy backend)."""
    vec = hidden @ weight.T
    vec /= np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)  # the eps of torch's F.normalize
    keep = mask.astype(bool)
    return [vec[i][keep[i]] for i in range(len(vec))]


@register_kind("late-interaction")
class LateInteractionReranker(Reranker):
    """Late-interaction (ColBERT-style) reranker; build it with ``Reranker.from_pretrained(kind="late-interaction")``
    or :meth:`Reranker.load`. Same API as :class:`Reranker` (``rank``, ``score``, ``encode``, ``save``), plus a
    passage cache.

    Passage cache: each passage's token matrix (real tokens only, projected and normalised) is kept in an LRU keyed
    by the passage text, ``cache_size`` entries (default 50,000). Matrices are stored as float16: at dim 128 a
    40-token passage takes 10 KB, so a full default cache is about 0.5 GB (1 GB in float32), at a score error below
    1e-3 × scale. Every score reads passages through that float16 copy, so a cached and a fresh passage give the
    same scores (with the int8 export, up to ~1% of the score spread: dynamic quantisation scales activations per
    batch, so a passage's matrix depends a little on the batch it was encoded in; a cache hit returns the stored
    matrix, so repeated calls agree exactly). In a ``rank`` call the query is encoded once, cached passages are
    looked up and the others are encoded in batches (shortest first, to pad little) and added. The cache is
    thread-safe (the runtime answers concurrent questions). :meth:`warm` pre-fills it: ``rr.warm(kb)`` at load time
    encodes a whole knowledge base that fits in the cache (e.g. the OBQA open book, 1,326 facts), after which
    ``rank`` only encodes the question; :meth:`save_passage_cache` / :meth:`load_passage_cache` keep those matrices
    in a file, so that a bundle's runtime reads them instead of encoding its KB at start-up. The torch backend
    empties the cache whenever its model switches between train and eval mode (training changes the weights in
    between); after changing weights by other means call :meth:`clear_cache`.

    Example:
        >>> rr = Reranker.load("runs/obqa/reranker-late-int8", backend="onnx")  # doctest: +SKIP
        >>> rr.warm(kb)  # doctest: +SKIP
        1326
        >>> rr.rank("Which is a conductor?\\nA. iron\\nB. wood", kb.search("conductor", 50), top_k=3)  # doctest: +SKIP
    """

    def __init__(self, *, backend: Backend, tokenizer: Any, max_length: int, query_max_length: int, dim: int,
                 cache_size: int = DEFAULT_CACHE_SIZE, model: Any = None, session: Any = None,
                 query_tokenizer: Any = None, projection: tuple[np.ndarray, float] | None = None,
                 path: Path | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(backend=backend, tokenizer=tokenizer, max_length=max_length, model=model, session=session,
                         path=path, meta=meta)
        self.query_max_length = int(query_max_length)
        self.dim = int(dim)
        # a second tokenizer for queries: one tokenizer's truncation setting would flip between 64 and max_length
        # on every call, which races when threads share it (HF: "Already borrowed")
        self.query_tokenizer = query_tokenizer
        self.projection = projection  # onnx: (weight (dim, hidden) float32, scale)
        self.cache = PassageCache(cache_size)
        if model is not None:
            model.passage_cache = self.cache

    # ----- construction -----
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, kind: Kind = KIND,  # type: ignore[override]
                        **kwargs: Any) -> Reranker:
        """:meth:`Reranker.from_pretrained` with ``kind="late-interaction"`` as the default."""
        return Reranker.from_pretrained(name_or_path, kind=kind, **kwargs)

    @classmethod
    def create(cls, name_or_path: str | Path | None, *, max_length: int = DEFAULT_MAX_LENGTH,
               lora: Mapping[str, Any] | None = None, num_layers: int | None = None, seed: int = 42,
               dim: int = DEFAULT_DIM, query_max_length: int = DEFAULT_QUERY_MAX_LENGTH,
               cache_size: int = DEFAULT_CACHE_SIZE) -> LateInteractionReranker:
        """A fresh trainable late-interaction reranker (what ``Reranker.from_pretrained`` builds for this kind)."""
        _check_settings(dim=dim, query_max_length=query_max_length, cache_size=cache_size)
        tokenizer, encoder, base = base_encoder(name_or_path, max_length=max_length, lora=lora,
                                                 num_layers=num_layers, seed=seed)
        head_cls, scorer_cls = _torch_classes()
        model = scorer_cls(encoder, head_cls(int(encoder.config.hidden_size), dim))
        model.eval()
        return cls(backend="torch", tokenizer=tokenizer, query_tokenizer=copy.deepcopy(tokenizer),
                   max_length=max_length, query_max_length=query_max_length, dim=dim, cache_size=cache_size,
                   model=model, meta={"base_model": base, "lora": dict(lora) if lora else None,
                                      "num_layers": num_layers})

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any], backend: Backend, *, threads: int | None = None,
                    cache_size: int = DEFAULT_CACHE_SIZE) -> LateInteractionReranker:
        """Load a saved late-interaction folder whose ``reranker.json`` was read by :meth:`Reranker.load`."""
        cfg_path = path / "reranker.json"
        if meta.get("format_version") != FORMAT_VERSION or meta.get("head") != HEAD_KIND:
            raise ArtifactError(f"{cfg_path}: unknown late-interaction format {meta.get('format_version')!r} "
                                f"(head {meta.get('head')!r}); expected {FORMAT_VERSION} ({HEAD_KIND!r})")
        dim = meta.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ArtifactError(f"{cfg_path}: 'dim' must be a positive integer, got {dim!r}")
        max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH))
        qlen = int(meta.get("query_max_length", DEFAULT_QUERY_MAX_LENGTH))
        _check_settings(dim=dim, query_max_length=qlen, cache_size=cache_size)
        if backend == "torch":
            tokenizer, encoder, weights = load_torch_folder(path, PROJ_FILE)
            hidden = int(encoder.config.hidden_size)
            _check_projection(path / PROJ_FILE, {k: tuple(v.shape) for k, v in weights.items()}, dim, hidden)
            head_cls, scorer_cls = _torch_classes()
            head = head_cls(hidden, dim)
            head.load_state_dict({"proj.weight": weights["weight"].float(),
                                  "log_scale": weights["log_scale"].float().reshape(1)})
            model = scorer_cls(encoder, head)
            model.eval()
            return cls(backend="torch", tokenizer=tokenizer, query_tokenizer=copy.deepcopy(tokenizer),
                       max_length=max_length, query_max_length=qlen, dim=dim, cache_size=cache_size, model=model,
                       path=path, meta=meta)
        onnx_file = onnx_model_file(path)
        projection = _load_npz_projection(path / PROJ_NPZ, dim)
        return cls(backend="onnx", tokenizer=fast_tokenizer(path, meta, max_length),
                   query_tokenizer=fast_tokenizer(path, meta, qlen), max_length=max_length, query_max_length=qlen,
                   dim=dim, cache_size=cache_size, session=onnx_session(onnx_file, threads), projection=projection,
                   path=path, meta={**meta, "onnx_file": onnx_file.name})

    # ----- scoring -----
    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64) -> np.ndarray:
        """Scores of (query, passage text) pairs: each distinct query and each uncached passage is encoded once.

        Args:
            pairs: (query, passage text) pairs, any mix of queries.
            batch_size: texts per forward pass.

        Returns:
            float32 array of shape (len(pairs),).
        """
        check_pairs(pairs, batch_size)
        out = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        rows: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            rows.setdefault(q, []).append(i)
        mats = self._passage_matrices([t for _, t in pairs], batch_size)
        queries = list(rows)
        qmats: list[np.ndarray] = []
        for start in range(0, len(queries), batch_size):
            qmats.extend(self._embed(queries[start:start + batch_size], query=True))
        self.cache.count("encoded_queries", len(queries))
        scale = self.scale
        for q, qm in zip(queries, qmats, strict=True):
            idx = rows[q]
            out[idx] = scale * maxsim(qm, [mats[pairs[i][1]] for i in idx])
        return out

    @property
    def scale(self) -> float:
        """The factor on the mean MaxSim (trained; see the module docstring)."""
        if self.backend == "torch":
            return float(self.model.head.scale().detach())
        return float(self.projection[1])  # type: ignore[index]

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """Tokenise pairs for the torch model's ``forward(**enc)`` (used by training): each distinct query once
        (``q_*``, at most ``query_max_length`` tokens), every passage (``p_*``, at most ``max_length``), and
        ``q_index`` mapping each pair to its query row. The forward pass returns one score per pair."""
        if self.backend != "torch":
            raise InputError("encode feeds the torch model; this reranker is an ONNX export", field="backend")
        import torch

        queries = list(dict.fromkeys(q for q, _ in pairs))
        row = {q: i for i, q in enumerate(queries)}
        q = self.query_tokenizer(queries, truncation=True, max_length=self.query_max_length, padding=True,
                                 return_tensors="pt")
        p = self.tokenizer([t for _, t in pairs], truncation=True, max_length=self.max_length, padding=True,
                           return_tensors="pt")
        enc = {f"q_{k}": v for k, v in q.items()} | {f"p_{k}": v for k, v in p.items()}
        enc["q_index"] = torch.tensor([row[q] for q, _ in pairs], dtype=torch.long)
        return enc

    # ----- passage cache -----
    def warm(self, passages: Iterable[PassageLike], *, batch_size: int = 64, progress: bool = False) -> int:
        """Encode passages into the cache ahead of time, so that :meth:`rank` on them only encodes the question.

        Passages are keyed by the text ``rank`` scores (``Passage.contents``; a Hit's title + text), so
        ``warm(kb)`` covers every hit the KB's search returns. Passages already cached are skipped, and at most
        ``cache_size`` are encoded (more would only evict each other).

        Args:
            passages: Passages, Hits or strings (a ``KnowledgeBase`` iterates its Passages).
            batch_size: passages per forward pass.
            progress: show a progress bar.

        Returns:
            The number of passages newly encoded.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
        texts = dict.fromkeys(text_of(p, i)[0] for i, p in enumerate(passages))
        missing = [t for t in texts if t not in self.cache][:self.cache.max_entries]
        if not missing:
            return 0
        from tqdm.auto import tqdm

        # chunks, so that the bar moves and a big KB does not hold all its fresh matrices twice
        chunk = batch_size * 16
        with tqdm(total=len(missing), desc="warm reranker cache", unit="passage", disable=not progress) as bar:
            for start in range(0, len(missing), chunk):
                part = missing[start:start + chunk]
                self.cache.put_many(self._encode_passages(part, batch_size))
                bar.update(len(part))
        return len(missing)

    def save_passage_cache(self, path: str | Path, passages: Iterable[PassageLike], *, batch_size: int = 64,
                           progress: bool = False) -> int:
        """Write the token matrices of ``passages`` to one file, encoding those not cached yet (ColBERT's
        offline index): a later process fills its cache with :meth:`load_passage_cache` instead of encoding.

        The file (numpy ``.npz``, no pickles) holds float16 ``vectors`` (all passages' tokens, stacked),
        ``offsets``, the sha256 of each passage text (uint8 rows), and the sha256 of this reranker's weight files,
        so it is only ever read back into the model that wrote it. Written atomically.

        Args:
            path: the ``.npz`` file to write.
            passages: Passages, Hits or strings (e.g. a ``KnowledgeBase``).
            batch_size: passages per forward pass.
            progress: show a progress bar while encoding.

        Returns:
            The number of passages written.
        """
        texts = list(dict.fromkeys(text_of(p, i)[0] for i, p in enumerate(passages)))
        fingerprint = self._fingerprint()
        mats: list[np.ndarray] = []
        from tqdm.auto import tqdm

        chunk = batch_size * 16  # bounded: the LRU may be smaller than the passage list
        with tqdm(total=len(texts), desc="reranker passage cache", unit="passage", disable=not progress) as bar:
            for start in range(0, len(texts), chunk):
                part = texts[start:start + chunk]
                found = self._passage_matrices(part, batch_size)
                mats.extend(found[t] for t in part)
                bar.update(len(part))
        write_cache_file(path, text_digests(texts), mats, dim=self.dim, fingerprint=fingerprint)
        return len(texts)

    def load_passage_cache(self, path: str | Path, passages: Iterable[PassageLike], *,
                           file_sha256: Mapping[str, str] | None = None) -> int:
        """Fill the cache from a file of :meth:`save_passage_cache`: the matrices of those ``passages`` that the
        file holds (matched by text) are stored without encoding anything; the others are left for :meth:`warm`.

        Args:
            path: the ``.npz`` file.
            passages: the passages to look up (e.g. a ``KnowledgeBase``).
            file_sha256: sha256 of this reranker's files by file name, when already checked (a verified
                bundle's manifest), so that they are not hashed again; None = hash them.

        Raises:
            ArtifactError: the file is unreadable, of another format, or was written by other weights.

        Returns:
            The number of passages loaded.
        """
        data = read_cache_file(path, dim=self.dim, fingerprint=self._fingerprint(file_sha256 or {}),
                               model_path=self.path)
        vectors, offsets = data["vectors"], data["offsets"]
        row = {d.tobytes(): i for i, d in enumerate(data["digests"])}
        items: dict[str, np.ndarray] = {}
        for i, p in enumerate(passages):
            text = text_of(p, i)[0]
            j = row.get(digest(text))
            if j is not None and text not in items:
                items[text] = vectors[offsets[j]:offsets[j + 1]]
            if len(items) >= self.cache.max_entries:
                break
        self.cache.put_many(items)
        return len(items)

    def extend_passage_cache(self, path: str | Path, out: str | Path, add: Iterable[PassageLike],
                             keep: Iterable[PassageLike] | None = None, *, batch_size: int = 64) -> int:
        """Write to ``out`` the passage cache file at ``path`` with the matrices of ``add`` appended, encoding only
        those (a knowledge-base update: the passages already there are copied, not re-encoded). With ``keep``,
        entries whose text is not among ``keep``'s are dropped (removed passages).

        Args:
            path: an existing file of :meth:`save_passage_cache`, written by these weights.
            out: the file to write (atomically; may be ``path``).
            add: the new passages.
            keep: the passages that stay (e.g. the updated KB); None keeps every entry.
            batch_size: passages per forward pass.

        Returns:
            The number of passages encoded.

        Raises:
            ArtifactError: ``path`` is unreadable, of another format, or was written by other weights.
        """
        fingerprint = self._fingerprint()
        data = read_cache_file(path, dim=self.dim, fingerprint=fingerprint, model_path=self.path)
        vectors, offsets, digests = data["vectors"], data["offsets"], data["digests"]
        wanted = None if keep is None else {digest(text_of(p, i)[0]) for i, p in enumerate(keep)}
        rows = [j for j in range(len(digests)) if wanted is None or digests[j].tobytes() in wanted]
        have = {digests[j].tobytes() for j in rows}
        texts = [t for t in dict.fromkeys(text_of(p, i)[0] for i, p in enumerate(add)) if digest(t) not in have]
        fresh = self._encode_passages(texts, batch_size) if texts else {}
        mats = [vectors[offsets[j]:offsets[j + 1]] for j in rows] + [fresh[t] for t in texts]
        new_digests = np.concatenate([digests[rows].reshape(-1, 32), text_digests(texts)])
        write_cache_file(out, new_digests, mats, dim=self.dim, fingerprint=fingerprint)
        return len(texts)

    def _fingerprint(self, known: Mapping[str, str] | None = None) -> str:
        """sha256 over this reranker's weight files (``known`` sha256s by file name are taken as they are): what a
        passage cache file must have been written by."""
        if self.path is None:
            raise InputError("a passage cache needs a reranker saved to or loaded from a folder", field="path")
        files = ([self.path / self.meta["onnx_file"], self.path / PROJ_NPZ] if self.backend == "onnx"
                 else sorted(self.path.glob("*.safetensors")))
        h = hashlib.sha256()
        for f in files:
            digest = (known or {}).get(f.name) or sha256_file(f)
            h.update(f.name.encode() + b"\0" + digest.encode())
        return h.hexdigest()

    def clear_cache(self) -> None:
        """Forget every cached passage matrix (and reset :meth:`cache_info`'s counters)."""
        self.cache.clear()

    def cache_info(self) -> dict[str, int]:
        """Cache size and capacity, look-up hits and misses, and how many passages and queries were encoded."""
        return self.cache.info()

    def _passage_matrices(self, texts: Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
        unique = list(dict.fromkeys(texts))
        found = self.cache.get_many(unique)
        missing = [t for t in unique if t not in found]
        if missing:
            fresh = self._encode_passages(missing, batch_size)
            self.cache.put_many(fresh)
            found.update(fresh)
        return found

    def _encode_passages(self, texts: Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
        """Encode passages (the only place passages meet the encoder) → float16 token matrices by text."""
        # shortest first: a batch pads to its longest member, so similar lengths waste the least compute
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(order), batch_size):
            batch = [texts[i] for i in order[start:start + batch_size]]
            for t, m in zip(batch, self._embed(batch, query=False), strict=True):
                out[t] = m.astype(np.float16)
        self.cache.count("encoded_passages", len(texts))
        return out

    def _embed(self, texts: Sequence[str], *, query: bool) -> list[np.ndarray]:
        """Normalised token vectors (float32, real tokens only) of one batch of queries or passages."""
        if self.backend == "torch":
            import torch

            tok = self.query_tokenizer if query else self.tokenizer
            enc = tok(list(texts), truncation=True, max_length=self.query_max_length if query else self.max_length,
                      padding=True, return_tensors="pt")
            with torch.inference_mode():
                device = model_device(self.model)  # the GPU after training there
                vec = self.model.embed(**{k: v.to(device) for k, v in enc.items()}).float().cpu().numpy()
            keep = enc["attention_mask"].bool().numpy()
            return [vec[i][keep[i]] for i in range(len(texts))]
        tok = self.query_tokenizer if query else self.tokenizer
        encs = tok.encode_batch(list(texts))
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        return project(run_encoder(self.session, encs), mask, self.projection[0])  # type: ignore[index]

    # ----- saving -----
    def config(self) -> dict[str, Any]:
        """The self-description written to ``reranker.json``."""
        return {**super().config(), "head": HEAD_KIND, "head_file": PROJ_FILE, "dim": self.dim,
                "query_max_length": self.query_max_length, "truncation": "query and passage separately",
                "query_format": QUERY_FORMAT, "score": SCORE, "scale": self.scale}

    def _write_head(self, folder: Path) -> None:
        from safetensors.torch import save_file

        head = self.model.head
        save_file({"weight": head.proj.weight.detach().float().cpu().contiguous(),
                   "log_scale": head.log_scale.detach().float().cpu().reshape(1).contiguous()},
                  str(folder / PROJ_FILE))


def _check_settings(*, dim: Any, query_max_length: Any, cache_size: Any) -> None:
    checks = [(dim, 1, "dim"), (query_max_length, 4, "query_max_length"), (cache_size, 0, "cache_size")]
    for value, low, name in checks:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}", field=name)


def _check_projection(path: Path, shapes: Mapping[str, tuple[int, ...]], dim: int, hidden: int) -> None:
    if shapes.get("weight") != (dim, hidden) or shapes.get("log_scale") not in ((1,), ()):
        raise ArtifactError(f"{path}: expected weight ({dim}, {hidden}) and log_scale (1,), got {dict(shapes)}")


def _load_npz_projection(path: Path, dim: int) -> tuple[np.ndarray, float]:
    arrays = read_npz(path, ("weight", "log_scale"), "the token projection")
    weight = arrays["weight"].astype(np.float32)
    log_scale = arrays["log_scale"].astype(np.float64).reshape(-1)
    if weight.ndim != 2 or weight.shape[0] != dim or log_scale.shape != (1,):
        raise ArtifactError(f"{path}: expected weight ({dim}, hidden) and log_scale (1,), got {weight.shape} and "
                            f"{log_scale.shape}")
    # the same clamp as the torch head's scale()
    return np.ascontiguousarray(weight), float(min(math.exp(float(log_scale[0])), MAX_SCALE))


@functools.cache
def _torch_classes() -> tuple[type, type]:
    """(MaxSimHead, LateInteractionScorer), built on first use so that importing this file imports no torch."""
    import torch

    class MaxSimHead(torch.nn.Module):
        """``Linear(hidden, dim, bias=False)`` token projection and the trained score scale."""

        def __init__(self, hidden: int, dim: int) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(hidden, dim, bias=False)
            # a random orthonormal projection keeps the encoder's token geometry (Johnson-Lindenstrauss), so the
            # untrained MaxSim already ranks by soft token overlap and training starts from there
            torch.nn.init.orthogonal_(self.proj.weight)
            self.log_scale = torch.nn.Parameter(torch.tensor([math.log(INIT_SCALE)]))

        def scale(self) -> Any:
            return self.log_scale.exp().clamp(max=MAX_SCALE).squeeze(0)

    class LateInteractionScorer(torch.nn.Module):
        """encoder → projection → normalised token vectors; forward gives one scaled MaxSim per (query, passage)."""

        def __init__(self, encoder: Any, head: Any) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head
            self.passage_cache: PassageCache | None = None  # the owning reranker's; emptied when weights may change

        def embed(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder(**kwargs).last_hidden_state
            return torch.nn.functional.normalize(self.head.proj(hidden), dim=-1)

        def forward(self, q_input_ids: Any, q_attention_mask: Any, p_input_ids: Any, p_attention_mask: Any,
                    q_index: Any, q_token_type_ids: Any = None, p_token_type_ids: Any = None) -> Any:
            q = self.embed(q_input_ids, q_attention_mask, q_token_type_ids)[q_index]
            p = self.embed(p_input_ids, p_attention_mask, p_token_type_ids)
            return self.head.scale() * maxsim_torch(q, q_attention_mask[q_index], p, p_attention_mask)

        def train(self, mode: bool = True) -> Any:
            # train() and eval() bracket every weight update in a training loop: cached passage matrices from the
            # old weights must not outlive them
            if self.passage_cache is not None:
                self.passage_cache.clear()
            return super().train(mode)

    return MaxSimHead, LateInteractionScorer
