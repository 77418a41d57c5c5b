"""Confidence and abstention of a bundle: fit the calibrator on dev questions, judge it on test questions.

    python bench/confidence.py BUNDLE --dev DEV_FILE --test TEST_FILE [--samples 1] [--install]
    python bench/confidence.py BUNDLE --demo                       (the embedded demo task's dev and test splits)

Every question goes through the runtime (``Pipeline.ask``); the answers (signals, raw confidence, right or wrong)
are appended to a cache file under ``runs/`` so that an interrupted run resumes. The calibrator is fitted on the
dev answers with a valid letter (an answer without one gets confidence 0 and counts as wrong); on test it reports
accuracy at 100/80/50 % coverage (answering only the most confident), ECE (10 bins) before and after calibration,
and draws the risk-coverage curves. Writes ``<out>/<name>.md``, ``.json`` and ``.png``; ``--install`` stores the
calibrator in the bundle (``calibration.json``, hashed in its manifest), so that ``load`` uses it, and records the
dev and test evaluations in the bundle's card (``card.json``: accuracy with its 95% interval on both, the
calibrated confidence's ECE and accuracy at 100/80/50 % coverage on test), in the same atomic change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kardlite._io import atomic_write_text, iter_jsonl
from kardlite.card import CALIBRATION_FILE, CARD_FILE, Task, data_files, measure, record_evaluations
from kardlite.runtime.confidence import (
    Calibrator,
    accuracy_at_coverage,
    expected_calibration_error,
    risk_coverage,
)

COVERAGES = (1.0, 0.8, 0.5)
ROOT = Path(__file__).resolve().parents[1]


def _items(args: argparse.Namespace) -> tuple[list[Any], list[Any], str]:
    if args.demo:
        from kardlite.demo import demo_questions

        return demo_questions("dev"), demo_questions("test"), "the embedded demo task (kardlite/demo), dev / test"
    from kardlite.data.loaders import load_task

    if not args.dev or not args.test:
        sys.exit("give --dev and --test task files, or --demo")
    return load_task(args.dev), load_task(args.test), f"dev {_shown(args.dev)}, test {_shown(args.test)}"


def _in_repo(path: Path) -> str | None:
    """The path relative to the repository, or None for a file outside it."""
    full = path.resolve()
    return str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else None


def _shown(path: Path) -> str:
    """A task file as the page names it: its path in the repository, or, outside it, its name and sha256 prefix (a
    path on this machine means nothing on a reader's, and can name private folders)."""
    rel = _in_repo(path)
    return f"`{rel}`" if rel else f"`{path.name}` (sha256 {data_files([path])[0].sha256[:12]})"


def _command(argv: list[str]) -> str:
    """The command line for the page: task files in the repository by their path in it, those outside it as
    $DEV_FILE / $TEST_FILE (the files the page names by sha256), and --note left out (the page shows it)."""
    tokens: list[str] = []
    for arg in argv:  # --flag=value as --flag value
        flag, eq, value = arg.partition("=")
        tokens += [flag, value] if eq and flag.startswith("--") else [arg]
    out: list[str] = []
    rest = iter(tokens)
    for tok in rest:
        if tok == "--note":
            next(rest, None)
        elif tok in ("--dev", "--test"):
            rel = _in_repo(Path(next(rest, "")))
            out += [tok, shlex.quote(rel) if rel else f"${tok[2:].upper()}_FILE"]
        else:
            out.append(shlex.quote(tok))
    return " ".join(["python bench/confidence.py", *out])


def _answers_key(manifest: dict[str, Any]) -> str:
    """What decides a bundle's answers, as the answer cache's key: its manifest without the calibrator, the card and
    the export time. ``--install`` adds a calibrator and a card, which change no answer, so a rerun reuses them."""
    rest = {k: v for k, v in manifest.items() if k not in ("calibration", "card", "evaluation", "created")}
    rest["files"] = {k: v for k, v in manifest.get("files", {}).items() if k not in (CARD_FILE, CALIBRATION_FILE)}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode("utf-8")).hexdigest()


def _tasks(args: argparse.Namespace) -> tuple[Task, Task]:
    """The dev and test tasks as the card names them: the task's name and its data files' sha256s."""
    if args.demo:
        from kardlite.demo import demo_dir

        files = data_files(sorted(demo_dir().glob("questions_*.jsonl")))  # each file holds every split
        name = args.task_name or "kardlite demo (embedded)"
        return Task(name, files), Task(name, files)
    return (Task(args.task_name or args.dev.name, data_files([args.dev])),
            Task(args.task_name or args.test.name, data_files([args.test])))


def _run(pipe: Any, items: list[Any], split: str, cache: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Answer each item once (cached by id, split and settings: a rerun resumes)."""
    done: dict[str, dict[str, Any]] = {}
    if cache.is_file():
        for _, row in iter_jsonl(cache):
            if row.get("settings") == settings and row.get("split") == split:
                done[row["id"]] = row
    rows = []
    with cache.open("a", encoding="utf-8") as fh:
        for n, item in enumerate(items, start=1):
            if item.id in done:
                rows.append(done[item.id])
                continue
            t = time.perf_counter()
            ans = pipe.ask(item.question, list(item.options), samples=settings["samples"])
            row = {"id": item.id, "split": split, "settings": settings, "valid": ans["valid"],
                   "index": ans["index"], "label": item.label, "correct": ans["index"] == item.label,
                   "confidence_raw": ans["confidence_raw"], "signals": ans["signals"],
                   "seconds": round(time.perf_counter() - t, 2)}
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            rows.append(row)
            print(f"{split} {n}/{len(items)} {item.id}: {'right' if row['correct'] else 'wrong'} "
                  f"raw {row['confidence_raw']:.2f} ({row['seconds']:.1f} s)", flush=True)
    return rows


def _metrics(conf: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    return {"ece": round(expected_calibration_error(conf, correct), 4),
            **{f"accuracy_at_{int(c * 100)}": round(accuracy_at_coverage(conf, correct, c), 4) for c in COVERAGES},
            "mean_confidence": round(float(conf.mean()), 4)}


def _plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], overall: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (cov, acc) in curves.items():
        ax.plot(cov * 100, acc * 100, label=label, drawstyle="steps-post")
    ax.axhline(overall * 100, color="grey", linestyle=":", label=f"overall {overall * 100:.1f}%")
    ax.set_xlabel("coverage (% of test questions answered, most confident first)")
    ax.set_ylabel("accuracy on the answered (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """One run's line in the page's ``runs`` map (the numbers a reader compares across bundles)."""
    t = result["test"]
    return {"n": t["questions"], "accuracy": t["accuracy"], "ece_raw": t["raw"]["ece"], "ece": t["calibrated"]["ece"],
            "accuracy_at_coverage": {f"{c / 100:.1f}": t["calibrated"][f"accuracy_at_{c}"] for c in (100, 80, 50)},
            "bundle": result["bundle"], "source": result["source"], "meets": result["meets"]}


def _earlier_runs(path: Path) -> dict[str, Any]:
    """The ``runs`` of the JSON already at ``path`` (other bundles measured before), {} when there is none."""
    try:
        runs = json.loads(path.read_text(encoding="utf-8")).get("runs")
    except (OSError, ValueError, AttributeError):
        return {}
    return runs if isinstance(runs, dict) else {}


def _page(result: dict[str, Any], name: str, command: str, note: str | None) -> str:
    t, d = result["test"], result["dev"]
    raw, cal = t["raw"], t["calibrated"]
    overall = t["accuracy"]

    def pct(v: float) -> str:
        return f"{v * 100:.1f}%"

    rows = [f"| accuracy at {c}% coverage | {pct(raw[f'accuracy_at_{c}'])} | {pct(cal[f'accuracy_at_{c}'])} |"
            for c in (100, 80, 50)]
    gain = cal["accuracy_at_50"] - overall
    weights = ", ".join(f"{f} {w:+.2f}" for f, w in zip(result["calibrator"]["features"],
                                                         result["calibrator"]["weights"], strict=True))
    title = result["label"] or result["bundle_name"]
    lines = [
        "# Confidence, calibration and abstention",
        "",
        *([note, ""] if note else []),
        "Every bundle measured so far (test questions; calibrated confidence):",
        "",
        "| run | n | accuracy | ECE raw | ECE calibrated | acc. at 80% | acc. at 50% |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {run} | {r['n']} | {pct(r['accuracy'])} | {r['ece_raw']:.3f} | {r['ece']:.3f} | "
          f"{pct(r['accuracy_at_coverage']['0.8'])} | {pct(r['accuracy_at_coverage']['0.5'])} |"
          for run, r in result["runs"].items()),
        "",
        f"The latest run in detail, **{result['run']}**:",
        "",
        f"Bundle: **{title}** (`{result['bundle']}`); questions: {result['source']}; "
        f"{result['samples']} sample(s) per question (greedy when 1). Calibrator fitted on the {d['questions']} dev "
        f"questions ({d['valid']} with a valid letter; dev accuracy {pct(d['accuracy'])}), judged on the "
        f"{t['questions']} test questions ({t['valid']} with a valid letter; an answer without one has confidence 0 "
        f"and counts as wrong). Answering only the most confident answers first:",
        "",
        "| test | raw confidence | calibrated |",
        "|---|---|---|",
        *rows,
        f"| ECE (10 bins) | {raw['ece']:.3f} | {cal['ece']:.3f} |",
        f"| mean confidence | {raw['mean_confidence']:.3f} | {cal['mean_confidence']:.3f} |",
        "",
        f"Targets: accuracy at 50% coverage >= overall + 15 points: {pct(cal['accuracy_at_50'])} vs "
        f"{pct(overall)} + 15 = {pct(overall + 0.15)}: **{'met' if result['meets']['selective_gain'] else 'not met'}**"
        f" ({gain * 100:+.1f} points); ECE after calibration <= 0.05: {cal['ece']:.3f}: "
        f"**{'met' if result['meets']['ece'] else 'not met'}**.",
        "",
        f"![risk-coverage curve]({name}.png)",
        "",
        "## What the confidence is made of",
        "",
        "Signals the pipeline already has (`kardlite/runtime/confidence.py`): the student's probability of its "
        "letter at the token after `Answer:` (renormalised over the option letters, averaged over samples), the "
        "self-consistency vote share, the best passage's rerank score (first-stage score without a reranker) and "
        "its margin over the second, the share of the rationale's sentences whose content words mostly occur in "
        "the passages shown, and the share of the chosen option's content words found there. The raw confidence "
        "is the letter probability (averaged with the vote share when sampling). The calibrator is an "
        "L2-regularised logistic regression over the standardised signals (probabilities as logits), stored in "
        "the bundle as plain JSON (`calibration.json`, hashed in the manifest).",
        "",
        f"Fitted weights (standardised signals): {weights}; bias {result['calibrator']['bias']:+.2f}.",
        "",
        f"Reproduce (about {result['seconds']:.0f} s of answering on this machine; answers are cached under "
        f"`runs/confidence/`, so a rerun only refits):",
        "",
        "```bash",
        command,
        "```",
        *(["", "`$DEV_FILE` and `$TEST_FILE` are the question files named above (outside this repository; check "
            "yours by their sha256)."] if "$DEV_FILE" in command or "$TEST_FILE" in command else []),
        "",
        f"Raw numbers: [`{name}.json`]({name}.json). Machine: {result['machine']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--dev", type=Path, help="dev task file (any format kardlite.data.load_task reads)")
    ap.add_argument("--test", type=Path, help="test task file")
    ap.add_argument("--demo", action="store_true", help="use the embedded demo task's dev and test splits")
    ap.add_argument("--samples", type=int, default=None, help="self-consistency samples (default: the bundle's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--l2", type=float, default=1.0, help="calibrator penalty")
    ap.add_argument("--out", type=Path, default=Path("docs/results"), help="folder of the page, JSON and plot")
    ap.add_argument("--name", default="confidence", help="file stem of the page, JSON and plot")
    ap.add_argument("--label", default=None, help="what the bundle is, for the page's title")
    ap.add_argument("--run-name", default=None,
                    help="this run's key in the JSON's runs map (default: the label, else the bundle's name); the "
                         "other runs already there are kept")
    ap.add_argument("--cache", type=Path, default=None, help="answer cache (default runs/confidence/<bundle>.jsonl)")
    ap.add_argument("--install", action="store_true",
                    help="store the fitted calibrator in the bundle and record dev and test in its card")
    ap.add_argument("--task-name", default=None, help="the task's name in the card (default: the file names)")
    ap.add_argument("--note", default=None, help="a paragraph at the top of the page (markdown)")
    args = ap.parse_args()

    from kardlite.runtime import load

    dev_items, test_items, source = _items(args)
    cache = args.cache or Path("runs/confidence") / f"{args.bundle.resolve().name}.jsonl"
    cache.parent.mkdir(parents=True, exist_ok=True)
    with load(args.bundle, threads=args.threads) as pipe:
        samples = int(args.samples or pipe.decoding.get("samples", 1))
        settings = {"samples": samples, "answers_sha256": _answers_key(pipe.manifest)}
        manifest = pipe.manifest
        measured = pipe.settings if samples == (1 if pipe.settings.greedy else pipe.settings.samples) else \
            pipe.settings.updated(decoding="sc" if samples > 1 else "greedy", samples=samples if samples > 1 else None)
        dev = _run(pipe, dev_items, "dev", cache, settings)
        test = _run(pipe, test_items, "test", cache, settings)

    fit_rows = [r for r in dev if r["valid"]]
    cal = Calibrator.fit([r["signals"] for r in fit_rows], [r["correct"] for r in fit_rows], l2=args.l2,
                         note={"split": "dev", "source": source, "samples": samples})
    correct = np.asarray([r["correct"] for r in test], dtype=bool)
    raw = np.asarray([r["confidence_raw"] for r in test])
    calibrated = np.asarray([cal.predict(r["signals"]) if r["valid"] else 0.0 for r in test])
    overall = float(correct.mean())
    result = {
        "bundle": str(args.bundle), "bundle_name": manifest.get("name"), "demo": manifest.get("demo"),
        "label": args.label, "source": source, "samples": samples,
        "dev": {"questions": len(dev), "valid": len(fit_rows), "accuracy": round(float(np.mean(
            [r["correct"] for r in dev])), 4)},
        "test": {"questions": len(test), "valid": int(sum(r["valid"] for r in test)), "accuracy": round(overall, 4),
                 "raw": _metrics(raw, correct), "calibrated": _metrics(calibrated, correct)},
        "calibrator": cal.to_dict(),
        "targets": {"accuracy_at_50_minus_overall": 0.15, "ece_after": 0.05},
        # answering time summed per question, so that a rerun from the cache still reports what answering took
        "seconds": round(sum(r.get("seconds", 0.0) for r in dev + test), 1), "machine": platform.platform(),
    }
    cal_m = result["test"]["calibrated"]
    result["meets"] = {"selective_gain": cal_m["accuracy_at_50"] - overall >= 0.15, "ece": cal_m["ece"] <= 0.05}
    args.out.mkdir(parents=True, exist_ok=True)
    out_json = args.out / f"{args.name}.json"
    result["run"] = args.run_name or args.label or str(manifest.get("name") or args.bundle.name)
    result["runs"] = _earlier_runs(out_json) | {result["run"]: _summary(result)}
    atomic_write_text(out_json, json.dumps(result, indent=2) + "\n")
    title = args.label or f"{manifest.get('name')}: {source}"
    _plot(args.out / f"{args.name}.png", {"raw confidence": risk_coverage(raw, correct),
                                          "calibrated": risk_coverage(calibrated, correct)}, overall, title)
    command = _command(sys.argv[1:])
    atomic_write_text(args.out / f"{args.name}.md", _page(result, args.name, command, args.note))
    if args.install:
        # One atomic change: the calibrator and the card that measured it.
        dev_task, test_task = _tasks(args)
        card = record_evaluations(args.bundle, [
            measure([r["correct"] for r in dev], split="dev", task=dev_task, settings=measured, manifest=manifest,
                    measured_by="bench/confidence.py", invalid=[not r["valid"] for r in dev]),
            measure(correct.tolist(), split="test", task=test_task, settings=measured, manifest=manifest,
                    measured_by="bench/confidence.py", invalid=[not r["valid"] for r in test],
                    confidence=calibrated.tolist(), confidence_raw=raw.tolist())], calibrator=cal)
        print(f"calibrator installed in {args.bundle}; its card records {[e.split for e in card.evaluations]}")
    print(json.dumps({k: result[k] for k in ("dev", "test", "meets")}, indent=2))


if __name__ == "__main__":
    main()
