"""``kardlite demo eval``: the demo questions asked through the runtime, its summary and rows agreeing with each
other, resuming from its rows, and where the app finds the summary. The untrained fast student's letters are
never asserted: only what the code does with whatever it answers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite._io import read_json
from kardlite._stats import bootstrap_ci
from kardlite.cli import app
from kardlite.demo import demo_questions
from kardlite.demo.evaluate import ROW_KEYS, eval_paths, evaluate_demo, metrics, read_demo_eval
from kardlite.errors import ArtifactError, InputError


def _row(correct: bool, valid: bool = True, forced: bool = False, gold_shown: bool = True, seconds: float = 1.0):
    return {"split": "test", "id": "q", "gold": "A", "predicted": "A" if correct else "B", "correct": correct,
            "valid": valid, "forced": forced, "gold_shown": gold_shown, "seconds": seconds}


def test_metrics_of_rows() -> None:
    rows = [_row(True, seconds=3.0), _row(False, valid=False, seconds=1.0), _row(False, forced=True,
                                                                                gold_shown=False, seconds=2.0),
            _row(True, seconds=10.0)]
    m = metrics(rows, questions=27)
    assert (m["questions"], m["n"], m["correct"], m["accuracy"]) == (27, 4, 2, 0.5)
    assert (m["invalid"], m["invalid_rate"], m["forced"], m["forced_rate"]) == (1, 0.25, 1, 0.25)
    assert (m["gold_shown"], m["gold_shown_rate"], m["p50_seconds"]) == (3, 0.75, 2.5)
    lo, hi = m["accuracy_ci95"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0 and [lo, hi] == [round(v, 4) for v in bootstrap_ci([True, False, False, True])]
    empty = metrics([], questions=3)
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["accuracy_ci95"] is None
    assert empty["p50_seconds"] is None


def test_the_summary_lives_beside_the_bundle_where_the_app_reads_it(tmp_path: Path) -> None:
    bundle = tmp_path / "exports" / "demo"
    summary, rows = eval_paths(bundle)
    assert (summary, rows) == (tmp_path / "exports" / "demo-eval.json", tmp_path / "exports" / "demo-eval.jsonl")
    assert eval_paths(f"{bundle}/") == (summary, rows)
    assert read_demo_eval(bundle) is None  # not measured yet
    summary.parent.mkdir(parents=True)
    summary.write_text('{"kind": "something else"}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="not a kardlite demo evaluation"):
        read_demo_eval(bundle)
    summary.write_text("{", encoding="utf-8")
    with pytest.raises(ArtifactError, match="unreadable demo evaluation"):
        read_demo_eval(bundle)


def test_bad_settings_are_refused_before_the_bundle_is_opened(tmp_path: Path) -> None:
    for kwargs in ({"splits": ["train"]}, {"splits": []}, {"splits": ["dev", "dev"]}, {"limit": 0},
                   {"samples": 0}, {"limit": True}):
        with pytest.raises(InputError):
            evaluate_demo(tmp_path / "no-bundle", progress=False, **kwargs)
    result = CliRunner().invoke(app, ["demo", "eval", "--bundle", str(tmp_path), "--limit", "1"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_demo_eval_scores_the_bundle_and_its_numbers_agree_with_its_rows(demo_bundle_fast: Path,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "eval" / "demo-eval.json"
    result = CliRunner().invoke(app, ["demo", "eval", "--bundle", str(demo_bundle_fast), "--limit", "1",
                                      "--threads", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = read_demo_eval(out)
    assert summary is not None and summary == read_json(out)
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text(encoding="utf-8").splitlines()]
    # one row per split: the first dev and the first test question, with every field a user looks at
    assert [(r["split"], r["id"]) for r in rows] == [(s, demo_questions(s)[0].id) for s in ("dev", "test")]
    for r in rows:
        assert all(k in r for k in ROW_KEYS)
        item = next(i for i in demo_questions(r["split"]) if i.id == r["id"])
        assert r["gold"] == "ABCD"[item.label] and r["gold_passages"] == item.meta["passage_ids"]
        assert r["correct"] == (r["predicted"] == r["gold"]) and (r["predicted"] is None) == (not r["valid"])
        assert not (r["forced"] and not r["valid"])  # a forced answer is a valid letter
        assert len(r["shown_passages"]) == 2 and r["gold_shown"] == bool(set(r["gold_passages"])
                                                                         & set(r["shown_passages"]))
        assert r["seconds"] > 0
    assert summary["settings"]["limit"] == 1 and summary["mode"] == "fast" and summary["rows"] == out.stem + ".jsonl"
    results = summary["results"]
    assert set(results) == {"dev", "test", "all"}
    for name, m in results.items():
        mine = [r for r in rows if name == "all" or r["split"] == name]
        assert m["n"] == len(mine) and m["questions"] == (54 if name == "all" else len(demo_questions(name)))
        assert m["accuracy"] == pytest.approx(statistics.mean(r["correct"] for r in mine), abs=1e-4)
        assert m["invalid_rate"] == pytest.approx(statistics.mean(not r["valid"] for r in mine), abs=1e-4)
        assert m["forced_rate"] == pytest.approx(statistics.mean(r["forced"] for r in mine), abs=1e-4)
        assert m["gold_shown_rate"] == pytest.approx(statistics.mean(r["gold_shown"] for r in mine), abs=1e-4)
        assert m["p50_seconds"] == pytest.approx(statistics.median(r["seconds"] for r in mine), abs=1e-3)
    for name in ("dev", "test", "all"):
        assert f"{name}: accuracy {results[name]['accuracy']:.3f}" in result.output

    # A longer run on the same bundle with the same settings (--limit 1, then 2) reuses the rows it finds: the
    # first test question is not asked again (its stored row comes back as stored, with a mark added here that a
    # question asked again would not have), the second is asked, and the rows file then holds this run's
    # questions only (the dev row is gone).
    rows_path = out.with_suffix(".jsonl")
    stored = [{**r, "mark": "stored"} if r["split"] == "test" else r for r in rows]
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in stored), encoding="utf-8")
    again = evaluate_demo(demo_bundle_fast, splits=["test"], limit=2, threads=2, out=out, progress=False)
    rows2 = [json.loads(line) for line in rows_path.read_text(encoding="utf-8").splitlines()]
    assert [(r["split"], r["id"]) for r in rows2] == [("test", i.id) for i in demo_questions("test")[:2]]
    assert rows2[0] == stored[1]  # reused, not asked again
    assert "mark" not in rows2[1] and rows2[1]["run"] == rows2[0]["run"]  # asked now, in the same run
    assert set(again["results"]) == {"test"} and again["settings"]["limit"] == 2
    assert again["results"]["test"] == metrics(rows2, len(demo_questions("test")))
    assert again["results"]["test"]["n"] == 2 and again["results"]["test"]["p50_seconds"] == pytest.approx(
        statistics.median([rows[1]["seconds"], rows2[1]["seconds"]]), abs=1e-3)
