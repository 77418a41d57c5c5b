from __future__ import annotations

import json

from typer.testing import CliRunner

from kardlite.cli import app
from tests.distill.conftest import ITEMS, write_rationales

runner = CliRunner()


def _task_file(path):
    with open(path, "w", encoding="utf-8") as fh:
        for it in ITEMS:
            fh.write(json.dumps({"id": it.id, "question": it.question, "options": list(it.options),
                                 "answer": it.label}) + "\n")
    return path


def test_build_train_eval_report_from_the_command_line(tmp_path, tiny_kb, tiny_llama_dir):
    tasks = _task_file(tmp_path / "tasks.jsonl")
    kept = write_rationales(tmp_path / "kept.jsonl")
    r = runner.invoke(app, ["distill", "build", "--tasks", str(tasks), "--rationales", str(kept), "--mode", "kard",
                            "--kb", str(tiny_kb.path), "--k", "2", "--out", str(tmp_path / "ex.jsonl")])
    assert r.exit_code == 0, r.output
    assert "7 kard examples from 6 questions" in r.output
    r = runner.invoke(app, ["train", "student", str(tmp_path / "ex.jsonl"), "--out", str(tmp_path / "run"),
                            "--student", str(tiny_llama_dir), "--max-steps", "2", "--batch-size", "4",
                            "--max-source-tokens", "256", "--max-target-tokens", "48"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "run"), "--tasks", str(tasks), "--limit", "2",
                            "--kb", str(tiny_kb.path), "--max-new-tokens", "4", "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["mode"] == "kard" and metrics["retriever"] == "bm25"
    r = runner.invoke(app, ["eval", "report", str(tmp_path / "ev"), "--out", str(tmp_path / "report.md")])
    assert r.exit_code == 0 and "| ev | kard |" in r.output


def test_errors_are_one_line_and_exit_2(tmp_path):
    tasks = _task_file(tmp_path / "tasks.jsonl")
    empty = tmp_path / "kept.jsonl"
    empty.write_text("")
    r = runner.invoke(app, ["distill", "build", "--tasks", str(tasks), "--rationales", str(empty), "--mode", "rd",
                            "--out", str(tmp_path / "ex.jsonl")])
    assert r.exit_code == 2 and "no kept rationales" in r.output and "Traceback" not in r.output
    kept = write_rationales(tmp_path / "k2.jsonl")
    r = runner.invoke(app, ["distill", "build", "--tasks", str(tasks), "--rationales", str(kept), "--mode", "kard",
                            "--kb", str(tmp_path / "no-kb"), "--out", str(tmp_path / "ex.jsonl")])
    assert r.exit_code == 2 and "no-kb" in r.output and "does not exist" in r.output
    r = runner.invoke(app, ["train", "student", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "missing.jsonl" in r.output and "does not exist" in r.output
