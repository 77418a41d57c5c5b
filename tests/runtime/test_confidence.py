"""Calibration and its measures on synthetic answers (no models): fitting, saving, ECE, risk-coverage, support."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kardlite.errors import ArtifactError, InputError
from kardlite.runtime.confidence import (
    FEATURES,
    Calibrator,
    accuracy_at_coverage,
    expected_calibration_error,
    raw_confidence,
    risk_coverage,
    support,
)


def _answers(n: int, seed: int) -> tuple[list[dict[str, float]], np.ndarray]:
    """An overconfident student: it says 0.75-1.0, but is right with probability 2 * (p - 0.5) ** 1 ... and its
    retrieval score carries independent evidence."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.5, 1.0, n)
    score = rng.normal(0.0, 1.0, n)
    truth = 1 / (1 + np.exp(-(6 * (p - 0.75) + 1.5 * score)))
    correct = rng.uniform(size=n) < truth
    rows = [{"letter_prob": 0.5 + 0.5 * float(pi), "vote_share": 1.0, "top_score": float(s), "score_margin": 0.0,
             "claim_support": 0.5, "option_support": 0.5} for pi, s in zip(p, score, strict=True)]
    return rows, correct


def test_calibration_lowers_ece_on_held_out_answers() -> None:
    dev_rows, dev_y = _answers(400, 0)
    test_rows, test_y = _answers(2000, 1)
    raw = [raw_confidence(r, valid=True, samples=1) for r in test_rows]
    cal = Calibrator.fit(dev_rows, dev_y)
    calibrated = cal.predict_many(test_rows)
    assert expected_calibration_error(raw, test_y) > 0.15
    assert expected_calibration_error(calibrated, test_y) < 0.05
    # the retrieval signal helps rank answers: selective accuracy at 50% beats the raw confidence's
    assert accuracy_at_coverage(calibrated, test_y, 0.5) > accuracy_at_coverage(raw, test_y, 0.5)
    assert cal.weights[FEATURES.index("top_score")] > 0 and cal.weights[FEATURES.index("letter_prob")] > 0


def test_calibrator_round_trips_through_json_and_rejects_bad_files() -> None:
    rows, y = _answers(50, 2)
    cal = Calibrator.fit(rows, y, note={"split": "dev"})
    data = json.loads(json.dumps(cal.to_dict()))
    again = Calibrator.from_dict(data)
    assert again.predict(rows[0]) == pytest.approx(cal.predict(rows[0]))
    assert again.fitted_on["split"] == "dev" and again.fitted_on["answers"] == 50
    for bad, why in (({**data, "kind": "pickle"}, "not a kardlite calibrator"),
                     ({**data, "version": 9}, "calibrator version 9"),
                     ({**data, "weights": data["weights"][:-1]}, "malformed calibrator"),
                     ({**data, "features": ["letter_prob", "x", *data["features"][2:]]}, "malformed calibrator"),
                     ({**data, "scale": [0.0] * 6}, "malformed calibrator"),
                     ({**data, "bias": "nan"}, "malformed calibrator"), ([1, 2], "not a kardlite calibrator")):
        with pytest.raises(ArtifactError, match=f"^calibration.json: {why}"):
            Calibrator.from_dict(bad)


def test_a_calibrator_that_gives_non_finite_confidences_is_refused() -> None:
    rows, y = _answers(50, 2)
    data = Calibrator.fit(rows, y).to_dict()
    n = len(data["features"])
    # all weights 0 and a denormal scale: every standardised signal is infinite, and 0 x inf is NaN
    tiny = {**data, "weights": [0.0] * n, "scale": [5e-324] * n}
    with pytest.raises(ArtifactError, match=r"^calibration\.json: malformed calibrator"):
        Calibrator.from_dict(tiny)
    # finite, ordinary-looking parameters whose products overflow: inf - inf
    huge = {**data, "weights": [1e308, -1e308, *[0.0] * (n - 2)], "mean": [0.0] * n, "scale": [1e-3] * n}
    with pytest.raises(ArtifactError, match="non-finite confidence for ordinary signals"):
        Calibrator.from_dict(huge)
    # one built in code skips from_dict: the answer-time check refuses its NaN instead of returning it
    direct = Calibrator(tuple(data["features"]), (0.0,) * n, 0.0, (0.0,) * n, (5e-324,) * n, {})
    with pytest.raises(ArtifactError, match="non-finite confidence"):
        direct.predict(rows[0])
    assert 0.0 <= Calibrator.from_dict(data).predict(rows[0]) <= 1.0  # the fitted one is fine


def test_fit_needs_both_outcomes_and_known_features() -> None:
    rows, _ = _answers(10, 3)
    with pytest.raises(InputError, match="both right and wrong"):
        Calibrator.fit(rows, [True] * 10)
    with pytest.raises(InputError, match="unknown calibration features"):
        Calibrator.fit(rows, [True, False] * 5, features=("letter_prob", "magic"))
    with pytest.raises(InputError, match="labels"):
        Calibrator.fit(rows, [True, False])


def test_ece_risk_coverage_by_hand() -> None:
    conf = [0.9, 0.8, 0.3, 0.2]
    right = [True, False, True, False]
    # bins: 0.9 -> |1 - 0.9|, 0.8 -> |0 - 0.8|, 0.3 -> |1 - 0.3|, 0.2 -> |0 - 0.2|, each a quarter
    assert expected_calibration_error(conf, right) == pytest.approx((0.1 + 0.8 + 0.7 + 0.2) / 4)
    cov, acc = risk_coverage(conf, right)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert acc.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert accuracy_at_coverage(conf, right, 0.5) == 0.5
    assert accuracy_at_coverage(conf, right, 0.3) == 0.5  # ceil(1.2) = 2 answers
    with pytest.raises(InputError, match=r"coverage must be in \(0, 1\], got 0.0"):
        accuracy_at_coverage(conf, right, 0.0)


def test_raw_confidence() -> None:
    sig = {"letter_prob": 0.8, "vote_share": 0.4}
    assert raw_confidence(sig, valid=True, samples=1) == pytest.approx(0.8)
    assert raw_confidence(sig, valid=True, samples=5) == pytest.approx(0.6)
    assert raw_confidence(sig, valid=False, samples=1) == 0.0


def test_support_counts_claims_found_in_the_passages() -> None:
    passages = ["Digoxin inhibits the sodium-potassium ATPase of cardiac myocytes.",
                "Loop diuretics act on the thick ascending limb."]
    rationale = ("Digoxin inhibits the sodium potassium ATPase in myocytes. "
                 "Therefore calcium rises inside the cell and contractility increases.")
    claim, opt = support(rationale, "sodium-potassium ATPase", passages)
    assert claim == 0.5 and opt == 1.0
    assert support("Penguins cannot fly at all.", "wings", passages) == (0.0, 0.0)
    assert support("", None, passages) == (0.0, 0.0)
