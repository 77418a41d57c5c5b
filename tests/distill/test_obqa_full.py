"""The full OBQA run's script resumes after a kill (bench/distill/obqa_full.py, on a tiny slice and a tiny student)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kardlite._io import sha256_file
from tests.conftest import needs_shared

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "distill" / "obqa_full.py"


def _cmd(obqa: Path, run: Path, student: Path, report: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--obqa", str(obqa), "--run", str(run), "--student", str(student),
            "--systems", "ft,kard-bm25", "--train-limit", "16", "--test-limit", "4", "--dev-limit", "4",
            "--max-steps", "4", "--save-every", "2", "--snapshot-every", "2", "--agree-n", "3", "--report", str(report),
            "--recipe", "none"]


# Loaded by every Python process of the first sitting (a sitecustomize on its PYTHONPATH): the KARD student's
# training process kills the whole run (SIGKILL to its process group, as a kill from outside would) right after
# step KILL_AT is logged: after the checkpoint of step 2, before the checkpoint of step 4. Killing from the test
# when a file appears would race with training steps of a few milliseconds.
KILL_HOOK = """
import os, signal, sys
if "student" in sys.argv and any(a.endswith("student-kard") for a in sys.argv):
    import kardlite.distill.train as _train
    _write_curve = _train._write_curve
    def _write_curve_then_die(out, history):
        _write_curve(out, history)
        if history and history[-1]["step"] == int(os.environ["KARDLITE_TEST_KILL_AT"]):
            os.killpg(os.getpgid(0), signal.SIGKILL)
    _train._write_curve = _write_curve_then_die
"""


def _files(folder: Path) -> dict[str, tuple[int, int, str]]:
    """(inode, mtime, sha256) of every file under folder."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns, sha256_file(p))
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@needs_shared
def test_full_run_resumes_after_a_kill(tmp_path, obqa_dir, tiny_llama_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run, report = tmp_path / "run", tmp_path / "obqa-full.md"
    cmd = _cmd(obqa_dir, run, tiny_llama_dir, report)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    # First sitting: killed mid-way through the KARD student's training, after step 3 (checkpoint at step 2).
    first = subprocess.run(cmd, env={**env, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "KARDLITE_TEST_KILL_AT": "3"},
                           capture_output=True, text=True, timeout=1200, start_new_session=True, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    kard = run / "student-kard"
    assert json.loads((kard / "checkpoint" / "state.json").read_text())["step"] == 2
    assert [h["step"] for h in json.loads((kard / "loss_curve.json").read_text())] == [1, 2, 3]
    assert not (kard / "manifest.json").exists() and not (run / "eval-kard-bm25").exists()
    assert (run / "student-ft" / "manifest.json").is_file()  # the FT student finished before the kill
    ft_files = _files(run / "student-ft")
    logged = [json.loads(x)["cmd"][:2] for x in (run / "log.jsonl").read_text().splitlines()]
    # Second sitting: the same command finishes the work without redoing what was done.
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resuming from step") == 1 and "resuming from step 2 of 4" in done.stdout
    history = json.loads((kard / "loss_curve.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert json.loads((kard / "manifest.json").read_text())["steps"] == 4
    assert _files(run / "student-ft") == ft_files  # the finished student: not trained again, not rewritten
    again = [json.loads(x)["cmd"][:2] for x in (run / "log.jsonl").read_text().splitlines()][len(logged):]
    assert ["rationales", "import"] not in again and ["rationales", "filter"] not in again
    assert again.count(["distill", "build"]) == 0
    result = json.loads(report.with_suffix(".json").read_text())
    # committed files name this machine's folders by their last part only (the run is outside the repository here)
    assert result["settings"]["run"] == ".../run" and str(tmp_path) not in report.with_suffix(".json").read_text()
    assert json.loads((tmp_path / "obqa-full" / "eval-ft.json").read_text())["student"] == ".../student-ft"
    for system in ("ft", "kard-bm25"):
        row = result["systems"][system]
        assert row["n"] == 4 and row["complete"] and 0 <= row["accuracy"] <= 1
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
        ids = [json.loads(x)["id"] for x in (run / f"eval-{system}" / "predictions.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 4
    for mode in ("ft", "kard"):
        assert result["training"][mode]["steps"] == 4 and result["training"][mode]["finished"]
    assert {c["step"] for c in result["curves"]["kard-bm25"]} == {2, 4}
    assert set(result["comparisons"]) == {"kard-bm25 vs ft"}
    assert all(0 <= c["mcnemar_p"] <= 1 for c in result["comparisons"].values())
    # KARD was scored through its exported GGUF; its first 3 questions through PyTorch as well
    assert json.loads((run / "eval-kard-bm25" / "eval.json").read_text())["backend"] == "gguf"
    assert json.loads((run / "eval-ft" / "eval.json").read_text())["backend"] == "torch"
    agree = result["backend_agreement"]
    assert agree["n"] == 3 and agree["same_letter"] == 3 - len(agree["different"]) and 0 <= agree["rate"] <= 1

    # The reranker stage: both kinds from one candidate set (a small run caps each epoch at max_steps batches),
    # the better one on dev chosen; no resume checkpoint is left behind.
    rr = subprocess.run([*cmd, "--stage", "reranker", "--systems", "kard-reranker"], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
    assert rr.returncode == 0, rr.stderr[-3000:]
    assert sorted(p.name for p in run.glob("reranker*")) == [
        "reranker-choice.json", "reranker-cross-encoder", "reranker-cross-encoder.train_log.jsonl",
        "reranker-late-interaction", "reranker-late-interaction.train_log.jsonl", "reranker.data"]
    for kind in ("cross-encoder", "late-interaction"):
        training = json.loads((run / f"reranker-{kind}" / "reranker.json").read_text())["training"]
        assert training["n_train"] == 32 and training["steps"] == 8  # 2 epochs of 4 batches of 8 queries
        assert training["config"]["max_dev_queries"] == 500 and training["n_dev"] <= 500
    choice = json.loads((run / "reranker-choice.json").read_text())
    assert choice["chosen"] in ("cross-encoder", "late-interaction") and len(choice["dev_fact1_r5_hybrid_pool20"]) == 2
    # the page shows both kinds' training and the choice, from the committed summary
    shown = subprocess.run([*cmd, "--stage", "report"], env=env, capture_output=True, text=True, timeout=600,
                           check=False)
    assert shown.returncode == 0, shown.stderr[-3000:]
    summary = json.loads((tmp_path / "obqa-full" / "reranker.json").read_text())
    assert summary["chosen"] == choice["chosen"] and set(summary["kinds"]) == {"cross-encoder", "late-interaction"}
    assert f"| {choice['chosen']} (chosen) | 32 |" in report.read_text()
    # its test row is scored through the chosen kind's int8 ONNX export, the reranker a bundle ships
    ev = subprocess.run([*cmd, "--stage", "eval", "--systems", "kard-reranker"], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
    assert ev.returncode == 0, ev.stderr[-3000:]
    export = run / f"reranker-{choice['chosen']}-onnx"
    assert (export / "model_quantized.onnx").is_file()
    row = json.loads((tmp_path / "obqa-full" / "eval-kard-reranker.json").read_text())
    assert row["reranker"] == export.name and row["backend"] == "gguf" and row["n"] == 4
    shown = subprocess.run([*cmd, "--stage", "report"], env=env, capture_output=True, text=True, timeout=600,
                           check=False)
    assert shown.returncode == 0, shown.stderr[-3000:]
    result = json.loads(report.with_suffix(".json").read_text())
    assert result["systems"]["kard-reranker"]["n"] == 4

    # A later sitting on another machine: the run folder is gone, the committed results are not. The page comes
    # back the same from them, and nothing with a committed result is trained or evaluated again.
    committed = tmp_path / "obqa-full"
    assert sorted(p.name for p in committed.iterdir()) == [
        "agreement.json", "curves.json", "eval-ft.json", "eval-ft.jsonl", "eval-kard-bm25.json",
        "eval-kard-bm25.jsonl", "eval-kard-reranker.json", "eval-kard-reranker.jsonl", "reranker.json",
        "train-ft.json", "train-kard.json"]
    page = report.read_text()
    shutil.rmtree(run)
    again = subprocess.run([*cmd, "--stage", "train"], env=env, capture_output=True, text=True, timeout=600,
                           check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("not trained again") == 2 and not (run / "student-ft").exists()
    rebuilt = subprocess.run([*cmd, "--stage", "report"], env=env, capture_output=True, text=True, timeout=600,
                             check=False)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert report.read_text() == page and json.loads(report.with_suffix(".json").read_text())["systems"] == \
        result["systems"]


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


def test_the_full_run_takes_its_settings_from_the_finished_recipe(tmp_path):
    """Unset options come from the recipe chosen on dev, explicit ones win, and an unfinished recipe is refused."""
    sys.path.insert(0, str(SCRIPT.parent))
    from obqa_full import apply_recipe, recipe_settings

    arms = {"ka-ft-text/text": {"mode": "ka-ft", "answer_format": "text", "scoring": "text", "lr": 5e-4,
                                "freeze_layers": 0, "accuracy": 0.34},
            "kard-best/generated": {"mode": "kard", "answer_format": "text", "scoring": "generated", "lr": 5e-4,
                                    "freeze_layers": 0, "accuracy": 0.22},
            "kard-best/text": {"mode": "kard", "answer_format": "text", "scoring": "text", "lr": 5e-4,
                               "freeze_layers": 0, "accuracy": 0.30}}
    recipe = {"arms": arms, "chosen": "ka-ft-text/text", "finished": True}
    assert recipe_settings(recipe) == {"answer_format": "text", "scoring": "text", "rationale_scoring": "text",
                                       "lr": 5e-4, "freeze_layers": 0}
    with pytest.raises(ValueError, match="not finished"):
        recipe_settings({**recipe, "finished": False})
    with pytest.raises(ValueError, match="no chosen arm"):
        recipe_settings({**recipe, "chosen": "ft-letter/letter"})

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    args = argparse.Namespace(recipe=str(path), answer_format=None, scoring="letter", rationale_scoring=None, lr=None,
                              freeze_layers=None)
    apply_recipe(args)
    assert (args.answer_format, args.scoring, args.rationale_scoring, args.lr, args.freeze_layers) == \
        ("text", "letter", "text", 5e-4, 0)  # --scoring letter was given: it wins
    none = argparse.Namespace(recipe="none", answer_format=None, scoring=None, rationale_scoring=None, lr=None,
                              freeze_layers=None)
    apply_recipe(none)
    assert (none.answer_format, none.scoring, none.lr) == ("letter", "letter", 1e-3)
    with pytest.raises(ValueError, match="no recipe file"):
        apply_recipe(argparse.Namespace(recipe=str(tmp_path / "missing.json")))
