"""The evaluation card (kardlite/card.py): its numbers, its JSON and its checks, and its place in a bundle: listed
and hashed in the manifest, so a number changed by hand fails verification, while recording through the API keeps
the bundle verifying."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kardlite.bundle_format import read_manifest, seal_bundle, verify_bundle
from kardlite.card import (
    CARD_FILE,
    UNMEASURED_NOTE,
    EvaluationCard,
    Task,
    bundle_parts,
    data_files,
    measure,
    read_card,
    record_evaluations,
    settings_differences,
    stale_parts,
    summary,
    wilson_interval,
)
from kardlite.errors import ArtifactError, InputError
from kardlite.settings import InferenceSettings

SETTINGS = InferenceSettings().resolve(mode="kard", has_dense=False)
MANIFEST = {"files": {"student.gguf": {"sha256": "1" * 64, "bytes": 10}, "kb/manifest.json": {"sha256": "2" * 64,
                                                                                             "bytes": 5},
                      "card.json": {"sha256": "3" * 64, "bytes": 7}}}


def _evaluation(split: str = "test", manifest: dict = MANIFEST, **kwargs):
    correct = [True, True, False, True, False, False, True, True]
    return measure(correct, split=split, task=Task("toy", ()), settings=SETTINGS, manifest=manifest,
                   measured_by="test", invalid=[False] * 7 + [True], forced=[False] * 8,
                   confidence=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], confidence_raw=[0.5] * 8, **kwargs)


def test_wilson_interval_by_hand() -> None:
    low, high = wilson_interval(61, 100)
    assert (round(low, 4), round(high, 4)) == (0.512, 0.6998)  # by hand: centre 0.6059, half-width 0.0939
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert 0 < wilson_interval(0, 10)[1] < 0.35  # no answers right: still an upper bound above 0
    with pytest.raises(InputError):
        wilson_interval(3, 0)


def test_measure_gives_accuracy_interval_and_calibration() -> None:
    e = _evaluation()
    assert (e.n, e.correct, e.accuracy) == (8, 5, 0.625)
    assert e.ci_low < e.accuracy < e.ci_high and (e.invalid_rate, e.forced_rate) == (0.125, 0.0)
    cal = e.calibration
    assert cal is not None and cal.calibrator_sha256 is None  # the manifest names no calibrator: raw confidence
    assert cal.ece_raw == pytest.approx(0.125)  # one bin at 0.5 holding 62.5% right
    # the 7 (ceil 80% of 8), then the 4 most confident: right, right, wrong, right, wrong, wrong, right
    assert cal.accuracy_at_coverage == {"1.0": 0.625, "0.8": pytest.approx(4 / 7, abs=1e-6), "0.5": 0.75}
    assert e.measured_on == bundle_parts(MANIFEST) and set(e.measured_on) == {"student.gguf", "kb"}
    with pytest.raises(InputError, match="confidence"):
        measure([True, False], split="x", task=Task("t"), settings=SETTINGS, manifest=MANIFEST, measured_by="t",
                confidence=[0.5], confidence_raw=[0.5])


def test_card_round_trips_and_says_when_nothing_was_measured() -> None:
    blank = EvaluationCard.unmeasured("b")
    data = blank.to_dict()
    assert data["status"] == "unmeasured" and data["note"] == UNMEASURED_NOTE and data["evaluations"] == []
    assert EvaluationCard.from_dict(data) == blank
    assert "no measured numbers" in summary(blank)[0].plain() and summary(blank)[0].warning
    card = blank.with_evaluations([_evaluation("dev"), _evaluation("test")])
    again = EvaluationCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card and again.status == "measured" and again.evaluation("dev") is not None
    # a new evaluation of a split replaces the old one, the others stay
    newer = card.with_evaluations([_evaluation("test", manifest={"files": {}})])
    assert [e.split for e in newer.evaluations] == ["dev", "test"] and newer.evaluation("test").measured_on == {}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["evaluations"][0].update(accuracy=0.9), r"field 'evaluations\[0\]\.accuracy' is 0\.9; expected "
                                                         r"correct / n = 0\.625000"),
    (lambda d: d["evaluations"][0].update(ci_low=0.7), r"'evaluations\[0\]\.ci_low' is 0\.7; expected at most"),
    (lambda d: d["evaluations"][0].update(n=0), r"'evaluations\[0\]\.n' is 0; expected an integer >= 1"),
    (lambda d: d["evaluations"][0]["calibration"].update(ece=float("nan")), r"calibration\.ece' is nan"),
    (lambda d: d["evaluations"][0]["calibration"]["accuracy_at_coverage"].pop("0.5"), r"the keys \['1\.0', '0\.8', "
                                                                                      r"'0\.5'\]"),
    (lambda d: d["evaluations"][0]["settings"].update(mode="nope"), r"evaluations\[0\]\.settings.*unknown mode"),
    (lambda d: d["evaluations"][0]["measured_on"].update(kb="zz"), r"measured_on\.kb' is 'zz'; expected a sha256"),
    (lambda d: d["evaluations"][0].pop("measured_at"), r"field 'evaluations\[0\]\.measured_at' is missing"),
    (lambda d: d.update(status="unmeasured"), r"field 'status' is 'unmeasured' with 1 evaluation"),
    (lambda d: d.update(version=9), r"card version 9"),
])
def test_a_bad_field_is_named_with_the_file(edit, message: str) -> None:
    data = EvaluationCard.unmeasured("b").with_evaluations([_evaluation()]).to_dict()
    edit(data)
    with pytest.raises(ArtifactError, match=rf"^x/card\.json: .*{message}"):
        EvaluationCard.from_dict(data, source="x/card.json")


def test_stale_parts_and_other_settings_are_found() -> None:
    e = _evaluation()
    assert stale_parts(e, MANIFEST) == [] and settings_differences(e, SETTINGS) == {}
    kb_changed = {"files": {**MANIFEST["files"], "kb/hnsw.bin": {"sha256": "4" * 64, "bytes": 1}}}
    assert stale_parts(e, kb_changed) == ["kb"]
    assert settings_differences(e, SETTINGS.updated(n_docs=3)) == {"n_docs": (5, 3)}
    text = [line.plain() for line in summary(EvaluationCard("b", (e,)), kb_changed, SETTINGS.updated(n_docs=3))]
    assert "warning: stale: kb changed since it was measured" in text
    assert "warning: measured with other settings than the bundle's: n_docs 5 (bundle: 3)" in text
    assert text[0].startswith("test: accuracy 62.5% (95% CI 30.6%-86.3%), 5/8 questions, invalid 12.5%")


def test_data_files_hash_what_was_read(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text('{"id": "q1"}\n', encoding="utf-8")
    (f,) = data_files([path])
    assert (f.name, f.bytes, len(f.sha256)) == ("test.jsonl", 13, 64)
    with pytest.raises(InputError, match=r"missing\.jsonl: cannot read"):
        data_files([tmp_path / "missing.jsonl"])


# ---------------------------------------------------------------------------------------------- in a bundle
@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.mark.slow
def test_export_writes_an_unmeasured_card_that_is_listed_and_hashed(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert manifest["card"] == CARD_FILE and CARD_FILE in manifest["files"]
    card = read_card(tiny_bundle, manifest)
    assert card.status == "unmeasured" and card.bundle == "tiny" and not card.evaluations
    assert any("not a medical device" in limit for limit in card.known_limits)


@pytest.mark.slow
def test_changing_a_number_in_the_card_breaks_verification(bundle_copy: Path) -> None:
    from kardlite.runtime import load

    manifest = read_manifest(bundle_copy)
    record_evaluations(bundle_copy, [_evaluation(manifest=manifest)])
    verify_bundle(bundle_copy)  # recorded through the API: the bundle still verifies
    path = bundle_copy / CARD_FILE
    text = path.read_text(encoding="utf-8")
    assert '"accuracy": 0.625' in text
    path.write_text(text.replace('"accuracy": 0.625', '"accuracy": 0.925'), encoding="utf-8")  # same size
    with pytest.raises(ArtifactError, match=r"card\.json: sha256 differs from manifest\.json"):
        verify_bundle(bundle_copy)
    with pytest.raises(ArtifactError, match=r"card\.json: sha256 differs"):
        read_card(bundle_copy)
    with pytest.raises(ArtifactError, match=r"card\.json: sha256 differs"):
        load(bundle_copy, verify=False)  # even without hashing every file, the card is checked
    # re-sealed by hand, the digest matches again, but the numbers no longer add up: refused, field named
    seal_bundle(bundle_copy)
    with pytest.raises(ArtifactError, match=r"card\.json: field 'evaluations\[0\]\.accuracy' is 0\.925"):
        read_card(bundle_copy)


@pytest.mark.slow
def test_recording_keeps_the_bundle_verifying_and_refuses_a_changed_bundle(bundle_copy: Path) -> None:
    from kardlite.runtime import load

    manifest = read_manifest(bundle_copy)
    dev, test = _evaluation("dev", manifest=manifest), _evaluation("test", manifest=manifest)
    card = record_evaluations(bundle_copy, [dev, test])
    assert [e.split for e in card.evaluations] == ["dev", "test"] and card.status == "measured"
    after = read_manifest(bundle_copy)
    verify_bundle(bundle_copy, after)
    assert read_card(bundle_copy, after) == card and bundle_parts(after) == bundle_parts(manifest)
    with load(bundle_copy, threads=1) as pipe:
        assert pipe.card == card
    # an evaluation of the bundle as it was before a change is not recorded: it would describe another bundle
    (bundle_copy / "kb" / "manifest.json").write_text("{}", encoding="utf-8")
    seal_bundle(bundle_copy)
    with pytest.raises(ArtifactError, match=r"kb changed since the 'test' evaluation measured it"):
        record_evaluations(bundle_copy, [test])
    assert read_card(bundle_copy) == card  # nothing was written
