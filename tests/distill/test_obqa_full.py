"""The full OBQA run's script resumes after a kill (bench/distill/obqa_full.py, on a tiny slice and a tiny student)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import needs_shared

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "distill" / "obqa_full.py"


def _cmd(obqa: Path, run: Path, student: Path, report: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--obqa", str(obqa), "--run", str(run), "--student", str(student),
            "--systems", "ft,kard-bm25", "--train-limit", "16", "--test-limit", "4", "--dev-limit", "4",
            "--max-steps", "2", "--snapshot-every", "1", "--report", str(report)]


@pytest.mark.slow
@needs_shared
def test_full_run_resumes_after_a_kill(tmp_path, obqa_dir, tiny_llama_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run, report = tmp_path / "run", tmp_path / "obqa-full.md"
    cmd = _cmd(obqa_dir, run, tiny_llama_dir, report)
    # First sitting: killed (SIGKILL, whole process group) once the KARD student has started training.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (run / "student-kard" / "run_info.json").is_file():
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "eval-kard-bm25").exists()
    logged = [json.loads(x)["cmd"][:2] for x in (run / "log.jsonl").read_text().splitlines()]
    # Second sitting: the same command finishes the work without redoing what was done.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    again = [json.loads(x)["cmd"][:2] for x in (run / "log.jsonl").read_text().splitlines()][len(logged):]
    assert ["rationales", "import"] not in again and ["rationales", "filter"] not in again
    assert again.count(["distill", "build"]) == 0
    result = json.loads(report.with_suffix(".json").read_text())
    for system in ("ft", "kard-bm25"):
        row = result["systems"][system]
        assert row["n"] == 4 and row["complete"] and 0 <= row["accuracy"] <= 1
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
        ids = [json.loads(x)["id"] for x in (run / f"eval-{system}" / "predictions.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 4
    for mode in ("ft", "kard"):
        assert result["training"][mode]["steps"] == 2 and result["training"][mode]["finished"]
    assert {c["step"] for c in result["curves"]["kard-bm25"]} == {1, 2}
    assert set(result["comparisons"]) == {"kard-bm25 vs ft"}
    assert all(0 <= c["mcnemar_p"] <= 1 for c in result["comparisons"].values())


def test_mcnemar_and_bootstrap():
    sys.path.insert(0, str(SCRIPT.parent))
    from obqa_full import bootstrap_ci, mcnemar_p, paired_bootstrap_ci

    a = [True] * 30 + [False] * 10
    b = [True] * 20 + [False] * 20
    # discordant: a right / b wrong on 10, never the reverse: p = 2 * 0.5**10
    assert mcnemar_p(a, b) == pytest.approx(2 * 0.5 ** 10)
    assert mcnemar_p(a, a) == 1.0
    lo, hi = bootstrap_ci(a)
    assert lo < 0.75 < hi and hi - lo < 0.35
    lo, hi = paired_bootstrap_ci(a, b)
    assert 0 < lo < 0.25 < hi
