"""bench/confidence.py's results file: one entry per measured bundle in ``runs``, earlier ones kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "confidence.py"


@pytest.fixture(scope="module")
def bench():
    return load_script(SCRIPT)


def _result(accuracy: float) -> dict:
    metrics = {"ece": 0.1, "accuracy_at_100": accuracy, "accuracy_at_80": accuracy + 0.05,
               "accuracy_at_50": accuracy + 0.2, "mean_confidence": 0.5}
    return {"bundle": "exports/x", "source": "demo", "meets": {"selective_gain": True, "ece": False},
            "test": {"questions": 27, "accuracy": accuracy, "raw": dict(metrics, ece=0.3), "calibrated": metrics}}


def test_a_run_s_summary_has_the_fields_the_page_compares(bench):
    s = bench._summary(_result(0.4))
    assert (s["n"], s["accuracy"], s["ece_raw"], s["ece"]) == (27, 0.4, 0.3, 0.1)
    assert s["accuracy_at_coverage"] == {"1.0": 0.4, "0.8": pytest.approx(0.45), "0.5": pytest.approx(0.6)}


def test_earlier_runs_are_kept_and_a_missing_or_broken_file_holds_none(bench, tmp_path):
    path = tmp_path / "confidence.json"
    assert bench._earlier_runs(path) == {}
    path.write_text("{not json", encoding="utf-8")
    assert bench._earlier_runs(path) == {}
    path.write_text(json.dumps({"runs": ["not", "a", "map"]}), encoding="utf-8")
    assert bench._earlier_runs(path) == {}
    path.write_text(json.dumps({"runs": {"obqa": {"n": 500}}}), encoding="utf-8")
    assert bench._earlier_runs(path) | {"demo": {"n": 27}} == {"obqa": {"n": 500}, "demo": {"n": 27}}


def test_the_page_names_task_files_outside_the_repository_by_sha256_not_by_path(bench, tmp_path):
    outside = tmp_path / "private folder" / "dev.jsonl"
    outside.parent.mkdir()
    outside.write_text('{"id": "1"}\n', encoding="utf-8")
    inside = Path("kardlite/demo/passages_cardiorenal.jsonl")
    shown = bench._shown(outside)
    assert shown.startswith("`dev.jsonl` (sha256 ") and "private" not in shown and len(shown.split()[-1]) == 13
    assert bench._shown(bench.ROOT / inside) == f"`{inside}`"
    cmd = bench._command(["exports/b", f"--dev={outside}", "--test", str(outside), "--note", "a *paragraph*",
                          "--label", "KARD (hybrid), Q8_0", "--install"])
    assert cmd == ("python bench/confidence.py exports/b --dev $DEV_FILE --test $TEST_FILE "
                   "--label 'KARD (hybrid), Q8_0' --install")
    assert bench._command(["b", "--dev", str(bench.ROOT / inside)]).endswith(f"--dev {inside}")


def test_the_answer_cache_survives_install_but_not_a_change_that_decides_answers(bench):
    manifest = {"name": "b", "created": "t0", "inference": {"n_docs": 3},
                "files": {"student.gguf": {"sha256": "aa"}, "kb/hnsw.bin": {"sha256": "bb"}}}
    installed = {**manifest, "calibration": "calibration.json", "card": "card.json",
                 "files": {**manifest["files"], "calibration.json": {"sha256": "cc"}, "card.json": {"sha256": "dd"}}}
    key = bench._answers_key(manifest)
    assert bench._answers_key(installed) == key == bench._answers_key({**manifest, "created": "t1"})
    assert bench._answers_key({**manifest, "inference": {"n_docs": 5}}) != key
    assert bench._answers_key({**manifest, "files": {**manifest["files"], "student.gguf": {"sha256": "ee"}}}) != key
