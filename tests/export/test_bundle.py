"""The bundle folder: manifest contents, checksums on load, refusal of bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kardlite._io import sha256_file
from kardlite.errors import ArtifactError, InputError
from kardlite.export.bundle import CONTROL_FILES

pytestmark = pytest.mark.slow


def test_manifest_describes_every_file_and_setting(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["schema_version"] == 2 and m["kind"] == "kardlite-bundle" and m["name"] == "tiny"
    on_disk = sorted(rel for p in tiny_bundle.rglob("*")
                     if p.is_file() and (rel := p.relative_to(tiny_bundle).as_posix()) not in CONTROL_FILES)
    assert sorted(m["files"]) == on_disk
    # the manifest itself is covered by bundle.sha256 (sha256sum format)
    digest = hashlib.sha256((tiny_bundle / "manifest.json").read_bytes()).hexdigest()
    assert (tiny_bundle / "bundle.sha256").read_text() == f"{digest}  manifest.json\n"
    for rel, info in m["files"].items():
        assert info["sha256"] == sha256_file(tiny_bundle / rel) and info["bytes"] == (tiny_bundle / rel).stat().st_size
    assert {"student.gguf", "kb/passages.sqlite", "kb/hnsw.bin", "kb/manifest.json"} <= set(m["files"])
    assert any(f.startswith("kb/encoder/") and f.endswith(".onnx") for f in m["files"])
    assert any(f.startswith("reranker/") and f.endswith(".onnx") for f in m["files"])
    assert m["student"]["architecture"] == "llama" and m["student"]["quant"] == "f16"
    assert m["tokenizer"]["model"] == "gpt2" and m["tokenizer"]["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in m["chat_template"]
    assert m["prompt"] == {"mode": "kard", "max_tokens": 512, "use_chat_template": True,
                           "builder": "kardlite.prompts.build_prompt", "token_counter": "llama.cpp tokenizer"}
    assert m["retrieval"]["first_stage"] == "hybrid" and m["retrieval"]["pool"] == 8 and m["retrieval"]["n_docs"] == 3
    assert m["retrieval"]["reranker"]["onnx"]["quantized"] is True
    assert m["encoders"] == {"dense": "kb/encoder", "reranker": "reranker"}
    assert m["decoding"]["max_new_tokens"] == 24 and m["decoding"]["temperature"] == 0.0
    # the inference settings the runtime reads; the other sections are their view for older readers
    s = m["inference"]
    assert (s["mode"], s["max_source_tokens"], s["first_stage"], s["pool"], s["n_docs"], s["max_new_tokens"]) == \
        ("kard", 512, "hybrid", 8, 3, 24)
    assert (s["decoding"], s["answer_scoring"], s["no_answer"], s["rerank"]) == ("greedy", "generated", "force", True)
    assert m["evaluation"] == {"note": "tiny random student, test fixture"}
    assert m["card"] == "card.json" and "card.json" in m["files"]  # the evaluation card, unmeasured (tests/test_card)
    assert "llama-cpp-python" in m["versions"]


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.mark.parametrize(("rel", "damage", "message"), [
    ("kb/passages.sqlite", "flip", r"kb/passages\.sqlite: sha256 differs.*altered"),
    ("student.gguf", "truncate", r"student\.gguf: truncated"),
    ("reranker/reranker.json", "delete", r"reranker/reranker\.json: missing from the bundle"),
])
def test_damaged_file_is_named_on_load(bundle_copy: Path, rel: str, damage: str, message: str) -> None:
    from kardlite.runtime import load

    path = bundle_copy / rel
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size - 1000)
    else:
        path.unlink()
    with pytest.raises(ArtifactError, match=message):
        load(bundle_copy)


def test_not_a_bundle(tmp_path: Path) -> None:
    from kardlite.runtime import load

    with pytest.raises(ArtifactError, match="not found"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        load(tmp_path / "empty")


def test_export_bundle_refuses_bad_settings(tiny_bundle: Path, tmp_path: Path) -> None:
    from kardlite.export.bundle import export_bundle

    gguf, kb = tiny_bundle / "student.gguf", tiny_bundle / "kb"
    with pytest.raises(InputError, match="quantisation"):
        export_bundle(gguf, kb, tmp_path, quant="Q3_X")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="decoding"):
        export_bundle(gguf, kb, tmp_path, decoding={"beam": 4})
    with pytest.raises(InputError, match="student not found"):
        export_bundle(tmp_path / "missing", kb, tmp_path)
    with pytest.raises(InputError, match="n_docs"):
        export_bundle(gguf, kb, tmp_path, settings={"n_docs": 0})
    with pytest.raises(InputError, match="no_answer"):
        export_bundle(gguf, kb, tmp_path, settings={"no_answer": "guess"})
    with pytest.raises(InputError, match="unknown inference settings"):
        export_bundle(gguf, kb, tmp_path, settings={"k": 3})
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_bundle_from_a_ready_gguf_without_reranker(tiny_bundle: Path, tmp_path: Path) -> None:
    from kardlite.export.bundle import export_bundle
    from kardlite.runtime import load

    out = export_bundle(tiny_bundle / "student.gguf", tiny_bundle / "kb", tmp_path, name="plain", first_stage="bm25",
                        n_docs=2, decoding={"max_new_tokens": 4})
    m = json.loads((out / "manifest.json").read_text())
    assert m["retrieval"]["reranker"] is None and m["student"]["source"] == {"gguf": str(tiny_bundle / "student.gguf")}
    with load(out, threads=1) as pipe:
        ans = pipe.ask("What does digoxin inhibit?", ["sodium-potassium ATPase", "carbonic anhydrase"])
    assert len(ans["passages"]) <= 2 and all(p["rerank_score"] is None for p in ans["passages"])
    assert ans["timings"]["rerank"] == 0.0 and ans["tokens"]["generated"] <= 4
