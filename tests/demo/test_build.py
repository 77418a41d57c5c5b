"""build_demo_bundle in fast mode: a real bundle the runtime opens, stamped with its mode, reused on later starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from kardlite._io import read_json
from kardlite.demo.build import build_demo_bundle, bundle_mode, is_fast

pytestmark = pytest.mark.slow


def test_fast_bundle_records_its_mode_and_is_reused(demo_bundle_fast: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    manifest = read_json(demo_bundle_fast / "manifest.json")
    assert manifest["demo"]["mode"] == "fast" and bundle_mode(demo_bundle_fast) == "fast"
    assert manifest["retrieval"]["reranker"] is None and manifest["retrieval"]["first_stage"] == "hybrid"
    assert (demo_bundle_fast / "student.gguf").stat().st_size > 50_000_000
    before = _files(demo_bundle_fast.parent)  # the bundle and its .work stages
    assert build_demo_bundle(demo_bundle_fast, fast=True, progress=True) == demo_bundle_fast
    # reused: nothing built, written, replaced or added, in the bundle or its stages
    assert capsys.readouterr().out.strip() == f"demo bundle (fast mode) ready at {demo_bundle_fast}"
    assert _files(demo_bundle_fast.parent) == before


def _files(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file and folder under root."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_fast_bundle_answers_through_the_runtime(demo_bundle_fast: Path) -> None:
    from kardlite.runtime import load

    with load(demo_bundle_fast, threads=2) as pipe:
        answer = pipe.ask("Which transporter does furosemide inhibit?", ["NKCC2", "ENaC"], max_new_tokens=8)
    assert len(answer["passages"]) == 2 and answer["passages"][0]["rerank_score"] is None
    assert answer["tokens"]["generated"] >= 1


def test_incomplete_bundle_is_not_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text('{"kind": "kardlite-bundle"}')  # no demo stamp: unfinished
    assert bundle_mode(tmp_path / "b") is None
    assert bundle_mode(tmp_path / "missing") is None
    monkeypatch.setenv("KARDLITE_FAST", "1")
    assert is_fast()
    monkeypatch.setenv("KARDLITE_FAST", "0")
    assert not is_fast()


@pytest.mark.parametrize(("mode", "query", "says_rationales"), [
    ("kard", "rationale", True), ("rd", "rationale", True), ("ka-ft", "rationale", True),
    ("ka-ft", "question", False), ("ft", "question", False)])
def test_the_bundle_says_what_its_student_learnt_from(mode: str, query: str, says_rationales: bool) -> None:
    """An answer-only student trained on question-retrieved passages saw no rationale: the page must not say so."""
    import dataclasses

    from kardlite.demo.build import _trained_on
    from kardlite.demo.recipe import StudentRecipe

    text = _trained_on(dataclasses.replace(StudentRecipe(), mode=mode, query=query))
    assert text.startswith(f"{mode.upper()}-distilled") and ("rationales" in text) == says_rationales
