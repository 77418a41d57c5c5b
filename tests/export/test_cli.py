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


@pytest.mark.slow
def test_info_shows_the_bundle_its_verification_and_its_card(tmp_path: Path, tiny_bundle: Path) -> None:
    import shutil

    from kardlite.bundle_format import read_manifest, seal_bundle
    from kardlite.card import Task, measure, record_evaluations
    from kardlite.settings import InferenceSettings

    res = CliRunner().invoke(app, ["info", str(tiny_bundle)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert f"{tiny_bundle}: bundle 'tiny' (schema 2" in out and "40 passages (kb/); first stage hybrid" in out
    assert "verification: ok" in out and "not signed" in out
    assert "card: unmeasured" in out and "warning: no measured numbers" in out and "not a medical device" in out

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = read_manifest(bundle)
    settings = manifest["inference"]
    record_evaluations(bundle, [measure([True, False, True], split="test", task=Task("toy"), manifest=manifest,
                                        settings=InferenceSettings.from_dict(settings), measured_by="test")])
    out = CliRunner().invoke(app, ["info", str(bundle)]).stdout
    assert "card: measured" in out and "test: accuracy 66.7% (95% CI 20.8%-93.9%), 2/3 questions" in out
    assert "warning" not in out and "calibration: not measured" in out
    # a KB changed (and re-sealed) after the measurement: the numbers are flagged as stale
    (bundle / "kb" / "manifest.json").write_text(
        (bundle / "kb" / "manifest.json").read_text().replace('"counts"', '"note": "edited", "counts"', 1))
    seal_bundle(bundle)
    assert "warning: stale: kb changed since it was measured" in CliRunner().invoke(app, ["info", str(bundle)]).stdout
    # a damaged file: the summary, then the failure; the card is not shown
    data = bytearray((bundle / "student.gguf").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / "student.gguf").write_bytes(bytes(data))
    res = CliRunner().invoke(app, ["info", str(bundle)])
    assert res.exit_code == 2 and "verification: FAILED" in res.stdout and "Intended use" not in res.stdout
    assert res.stderr.startswith("error: ") and "student.gguf: sha256 differs" in res.stderr
