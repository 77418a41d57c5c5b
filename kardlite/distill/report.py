"""An evaluation's results: its files (predictions, metrics, settings), the metrics of its rows, and reports that
put several systems side by side."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kardlite._io import atomic_write_text
from kardlite.errors import ArtifactError

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SETTINGS = "eval.json"


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already written; a torn last line (a crash mid-write) is cut off so appending stays valid."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    done: dict[str, dict[str, Any]] = {}
    good_end = 0
    for line in data.splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith(b"\n"):
            break
        done[row["id"]] = row
        good_end += len(line)
    if good_end != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done


def summarize(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Metrics of evaluated rows: accuracy, invalid/forced/contradiction rates, letter counts."""
    n = len(rows)
    correct = sum(r["correct"] for r in rows)
    invalid = sum(r["invalid"] for r in rows)
    forced = sum(bool(r.get("forced")) for r in rows)
    all_votes = [v for r in rows for v in r["votes"]]
    return {
        "name": settings["name"], "mode": settings["mode"], "n": n,
        "accuracy": round(correct / n, 4) if n else None, "correct": correct,
        "invalid_rate": round(invalid / n, 4) if n else None, "invalid": invalid,
        "forced_rate": round(forced / n, 4) if n else None, "forced": forced,
        "contradiction_rate": round(sum(bool(r.get("contradiction")) for r in rows) / n, 4) if n else None,
        "invalid_output_rate": round(sum(v is None for v in all_votes) / max(len(all_votes), 1), 4),
        "letters": dict(sorted(Counter(r["prediction"] or "-" for r in rows).items())),
        "decoding": settings["decoding"] or "likelihood", "samples": settings["samples"],
        "answer_scoring": settings.get("answer_scoring"), "max_new_tokens": settings.get("max_new_tokens"),
        "retriever": settings["retriever"], "n_docs": settings["n_docs"],
        "max_source_tokens": settings["max_source_tokens"],
        "trimmed_prompts": sum(r["trimmed"] for r in rows),
        "mean_prompt_tokens": round(sum(r["n_prompt_tokens"] for r in rows) / n, 1) if n else None,
    }


# ----------------------------------------------------------------------------- reports

def _partial_metrics(run_dir: Path) -> dict[str, Any]:
    """Metrics of an evaluation that has not finished, from the rows written so far (marked partial)."""
    settings = json.loads((run_dir / SETTINGS).read_text(encoding="utf-8"))
    rows = list(_read_done(run_dir / PREDICTIONS).values())
    metrics = {**summarize(rows, settings), "student": settings.get("student"), "items": settings["items"]}
    metrics["name"] = f"{settings['name']} (partial: {len(rows)}/{len(settings['items'])})"
    return metrics


_REPORT_COLUMNS = ("name", "mode", "student", "retriever", "n_docs", "decoding", "answer_scoring", "n", "accuracy",
                   "invalid_rate", "forced_rate", "contradiction_rate", "trimmed_prompts")


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Put several evaluated systems side by side: a markdown table at ``out`` and a CSV beside it.

    Args:
        run_dirs: evaluation output folders (each with ``metrics.json``).
        out: the markdown file to write (``.csv`` with the same stem is written too).

    Returns:
        The markdown path.

    Raises:
        ArtifactError: a folder without ``metrics.json``.

    Runs over different question sets are still tabulated, but the table gets a warning line (and a
    ``UserWarning`` is issued): their accuracies are not comparable.
    """
    import warnings

    rows, question_sets, partial = [], [], []
    for d in run_dirs:
        path, settings = Path(d) / METRICS, Path(d) / SETTINGS
        if path.is_file():
            rows.append(json.loads(path.read_text(encoding="utf-8")))
            partial.append(False)
        elif (Path(d) / PREDICTIONS).is_file() and settings.is_file():
            rows.append(_partial_metrics(Path(d)))
            partial.append(True)
        else:
            raise ArtifactError(f"{d}: no {METRICS} (run `kardlite eval` first, or let it finish)")
        if settings.is_file():
            question_sets.append(tuple(json.loads(settings.read_text(encoding="utf-8"))["items"]))
    out = Path(out)
    notes = []
    if len(rows) > 1 and (len(set(question_sets)) > 1 or any(partial)):
        counts = ", ".join(f"{r['name']}: {r['n']}" for r in rows)
        notes.append(f"> Warning: these runs are not over the same questions ({counts}); their accuracies are not "
                     "directly comparable.")
        warnings.warn(notes[-1][2:], UserWarning, stacklevel=2)

    def cell(row: dict[str, Any], col: str) -> str:
        value = row.get(col)
        if value is None:
            return "-"
        if col in ("accuracy", "invalid_rate", "forced_rate", "contradiction_rate"):
            return f"{100 * value:.1f}%"
        return str(value)

    lines = ["| " + " | ".join(_REPORT_COLUMNS) + " |", "|" + "---|" * len(_REPORT_COLUMNS)]
    lines += ["| " + " | ".join(cell(r, c) for c in _REPORT_COLUMNS) + " |" for r in rows]
    if notes:
        lines += ["", *notes]
    atomic_write_text(out, "\n".join(lines) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_REPORT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    return out
