"""The reranker API every kind shares, and the kind -> class registry that builds and loads them.

A reranker scores (question, passage) pairs and sorts passages by that score. Each kind is a subclass that
registers itself with :func:`register_kind` (``kardlite.rerank.cross``: the cross-encoder, the default;
``kardlite.rerank.late``: late interaction). :meth:`Reranker.from_pretrained` and :meth:`Reranker.load` look the
kind up in the registry, so this module never imports a subclass; ``import kardlite.rerank`` (which runs before any
of its modules) registers both kinds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kardlite._io import atomic_dir, atomic_write_json, read_json
from kardlite._versions import package_versions
from kardlite.errors import ArtifactError, InputError
from kardlite.kb.passage import Hit
from kardlite.rerank.encoder import CONFIG_NAME, DEFAULT_MAX_LENGTH, FORMAT_VERSION, Backend, PassageLike, text_of

Kind = Literal["cross-encoder", "late-interaction"]
KINDS: tuple[str, ...] = ("cross-encoder", "late-interaction")
# late interaction's settings; here so that the kind-independent constructors can show their defaults
DEFAULT_DIM = 128
DEFAULT_QUERY_MAX_LENGTH = 64
DEFAULT_CACHE_SIZE = 50_000
# distributions whose versions a saved reranker records
VERSIONED = ("kardlite", "transformers", "torch", "onnxruntime", "tokenizers", "peft", "optimum-onnx")

_REGISTRY: dict[str, type[Reranker]] = {}


def register_kind(kind: str) -> Any:
    """Class decorator: ``@register_kind("late-interaction")`` makes ``kind`` build and load that class."""

    def register(cls: type[Reranker]) -> type[Reranker]:
        if kind not in KINDS:
            raise ValueError(f"unknown reranker kind {kind!r}; add it to KINDS")
        cls.kind = kind
        _REGISTRY[kind] = cls
        return cls

    return register


def reranker_class(kind: str) -> type[Reranker]:
    """The class registered for ``kind``; InputError for an unknown kind."""
    if kind not in KINDS:
        raise InputError(f"unknown reranker kind {kind!r}; use one of {', '.join(KINDS)}", field="kind")
    if kind not in _REGISTRY:  # only when a kind module failed to import: a packaging error, not user input
        raise ArtifactError(f"reranker kind {kind!r} is not registered; import kardlite.rerank")
    return _REGISTRY[kind]


class Reranker:
    """Scores (query, passage) pairs and sorts passages by that score; the base of every kind.

    Build a fresh one with :meth:`from_pretrained` (a new head on an encoder; the default is the packaged
    all-MiniLM-L6-v2), or :meth:`load` a saved one: both return the class of the requested kind
    (:class:`kardlite.rerank.cross.CrossEncoderReranker` or :class:`kardlite.rerank.late.LateInteractionReranker`).

    Example:
        >>> rr = Reranker.load("runs/obqa/reranker", backend="onnx")   # doctest: +SKIP
        >>> [h["id"] for h in rr.rank("Which is a conductor?\\nA. iron\\nB. wood", passages, top_k=3)]  # doctest: +SKIP
        ['p12', 'p7', 'p301']
    """

    kind: str = ""

    def __init__(self, *, backend: Backend, tokenizer: Any, max_length: int, model: Any = None,
                 session: Any = None, path: Path | None = None, meta: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.model = model  # torch: the scorer module (``.encoder``, maybe peft-wrapped, and ``.head``)
        self.session = session  # onnx: an onnxruntime.InferenceSession of the encoder
        self.path = path
        self.meta = dict(meta or {})

    # ----- construction -----
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, max_length: int = DEFAULT_MAX_LENGTH,
                        lora: Mapping[str, Any] | None = None, num_layers: int | None = None,
                        seed: int = 42, kind: Kind = "cross-encoder", dim: int = DEFAULT_DIM,
                        query_max_length: int = DEFAULT_QUERY_MAX_LENGTH,
                        cache_size: int = DEFAULT_CACHE_SIZE) -> Reranker:
        """A trainable reranker (torch) of ``kind`` on an encoder, with a fresh head.

        Args:
            name_or_path: HF model id or local folder; None = the packaged all-MiniLM-L6-v2.
            max_length: token cap for query + passage (cross-encoder, longest-first truncation), or for the
                passage alone (late interaction).
            lora: optional peft LoRA settings, e.g. ``{"r": 16, "alpha": 32, "dropout": 0.1}``; the head stays
                fully trainable. None = full fine-tuning.
            num_layers: keep only the first N transformer layers (None = all). Halving the layers of
                all-MiniLM-L6-v2 halves the CPU latency; the distillation then trains the shallower stack.
            seed: seeds the head's initialisation.
            kind: "cross-encoder" (default) or "late-interaction" (ColBERT-style MaxSim).
            dim: late interaction only: size of the projected token vectors.
            query_max_length: late interaction only: token cap for the query.
            cache_size: late interaction only: passages kept in the token-matrix LRU cache (0 = no cache).

        Returns:
            A reranker of the kind's class with ``backend="torch"``.
        """
        return reranker_class(kind).create(name_or_path, max_length=max_length, lora=lora, num_layers=num_layers,
                                           seed=seed, dim=dim, query_max_length=query_max_length,
                                           cache_size=cache_size)

    @classmethod
    def load(cls, path: str | Path, backend: Backend = "torch", *, threads: int | None = None,
             cache_size: int = DEFAULT_CACHE_SIZE) -> Reranker:
        """Load a saved reranker folder of any kind (``reranker.json`` says which).

        Args:
            path: a folder written by :meth:`save` (torch) or by ``export_reranker_onnx`` (onnx).
            backend: "torch" (needs the train extra) or "onnx" (onnxruntime + tokenizers only; no torch import).
            threads: onnxruntime intra-op threads (default: onnxruntime's choice).
            cache_size: late interaction only: passages kept in the token-matrix LRU cache (0 = no cache).

        Returns:
            The reranker, ready to :meth:`rank`.
        """
        if backend not in ("torch", "onnx"):
            raise InputError(f"unknown backend {backend!r}; use 'torch' or 'onnx'", field="backend")
        path = Path(path)
        if not path.is_dir():
            raise InputError("reranker folder not found", path=path)
        cfg_path = path / CONFIG_NAME
        if not cfg_path.is_file():
            raise ArtifactError(f"{path} is not a reranker folder: {CONFIG_NAME} is missing")
        meta = read_json(cfg_path)
        if not isinstance(meta, dict):
            raise ArtifactError(f"{cfg_path}: not a JSON object")
        if meta.get("format_version") == 1:
            raise ArtifactError(f"{path} is a format-1 reranker ([CLS] classification head, replaced by the "
                                "mean-pooling head); retrain it with `kardlite train reranker`")
        # folders written before late interaction existed have no "kind": they are cross-encoders
        kind = meta.get("kind", "cross-encoder")
        if kind not in KINDS:
            raise ArtifactError(f"{cfg_path}: unknown reranker kind {kind!r}; expected one of {', '.join(KINDS)}")
        return reranker_class(kind).from_folder(path, meta, backend, threads=threads, cache_size=cache_size)

    @classmethod
    def create(cls, name_or_path: str | Path | None, *, max_length: int, lora: Mapping[str, Any] | None,
               num_layers: int | None, seed: int, **options: Any) -> Reranker:
        """A fresh trainable reranker of this kind (what :meth:`from_pretrained` calls); kinds override it."""
        raise NotImplementedError

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any], backend: Backend, *, threads: int | None = None,
                    cache_size: int = DEFAULT_CACHE_SIZE) -> Reranker:
        """Load a folder of this kind whose ``reranker.json`` :meth:`load` has read; kinds override it."""
        raise NotImplementedError

    # ----- scoring -----
    def score(self, query: str, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Raw scores (logits) of ``query`` against each text, in input order.

        Args:
            query: the query (for KARD: the linearised question).
            texts: passage texts.
            batch_size: pairs per forward pass.

        Returns:
            float32 array of shape (len(texts),).
        """
        return self.score_pairs([(query, t) for t in texts], batch_size=batch_size)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64) -> np.ndarray:
        """Scores of (query, passage text) pairs; an empty list gives an empty array. Kinds implement it."""
        raise NotImplementedError

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """Tokenise pairs for the torch model's ``forward(**enc)`` (used by training). Kinds implement it."""
        raise NotImplementedError

    def warm(self, passages: Iterable[PassageLike], *, batch_size: int = 64, progress: bool = False) -> int:
        """Pre-compute what can be computed from passages alone, so that later :meth:`rank` calls are faster.

        A cross-encoder reads query and passage together, so there is nothing to pre-compute: this returns 0.
        The late-interaction reranker overrides it to fill its passage cache (e.g. ``warm(kb)`` for a small KB).

        Args:
            passages: Passages, Hits or strings (a ``KnowledgeBase`` iterates Passages).
            batch_size: passages per forward pass.
            progress: show a progress bar.

        Returns:
            The number of passages newly encoded.
        """
        return 0

    def clear_cache(self) -> None:
        """Forget cached passage encodings (none for a cross-encoder)."""

    def rank(self, query: str, passages: Sequence[PassageLike], top_k: int | None = None, *,
             batch_size: int = 64) -> list[Hit]:
        """Score passages against the query and return them best first.

        Args:
            query: the query text (for KARD: the linearised question).
            passages: Passages, Hits (their earlier scores are kept in ``scores``) or strings.
            top_k: keep this many (None = all).
            batch_size: pairs per forward pass.

        Returns:
            Hits sorted by the reranker score (``score`` and ``scores["rerank"]``), ranks from 1.
        """
        if top_k is not None and top_k < 0:
            raise InputError(f"top_k must be >= 0, got {top_k}", field="top_k")
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty or not text", field="query")
        items = [text_of(p, i) for i, p in enumerate(passages)]
        if not items:
            return []
        scores = self.score(query, [t for t, _ in items], batch_size=batch_size)
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        hits: list[Hit] = []
        for rank, j in enumerate(order, start=1):
            fields = items[j][1]
            s = float(scores[j])
            hits.append(Hit(id=fields["id"], title=fields["title"], text=fields["text"], score=s, rank=rank,
                            scores={**fields["scores"], "rerank": s}))
        return hits

    # ----- saving -----
    def config(self) -> dict[str, Any]:
        """The self-description written to ``reranker.json``: the fields of every kind; kinds add their head's."""
        pad_token = getattr(self.tokenizer, "pad_token", None) or self.meta.get("pad_token", "[PAD]")
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = self.meta.get("pad_token_id", 0)
        keep = {k: v for k, v in self.meta.items() if k in ("base_model", "lora", "num_layers", "training", "onnx")}
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "max_length": self.max_length,
                "pad_token": pad_token, "pad_token_id": int(pad_id), **keep, "versions": package_versions(*VERSIONED)}

    def _write_head(self, folder: Path) -> None:
        """Write the kind's head next to the encoder (:meth:`save` calls this inside its temporary folder)."""
        raise NotImplementedError

    def save(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the encoder as a plain HF folder (LoRA merged in), the head (``head.safetensors``, or
        ``projection.safetensors`` for late interaction), ``tokenizer.json`` and ``reranker.json``, atomically.

        Args:
            path: output folder (replaced if it exists).
            extra: more keys for ``reranker.json`` (e.g. the training config and metrics).

        Returns:
            The folder path.
        """
        if self.backend != "torch":
            raise InputError("only a torch reranker can be saved; an ONNX one is already an export", field="backend")
        encoder = self.model.encoder
        if hasattr(encoder, "merge_and_unload"):  # peft: save a plain model that loads without peft
            import copy

            encoder = copy.deepcopy(encoder).merge_and_unload()
        path = Path(path)
        with atomic_dir(path) as tmp:
            encoder.save_pretrained(tmp, safe_serialization=True)
            self._write_head(tmp)
            self.tokenizer.save_pretrained(tmp)
            if not (tmp / "tokenizer.json").is_file():
                raise ArtifactError(f"tokenizer of {self.meta.get('base_model')} has no fast tokenizer.json; "
                                    "the ONNX backend needs one")
            cfg = self.config()
            if extra:
                cfg.update(extra)
            atomic_write_json(tmp / CONFIG_NAME, cfg)
        self.path = path
        return path
