from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite.cli import app

runner = CliRunner()


def test_build_search_info(tmp_path: Path) -> None:
    src = tmp_path / "facts.txt"
    src.write_text('"A magnet attracts iron"\n"Copper conducts electricity"\n"Owls hunt at night"\n')
    out = tmp_path / "kb"
    res = runner.invoke(app, ["kb", "build", str(src), str(out), "--no-dense", "--k1", "1.2", "--b", "0.5",
                              "--quiet"])
    assert res.exit_code == 0, res.output
    assert "3 passages" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["bm25"]["k1"] == 1.2 and manifest["config"]["dense"] is None

    res = runner.invoke(app, ["kb", "search", str(out), "which metal conducts electricity", "-k", "2"])
    assert res.exit_code == 0, res.output
    assert "bm25" in res.output and "facts-2" in res.output and "Copper conducts" in res.output  # auto -> bm25

    res = runner.invoke(app, ["kb", "info", str(out)])
    assert res.exit_code == 0 and "3 passages" in res.output and "verified" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["kb", "build", "{tmp}/missing.txt", "{tmp}/kb", "--no-dense"], "does not exist"),
        (["kb", "build", "{tmp}/bad.jsonl", "{tmp}/kb", "--no-dense"], "line 1"),
        (["kb", "search", "{tmp}/nokb", "query"], "does not exist"),
        (["kb", "build", "{tmp}/bad.jsonl", "{tmp}/kb", "--no-dense", "--b", "3"], "bm25.b"),
    ],
)
def test_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.jsonl").write_text('{"id": 1\n')
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output and res.output.strip().startswith("error:")
    assert len(res.output.strip().splitlines()) == 1


def test_dense_retriever_on_bm25_kb_is_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "facts.txt"
    src.write_text("one fact here\n")
    assert runner.invoke(app, ["kb", "build", str(src), str(tmp_path / "kb"), "--no-dense", "--quiet"]).exit_code == 0
    res = runner.invoke(app, ["kb", "search", str(tmp_path / "kb"), "fact", "--retriever", "dense"])
    assert res.exit_code == 2 and "without a dense index" in res.output
