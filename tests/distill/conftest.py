"""Fixtures for the student stage: tiny questions and rationales, a tiny T5, a tiny BM25 KB.

Most training-path tests use the tiny llama of tests/conftest.py (``tiny_llama_dir``: hidden 64, 2 layers): real
transformers/peft code, seconds per run. One slow test uses the real packaged SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kardlite.data.records import QAItem

FACTS = [
    "the sun is the source of energy for life on earth",
    "plants take in carbon dioxide and release oxygen",
    "a magnet attracts iron objects",
    "water freezes at zero degrees celsius",
    "an animal needs food for survival",
    "friction causes heat when two objects rub together",
    "the moon orbits the earth once a month",
    "metal conducts electricity and heat",
]

ITEMS = [
    QAItem("q1", "What do plants release?", ("oxygen", "iron", "salt", "sand"), 0),
    QAItem("q2", "What does a magnet attract?", ("wood", "iron", "glass", "paper"), 1),
    QAItem("q3", "At what temperature does water freeze?", ("50 C", "100 C", "0 C", "20 C"), 2),
    QAItem("q4", "What conducts electricity?", ("rubber", "plastic", "wood", "copper"), 3),
    QAItem("q5", "What is the source of energy for life on earth?", ("the moon", "the sun", "rocks", "ice"), 1),
    QAItem("q6", "What happens when two hands rub together?", ("they get cold", "they get wet", "they heat up",
                                                               "nothing"), 2),
]

RATIONALES = {
    "q1": ["Plants take in carbon dioxide and release oxygen during photosynthesis.",
           "Photosynthesis releases oxygen, so the answer is oxygen."],
    "q2": ["A magnet attracts iron objects, and iron is one of the options."],
    "q3": ["Water freezes at zero degrees celsius."],
    "q4": ["Metal conducts electricity; copper is a metal."],
    "q5": ["The sun is the source of energy for life on earth."],
    "q6": ["Friction causes heat when two objects rub together, so hands heat up."],
}


def write_rationales(path: Path, rationales: dict[str, list[str]] = RATIONALES) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for qid, texts in rationales.items():
            for i, text in enumerate(texts):
                fh.write(json.dumps({"item_id": qid, "rationale_index": i, "text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A randomly initialised 1-layer T5 (no T5 weights exist here) with the SmolLM2 tokenizer."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tok = smol_tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=16, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=pad, eos_token_id=tok.eos_token_id, decoder_start_token_id=pad)
    out = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_kb(tmp_path_factory):
    from kardlite.kb import KBConfig, KnowledgeBase, Passage

    passages = [Passage(id=f"f{i}", title="", text=t) for i, t in enumerate(FACTS)]
    return KnowledgeBase.build(passages, tmp_path_factory.mktemp("kb") / "kb", config=KBConfig(dense=None),
                               progress=False)
