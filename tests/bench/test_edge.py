"""bench/edge.py --built on the trained demo bundle: an answer-only bundle is measured as it ships (nothing decoded),
and the levers it compares (no kept prompt start, one thread) do not change a single answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kardlite.export.bundle import read_manifest
from tests.conftest import needs_trained_demo

pytestmark = [pytest.mark.slow, needs_trained_demo]

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "edge.py"


@pytest.fixture(scope="module")
def built(demo_bundle_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    manifest = read_manifest(demo_bundle_trained)
    student = Path(manifest["student"]["source"]["folder"])
    assert (student / "config.json").is_file(), f"the bundle's merged student is not where its manifest says: {student}"
    work = tmp_path_factory.mktemp("edge-built")
    env = {**os.environ, "KARDLITE_BENCH_NO_NICE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--built", str(demo_bundle_trained), "--student", str(student),
                           "--questions", "3", "--work", str(work)], capture_output=True, text=True, env=env,
                          check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"stdout": proc.stdout, **json.loads((work / "results-built.json").read_text(encoding="utf-8"))}


def test_an_answer_only_bundle_is_measured_without_a_decode_target(built):
    assert built["answer_only"] is True
    assert all(r["generated_mean"] == 0 for r in built["results"].values())
    assert "pipeline decode >= 95% of raw llama.cpp" not in built["targets"]
    assert "pipeline_vs_raw_decode" not in built["ratios"]
    assert "no decode target" in built["stdout"]
    # the answer is one prompt evaluation plus the option scoring: its time is all "prefill"
    b = built["results"]["bundle"]
    assert b["prefill_p50"] == pytest.approx(b["generate_p50"], rel=0.01)
    assert b["raw_prefill_p50"] > 0 and b["prompt_tokens_mean"] > 0


def test_the_levers_change_speed_not_answers(built):
    letters = built["letters"]
    assert set(letters) == {"bundle", "no-prefix-cache", "1-thread", "torch_fp32"}
    assert all(len(v) == 3 and all(x in "ABCD" for x in v) for v in letters.values())
    # the kept prompt start and the thread count are how the answer is computed, never what it is
    assert letters["no-prefix-cache"] == letters["bundle"] == letters["1-thread"]
    assert built["ratios"]["same_letter_as_torch"] == pytest.approx(
        sum(a == b for a, b in zip(letters["bundle"], letters["torch_fp32"], strict=True)) / 3)
