"""The cross-encoder reranker (the default kind): question and passage are read together.

Scorer: encoder (``AutoModel``) over ``[CLS] query [SEP] passage [SEP]`` → masked mean of the last hidden states →
``Linear(hidden, 1)``. Mean pooling, not ``[CLS]``: all-MiniLM-L6-v2 was trained with mean pooling, and its
``[CLS]`` state hardly varies between inputs, so a ``[CLS]`` head starts with no signal (the measurement is in
docs/results/reranker-obqa.md, "History").

Saved folder: the encoder (``save_pretrained``), the head (``head.safetensors``: ``weight`` (1, hidden), ``bias``
(1,)), ``tokenizer.json`` and ``reranker.json`` (``"head": "mean_linear"``, max length, query format, library
versions). The ONNX export runs the encoder with onnxruntime, pools and applies the head (``head.npz``) in numpy and
tokenises with ``tokenizers``, so it never imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kardlite.errors import ArtifactError
from kardlite.rerank.base import DEFAULT_CACHE_SIZE, Reranker, register_kind
from kardlite.rerank.encoder import (
    DEFAULT_MAX_LENGTH,
    FORMAT_VERSION,
    Backend,
    base_encoder,
    check_pairs,
    fast_tokenizer,
    load_torch_folder,
    mean_pool,
    model_device,
    onnx_model_file,
    onnx_session,
    read_npz,
    run_encoder,
)

HEAD_KIND = "mean_linear"
HEAD_FILE = "head.safetensors"  # torch folder
HEAD_NPZ = "head.npz"  # ONNX folder: the same weights for numpy (the runtime has no safetensors)
# Passage text and the query are scored as a sentence pair: [CLS] query [SEP] passage [SEP].
QUERY_FORMAT = "linearized question (stem, then 'A. option' lines) as the first segment, passage contents second"


@register_kind("cross-encoder")
class CrossEncoderReranker(Reranker):
    """Cross-encoder reranker; build it with ``Reranker.from_pretrained()`` or :meth:`Reranker.load`."""

    def __init__(self, *, backend: Backend, tokenizer: Any, max_length: int, model: Any = None,
                 session: Any = None, head: tuple[np.ndarray, float] | None = None, path: Path | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__(backend=backend, tokenizer=tokenizer, max_length=max_length, model=model, session=session,
                         path=path, meta=meta)
        self.head = head  # onnx: (weight (hidden,) float32, bias)

    # ----- construction -----
    @classmethod
    def create(cls, name_or_path: str | Path | None, *, max_length: int = DEFAULT_MAX_LENGTH,
               lora: Mapping[str, Any] | None = None, num_layers: int | None = None, seed: int = 42,
               **_late_interaction_settings: Any) -> CrossEncoderReranker:
        """A fresh trainable cross-encoder: masked mean pooling and a ``Linear(hidden, 1)`` head.

        The head starts small (normal, std = the encoder's ``initializer_range``, zero bias): the initial scores are
        nearly equal, but the pooled states differ between passages, so the head gets a useful gradient at once.
        Late-interaction settings (``dim``, ``query_max_length``, ``cache_size``) are ignored.
        """
        tokenizer, encoder, base = base_encoder(name_or_path, max_length=max_length, lora=lora,
                                                num_layers=num_layers, seed=seed)
        import torch  # present: base_encoder checked it

        head = torch.nn.Linear(encoder.config.hidden_size, 1)
        torch.nn.init.normal_(head.weight, std=float(getattr(encoder.config, "initializer_range", 0.02)))
        torch.nn.init.zeros_(head.bias)
        model = _scorer_class()(encoder, head)
        model.eval()
        return cls(backend="torch", tokenizer=tokenizer, max_length=max_length, model=model,
                   meta={"base_model": base, "lora": dict(lora) if lora else None, "num_layers": num_layers})

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any], backend: Backend, *, threads: int | None = None,
                    cache_size: int = DEFAULT_CACHE_SIZE) -> CrossEncoderReranker:
        """Load a saved cross-encoder folder whose ``reranker.json`` was read by :meth:`Reranker.load`."""
        cfg_path = path / "reranker.json"
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
            return cls(backend="torch", tokenizer=tokenizer, max_length=max_length, model=model, path=path,
                       meta=meta)
        onnx_file = onnx_model_file(path)
        return cls(backend="onnx", tokenizer=fast_tokenizer(path, meta, max_length), max_length=max_length,
                   session=onnx_session(onnx_file, threads), head=_load_npz_head(path / HEAD_NPZ), path=path,
                   meta={**meta, "onnx_file": onnx_file.name})

    # ----- scoring -----
    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64) -> np.ndarray:
        """Scores of (query, passage text) pairs, batched; an empty list gives an empty array."""
        check_pairs(pairs, batch_size)
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

    # ----- saving -----
    def config(self) -> dict[str, Any]:
        """The self-description written to ``reranker.json``."""
        return {**super().config(), "head": HEAD_KIND, "pooling": "mean", "head_file": HEAD_FILE, "num_labels": 1,
                "truncation": "longest_first", "query_format": QUERY_FORMAT}

    def _write_head(self, folder: Path) -> None:
        from safetensors.torch import save_file

        head = self.model.head
        save_file({"weight": head.weight.detach().float().cpu().contiguous(),
                   "bias": head.bias.detach().float().cpu().contiguous()}, str(folder / HEAD_FILE))


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
