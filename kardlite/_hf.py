"""Loading language models in transformers, offline, with the packaged SmolLM2 as the default.

The packaged model is a GGUF; transformers de-quantises it to fp32 on load (``gguf_file=``), which takes ~17 s
on 2 cores. The result is cached once as a plain safetensors folder (model + the tokenizer transformers builds
from the GGUF, which tokenises exactly like llama.cpp), keyed by the GGUF's content hash, so later loads take
a second or two. Cache root: ``$KARDLITE_CACHE`` or ``~/.cache/kardlite``. Never ``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kardlite._io import atomic_dir, sha256_file
from kardlite._llama import packaged_smollm2
from kardlite.errors import InputError, MissingExtraError

DEFAULT_MODEL = "smollm2"
_MARKER = "kardlite_cache.json"
_CACHE_VERSION = "v2"  # bump when what we cache changes (v2: special tokens taken from the GGUF)


def cache_dir() -> Path:
    """Where de-quantised models are cached: ``$KARDLITE_CACHE`` or ``~/.cache/kardlite``."""
    return Path(os.environ.get("KARDLITE_CACHE") or Path.home() / ".cache" / "kardlite")


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise MissingExtraError("transformers", "train") from None
    return transformers


def _gguf_path(name_or_path: str | Path | None) -> Path | None:
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return packaged_smollm2()
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError("GGUF file not found", path=path)
        return path
    return None


def _match_gguf_special_tokens(tokenizer: Any, gguf: Path) -> None:
    """Make the tokenizer's eos/pad/bos handling match the GGUF's own metadata, as llama.cpp uses it.

    transformers 4.57 builds SmolLM2's tokenizer with eos = ``<|im_start|>`` (id 1), no pad token and
    add_bos_token=True, while the GGUF says eos 2 (``<|im_end|>``, the end of a chat turn), pad 2 and no BOS.
    A student trained on the former would end its answers with a token llama.cpp does not stop at.
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.parts[field.data[0]][0].item()

    if (eos := value("tokenizer.ggml.eos_token_id")) is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if (pad := value("tokenizer.ggml.padding_token_id")) is not None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    if (add_bos := value("tokenizer.ggml.add_bos_token")) is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)


def _cached_gguf(gguf: Path) -> Path:
    """The safetensors folder for ``gguf``, building it on first use."""
    tf = _transformers()
    digest = sha256_file(gguf)[:16]
    folder = cache_dir() / "hf" / f"{gguf.stem}-{digest}-{_CACHE_VERSION}"
    if (folder / _MARKER).is_file():
        return folder
    model = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _match_gguf_special_tokens(tokenizer, gguf)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "sha256_16": digest}) + "\n")
    return folder


def resolve(name_or_path: str | Path | None = DEFAULT_MODEL) -> str:
    """A local folder or HF id that ``from_pretrained`` can load (GGUFs are converted and cached first)."""
    gguf = _gguf_path(name_or_path)
    return str(_cached_gguf(gguf)) if gguf is not None else str(name_or_path)


def load_causal_lm(name_or_path: str | Path | None = DEFAULT_MODEL, *, dtype: Any = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for training or scoring.

    Args:
        name_or_path: ``smollm2`` (the packaged SmolLM2-135M-Instruct), a ``.gguf`` file, a local HF folder or
            a hub id (the hub only works where it is reachable).
        dtype: torch dtype; None for fp32.

    Returns:
        (model in eval mode, tokenizer).

    Example:
        >>> model, tok = load_causal_lm()  # doctest: +SKIP
    """
    tf = _transformers()
    source = resolve(name_or_path)
    model = tf.AutoModelForCausalLM.from_pretrained(source, torch_dtype=dtype, trust_remote_code=False)
    tokenizer = tf.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    return model.eval(), tokenizer


def load_lm(name_or_path: str | Path | None = DEFAULT_MODEL, *, dtype: Any = None) -> tuple[Any, Any, bool]:
    """Load a causal or a seq2seq (encoder-decoder) LM.

    Returns:
        (model in eval mode, tokenizer, is_encoder_decoder).
    """
    tf = _transformers()
    source = resolve(name_or_path)
    config = tf.AutoConfig.from_pretrained(source, trust_remote_code=False)
    if getattr(config, "is_encoder_decoder", False):
        model = tf.AutoModelForSeq2SeqLM.from_pretrained(source, torch_dtype=dtype, trust_remote_code=False)
        tokenizer = tf.AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        return model.eval(), tokenizer, True
    model, tokenizer = load_causal_lm(source, dtype=dtype)
    return model, tokenizer, False
