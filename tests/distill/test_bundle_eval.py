"""``kardlite eval --bundle``: the runtime answers every question, the results are written like a student's
evaluation, and the numbers land in the bundle's card, which still verifies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite.cli import app

runner = CliRunner()


def _tasks(path: Path, n: int = 3) -> Path:
    from kardlite.demo import demo_questions

    with open(path, "w", encoding="utf-8") as fh:
        for it in demo_questions("test")[:n]:
            fh.write(json.dumps({"id": it.id, "question": it.question, "options": list(it.options),
                                 "answer": it.label}) + "\n")
    return path


def test_options_that_would_change_the_bundle_are_refused(tmp_path: Path) -> None:
    tasks = _tasks(tmp_path / "t.jsonl", 1)
    base = ["eval", "--bundle", str(tmp_path), "--tasks", str(tasks), "--out", str(tmp_path / "ev")]
    for extra, named in ((["--n-docs", "2"], "--n-docs"), (["--model", "smollm2"], "--model"),
                         (["--backend", "gguf"], "--backend")):
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 2 and named in r.stderr and "own student, parts and settings" in r.stderr, r.output
    r = runner.invoke(app, ["eval", "--model", "smollm2", "--tasks", str(tasks), "--out", str(tmp_path / "ev"),
                            "--split", "dev"])
    assert r.exit_code == 2 and "--split apply to a bundle's evaluation (--bundle) only" in r.stderr


@pytest.mark.slow
def test_eval_bundle_records_its_numbers_in_the_card(tiny_bundle: Path, tmp_path: Path) -> None:
    from kardlite.bundle_format import bundle_settings, read_manifest, verify_bundle
    from kardlite.card import read_card

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    tasks = _tasks(tmp_path / "obqa-like.jsonl")
    out = tmp_path / "ev"
    common = ["eval", "--bundle", str(bundle), "--tasks", str(tasks), "--threads", "2", "--task-name", "demo test"]
    args = [*common, "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    correct = sum(row["correct"] for row in rows)
    assert len(rows) == metrics["n"] == 3 and metrics["correct"] == correct
    assert f"accuracy {100 * correct / 3:.1f}% (95% CI" in r.output and "card:" in r.output

    manifest = read_manifest(bundle)
    verify_bundle(bundle, manifest)  # written through the API: the bundle still verifies
    card = read_card(bundle, manifest)
    (e,) = card.evaluations
    assert card.status == "measured" and e.split == "test" and (e.n, e.correct) == (3, correct)
    assert e.task.name == "demo test" and e.task.files[0].name == "obqa-like.jsonl"
    assert e.ci_low <= e.accuracy <= e.ci_high and e.calibration is not None
    assert e.calibration.calibrator_sha256 is None and e.measured_by == "kardlite eval --bundle"
    assert e.settings == bundle_settings(manifest)[0]  # measured with the bundle's own settings

    # the same command resumes (nothing is answered, no model is loaded) and records the same numbers
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert read_card(bundle).evaluations[0].correct == correct
    # other questions in the same folder are refused; --no-write-card leaves the bundle alone (no new card file)
    r = runner.invoke(app, [*args, "--limit", "2"])
    assert r.exit_code == 2 and "holds results of another bundle, settings or questions (items)" in r.stderr
    before = [(bundle / f).stat().st_ino for f in ("card.json", "manifest.json")]
    r = runner.invoke(app, [*args, "--no-write-card"])
    assert r.exit_code == 0 and "card:" not in r.output, r.output
    assert [(bundle / f).stat().st_ino for f in ("card.json", "manifest.json")] == before
