"""``kardlite demo eval``: a bundle scored on the demo's dev and test questions, through the runtime.

Each question is asked the way the web app asks it (:meth:`kardlite.runtime.Pipeline.ask` with the bundle's own
settings), so the numbers describe what a user of the page sees: accuracy (with a 95% bootstrap interval), how
often a gold passage is among the passages shown, the invalid rate (no answer letter), the forced rate (no answer
line: the letter read by likelihood, ``InferenceSettings.no_answer``) and the median answer time.

Two files, beside the bundle (not in it: a bundle's manifest lists and hashes every file, and may be signed)::

    <bundle>-eval.json    the summary; the app's About this bundle tab shows it (read_demo_eval)
    <bundle>-eval.jsonl   one row per question: split, id, gold, predicted, correct, valid, forced, gold_shown,
                          seconds, and the passages shown, so failures can be looked at one by one

The rows file is also the run's log: each answer is appended as it comes, and a re-run on the same bundle with
the same settings reuses the rows it finds (an interrupted run resumes; a run without ``--limit`` after one with
it asks only the questions not yet asked). The summary is written atomically at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from kardlite._io import atomic_write_json, read_json, sha256_text, write_jsonl
from kardlite._stats import CI_METHOD, bootstrap_ci
from kardlite.data.records import LETTERS, QAItem
from kardlite.errors import ArtifactError, InputError

EVAL_KIND = "kardlite.demo_eval"
EVAL_VERSION = 1
SPLITS: tuple[Literal["dev", "test"], ...] = ("dev", "test")
ROW_KEYS = ("split", "id", "gold", "predicted", "correct", "valid", "forced", "gold_shown", "seconds")


def eval_paths(bundle: str | Path) -> tuple[Path, Path]:
    """(summary JSON, rows JSONL) of a bundle's demo evaluation: ``<bundle>-eval.json`` and ``-eval.jsonl``
    beside the bundle folder (``exports/demo`` -> ``exports/demo-eval.json``)."""
    folder = Path(os.path.abspath(bundle))  # "." or "exports/demo/" still name the folder
    summary = folder.with_name(folder.name + "-eval.json")
    return summary, summary.with_suffix(".jsonl")


def read_demo_eval(path: str | Path) -> dict[str, Any] | None:
    """The demo evaluation summary of a bundle folder (or the summary file itself); None when there is none.

    Raises:
        ArtifactError: the file exists but is not a readable demo evaluation summary (named).
    """
    path = Path(path)
    summary = path if path.suffix == ".json" and not path.is_dir() else eval_paths(path)[0]
    if not summary.is_file():
        return None
    try:
        data = read_json(summary)
    except InputError as err:
        raise ArtifactError(f"{summary}: unreadable demo evaluation ({err})") from None
    if not isinstance(data, dict) or data.get("kind") != EVAL_KIND or data.get("version") != EVAL_VERSION \
            or not isinstance(data.get("results"), dict):
        raise ArtifactError(f"{summary}: not a kardlite demo evaluation (version {EVAL_VERSION})")
    return data


def metrics(rows: Sequence[dict[str, Any]], questions: int) -> dict[str, Any]:
    """The numbers of evaluated rows (one split, or several together): counts, rates, the accuracy's 95% CI and
    the median answer time. ``questions`` is how many the split has (more than ``n`` under ``--limit``)."""
    n = len(rows)

    def rate(key: str, value: bool = True) -> float | None:
        return round(sum(bool(r[key]) == value for r in rows) / n, 4) if n else None

    ci = bootstrap_ci([bool(r["correct"]) for r in rows])
    return {"questions": questions, "n": n,
            "correct": sum(bool(r["correct"]) for r in rows), "accuracy": rate("correct"),
            "accuracy_ci95": [round(v, 4) for v in ci] if ci else None,
            "gold_shown": sum(bool(r["gold_shown"]) for r in rows), "gold_shown_rate": rate("gold_shown"),
            "invalid": sum(not r["valid"] for r in rows), "invalid_rate": rate("valid", False),
            "forced": sum(bool(r["forced"]) for r in rows), "forced_rate": rate("forced"),
            "p50_seconds": round(statistics.median(r["seconds"] for r in rows), 3) if n else None}


def evaluate_demo(bundle: str | Path, *, splits: Iterable[str] = SPLITS, limit: int | None = None,
                  samples: int | None = None, threads: int | None = None, out: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Ask every demo dev and test question of a bundle through the runtime, and write the summary and the rows.

    Args:
        bundle: the bundle folder (any bundle: the demo questions are asked of whatever it holds).
        splits: which demo splits (``dev``, ``test``), in this order.
        limit: the first N questions of each split only (a quick look; the summary records it).
        samples: samples per question (more than 1: majority vote); default the bundle's, as in the app.
        threads: CPU threads (default: all).
        out: the summary file (default ``<bundle>-eval.json``); the rows go beside it as ``.jsonl``.
        progress: show a progress bar.

    Returns:
        The summary written to ``out``: ``results`` has one entry per split, and ``all`` over several.

    Raises:
        InputError: an unknown split, a limit or sample count below 1.
        ArtifactError: the bundle cannot be opened (see :func:`kardlite.runtime.load`).

    Example:
        >>> from kardlite.demo.evaluate import evaluate_demo
        >>> evaluate_demo("exports/demo", limit=3)["results"]["test"]["accuracy"]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from kardlite.demo import demo_questions
    from kardlite.runtime import load
    from kardlite.runtime.audit import utc_now

    splits = tuple(splits)
    if not splits or any(s not in SPLITS for s in splits) or len(set(splits)) != len(splits):
        raise InputError(f"demo eval splits must be some of {list(SPLITS)}, each once; got {list(splits)}",
                         field="split")
    for name, value in (("limit", limit), ("samples", samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be an integer >= 1, got {value!r}", field=name)
    summary_path = Path(out) if out is not None else eval_paths(bundle)[0]
    rows_path = summary_path.with_suffix(".jsonl")
    questions = {s: demo_questions(s) for s in splits}  # type: ignore[arg-type]
    todo = [(s, item) for s in splits for item in questions[s][:limit]]
    started = time.perf_counter()
    with load(bundle, threads=threads) as pipe:
        settings = pipe.settings
        samples = samples if samples is not None else 1 if settings.greedy else settings.samples  # as ask()
        # Rows are reused only from the same bundle (its manifest, which hashes every file) asked the same way.
        run = sha256_text(json.dumps({"manifest_sha256": pipe.manifest_sha256, "samples": samples,
                                      "version": EVAL_VERSION}, sort_keys=True))[:16]
        rows_path.parent.mkdir(parents=True, exist_ok=True)
        done = _resume(rows_path, run)
        rows: list[dict[str, Any]] = []
        bar = tqdm(total=len(todo), desc="demo eval", unit="question", disable=not progress)
        try:
            with open(rows_path, "a", encoding="utf-8") as log:
                for split, item in todo:
                    row = done.get((split, item.id))
                    if row is None or row.get("item") != _item_hash(item):
                        row = _ask(pipe, split, item, samples, run)
                        log.write(json.dumps(row, ensure_ascii=False) + "\n")
                        log.flush()
                    rows.append(row)
                    bar.update()
                    bar.set_postfix(accuracy=f"{sum(r['correct'] for r in rows) / len(rows):.3f}")
        finally:
            bar.close()
        manifest = pipe.manifest
    results = {s: metrics([r for r in rows if r["split"] == s], len(questions[s])) for s in splits}
    if len(splits) > 1:
        results["all"] = metrics(rows, sum(len(q) for q in questions.values()))
    student = manifest.get("student", {})
    summary = {
        "kind": EVAL_KIND, "version": EVAL_VERSION, "created": utc_now(),
        "bundle": str(bundle), "manifest_sha256": pipe.manifest_sha256,
        "mode": (manifest.get("demo") or {}).get("mode"),
        "student": f"{student.get('name', '?')} {student.get('quant', '')}".strip(),
        "settings": {"splits": list(splits), "limit": limit, "samples": samples, "n_docs": settings.n_docs,
                     "first_stage": settings.first_stage, "max_new_tokens": settings.max_new_tokens,
                     "no_answer": settings.no_answer},
        "ci_method": CI_METHOD, "rows": rows_path.name, "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    write_jsonl(rows_path, rows)  # exactly this evaluation's rows, in question order
    atomic_write_json(summary_path, summary)
    return summary


def _item_hash(item: QAItem) -> str:
    """A question's identity: a row is reused only for the same question, options, answer and gold passages."""
    return sha256_text(json.dumps([item.question, list(item.options), item.label,
                                   list(item.meta.get("passage_ids") or [])]))[:16]


def _ask(pipe: Any, split: str, item: QAItem, samples: int, run: str) -> dict[str, Any]:
    answer = pipe.ask(item.question, list(item.options), samples=samples)
    shown = [p["id"] for p in answer["passages"]]
    gold_passages = list(item.meta.get("passage_ids") or [])
    return {"split": split, "id": item.id, "gold": LETTERS[item.label] if item.label is not None else None,
            "predicted": answer["letter"], "correct": answer["index"] is not None and answer["index"] == item.label,
            "valid": answer["valid"], "forced": answer["forced"], "gold_shown": any(g in shown for g in gold_passages),
            "seconds": round(float(answer["timings"]["total"]), 3), "gold_passages": gold_passages,
            "shown_passages": shown, "votes": answer["votes"], "confidence": answer["confidence"],
            "run": run, "item": _item_hash(item)}


def _resume(path: Path, run: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of an earlier run of the same ``run`` in the rows file, keyed by (split, id); the file is rewritten
    without the others (another bundle's or settings' rows, a torn last line) so that appending continues it."""
    if not path.is_file():
        return {}
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a torn last line: the run was killed while writing it
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError):
                break
            if isinstance(row, dict) and row.get("run") == run and all(k in row for k in ROW_KEYS):
                kept[(str(row["split"]), str(row["id"]))] = row
    write_jsonl(path, kept.values())
    return kept
