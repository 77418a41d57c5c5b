"""The one test on the real packaged SmolLM2-135M-Instruct: train 2 LoRA steps, save, reload, evaluate."""

from __future__ import annotations

import json
import math

import pytest

from kardlite.distill.evaluate import EvalConfig, evaluate
from kardlite.distill.examples import build_examples, read_kept_rationales, save_examples
from kardlite.distill.student import load_student
from kardlite.distill.train import StudentTrainConfig, train_student
from tests.distill.conftest import ITEMS, write_rationales


@pytest.mark.slow
def test_real_smollm2_round_trip(tmp_path, tiny_kb):
    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    examples = save_examples(build_examples(ITEMS[:4], kept, "kard", kb=tiny_kb, k=2, per_item=1),
                             tmp_path / "kard.jsonl")
    cfg = StudentTrainConfig(max_steps=2, batch_size=2, max_source_tokens=256, max_target_tokens=48,
                             dev_fraction=0.0, save_every=2)
    model_dir = train_student(examples, tmp_path / "run", cfg)  # student None = packaged SmolLM2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["student"]["base"] == "smollm2"
    assert math.isfinite(manifest["metrics"]["final_train_loss"])
    student = load_student(model_dir)
    assert student.use_chat_template and student.info["mode"] == "kard"
    prompt = student.prompt(ITEMS[0], "kard", max_tokens=256)
    assert "<|im_start|>assistant" in prompt.text and prompt.text.endswith("Explanation:")
    m = evaluate(student, ITEMS[:2], tmp_path / "ev", EvalConfig(max_new_tokens=8), kb=tiny_kb)
    assert m["n"] == 2 and m["mode"] == "kard" and m["n_docs"] == 2  # the student's own k, not a CLI default
    row = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()[0])
    assert row["outputs"][0].strip()  # the real model writes text
