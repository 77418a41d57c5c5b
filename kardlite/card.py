"""A bundle's evaluation card (``card.json``): what the bundle is for, what it cannot do, and what was measured.

Every bundle carries one. ``export_bundle`` writes it with no measured numbers (``status: "unmeasured"``);
``kardlite eval --bundle`` and ``bench/confidence.py --install`` record evaluations in it. Each evaluation names
its task and the data files with their sha256, the number of questions, the accuracy with its 95% interval
(Wilson score), the calibration of the bundle's confidence (ECE, raw and as shipped; accuracy when answering only
the most confident 100/80/50 %), the inference settings measured, when and with which kardlite. The card is a
listed file of the bundle: the manifest holds its sha256, so the digest and a signature cover it, and a card
changed by hand fails verification like any other file.

An evaluation also records digests of the bundle parts it measured (the student, the knowledge base, the
reranker): after ``kardlite kb add`` or a new student, :func:`stale_parts` names what changed since, and the card
says so wherever it is shown (``kardlite info``, the app's About tab, :attr:`Pipeline.card
<kardlite.runtime.pipeline.Pipeline.card>`).

Plain JSON, read with every field checked (:meth:`EvaluationCard.from_dict`); torch-free.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kardlite._io import sha256_file, unique_keys
from kardlite.errors import ArtifactError, InputError
from kardlite.settings import InferenceSettings

CARD_FILE = "card.json"
CARD_KIND = "kardlite.card"
CARD_VERSION = 1
CALIBRATION_FILE = "calibration.json"  # kardlite.runtime.confidence.CALIBRATION_FILE (not imported: numpy-free)
COVERAGES = ("1.0", "0.8", "0.5")  # accuracy when answering only this share of questions, most confident first
ECE_BINS = 10
_Z95 = 1.959963984540054  # the standard normal's 97.5% quantile

Status = Literal["measured", "unmeasured"]

INTENDED_USE = ("Research and teaching: answering multiple-choice questions with a small student model that reasons "
                "over passages retrieved from its knowledge base, offline on a CPU, and studying how well it does. "
                "Its accuracy is known only for the tasks this card names.")
KNOWN_LIMITS = (
    "A research tool, not a medical device: its answers are not medical, legal or other professional advice and "
    "must not be used to make decisions about people.",
    "A small student model: it is often wrong, and its rationales can read well while being wrong.",
    "Accuracy and calibration are measured on the named task and data only; on other questions they are unknown.",
    "It knows only what its knowledge base holds, and cannot tell an outdated or wrong passage from a right one.",
    "English multiple-choice questions like the training task's; free-text answers are not scored.",
)
UNMEASURED_NOTE = ("no measured numbers: nothing has been evaluated with this bundle yet (measure it with "
                   "`kardlite eval --bundle BUNDLE --tasks FILE --out DIR`)")


# ---------------------------------------------------------------------------------------------- the card
@dataclass(frozen=True)
class DataFile:
    """One data file an evaluation read: its name (no folder: cards travel), sha256 and size."""

    name: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Task:
    """What was measured: the task's name and its data files."""

    name: str
    files: tuple[DataFile, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """How well the bundle's confidence matches its accuracy on an evaluation's questions.

    Attributes:
        ece_raw: expected calibration error (10 equal bins) of the raw confidence (the student's letter probability).
        ece: the same of the confidence the bundle reports (calibrated when it carries a calibrator).
        accuracy_at_coverage: accuracy over the most confident share of the questions (keys ``"1.0"``, ``"0.8"``,
            ``"0.5"``), ranked by the reported confidence.
        calibrator_sha256: the sha256 of the ``calibration.json`` that was measured; None = raw confidence.
        bins: ECE bins.
    """

    ece_raw: float
    ece: float
    accuracy_at_coverage: dict[str, float]
    calibrator_sha256: str | None = None
    bins: int = ECE_BINS


@dataclass(frozen=True)
class Evaluation:
    """One measurement of the bundle on one split of one task.

    Attributes:
        split: its label in the card (``dev``, ``test``, ...); recording another evaluation of the same split
            replaces this one.
        task: the task and its data files.
        n, correct: questions and right answers (an answer withheld or without a valid letter is wrong).
        accuracy, ci_low, ci_high: correct / n and its 95% interval (Wilson score).
        settings: the inference settings the questions were answered with.
        measured_on: digests of the bundle parts measured (see :func:`bundle_parts`).
        measured_at: UTC time, ISO 8601.
        kardlite_version: the kardlite that measured it.
        measured_by: the command (``kardlite eval --bundle``, ``bench/confidence.py``).
        invalid_rate, forced_rate: share of answers without a valid letter, and of letters forced by likelihood.
        calibration: the confidence's calibration on these questions, when measured.
    """

    split: str
    task: Task
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    settings: InferenceSettings
    measured_on: dict[str, str]
    measured_at: str
    kardlite_version: str
    measured_by: str
    invalid_rate: float | None = None
    forced_rate: float | None = None
    calibration: Calibration | None = None
    ci_method: str = "wilson-95"


@dataclass(frozen=True)
class EvaluationCard:
    """A bundle's evaluation card. ``status`` is ``measured`` when it holds at least one evaluation.

    Example:
        >>> card = EvaluationCard.unmeasured("obqa-q4")
        >>> card.status, card.measured
        ('unmeasured', False)
    """

    bundle: str
    evaluations: tuple[Evaluation, ...] = ()
    intended_use: str = INTENDED_USE
    known_limits: tuple[str, ...] = KNOWN_LIMITS
    note: str | None = None  # e.g. why a bundle has no card.json of its own

    @classmethod
    def unmeasured(cls, bundle: str, *, note: str | None = None) -> EvaluationCard:
        """A card with no measured numbers (what ``export_bundle`` writes)."""
        return cls(bundle=bundle, note=note)

    @property
    def status(self) -> Status:
        return "measured" if self.evaluations else "unmeasured"

    @property
    def measured(self) -> bool:
        return bool(self.evaluations)

    def evaluation(self, split: str) -> Evaluation | None:
        """The evaluation of ``split``, or None."""
        return next((e for e in self.evaluations if e.split == split), None)

    def with_evaluations(self, evaluations: Iterable[Evaluation]) -> EvaluationCard:
        """A copy with ``evaluations`` recorded: each replaces the one of its split, others are kept (in order)."""
        new = list(evaluations)
        splits = [e.split for e in new]
        if len(set(splits)) != len(splits):
            raise InputError(f"two evaluations of one split in {splits}", field="split")
        kept = [e for e in self.evaluations if e.split not in splits]
        return replace(self, evaluations=tuple(kept + new), note=None)

    # ------------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"kind": CARD_KIND, "version": CARD_VERSION, "bundle": self.bundle, "status": self.status,
                "note": self.note if self.measured else (self.note or UNMEASURED_NOTE),
                "intended_use": self.intended_use, "known_limits": list(self.known_limits),
                "evaluations": [_evaluation_dict(e) for e in self.evaluations]}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = CARD_FILE) -> EvaluationCard:
        """Read :meth:`to_dict` output, checking every field.

        Raises:
            ArtifactError: another kind or version, or a bad field, named (``evaluations[0].ci_low``) with
                ``source``.
        """
        r = _Reader(source)
        if not isinstance(data, dict) or data.get("kind") != CARD_KIND:
            raise ArtifactError(f"{source}: not a kardlite evaluation card")
        if data.get("version") != CARD_VERSION:
            raise ArtifactError(f"{source}: card version {data.get('version')!r}, this kardlite reads {CARD_VERSION}")
        raw_evals = r.get(data, "evaluations", list)
        evaluations = tuple(_read_evaluation(r, e, f"evaluations[{i}]") for i, e in enumerate(raw_evals))
        splits = [e.split for e in evaluations]
        if len(set(splits)) != len(splits):
            raise ArtifactError(f"{source}: field 'evaluations' records one split twice ({splits})")
        status = r.get(data, "status", str)
        if status != ("measured" if evaluations else "unmeasured"):
            raise ArtifactError(f"{source}: field 'status' is {status!r} with {len(evaluations)} evaluation(s)")
        limits = r.get(data, "known_limits", list)
        for i, limit in enumerate(limits):
            r.check(isinstance(limit, str) and limit.strip(), f"known_limits[{i}]", limit, "a non-empty string")
        note = data.get("note")
        r.check(note is None or isinstance(note, str), "note", note, "a string or null")
        return cls(bundle=r.get(data, "bundle", str), evaluations=evaluations,
                   intended_use=r.get(data, "intended_use", str), known_limits=tuple(limits),
                   note=None if note == UNMEASURED_NOTE else note)


def _evaluation_dict(e: Evaluation) -> dict[str, Any]:
    cal = e.calibration
    return {"split": e.split,
            "task": {"name": e.task.name, "files": [{"name": f.name, "sha256": f.sha256, "bytes": f.bytes}
                                                    for f in e.task.files]},
            "n": e.n, "correct": e.correct, "accuracy": e.accuracy, "ci_low": e.ci_low, "ci_high": e.ci_high,
            "ci_method": e.ci_method, "invalid_rate": e.invalid_rate, "forced_rate": e.forced_rate,
            "calibration": None if cal is None else {
                "ece_raw": cal.ece_raw, "ece": cal.ece, "accuracy_at_coverage": dict(cal.accuracy_at_coverage),
                "bins": cal.bins, "calibrator_sha256": cal.calibrator_sha256},
            "settings": e.settings.to_dict(), "measured_on": dict(e.measured_on), "measured_at": e.measured_at,
            "kardlite_version": e.kardlite_version, "measured_by": e.measured_by}


class _Reader:
    """Field checks that name the card file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def check(self, ok: Any, name: str, value: Any, want: str) -> None:
        if not ok:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ArtifactError(f"{self.source}: field '{name}' is {shown}; expected {want}")

    def get(self, data: Mapping[str, Any], key: str, kind: type, where: str = "") -> Any:
        name = f"{where}.{key}" if where else key
        if key not in data:
            raise ArtifactError(f"{self.source}: field '{name}' is missing")
        value = data[key]
        want = {str: "a non-empty string", list: "a list", dict: "an object", int: "an integer >= 0"}[kind]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is str:
            ok = ok and bool(value.strip())
        if kind is int:
            ok = ok and value >= 0
        self.check(ok, name, value, want)
        return value

    def share(self, data: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> float | None:
        name = f"{where}.{key}"
        if key not in data:
            raise ArtifactError(f"{self.source}: field '{name}' is missing")
        value = data[key]
        if value is None and optional:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and \
            0.0 <= value <= 1.0
        self.check(ok, name, value, "a number in [0, 1]" + (" or null" if optional else ""))
        return float(value)

    def sha(self, value: Any, name: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        ok = isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
        self.check(ok, name, value, "a sha256 (64 lowercase hex digits)" + (" or null" if optional else ""))
        return value


def _read_evaluation(r: _Reader, data: Any, where: str) -> Evaluation:
    r.check(isinstance(data, dict), where, data, "an object")
    task = r.get(data, "task", dict, where)
    files = []
    for i, f in enumerate(r.get(task, "files", list, f"{where}.task")):
        at = f"{where}.task.files[{i}]"
        r.check(isinstance(f, dict), at, f, "an object")
        files.append(DataFile(r.get(f, "name", str, at), r.sha(f.get("sha256"), f"{at}.sha256"),  # type: ignore
                              r.get(f, "bytes", int, at)))
    n, correct = r.get(data, "n", int, where), r.get(data, "correct", int, where)
    r.check(n >= 1, f"{where}.n", n, "an integer >= 1")
    r.check(correct <= n, f"{where}.correct", correct, f"an integer <= n ({n})")
    accuracy = r.share(data, "accuracy", where)
    r.check(abs(accuracy - correct / n) <= 1e-6, f"{where}.accuracy", accuracy, f"correct / n = {correct / n:.6f}")
    low, high = r.share(data, "ci_low", where), r.share(data, "ci_high", where)
    r.check(low <= accuracy + 1e-9, f"{where}.ci_low", low, f"at most the accuracy {accuracy}")
    r.check(high >= accuracy - 1e-9, f"{where}.ci_high", high, f"at least the accuracy {accuracy}")
    cal = data.get("calibration")
    calibration = None
    if cal is not None:
        at = f"{where}.calibration"
        r.check(isinstance(cal, dict), at, cal, "an object or null")
        cov = r.get(cal, "accuracy_at_coverage", dict, at)
        r.check(sorted(cov) == sorted(COVERAGES), f"{at}.accuracy_at_coverage", sorted(cov),
                f"the keys {list(COVERAGES)}")
        bins = r.get(cal, "bins", int, at)
        r.check(bins >= 1, f"{at}.bins", bins, "an integer >= 1")
        calibration = Calibration(
            ece_raw=r.share(cal, "ece_raw", at), ece=r.share(cal, "ece", at),  # type: ignore[arg-type]
            accuracy_at_coverage={k: r.share(cov, k, f"{at}.accuracy_at_coverage") for k in COVERAGES},  # type: ignore
            calibrator_sha256=r.sha(cal.get("calibrator_sha256"), f"{at}.calibrator_sha256", optional=True),
            bins=bins)
    try:
        settings = InferenceSettings.from_dict(r.get(data, "settings", dict, where), where=f"{where}.settings")
    except InputError as err:
        raise ArtifactError(f"{r.source}: {err}") from None
    parts = r.get(data, "measured_on", dict, where)
    for key, value in parts.items():
        r.sha(value, f"{where}.measured_on.{key}")
    return Evaluation(
        split=r.get(data, "split", str, where), task=Task(r.get(task, "name", str, f"{where}.task"), tuple(files)),
        n=n, correct=correct, accuracy=accuracy, ci_low=low, ci_high=high, settings=settings,  # type: ignore
        measured_on=dict(parts), measured_at=r.get(data, "measured_at", str, where),
        kardlite_version=r.get(data, "kardlite_version", str, where),
        measured_by=r.get(data, "measured_by", str, where),
        invalid_rate=r.share(data, "invalid_rate", where, optional=True),
        forced_rate=r.share(data, "forced_rate", where, optional=True), calibration=calibration,
        ci_method=r.get(data, "ci_method", str, where))


# ---------------------------------------------------------------------------------------------- measuring
def wilson_interval(correct: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): sound at small n and near 0 or 1, where the
    normal approximation leaves [0, 1]; no resampling, so the same numbers give the same interval.

    Example:
        >>> [round(v, 3) for v in wilson_interval(61, 100)]
        [0.512, 0.7]
    """
    if n < 1 or not 0 <= correct <= n:
        raise InputError(f"need 0 <= correct <= n and n >= 1, got correct {correct}, n {n}", field="n")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n right the interval touches 0 or 1 exactly (rounding would leave 1e-16 off)
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == n else min(1.0, centre + half))


def data_files(paths: Iterable[str | Path]) -> tuple[DataFile, ...]:
    """Name, sha256 and size of each data file an evaluation read."""
    out = []
    for path in map(Path, paths):
        try:
            out.append(DataFile(path.name, sha256_file(path), path.stat().st_size))
        except OSError as err:
            raise InputError(f"cannot read ({err.strerror})", path=path) from None
    return tuple(out)


def bundle_parts(manifest: Mapping[str, Any]) -> dict[str, str]:
    """A digest of each part of a bundle that decides its answers, from the manifest's file list: one per top-level
    entry (``student.gguf``, ``kb``, ``reranker``), over its files' paths and sha256s. The card and the calibrator
    are left out (an evaluation's accuracy depends on neither; a calibration names its calibrator itself)."""
    groups: dict[str, list[str]] = {}
    for rel, info in sorted(manifest.get("files", {}).items()):
        top = rel.split("/", 1)[0]
        if top in (CARD_FILE, CALIBRATION_FILE):
            continue
        groups.setdefault(top, []).append(f"{rel} {info.get('sha256') if isinstance(info, Mapping) else None}")
    return {top: hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest() for top, lines in groups.items()}


def calibrator_sha256(manifest: Mapping[str, Any]) -> str | None:
    """The listed sha256 of the bundle's calibrator, or None when its confidence is raw."""
    if not manifest.get("calibration"):
        return None
    info = manifest.get("files", {}).get(CALIBRATION_FILE)
    return info.get("sha256") if isinstance(info, Mapping) else None


def measure(correct: Sequence[bool], *, split: str, task: Task, settings: InferenceSettings,
            manifest: Mapping[str, Any], measured_by: str, invalid: Sequence[bool] | None = None,
            forced: Sequence[bool] | None = None, confidence: Sequence[float] | None = None,
            confidence_raw: Sequence[float] | None = None, calibrator: str | None = None) -> Evaluation:
    """An :class:`Evaluation` from per-question outcomes.

    Args:
        correct: whether each answer was right (withheld and invalid answers are wrong).
        split, task, settings, measured_by: as in :class:`Evaluation`.
        manifest: the manifest of the bundle as it was measured (its parts' digests are recorded).
        invalid, forced: per question, whether its answer had no valid letter / a forced one.
        confidence, confidence_raw: per question, the reported and the raw confidence; both given, the calibration
            is measured.
        calibrator: the sha256 of the calibrator that made ``confidence`` (default: the manifest's; None there =
            raw).

    Raises:
        InputError: no questions, or sequences of different lengths.
    """
    n = len(correct)
    if n == 0:
        raise InputError("no answers to measure", field="correct")
    for name, seq in (("invalid", invalid), ("forced", forced), ("confidence", confidence),
                      ("confidence_raw", confidence_raw)):
        if seq is not None and len(seq) != n:
            raise InputError(f"{len(seq)} values for {n} answers", field=name)
    right = sum(bool(c) for c in correct)
    low, high = wilson_interval(right, n)
    calibration = None
    if confidence is not None and confidence_raw is not None:
        from kardlite.runtime.confidence import accuracy_at_coverage, expected_calibration_error

        calibration = Calibration(
            ece_raw=round(expected_calibration_error(confidence_raw, correct, ECE_BINS), 6),
            ece=round(expected_calibration_error(confidence, correct, ECE_BINS), 6),
            accuracy_at_coverage={k: round(accuracy_at_coverage(confidence, correct, float(k)), 6) for k in COVERAGES},
            calibrator_sha256=calibrator if calibrator is not None else calibrator_sha256(manifest))
    import kardlite

    return Evaluation(split=split, task=task, n=n, correct=right, accuracy=round(right / n, 6),
                      ci_low=round(low, 6), ci_high=round(high, 6), settings=settings,
                      measured_on=bundle_parts(manifest), measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
                      kardlite_version=kardlite.__version__, measured_by=measured_by,
                      invalid_rate=None if invalid is None else round(sum(map(bool, invalid)) / n, 6),
                      forced_rate=None if forced is None else round(sum(map(bool, forced)) / n, 6),
                      calibration=calibration)


# ---------------------------------------------------------------------------------------------- in a bundle
def read_card(bundle: str | Path, manifest: Mapping[str, Any] | None = None) -> EvaluationCard:
    """The card of a bundle, checked against the sha256 its manifest lists.

    A bundle exported before cards existed (no ``card`` in its manifest) gets an unmeasured card that says so.

    Args:
        bundle: the bundle folder.
        manifest: its manifest if already read (:func:`kardlite.bundle_format.read_manifest`).

    Raises:
        ArtifactError: the card is not the listed ``card.json``, differs from its listed sha256, or has a bad
            field (named).
    """
    from kardlite.bundle_format import MANIFEST, read_manifest

    bundle = Path(bundle)
    manifest = manifest if manifest is not None else read_manifest(bundle)
    rel = manifest.get("card")
    if rel is None:
        return EvaluationCard.unmeasured(str(manifest.get("name") or bundle.name), note=(
            "this bundle was exported before evaluation cards: " + UNMEASURED_NOTE))
    info = manifest.get("files", {}).get(CARD_FILE)
    if rel != CARD_FILE or not isinstance(info, Mapping):
        raise ArtifactError(f"{bundle / MANIFEST}: card {rel!r} is not a listed {CARD_FILE}")
    path = bundle / CARD_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{path}: unreadable ({err.strerror})") from None
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise ArtifactError(f"{path}: sha256 differs from {MANIFEST}: the card was altered; re-export the bundle or "
                            "measure it again")
    try:
        parsed = json.loads(data.decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ArtifactError(f"{path}: unreadable ({err})") from None
    return EvaluationCard.from_dict(parsed, source=str(path))


def write_card(bundle: str | Path, card: EvaluationCard) -> None:
    """Write ``card.json`` into a bundle folder being built and name it in no manifest: for ``export_bundle``,
    which seals the folder afterwards. A finished bundle is changed with :func:`record_evaluations`."""
    from kardlite._io import atomic_write_json

    atomic_write_json(Path(bundle) / CARD_FILE, card.to_dict())


def record_evaluations(bundle: str | Path, evaluations: Sequence[Evaluation], *,
                       calibrator: Any = None) -> EvaluationCard:
    """Record evaluations in a bundle's card (each replaces the one of its split), atomically.

    The bundle is checked first, the new card (and, given, the calibrator's ``calibration.json``) is written into
    a copy of the folder whose manifest is re-sealed, and the copy is swapped in (``kardlite.kb.update
    .rewrite_folder``): a crash leaves the old bundle or the new one. A signature is dropped (the manifest
    changed); sign again.

    Args:
        bundle: the bundle folder.
        evaluations: what to record (from :func:`measure`).
        calibrator: a :class:`~kardlite.runtime.confidence.Calibrator` to install with them, whose confidence the
            evaluations' calibration measured; its sha256 is recorded in each of them.

    Returns:
        The card as written.

    Raises:
        ArtifactError: the bundle does not verify, or it changed since an evaluation measured it (a part's digest
            differs): measure again.
    """
    from kardlite._io import atomic_write_json
    from kardlite.bundle_format import MANIFEST, read_manifest, seal_bundle, verify_bundle
    from kardlite.kb.update import rewrite_folder

    def edit(old: Path, new: Path) -> EvaluationCard:
        manifest = read_manifest(old)
        verify_bundle(old, manifest)
        now = bundle_parts(manifest)
        for e in evaluations:
            changed = sorted(k for k in set(now) | set(e.measured_on) if now.get(k) != e.measured_on.get(k))
            if changed:
                raise ArtifactError(f"{old}: {', '.join(changed)} changed since the {e.split!r} evaluation measured "
                                    "it; measure the bundle again")
        out = dict(manifest)
        recorded = list(evaluations)
        if calibrator is not None:
            atomic_write_json(new / CALIBRATION_FILE, calibrator.to_dict())
            out["calibration"] = CALIBRATION_FILE
            sha = sha256_file(new / CALIBRATION_FILE)
            recorded = [e if e.calibration is None else replace(e, calibration=replace(e.calibration,
                                                                                        calibrator_sha256=sha))
                        for e in recorded]
        card = read_card(old, manifest).with_evaluations(recorded)
        write_card(new, card)
        out["card"] = CARD_FILE
        seal_bundle(new, out)
        return card

    return rewrite_folder(bundle, edit, skip=(MANIFEST, CARD_FILE, CALIBRATION_FILE) if calibrator is not None
                          else (MANIFEST, CARD_FILE))


# ---------------------------------------------------------------------------------------------- reading it
def stale_parts(evaluation: Evaluation, manifest: Mapping[str, Any]) -> list[str]:
    """The bundle parts that changed since ``evaluation`` measured them (e.g. ``["kb"]`` after ``kb add``)."""
    now = bundle_parts(manifest)
    return sorted(k for k in set(now) | set(evaluation.measured_on) if now.get(k) != evaluation.measured_on.get(k))


def calibrator_changed(evaluation: Evaluation, manifest: Mapping[str, Any]) -> bool:
    """Whether the bundle's confidence is no longer the one whose calibration ``evaluation`` measured."""
    cal = evaluation.calibration
    return cal is not None and cal.calibrator_sha256 != calibrator_sha256(manifest)


def settings_differences(evaluation: Evaluation, settings: InferenceSettings) -> dict[str, tuple[Any, Any]]:
    """Settings measured that differ from the bundle's: ``{field: (measured, bundle's)}``."""
    a, b = evaluation.settings.to_dict(), settings.to_dict()
    return {k: (a[k], b[k]) for k in a if a[k] != b.get(k)}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


@dataclass(frozen=True)
class Line:
    """One line of a card's summary: its text, indent level (0: an evaluation or section, 1: under it), whether it
    warns, and the label of a section (``Intended use``, ``Known limits``)."""

    text: str
    level: int = 0
    warning: bool = False
    label: str | None = None

    def plain(self) -> str:
        """The line as ``kardlite info`` prints it (without its indent)."""
        text = f"{self.label}: {self.text}" if self.label else self.text
        return ("warning: " + text if self.warning else text).rstrip()


def summary(card: EvaluationCard, manifest: Mapping[str, Any] | None = None,
            settings: InferenceSettings | None = None) -> list[Line]:
    """The card in plain lines, as ``kardlite info`` prints it and the app's About tab shows it.

    Args:
        card: the card.
        manifest: the bundle's manifest: evaluations of parts that changed since are flagged.
        settings: the bundle's inference settings: evaluations made with other settings are flagged.
    """
    lines = []
    if not card.measured:
        lines.append(Line(card.note or UNMEASURED_NOTE, warning=True))
    for e in card.evaluations:
        files = ", ".join(f"{f.name} (sha256 {f.sha256[:12]})" for f in e.task.files) or "no file recorded"
        rates = "".join(f", {label} {_pct(v)}" for label, v in (("invalid", e.invalid_rate), ("forced", e.forced_rate))
                        if v)
        lines.append(Line(f"{e.split}: accuracy {_pct(e.accuracy)} (95% CI {_pct(e.ci_low)}-{_pct(e.ci_high)}), "
                          f"{e.correct}/{e.n} questions{rates}"))
        lines.append(Line(f"task {e.task.name}: {files}", 1))
        if e.calibration is not None:
            c = e.calibration
            cov = "/".join(_pct(c.accuracy_at_coverage[k]).rstrip("%") for k in COVERAGES)
            ece = (f"ECE {c.ece:.3f} calibrated (raw {c.ece_raw:.3f})" if c.calibrator_sha256
                   else f"ECE {c.ece_raw:.3f} (raw confidence, no calibrator)")
            lines.append(Line(f"calibration: {ece}; accuracy at 100/80/50% coverage {cov}% (most confident first)",
                              1))
        else:
            lines.append(Line("calibration: not measured", 1))
        s = e.settings
        lines.append(Line(f"settings: {s.mode}, {s.n_docs} passages, first stage {s.first_stage}"
                          f"{', reranked' if s.rerank else ''}, "
                          f"{'greedy' if s.greedy else f'{s.samples} samples'}, answer {s.answer_scoring}", 1))
        lines.append(Line(f"measured {e.measured_at} by {e.measured_by} (kardlite {e.kardlite_version})", 1))
        if settings is not None and (diff := settings_differences(e, settings)):
            shown = ", ".join(f"{k} {a} (bundle: {b})" for k, (a, b) in diff.items())
            lines.append(Line(f"measured with other settings than the bundle's: {shown}", 1, True))
        if manifest is not None:
            if changed := stale_parts(e, manifest):
                lines.append(Line(f"stale: {', '.join(changed)} changed since it was measured", 1, True))
            if calibrator_changed(e, manifest):
                lines.append(Line("stale calibration: the bundle's calibrator changed since it was measured", 1, True))
    lines.append(Line(card.intended_use, label="Intended use"))
    lines.append(Line("", label="Known limits"))
    lines += [Line(limit, 1) for limit in card.known_limits]
    return lines
