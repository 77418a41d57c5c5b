"""Export a trained reranker folder to ONNX (optionally dynamic int8) for the torch-free runtime."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np

from kardlite._io import atomic_dir, atomic_write_json, read_json, work_dir
from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.rerank.base import KINDS
from kardlite.rerank.cross import HEAD_FILE, HEAD_NPZ
from kardlite.rerank.encoder import CONFIG_NAME
from kardlite.rerank.late import PROJ_FILE, PROJ_NPZ

Quantization = Literal["avx2", "avx512", "avx512_vnni", "arm64"]


def export_reranker_onnx(model_dir: str | Path, out_dir: str | Path, quantize: bool = True, *,
                         quantization: Quantization = "avx2", quantize_ffn: bool = False) -> Path:
    """Export a saved reranker of either kind (``Reranker.save`` / ``train_reranker`` output) to ONNX.

    The encoder goes through optimum's ``ORTModelForFeatureExtraction.from_pretrained(..., export=True)``
    (output ``last_hidden_state``), then, with ``quantize``, ``ORTQuantizer`` dynamic int8 quantisation (weights
    int8 per output channel, activations quantised at run time) of the embedding tables and the weight matmuls.
    Two kinds of matmul stay float32 by default (see :func:`fp32_matmuls`): attention's activation-by-activation
    products (softmax probabilities quantised per tensor lose the small weights), and the feed-forward matmuls
    (post-GELU activations have outliers, so one per-tensor scale per batch leaves the rest a few levels). On the
    OBQA late-interaction reranker this lifts top-5 agreement with fp32 over 50 candidates from 0.92 (every
    matmul int8) to 0.96 at the same warm latency; the file grows from 17 to 28 MB (docs/results/reranker-obqa.md).

    Mean pooling and the ``Linear(hidden, 1)`` head run in numpy at load time, from ``head.npz`` (the head's
    weights, converted from ``head.safetensors``: the runtime has numpy but not safetensors). The output folder
    holds ``model.onnx`` or ``model_quantized.onnx``, ``head.npz``, ``tokenizer.json`` and ``reranker.json`` (with
    an ``onnx`` entry), and loads with ``Reranker.load(out_dir, backend="onnx")`` without torch.

    A late-interaction reranker exports the same way; its token projection and score scale
    (``projection.safetensors``) become ``projection.npz``, and the projection, normalisation and MaxSim run in
    numpy. Only the encoder is quantised: the projection is small and stays float32.

    Args:
        model_dir: the torch reranker folder.
        out_dir: the export folder (replaced atomically).
        quantize: dynamic int8 quantisation (default), or False to keep fp32 ONNX.
        quantization: optimum's preset. "avx2" (default) runs on any x86-64 laptop of the last decade; the
            avx512 presets differ only in instruction assumptions, and "arm64" is for Apple silicon / ARM.
        quantize_ffn: also quantise the feed-forward matmuls: a smaller, slightly faster cold path, rankings
            further from fp32.

    Returns:
        ``out_dir``.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not all((model_dir / n).is_file() for n in (CONFIG_NAME, "config.json")):
        raise ArtifactError(f"{model_dir} is not a saved torch reranker (needs {CONFIG_NAME} and config.json)")
    meta = read_json(model_dir / CONFIG_NAME)
    kind = meta.get("kind", "cross-encoder") if isinstance(meta, dict) else None
    if kind not in KINDS:
        raise ArtifactError(f"{model_dir / CONFIG_NAME}: unknown reranker kind {kind!r}")
    # (torch file, its arrays, the numpy file the ONNX folder gets) per kind
    head_file, arrays, npz_name = ((HEAD_FILE, {"weight", "bias"}, HEAD_NPZ) if kind == "cross-encoder"
                                   else (PROJ_FILE, {"weight", "log_scale"}, PROJ_NPZ))
    if not (model_dir / head_file).is_file():
        raise ArtifactError(f"{model_dir} is not a saved torch reranker ({head_file} is missing)")
    if quantization not in ("avx2", "avx512", "avx512_vnni", "arm64"):
        raise InputError(f"unknown quantization preset {quantization!r}", field="quantization")
    try:
        from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
        from safetensors.numpy import load_file
    except ImportError:
        raise MissingExtraError("optimum-onnx", "train") from None
    head = load_file(str(model_dir / head_file))
    if set(head) != arrays:
        raise ArtifactError(f"{model_dir / head_file}: expected tensors {sorted(arrays)}, got {sorted(head)}")
    with atomic_dir(out_dir) as tmp, work_dir(out_dir) as work:  # a killed export's scratch is swept next time
        ort_model = ORTModelForFeatureExtraction.from_pretrained(model_dir, export=True)
        ort_model.save_pretrained(work)
        if quantize:
            qconfig = getattr(AutoQuantizationConfig, quantization)(
                is_static=False, per_channel=True,
                nodes_to_exclude=fp32_matmuls(Path(work) / "model.onnx", keep_ffn=not quantize_ffn))
            quantizer = ORTQuantizer.from_pretrained(work, file_name="model.onnx")
            quantizer.quantize(save_dir=tmp, quantization_config=qconfig)
            onnx_name = "model_quantized.onnx"
        else:
            shutil.copyfile(Path(work) / "model.onnx", tmp / "model.onnx")
            onnx_name = "model.onnx"
        if not (tmp / onnx_name).is_file():
            raise ArtifactError(f"ONNX export did not write {onnx_name}")
        # only the tokenizer travels: a config.json here would make the folder look like a torch model
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        np.savez(tmp / npz_name, **{k: v.astype(np.float32) for k, v in head.items()})
        (tmp / "config.json").unlink(missing_ok=True)  # written by the quantizer; the folder is not a torch model
        precision = "all weight matmuls" if quantize_ffn else "attention projections; feed-forward kept fp32"
        meta["onnx"] = {"file": onnx_name, "quantized": quantize,
                        "quantization": (f"dynamic int8 ({precision}), {quantization}, per-channel" if quantize
                                         else None),
                        "source": str(model_dir)}
        atomic_write_json(tmp / CONFIG_NAME, meta)
    return out_dir


def fp32_matmuls(onnx_file: Path, *, keep_ffn: bool) -> list[str]:
    """Names of the MatMul nodes that dynamic quantisation should leave float32.

    Always the activation-by-activation products (neither input is a weight: attention's Q·Kᵀ and P·V); with
    ``keep_ffn`` also the feed-forward matmuls, recognised by shape rather than name so that any BERT-like
    encoder works: a weight whose two dimensions differ ((hidden, intermediate) or back) is a feed-forward one,
    the attention projections are (hidden, hidden).
    """
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        shapes = [weights[i] for i in node.input if i in weights]
        if not shapes or (keep_ffn and len(shapes[0]) == 2 and shapes[0][0] != shapes[0][1]):
            names.append(node.name)
    return names
