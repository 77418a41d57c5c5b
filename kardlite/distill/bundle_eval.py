"""Evaluate a bundle as it ships: every question through the runtime (``load(bundle).ask``), with the bundle's own
settings, knowledge base, reranker, GGUF student and calibrator; the numbers go into its evaluation card.

``kardlite eval --model ... --backend gguf`` scores a student the way the runtime would; this scores the runtime
itself, so nothing of the shipped system is re-assembled by hand, and it needs no torch. Results are written like
:func:`kardlite.distill.evaluate.evaluate`'s (``predictions.jsonl`` append-only, so an interrupted run resumes;
``metrics.json``; ``eval.json``), so ``kardlite eval report`` puts a bundle beside students. On top, each row keeps
the answer's confidence, and the metrics hold the 95% interval and the calibration (:mod:`kardlite.card`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kardlite._io import atomic_write_json
from kardlite.answers import stated_answers
from kardlite.bundle_format import MANIFEST, bundle_settings, read_manifest
from kardlite.card import (
    Evaluation,
    EvaluationCard,
    Task,
    bundle_parts,
    calibrator_sha256,
    measure,
    record_evaluations,
)
from kardlite.data.records import LETTERS, QAItem
from kardlite.distill.report import METRICS, PREDICTIONS, SETTINGS, _read_done, summarize
from kardlite.errors import ArtifactError, InputError

MEASURED_BY = "kardlite eval --bundle"
_FREE = ("name", "bundle")  # may change between sessions of one run (the bundle's parts are compared)


def evaluate_bundle(bundle: str | Path, items: Sequence[QAItem], out_dir: str | Path, *, task: Task,
                    split: str = "test", write_card: bool = True, threads: int | None = None,
                    name: str | None = None) -> tuple[dict[str, Any], EvaluationCard | None]:
    """Answer labelled questions with a bundle, write the results to ``out_dir`` and (by default) record the
    evaluation in the bundle's card.

    Args:
        bundle: the bundle folder.
        items: questions with gold labels and options.
        out_dir: results folder; re-running with the same bundle and questions resumes.
        task: the task's name and data files, for the card (:func:`kardlite.card.data_files`).
        split: the evaluation's label in the card (``dev``, ``test``); it replaces an earlier one of that label.
        write_card: record the evaluation in the bundle's card (which re-seals its manifest and so drops a
            signature); False only writes ``out_dir``.
        threads: CPU threads for the runtime.
        name: the system's name in reports; default: the output folder's name.

    Returns:
        The metrics (also in ``metrics.json``) and the card as written (None without ``write_card``).

    Raises:
        InputError: no questions, a question without a gold label or options.
        ArtifactError: the bundle does not load or verify; ``out_dir`` holds results of another bundle, other
            settings or other questions; the bundle changed before the card was written.
    """
    from tqdm.auto import tqdm

    from kardlite.runtime import load

    if not items:
        raise InputError("no questions to evaluate", field="items")
    for item in items:
        if item.label is None or not item.options:
            raise InputError(f"item {item.id!r} has no gold label or no options", field="label")
    out = Path(out_dir)
    # What is measured, from the manifest alone: a finished run (re-run to record its card again) or one made with
    # another bundle or other questions is settled before the model is loaded.
    manifest = read_manifest(bundle)
    s, _ = bundle_settings(manifest, where=str(Path(bundle) / MANIFEST))
    reranked = bool(s.rerank and (manifest.get("retrieval") or {}).get("reranker"))
    evaluation_settings = {
        **s.to_dict(), "name": name or out.name, "bundle": str(bundle), "split": split,
        "task": {"name": task.name, "files": [f.sha256 for f in task.files]},
        "measured_on": bundle_parts(manifest), "calibrator": calibrator_sha256(manifest),
        "retriever": "reranker" if reranked else s.first_stage, "samples": 1 if s.greedy else s.samples,
        "items": [it.id for it in items]}
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        diff = [k for k in evaluation_settings if k not in _FREE and old.get(k) != evaluation_settings[k]]
        if diff:
            raise ArtifactError(f"{out}: holds results of another bundle, settings or questions "
                                f"({', '.join(diff)}); use a new output folder")
    atomic_write_json(path, evaluation_settings)
    done = _read_done(out / PREDICTIONS)
    todo = [it for it in items if it.id not in done]
    started = time.time()
    if todo:
        with load(bundle, threads=threads) as pipe:
            if bundle_parts(pipe.manifest) != evaluation_settings["measured_on"] or pipe.settings != s:
                raise ArtifactError(f"{bundle}: changed while the evaluation started; run it again")
            with open(out / PREDICTIONS, "a", encoding="utf-8") as fh, \
                    tqdm(total=len(items), initial=len(items) - len(todo), desc="eval bundle") as bar:
                for item in todo:
                    t0 = time.perf_counter()
                    answer = pipe.ask(item.question, list(item.options))
                    row = _row(item, answer, time.perf_counter() - t0)
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()
                    done[item.id] = row
                    bar.update(1)
    rows = [done[it.id] for it in items]
    evaluation = measure([r["correct"] for r in rows], split=split, task=task, settings=s, manifest=manifest,
                         measured_by=MEASURED_BY, invalid=[r["invalid"] for r in rows],
                         forced=[r["forced"] for r in rows], confidence=[r["confidence"] for r in rows],
                         confidence_raw=[r["confidence_raw"] for r in rows])
    metrics = {**summarize(rows, evaluation_settings), "bundle": str(bundle), "split": split,
               "ci_low": evaluation.ci_low, "ci_high": evaluation.ci_high, "ci_method": evaluation.ci_method,
               "calibration": _calibration_dict(evaluation), "seconds_this_session": round(time.time() - started, 1)}
    atomic_write_json(out / METRICS, metrics)
    card = record_evaluations(bundle, [evaluation]) if write_card else None
    return metrics, card


def _calibration_dict(evaluation: Evaluation) -> dict[str, Any] | None:
    c = evaluation.calibration
    return None if c is None else {"ece_raw": c.ece_raw, "ece": c.ece, "accuracy_at_coverage": c.accuracy_at_coverage,
                                   "calibrator_sha256": c.calibrator_sha256}


def _row(item: QAItem, answer: Any, seconds: float) -> dict[str, Any]:
    """One results line, shaped like :func:`kardlite.distill.evaluate.evaluate`'s, with the answer's confidence."""
    samples = answer["samples"] or [answer["text"]]
    if answer["votes"]:
        votes: list[str | None] = [k for k, v in answer["votes"].items() for _ in range(v)]
        votes += [None] * (len(samples) - len(votes))
    else:
        votes = [answer["letter"]]
    n = len(item.options)
    return {"id": item.id, "gold": LETTERS[item.label], "prediction": answer["letter"],  # type: ignore[index]
            "correct": answer["index"] == item.label, "invalid": not answer["valid"], "forced": answer["forced"],
            "contradiction": any(len(set(stated_answers(t, n, options=item.options))) > 1 for t in samples),
            "votes": votes, "outputs": samples, "rationale": answer["rationale"],
            "confidence": answer["confidence"], "confidence_raw": answer["confidence_raw"],
            "signals": answer["signals"], "passages": [p["id"] for p in answer["passages"]],
            "n_prompt_tokens": answer["tokens"]["prompt"], "trimmed": answer["tokens"]["passages_trimmed"],
            "seconds": round(seconds, 3)}
