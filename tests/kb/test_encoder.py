from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kardlite.errors import InputError, MissingExtraError
from kardlite.kb import DenseConfig
from kardlite.kb.encoder import Encoder, cache_dir, export_encoder, is_exported, packaged_model_dir

SENTENCES = [
    "A bee is a pollinating animal",
    "Owls hunt small mammals at night using keen hearing",
    "the sun transfers solar energy from itself to the Earth through sunlight",
    "Copper is a good conductor of electricity",
]


def _reference_embeddings(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 as sentence-transformers computes it: transformers forward, mean pooling, L2 norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = str(packaged_model_dir())
    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModel.from_pretrained(src).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


@pytest.mark.slow
def test_fp32_export_matches_the_pytorch_model_and_int8_stays_close(tmp_path: Path, encoder_dir: Path) -> None:
    meta = export_encoder(DenseConfig(quantize=False), tmp_path / "fp32")
    assert meta["onnx"] == "model.onnx" and meta["quantized"] is False and meta["quantization"] is None
    assert meta["dim"] == 384 and meta["max_length"] == 256 and meta["pooling"] == "mean"
    assert sorted(p.name for p in (tmp_path / "fp32").iterdir()) == ["config.json", "encoder.json", "model.onnx",
                                                                     "tokenizer.json"]
    fp32 = Encoder(tmp_path / "fp32").encode(SENTENCES)
    ref = _reference_embeddings(SENTENCES)
    np.testing.assert_allclose(np.linalg.norm(fp32, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(fp32 * ref, axis=1)) > 0.9999

    int8 = Encoder(encoder_dir)
    assert int8.meta["quantized"] is True and int8.meta["onnx"] == "model_quantized.onnx"
    assert (encoder_dir / "model_quantized.onnx").stat().st_size < (tmp_path / "fp32" / "model.onnx").stat().st_size / 3
    assert np.min(np.sum(int8.encode(SENTENCES) * ref, axis=1)) > 0.97
    # Similar sentences score above unrelated ones.
    q = int8.encode(["Which insects carry pollen?"])[0]
    assert int(np.argmax(int8.encode(SENTENCES) @ q)) == 0


def test_copying_an_exported_encoder_checks_quantisation(tmp_path: Path, encoder_dir: Path) -> None:
    meta = export_encoder(DenseConfig(model=str(encoder_dir), max_length=64), tmp_path / "copy")
    assert meta["max_length"] == 64 and meta["quantized"] is True
    assert Encoder(tmp_path / "copy").max_length == 64
    with pytest.raises(InputError, match="quantize=False"):
        export_encoder(DenseConfig(model=str(encoder_dir), quantize=False), tmp_path / "copy2")


def test_bad_models_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no config\.json") as err:
        export_encoder(DenseConfig(model=str(tmp_path / "empty")), tmp_path / "out")
    assert err.value.field == "dense.model"
    # HF_HUB_OFFLINE=1 (tests/conftest.py): an id that is not cached cannot be fetched.
    with pytest.raises(InputError, match="neither a local folder nor available"):
        export_encoder(DenseConfig(model="no-such-org/no-such-model-kardlite"), tmp_path / "out")


def test_missing_optimum_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as on an install without the train extra; an empty cache
    # means the export cannot be copied either.
    monkeypatch.setenv("KARDLITE_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r"kardlite\[train\]"):
        export_encoder(DenseConfig(), tmp_path / "out")


@pytest.mark.slow
def test_export_is_cached_and_reused_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KARDLITE_CACHE_DIR", str(tmp_path / "cache"))
    first = export_encoder(DenseConfig(), tmp_path / "a")  # exports once, and keeps the export in the cache
    entries = list((cache_dir() / "encoders").iterdir())
    assert len(entries) == 1 and is_exported(entries[0]) and first["source_sha256"]
    # A core-only install: neither optimum nor torch can be imported. The cached export is copied.
    monkeypatch.setitem(sys.modules, "optimum.onnxruntime", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    again = export_encoder(DenseConfig(), tmp_path / "b")
    assert again == first
    onnx = first["onnx"]
    assert (tmp_path / "a" / onnx).read_bytes() == (tmp_path / "b" / onnx).read_bytes()
    np.testing.assert_array_equal(Encoder(tmp_path / "b").encode(SENTENCES), Encoder(tmp_path / "a").encode(SENTENCES))
    assert export_encoder(DenseConfig(max_length=64), tmp_path / "c")["max_length"] == 64  # limit is not in the key
    with pytest.raises(MissingExtraError, match=r"optimum-onnx is needed.*kardlite\[train\]"):  # another export
        export_encoder(DenseConfig(quantize=False), tmp_path / "d")
    # A fresh cache is seeded by copying any KB's encoder folder (how a core-only user gets the export first).
    monkeypatch.setenv("KARDLITE_CACHE_DIR", str(tmp_path / "cache2"))
    export_encoder(DenseConfig(model=str(tmp_path / "a")), tmp_path / "e")
    assert export_encoder(DenseConfig(), tmp_path / "f")["source_sha256"] == first["source_sha256"]
