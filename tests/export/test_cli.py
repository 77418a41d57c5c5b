"""``kardlite export bundle --out`` is the bundle folder itself (the old ``--out PARENT --name NAME`` still works)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kardlite.cli import app


def test_out_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "student.gguf").write_bytes(b"GGUF")
    (tmp_path / "kb").mkdir()
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "other-bundle").mkdir()  # the old meaning of --out: a parent of bundles
    res = CliRunner().invoke(app, ["export", "bundle", str(tmp_path / "student.gguf"), str(tmp_path / "kb"),
                                   "--out", str(tmp_path / "exports")])
    assert res.exit_code == 2 and "is not a bundle" in res.stderr and "--out is the bundle folder" in res.stderr
    assert (tmp_path / "exports" / "other-bundle").is_dir()


@pytest.mark.slow
def test_out_is_the_bundle_folder(tmp_path: Path, tiny_bundle: Path) -> None:
    args = ["export", "bundle", str(tiny_bundle / "student.gguf"), str(tiny_bundle / "kb"), "--no-verify",
            "--n-docs", "2"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "mine")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "mine" / "manifest.json").read_text())["retrieval"]["n_docs"] == 2
    old = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "parent"), "--name", "b"])  # deprecated spelling
    assert old.exit_code == 0, old.output
    assert "--name is deprecated" in old.stderr and (tmp_path / "parent" / "b" / "manifest.json").is_file()
