"""Confidence of an answer, its calibration, and the numbers that judge both.

Signals (all in the Answer's ``signals``), each from something the pipeline already computed:

- ``letter_prob``: the student's probability of the chosen letter at the token after its last ``Answer:``,
  renormalised over the option letters (``A`` and `` A`` tokens summed) and averaged over the samples that
  wrote an answer line; for a bundle that reads its answer by option text (``answer_scoring="text"``: an
  answer-only student right after the prompt, or a rationale student after its rationale), the softmax of the
  options' mean token log-likelihoods, the scores that chose the answer (such a student writes option text, not a
  letter, after ``Answer:``, so its letter probabilities there say nothing);
- ``vote_share``: the share of samples that voted for the chosen letter (1 for a single valid generation);
- ``top_score`` / ``score_margin``: the best passage's rerank score (first-stage score without a reranker) and
  its lead over the second;
- ``claim_support``: the share of the rationale's sentences whose content words (stemmed, stop words dropped,
  the BM25 tokenizer's) mostly (>= 60 %) occur in the passages shown;
- ``option_support``: the share of the chosen option's content words that occur in the passages shown.

The raw confidence is the student's own belief: ``letter_prob``, averaged with ``vote_share`` when several
samples voted; 0 for no valid answer. A :class:`Calibrator` (an L2-regularised logistic regression over the
signals, fitted on dev questions, saved as plain JSON in the bundle) maps the signals to a probability of being
right. Retrieval signals only carry weight after calibration: their scale depends on the bundle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from kardlite.errors import ArtifactError, InputError

FEATURES = ("letter_prob", "vote_share", "top_score", "score_margin", "claim_support", "option_support")
CALIBRATION_FILE = "calibration.json"
CALIBRATION_KIND = "kardlite.calibrator"
CALIBRATION_VERSION = 1
# A sentence counts as a supported claim when at least this share of its content words occur in the passages.
_CLAIM_SHARE = 0.6
_SENTENCE = re.compile(r"[^.!?\n]+")
_EPS = 1e-4


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from kardlite.kb.bm25 import Tokenizer

    return Tokenizer()


def content_words(text: str) -> set[str]:
    """The content words of a text as the support signals count them: the BM25 tokenizer's (lower-cased, stop
    words dropped, stemmed)."""
    return set(_tokenizer()(text))


def carried(words: set[str], seen: set[str]) -> bool:
    """Whether a sentence with content ``words`` is carried by a text whose content words are ``seen``: it has at
    least two, and at least 60 % of them occur there. ``claim_support`` counts the rationale's sentences the
    passages carry; the demo page highlights the passages' sentences the rationale carries."""
    return len(words) >= 2 and len(words & seen) >= _CLAIM_SHARE * len(words)


def options_support(options: Sequence[str], passages: Sequence[str]) -> list[float | None]:
    """For each option, the share of its content words that occur in the passage texts shown (``option_support``
    of that option); None for an option without content words (e.g. only stop words), which nothing can support."""
    seen = {t for p in passages for t in content_words(p)}
    out: list[float | None] = []
    for option in options:
        words = content_words(option)
        out.append(len(words & seen) / len(words) if words else None)
    return out


def support(rationale: str, option: str | None, passages: Sequence[str]) -> tuple[float, float]:
    """(claim_support, option_support) of a rationale and chosen option against the passage texts shown."""
    seen = {t for p in passages for t in content_words(p)}
    claims = [words for s in _SENTENCE.findall(rationale) if len(words := content_words(s)) >= 2]
    claim = (sum(carried(w, seen) for w in claims) / len(claims)) if claims else 0.0
    opt = (options_support([option], passages)[0] or 0.0) if option else 0.0
    return float(claim), float(opt)


_MIN_SCALE = 1e-9  # Calibrator.fit's floor for a feature's standard deviation


def raw_confidence(signals: Mapping[str, float], *, valid: bool, samples: int) -> float:
    """The uncalibrated confidence: the letter probability (averaged with the vote share over several samples)."""
    if not valid:
        return 0.0
    p = float(signals["letter_prob"])
    return float(min(1.0, max(0.0, (p + float(signals["vote_share"])) / 2 if samples > 1 else p)))


def _logit(p: float) -> float:
    p = min(1 - _EPS, max(_EPS, p))
    return math.log(p / (1 - p))


def _design(rows: Sequence[Mapping[str, float]], features: Sequence[str]) -> np.ndarray:
    cols = []
    for name in features:
        values = [float(r[name]) for r in rows]
        cols.append([_logit(v) for v in values] if name in ("letter_prob", "vote_share") else values)
    return np.asarray(cols, dtype=np.float64).T.reshape(len(rows), len(features))


@dataclass
class Calibrator:
    """Logistic regression from the signals to P(correct); features standardised with the fit data's mean/scale.

    Probability-like features (``letter_prob``, ``vote_share``) enter as logits, so that with all other weights
    at 0 it is Platt scaling of the raw confidence.
    """

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    fitted_on: dict[str, Any]

    def predict(self, signals: Mapping[str, float]) -> float:
        """P(correct) for one answer's signals (0 for an answer without a valid letter is the caller's rule)."""
        return float(self.predict_many([signals])[0])

    def predict_many(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """P(correct) for each row of signals.

        Raises:
            ArtifactError: a result is not a finite number (a broken calibrator: it is never shown as a confidence).
        """
        with np.errstate(all="ignore"):  # overflow to 0 or 1 is fine; what is not finite is refused below
            x = (_design(rows, self.features) - np.asarray(self.mean)) / np.asarray(self.scale)
            # an elementwise product and sum, not x @ w: numpy 2.4's matmul returns inf for inf - inf, which
            # hid a broken calibrator, and a BLAS kernel's result may depend on the CPU
            out = 1.0 / (1.0 + np.exp(-((x * np.asarray(self.weights)).sum(axis=1) + self.bias)))
        if not np.isfinite(out).all():
            raise ArtifactError(f"{CALIBRATION_FILE}: the calibrator gives a non-finite confidence "
                                f"({out[~np.isfinite(out)][0]}); refit it")
        return out

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, float]], correct: Sequence[bool], *,
            features: Sequence[str] = FEATURES, l2: float = 1.0, note: Mapping[str, Any] | None = None) -> Calibrator:
        """Fit on dev answers by Newton's method on the L2-penalised log-loss (bias unpenalised).

        Args:
            rows: the ``signals`` of each answer (answers without a valid letter are best left out: they get
                confidence 0 whatever the calibrator says).
            correct: whether each answer was right.
            features: which signals to use (default all of :data:`FEATURES`).
            l2: penalty on the standardised weights; with a few dozen dev questions keep it near 1.
            note: anything to record in ``fitted_on`` (split, bundle, counts).

        Raises:
            InputError: fewer than 4 answers, lengths differ, an unknown feature, or only one class.
        """
        unknown = [f for f in features if f not in FEATURES]
        if unknown:
            raise InputError(f"unknown calibration features {unknown}; known: {list(FEATURES)}", field="features")
        if len(rows) != len(correct):
            raise InputError(f"{len(rows)} signal rows but {len(correct)} labels", field="correct")
        y = np.asarray([bool(c) for c in correct], dtype=np.float64)
        if len(y) < 4 or y.min() == y.max():
            raise InputError(f"calibration needs at least 4 answers with both right and wrong ones (got {len(y)}, "
                             f"{int(y.sum())} right)", field="correct")
        x = _design(rows, features)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale < 1e-9] = 1.0  # a constant feature: weight 0 by the penalty anyway
        z = np.hstack([(x - mean) / scale, np.ones((len(y), 1))])
        w = np.zeros(z.shape[1])
        w[-1] = _logit(float(y.mean()))
        penalty = np.full(z.shape[1], float(l2))
        penalty[-1] = 0.0
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-(z @ w)))
            grad = z.T @ (p - y) + penalty * w
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(features=tuple(features), weights=tuple(float(v) for v in w[:-1]), bias=float(w[-1]),
                   mean=tuple(float(v) for v in mean), scale=tuple(float(v) for v in scale),
                   fitted_on={"answers": len(y), "correct": int(y.sum()), "l2": float(l2), **dict(note or {})})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": CALIBRATION_KIND, "version": CALIBRATION_VERSION, "model": "logistic",
                "features": list(self.features), "weights": list(self.weights), "bias": self.bias,
                "mean": list(self.mean), "scale": list(self.scale), "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = CALIBRATION_FILE) -> Calibrator:
        """Read ``to_dict`` output, checking every field.

        Raises:
            ArtifactError: another kind or version, an unknown feature, or mismatched lengths (naming ``source``).
        """
        if not isinstance(data, dict) or data.get("kind") != CALIBRATION_KIND:
            raise ArtifactError(f"{source}: not a kardlite calibrator")
        if data.get("version") != CALIBRATION_VERSION:
            raise ArtifactError(f"{source}: calibrator version {data.get('version')!r}, this kardlite reads "
                                f"{CALIBRATION_VERSION}")
        try:
            features = tuple(str(f) for f in data["features"])
            n = len(features)
            arrays = [tuple(float(v) for v in data[k]) for k in ("weights", "mean", "scale")]
            bias = float(data["bias"])
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{source}: malformed calibrator ({err})") from None
        # a scale under fit's floor (1e-9) turns any signal into an infinity, and 0 x inf into NaN
        if any(f not in FEATURES for f in features) or any(len(a) != n for a in arrays) or \
                not all(math.isfinite(v) for a in arrays for v in a) or not math.isfinite(bias) or \
                any(s < _MIN_SCALE for s in arrays[2]):
            raise ArtifactError(f"{source}: malformed calibrator (features {list(features)})")
        fitted = data.get("fitted_on") if isinstance(data.get("fitted_on"), dict) else {}
        cal = cls(features, arrays[0], bias, arrays[1], arrays[2], fitted)
        # Finite parameters can still overflow into NaN (inf - inf): try it on signals at their usual extremes.
        probes = [{f: v for f in FEATURES} for v in (0.0, 0.5, 1.0, -10.0, 10.0)]
        try:
            cal.predict_many(probes)
        except ArtifactError:
            raise ArtifactError(f"{source}: malformed calibrator (a non-finite confidence for ordinary signals)"
                                ) from None
        return cal


def install_calibrator(bundle: str | Path, calibrator: Calibrator) -> Path:
    """Store a calibrator in a bundle (``calibration.json``, listed and hashed in the manifest), atomically.

    The runtime's ``load`` then reads it, and every Answer's ``confidence`` is calibrated.

    Returns:
        The calibrator file.
    """
    from kardlite._io import atomic_write_json
    from kardlite.bundle_format import MANIFEST, read_manifest, seal_bundle, verify_bundle
    from kardlite.kb.update import rewrite_folder

    def edit(old: Path, new: Path) -> None:
        manifest = read_manifest(old)
        verify_bundle(old, manifest)
        atomic_write_json(new / CALIBRATION_FILE, calibrator.to_dict())
        seal_bundle(new, {**manifest, "calibration": CALIBRATION_FILE})

    rewrite_folder(bundle, edit, skip=(MANIFEST, CALIBRATION_FILE))
    return Path(bundle) / CALIBRATION_FILE


# ------------------------------------------------------------------------------------------------ evaluation
def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE with equal-width bins over [0, 1]: sum over bins of (share of answers) x |accuracy - mean confidence|."""
    c, y = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if len(c) == 0:
        return 0.0
    idx = np.minimum((c * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(y[sel].mean() - c[sel].mean())
    return float(total)


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy) when answering only the k most confident, for k = 1..n (ties broken by order)."""
    c, y = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    order = np.argsort(-c, kind="stable")
    k = np.arange(1, len(c) + 1)
    return k / len(c), np.cumsum(y[order]) / k


def accuracy_at_coverage(confidence: Sequence[float], correct: Sequence[bool], coverage: float) -> float:
    """Accuracy over the ``ceil(coverage * n)`` most confident answers."""
    if not 0 < coverage <= 1:
        raise InputError(f"coverage must be in (0, 1], got {coverage}", field="coverage")
    cov, acc = risk_coverage(confidence, correct)
    if len(cov) == 0:
        return 0.0
    k = max(1, math.ceil(coverage * len(cov) - 1e-9))
    return float(acc[k - 1])
