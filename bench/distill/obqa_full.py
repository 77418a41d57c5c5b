"""The full OpenBookQA run: every system on all 500 test questions, from all 4,957 train questions; resumable.

Stages (``--stage all`` runs them in order; each one skips what is already done, so re-running the same command
after an interruption — a kill, a reboot, the end of a sitting — continues where it stopped):

1. ``data``: the KARD release rationales imported and filtered (the rule filter), the open book as a KB, the
   example files of every student: the same questions (every train question with a kept rationale), the same
   chosen rationale per question (``--per-item``/``--select``), KARD and KA-FT with the passages retrieved by
   that rationale.
2. ``reranker``: the late-interaction and cross-encoder rerankers at the CPU settings of
   docs/results/reranker-obqa.md (per epoch, as many sampled queries as train questions:
   ``--reranker-queries``); the better one on OBQA dev (fact1 R@5) is used for ``kard-reranker``.
3. ``train``: FT, KA-FT, RD and KARD students: same base, order, batch and budget (``--epochs``), with
   snapshots for the learning curves. Training resumes from its last checkpoint.
4. ``curves``: dev accuracy of every snapshot on the first ``--dev-limit`` OBQA dev questions.
5. ``eval``: base, ft, ft-rag, ka-ft, rd, kard-bm25, kard-hybrid, kard-reranker on the test questions; the
   generating systems (rd, kard-*) through the student's exported Q8_0 GGUF on llama.cpp, as a bundle answers.
   ``agree``: the first 100 test questions of kard-bm25 through PyTorch as well, and how often the letters agree.
6. ``report``: docs/results/obqa-full.md and .json (accuracy, paired-bootstrap 95% CI, McNemar, invalid and
   forced rates, letters, fact1 shown vs not, curves, training time and tokens/s).

    OMP_NUM_THREADS=2 .venv/bin/python bench/distill/obqa_full.py                 # everything, resumable
    .venv/bin/python bench/distill/obqa_full.py --stage report                    # page from what is done so far
    .venv/bin/python bench/distill/obqa_full.py --systems ft,kard --stage train   # a part

The students' recipe (answer format, answer scorings, lr, frozen layers) is the one chosen on dev by
``bench/distill/obqa_recipe.py`` (``--recipe``, its JSON): the run refuses to start before that choice is final,
so 11 CPU-hours are never spent on an unchosen recipe; explicit options override it, ``--recipe none`` uses the
paper's letter answers.

``--train-limit/--test-limit/--dev-limit/--max-steps/--student`` make a small run (the tests use them).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kardlite._io import atomic_write_json, atomic_write_text  # noqa: E402  (the project's atomic writers)

STUDENTS = ("ft", "ka-ft", "rd", "kard")  # trained, in this order (cheapest first: early rows on the page)
# ft-rag: the FT student given KARD's hybrid test passages (KA-FT's prompt): plain retrieve-then-answer.
SYSTEMS = ("base", "ft", "ft-rag", "ka-ft", "rd", "kard-bm25", "kard-hybrid", "kard-reranker")
KARDS = ("kard-bm25", "kard-hybrid", "kard-reranker")
GENERATING = ("rd", *KARDS)  # systems that write a rationale at test time
RERANKERS = {  # CPU settings of docs/results/reranker-obqa.md
    "late-interaction": ["--kind", "late-interaction", "--dim", "128", "--epochs", "2", "--num-layers", "3",
                         "--lr", "2e-4", "--head-lr-mult", "10"],
    "cross-encoder": ["--epochs", "2", "--num-layers", "3", "--lr", "2e-4", "--head-lr-mult", "20"],
}


class Run:
    """Paths and settings of one full run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir: Path = args.run
        self.obqa: Path = args.obqa
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "log.jsonl"
        # What each finished part measured, small enough to commit (docs/results/obqa-full/ beside the page): the
        # page is made from these alone, and a part with a committed result is never redone, so a lost run folder
        # costs only the parts that had not finished.
        self.results: Path = args.results or args.report.with_suffix("")
        self.results.mkdir(parents=True, exist_ok=True)

    def committed(self, system: str) -> Path:
        return self.results / f"eval-{system}.jsonl"

    def is_committed(self, system: str) -> bool:
        return self.committed(system).is_file() and (self.results / f"eval-{system}.json").is_file()

    def cli(self, *argv: str) -> None:
        """Run one kardlite command (each resumes on its own) and log it."""
        cmd = [sys.executable, "-m", "kardlite.cli", *argv]
        print("+ kardlite " + " ".join(argv), flush=True)
        started = time.time()
        subprocess.run(cmd, check=True)
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"cmd": argv, "seconds": round(time.time() - started, 1), "end": time.time()}) + "\n")

    def split_file(self, name: str, limit: int | None) -> Path:
        """``Main/<name>.jsonl`` cut to its first ``limit`` questions (the file itself when no limit)."""
        src = self.obqa / "Main" / f"{name}.jsonl"
        if not limit:
            return src
        dst = self.dir / f"{name}-{limit}.jsonl"
        if not dst.is_file():
            dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:limit]),
                           encoding="utf-8")
        return dst


# ----------------------------------------------------------------------------- stages


def _modes(systems: set[str]) -> list[str]:
    """The students that the given systems need, in training order."""
    return [m for m in STUDENTS if m in systems or any(s.startswith(m + "-") for s in systems)]


def stage_data(run: Run, systems: set[str]) -> None:
    a = run.args
    train = run.split_file("train", a.train_limit)
    store, filtered, kb = run.dir / "teacher_store", run.dir / "filtered", run.dir / "kb"
    if not store.exists():
        gz = run.obqa / "kard_teacher" / "train_rationales.jsonl.gz"
        if a.train_limit:  # the release file is in train order: its first lines are the first questions
            with gzip.open(gz, "rt", encoding="utf-8") as fh:
                lines = [next(fh) for _ in range(a.train_limit)]
            gz = run.dir / f"rationales-{a.train_limit}.jsonl.gz"
            with gzip.open(gz, "wt", encoding="utf-8") as fh:
                fh.writelines(lines)
        run.cli("rationales", "import", str(gz), "--task", str(train), "--out", str(store), "--quiet")
    if not (filtered / "kept.jsonl").is_file():
        run.cli("rationales", "filter", str(store), "--task", str(train), "--out", str(filtered), "--judge", "none",
                "--quiet")
    if not (kb / "kb.json").is_file() and not (kb / "manifest.json").is_file() and not kb.exists():
        subprocess.run([sys.executable, "-c", "from kardlite.kb import KBConfig, KnowledgeBase, read_passages; "
                        f"KnowledgeBase.build(read_passages({str(run.obqa / 'Main' / 'openbook.txt')!r}), "
                        f"{str(kb)!r}, config=KBConfig())"], check=True)
    for mode in _modes(systems):
        path = run.dir / f"{mode}.jsonl"
        if not path.is_file():
            run.cli("distill", "build", "--tasks", str(train), "--rationales", str(filtered / "kept.jsonl"),
                    "--mode", mode, "--kb", str(kb), "--k", str(a.k), "--retriever", "bm25",
                    "--per-item", str(a.per_item), "--select", a.select, "--out", str(path))


def stage_reranker(run: Run) -> None:
    a = run.args
    kb, kept = run.dir / "kb", run.dir / "filtered" / "kept.jsonl"
    train = run.split_file("train", a.train_limit)
    data = run.dir / "reranker.data"  # one candidate set for both kinds, built by the first
    for kind, flags in RERANKERS.items():
        out = run.dir / f"reranker-{kind}"
        if not (out / "reranker.json").is_file():
            source = [] if (data / "train.jsonl").is_file() else ["--tasks", str(train), "--rationales", str(kept)]
            # The budget: 88,655 (question, rationale) training queries (every kept rationale) would be ~2.7 h per
            # kind on 2 cores, for a row that the GPU runs of docs/results/reranker-obqa.md say more training
            # does not lift. So by default each epoch samples as many queries as the students see examples (one per
            # train question), and 500 dev queries choose the epoch. A small run: max_steps batches of 8 queries.
            queries = 8 * a.max_steps if a.max_steps else a.reranker_queries
            if queries is None:
                queries = _records(train)
            extra = ["--max-train-queries", str(queries), "--max-dev-queries", str(a.reranker_dev_queries)]
            # interrupted, the same command resumes from <out>.checkpoint (every 500 steps, ~4 min)
            run.cli("train", "reranker", "--kb", str(kb), "--data", str(data), *source, "--out", str(out), *flags,
                    *extra)
    choice = run.dir / "reranker-choice.json"
    if not choice.is_file():
        scores = {kind: _fact1_recall(run, run.dir / f"reranker-{kind}") for kind in RERANKERS}
        best = max(scores, key=lambda k: scores[k])
        choice.write_text(json.dumps({"dev_fact1_r5_hybrid_pool20": scores, "chosen": best}) + "\n", encoding="utf-8")
    summary = run.results / "reranker.json"  # committed: the page shows how both kinds trained and which was chosen
    if not summary.is_file():
        kinds = {}
        for kind, flags in RERANKERS.items():
            meta = json.loads((run.dir / f"reranker-{kind}" / "reranker.json").read_text(encoding="utf-8"))
            t = meta["training"]
            kinds[kind] = {**{k: t[k] for k in ("n_train", "n_dev", "n_dev_items", "steps", "best_epoch",
                                                "dev_improved", "train_seconds")},
                           "dev_top1_by_epoch": [round(h["top1"], 4) for h in t["dev"]], "flags": flags}
        atomic_write_json(summary, {**json.loads(choice.read_text(encoding="utf-8")), "kinds": kinds,
                                    "train_queries_available": _records(data / "train.jsonl")})


def _records(path: Path) -> int:
    """Non-blank lines of a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _fact1_recall(run: Run, reranker: Path, pool: int = 20, k: int = 5) -> float:
    """fact1 recall@k on OBQA dev of a reranker over a hybrid pool (chooses the reranker kind; dev, never test)."""
    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank.model import Reranker
    from kardlite.rerank.retriever import RerankRetriever

    kb = KnowledgeBase.load(run.dir / "kb")
    facts = _fact1(run.obqa / "Additional" / "dev_complete.jsonl")
    items = load_task(run.split_file("dev", run.args.dev_limit))
    retr = RerankRetriever(kb, Reranker.load(reranker), first_stage="hybrid", pool=pool)
    hits = 0
    for item in items:
        shown = [_norm(p.text) for p in retr.passages(item, k)]
        hits += facts.get(item.id, "\0") in shown
    return hits / len(items)


def _needs(mode: str, systems: set[str]) -> list[str]:
    """The asked systems that use the ``mode`` student."""
    return [s for s in SYSTEMS if s in systems and (s == mode or s.startswith(mode + "-"))]


def _student_done(run: Run, mode: str, systems: set[str]) -> bool:
    """Every asked system of this student has a committed result, and so has its training: no need to train it."""
    return (run.results / f"train-{mode}.json").is_file() and all(run.is_committed(s) for s in _needs(mode, systems))


def stage_train(run: Run, systems: set[str]) -> None:
    a = run.args
    for mode in _modes(systems):
        if _student_done(run, mode, systems):
            print(f"{mode}: every result of this student is committed; not trained again", flush=True)
            continue
        flags = ["--epochs", str(a.epochs), "--batch-size", "8", "--max-source-tokens", "384", "--lr", str(a.lr),
                 "--save-every", str(a.save_every), "--snapshot-every", str(a.snapshot_every), "--dev-fraction", "0",
                 "--answer-format", a.answer_format, "--freeze-layers", str(a.freeze_layers)]
        if a.max_steps:
            flags += ["--max-steps", str(a.max_steps)]
        if a.student:
            flags += ["--student", a.student]
        run.cli("train", "student", str(run.dir / f"{mode}.jsonl"), "--out", str(run.dir / f"student-{mode}"), *flags)
        _commit_training(run, mode)


def _commit_training(run: Run, mode: str) -> None:
    """The finished student's training summary (time, tokens/s, losses) into the results folder."""
    folder = run.dir / f"student-{mode}"
    if not (folder / "manifest.json").is_file():
        return
    hist = json.loads((folder / "loss_curve.json").read_text(encoding="utf-8"))
    # "seconds" restarts at 0 in each resumed session: add up the positive steps only.
    secs = sum(h2["seconds"] - h1["seconds"] for h1, h2 in itertools.pairwise(hist) if h2["seconds"] >= h1["seconds"])
    toks = sum(h.get("tokens", 0) for h in hist[1:])
    info = json.loads((folder / "run_info.json").read_text(encoding="utf-8"))
    summary = {"steps": len(hist), "finished": True, "tokens_per_s": toks / secs if secs else None,
               "train_seconds": round(secs + (hist[0]["seconds"] if hist else 0), 1),
               "first_loss": hist[0]["train_loss"] if hist else None,
               "last_loss": hist[-1]["train_loss"] if hist else None,
               "loss_curve": [[h["step"], h["train_loss"]] for h in hist], "student": info["student"],
               "config": {k: info["config"].get(k) for k in ("lr", "epochs", "batch_size", "max_source_tokens",
                                                             "answer_format", "lora_r", "freeze_layers")}}
    atomic_write_json(run.results / f"train-{mode}.json", summary)




def _eval_args(run: Run, system: str) -> list[str]:
    kb = str(run.dir / "kb")
    if system == "base":
        return ["--model", run.args.student or "smollm2", "--mode", "ft", "--answer-scoring", run.args.scoring]
    a = run.args
    if system == "ft":
        return ["--model", str(run.dir / "student-ft"), "--answer-scoring", a.scoring]
    if system == "ft-rag":
        return ["--model", str(run.dir / "student-ft"), "--mode", "ka-ft", "--kb", kb, "--retriever", "hybrid",
                "--answer-scoring", a.scoring]
    if system == "rd":
        return ["--model", str(run.dir / "student-rd"), "--answer-scoring", a.rationale_scoring]
    if system == "ka-ft":
        return ["--model", str(run.dir / "student-ka-ft"), "--kb", kb, "--retriever", "bm25",
                "--answer-scoring", a.scoring]
    retriever = system.split("-", 1)[1]
    out = ["--model", str(run.dir / "student-kard"), "--kb", kb, "--retriever", retriever,
           "--answer-scoring", a.rationale_scoring]
    if retriever == "reranker":
        out += ["--reranker", str(_reranker_export(run)), "--first-stage", "hybrid", "--pool", "20"]
    return out


def _reranker_export(run: Run) -> Path:
    """The chosen reranker as a bundle ships it: its int8 ONNX export (made here once). The test row is the
    bundle's number; the fp32 torch folder picked a different letter on 27 of 500 test questions."""
    kind = json.loads((run.dir / "reranker-choice.json").read_text(encoding="utf-8"))["chosen"]
    out = run.dir / f"reranker-{kind}-onnx"
    if not (out / "reranker.json").is_file():
        run.cli("rerank", "export", str(run.dir / f"reranker-{kind}"), str(out))
    return out


def _backend_args(run: Run, system: str) -> list[str]:
    """RD and KARD generate: scored through the student's exported Q8_0 GGUF on llama.cpp, the path a bundle takes
    (its prompt budget, passage count and generation cap are the student's stored settings, as a bundle's are)."""
    if system in GENERATING and run.args.gen_backend == "gguf":
        return ["--backend", "gguf"]
    return []


def stage_curves(run: Run, systems: set[str]) -> None:
    from kardlite.distill.train import list_snapshots, snapshot_model

    dev = run.split_file("dev", run.args.dev_limit)
    path = run.results / "curves.json"
    curves: dict[str, list[dict[str, Any]]] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for mode in STUDENTS:
        system = "kard-bm25" if mode == "kard" else mode
        if system not in systems or not (run.dir / f"student-{mode}" / "manifest.json").is_file():
            continue
        for step in list_snapshots(run.dir / f"student-{mode}"):
            if any(p["step"] == step for p in curves.get(system, [])):
                continue
            model = snapshot_model(run.dir / f"student-{mode}", step, run.dir / "snapshots" / f"{mode}-{step:06d}")
            args = _eval_args(run, system)
            args[args.index("--model") + 1] = str(model)
            out = run.dir / "curves" / f"{system}-{step:06d}"
            run.cli("eval", *args, "--tasks", str(dev), "--out", str(out), "--batch-size", "16")
            m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            curves.setdefault(system, []).append({"step": step, "dev_accuracy": m["accuracy"], "n": m["n"]})
            curves[system].sort(key=lambda c: c["step"])
            atomic_write_json(path, curves)


def stage_eval(run: Run, systems: set[str]) -> None:
    test = run.split_file("test", run.args.test_limit)
    facts = _fact1(run.obqa / "Additional" / "test_complete.jsonl")
    for system in SYSTEMS:
        if system not in systems or run.is_committed(system):
            continue
        mode = "kard" if system.startswith("kard") else system.split("-rag")[0]
        if system != "base" and not (run.dir / f"student-{mode}" / "manifest.json").is_file():
            print(f"skip {system}: its student is not trained yet", flush=True)
            continue
        run.cli("eval", *_eval_args(run, system), *_backend_args(run, system), "--tasks", str(test),
                "--out", str(run.dir / f"eval-{system}"), "--batch-size", "16")
        _commit_eval(run, system, facts)


def stage_agree(run: Run, systems: set[str]) -> None:
    """The first ``--agree-n`` test questions of KARD (BM25) through PyTorch too: how often the two back-ends pick
    the same letter. Committed as agreement.json; the committed GGUF predictions are the reference."""
    path = run.results / "agreement.json"
    system = "kard-bm25"
    if path.is_file() or system not in systems or run.args.gen_backend != "gguf" or not run.is_committed(system):
        return
    gguf = {json.loads(x)["id"]: json.loads(x) for x in run.committed(system).read_text(encoding="utf-8").splitlines()
            if x.strip()}
    test = run.split_file("test", run.args.test_limit)
    out = run.dir / f"agree-{system}-torch"
    run.cli("eval", *_eval_args(run, system), "--backend", "torch", "--tasks", str(test), "--out", str(out),
            "--limit", str(run.args.agree_n), "--batch-size", "16")
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    same = [r["prediction"] == gguf[r["id"]]["prediction"] for r in rows]
    atomic_write_json(path, {"system": system, "backends": ["gguf (Q8_0, llama.cpp)", "torch (fp32)"],
                             "n": len(rows), "same_letter": sum(same), "rate": sum(same) / max(len(rows), 1),
                             "accuracy_gguf": sum(gguf[r["id"]]["correct"] for r in rows) / max(len(rows), 1),
                             "accuracy_torch": sum(r["correct"] for r in rows) / max(len(rows), 1),
                             "different": [r["id"] for r, s in zip(rows, same, strict=True) if not s]})


def _commit_eval(run: Run, system: str, facts: dict[str, str]) -> None:
    """A finished system's per-question predictions (compact JSONL) and settings into the results folder."""
    d = run.dir / f"eval-{system}"
    settings = json.loads((d / "eval.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (d / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(rows) != len(settings["items"]):
        return  # not finished: nothing is committed
    lines = []
    for r in rows:
        texts = {_norm(p["text"]) for p in r["passages"]}
        lines.append(json.dumps({"id": r["id"], "gold": r["gold"], "prediction": r["prediction"],
                                 "correct": r["correct"], "invalid": r["invalid"], "forced": bool(r.get("forced")),
                                 "contradiction": bool(r.get("contradiction")),
                                 "fact1_shown": facts.get(r["id"], "\0") in texts if settings.get("n_docs") else None,
                                 "passages": [p["id"] for p in r["passages"]]}, separators=(",", ":")))
    atomic_write_text(run.committed(system), "\n".join(lines) + "\n")
    keep = ("mode", "student", "answer_scoring", "decoding", "n_docs", "retriever", "first_stage", "pool",
            "max_new_tokens", "max_source_tokens", "backend")
    # the reranker by its folder's name: "-onnx" marks the int8 export a bundle ships
    reranker = {"reranker": Path(settings["reranker"]).name} if settings.get("reranker") else {}
    kept = {k: settings.get(k) for k in keep}
    kept["student"] = _portable(kept["student"]) if kept["student"] else kept["student"]
    atomic_write_json(run.results / f"eval-{system}.json", {**kept, **reranker, "n": len(rows)})


# ----------------------------------------------------------------------------- the report


def _portable(value: Any) -> str:
    """A setting as the committed files record it: a path relative to the repository, or outside it by its name
    only (this machine's folders mean nothing on a reader's); a Hugging Face id or other value as it is."""
    if not (isinstance(value, Path) or (isinstance(value, str) and "/" in value and Path(value).exists())):
        return str(value)
    full = Path(value).resolve()
    return str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else f".../{full.name}"


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip('"').split())


def _fact1(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            out[obj["id"]] = _norm(obj.get("fact1", ""))
    return out


def bootstrap_ci(correct: list[bool], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the accuracy, resampling questions."""
    import numpy as np

    arr = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap_ci(a: list[bool], b: list[bool], n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), resampling the same questions for both."""
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p-value (binomial test on the discordant pairs)."""
    from math import comb

    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def stage_report(run: Run, out_md: Path) -> dict[str, Any]:
    """The page and its JSON from the committed results alone (a part without one is shown as not finished)."""
    systems: dict[str, Any] = {}
    correct: dict[str, dict[str, bool]] = {}
    for system in SYSTEMS:
        if not run.is_committed(system):
            continue
        settings = json.loads((run.results / f"eval-{system}.json").read_text(encoding="utf-8"))
        rows = [json.loads(x) for x in run.committed(system).read_text(encoding="utf-8").splitlines() if x.strip()]
        acc = [r["correct"] for r in rows]
        lo, hi = bootstrap_ci(acc)
        shown = [bool(r["fact1_shown"]) for r in rows]
        with_fact = [r["correct"] for r, s in zip(rows, shown, strict=True) if s]
        without = [r["correct"] for r, s in zip(rows, shown, strict=True) if not s]
        letters: dict[str, int] = {}
        for r in rows:
            letters[r["prediction"] or "-"] = letters.get(r["prediction"] or "-", 0) + 1
        knowledge = bool(settings.get("n_docs"))
        systems[system] = {
            "n": len(rows), "complete": True, "of": settings["n"],
            "accuracy": sum(acc) / len(rows), "ci_low": lo, "ci_high": hi,
            "invalid_rate": sum(r["invalid"] for r in rows) / len(rows),
            "forced_rate": sum(r["forced"] for r in rows) / len(rows),
            "contradiction_rate": sum(r["contradiction"] for r in rows) / len(rows),
            "letters": dict(sorted(letters.items())),
            "fact1_shown_rate": sum(shown) / len(rows) if knowledge else None,
            "accuracy_fact1_shown": sum(with_fact) / len(with_fact) if with_fact and knowledge else None,
            "accuracy_fact1_not_shown": sum(without) / len(without) if without and knowledge else None,
            "answer_scoring": settings.get("answer_scoring"), "decoding": settings.get("decoding"),
            "n_docs": settings.get("n_docs"), "retriever": settings.get("retriever"),
            "backend": settings.get("backend"),
        }
        correct[system] = {r["id"]: r["correct"] for r in rows}
    comparisons = {}
    kards = [s for s in KARDS if s in systems]
    best = max(kards, key=lambda s: systems[s]["accuracy"]) if kards else None
    if best:
        for other in ("ft", "ft-rag", "ka-ft", "rd", "base"):
            if other not in systems:
                continue
            ids = sorted(set(correct[best]) & set(correct[other]))
            a, b = [correct[best][i] for i in ids], [correct[other][i] for i in ids]
            lo, hi = paired_bootstrap_ci(a, b)
            comparisons[f"{best} vs {other}"] = {"difference": (sum(a) - sum(b)) / len(ids), "ci_low": lo,
                                                 "ci_high": hi, "mcnemar_p": mcnemar_p(a, b), "n": len(ids)}
    training = {}
    for mode in STUDENTS:
        summary = run.results / f"train-{mode}.json"
        if summary.is_file():
            t = json.loads(summary.read_text(encoding="utf-8"))
            training[mode] = {k: t[k] for k in ("steps", "finished", "tokens_per_s", "train_seconds", "first_loss",
                                                "last_loss")}
        elif (run.dir / f"student-{mode}" / "loss_curve.json").is_file():  # running: progress only, no result
            hist = json.loads((run.dir / f"student-{mode}" / "loss_curve.json").read_text(encoding="utf-8"))
            training[mode] = {"steps": len(hist), "finished": False, "tokens_per_s": None,
                              "train_seconds": hist[-1]["seconds"] if hist else 0, "first_loss": None,
                              "last_loss": hist[-1]["train_loss"] if hist else None}
    curves_path = run.results / "curves.json"
    curves = json.loads(curves_path.read_text(encoding="utf-8")) if curves_path.is_file() else {}
    agree_path = run.results / "agreement.json"
    agreement = json.loads(agree_path.read_text(encoding="utf-8")) if agree_path.is_file() else None
    rr_path = run.results / "reranker.json"
    reranker = json.loads(rr_path.read_text(encoding="utf-8")) if rr_path.is_file() else None
    result = {"systems": systems, "comparisons": comparisons, "best_kard": best, "training": training,
              "reranker": reranker, "curves": curves, "backend_agreement": agreement,
              "settings": {k: _portable(v) for k, v in vars(run.args).items()}}
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    notes = out_md.with_name(out_md.stem + ".notes.md")
    page = [f"# OpenBookQA, full run: every system on the {max((r['of'] for r in systems.values()), default=500)} "
            "test questions", "",
            "_Generated by `bench/distill/obqa_full.py --stage report` from the run folder; the numbers are also in "
            f"[`{out_md.stem}.json`]({out_md.stem}.json). Rows marked running or not run yet are parts of the run "
            "that have not finished: re-running the same command continues it._", "",
            "## Set-up", "", *SETUP,
            f"- Recipe of this run: answer format `{run.args.answer_format}`, answer-only systems scored by "
            f"`{run.args.scoring}`, RD and KARD by `{run.args.rationale_scoring}`, lr {run.args.lr}, "
            f"lower layers frozen: {run.args.freeze_layers}, from `--recipe {Path(str(run.args.recipe)).name}`, "
            f"{run.args.epochs} epoch(s), `--per-item {run.args.per_item} --select {run.args.select}`.",
            "", "## Results", "", render_tables(result)]
    if notes.is_file():
        page += ["", notes.read_text(encoding="utf-8")]
    out_md.write_text("\n".join(page).rstrip() + "\n", encoding="utf-8")
    return result


SETUP = [
    "- Data: OpenBookQA Main train (4,957) / test (500) / dev (first 100 for the learning curves); teacher = the KARD "
    "release rationales (20 per train question, gpt-3.5-turbo), filtered by the rule filter (`--judge none`); "
    "knowledge base = the open book (1,326 facts; BM25 + int8 MiniLM + hybrid).",
    "- Every student: SmolLM2-135M-Instruct (packaged), LoRA r16 on every linear layer, no dropout, AdamW lr 1e-3 "
    "constant, batch 8, 1 epoch over every train question with a kept rationale, the same order; source <= 384 "
    "tokens; target budget from the data (<= 1% cut); snapshots every 155 steps for the dev curves.",
    "- Examples: one rationale per question, the shortest kept one (`--per-item 1 --select shortest`); KARD and KA-FT "
    "show the 3 passages that BM25 retrieves with that rationale; KA-FT is KARD without the rationale in the target.",
    "- Test: FT, KA-FT, ft-rag and base pick their answer by likelihood after `Answer:` (the letter, or the "
    "option's text: the recipe line below); RD and KARD decode greedily (generation cap above the longest "
    "training target) and their answer is parsed from the output (forced by likelihood after `\\nAnswer:` when "
    "it has none, counted as forced), or scored by option text after the generated rationale. KARD's test "
    "passages: BM25, hybrid, or the reranker over a hybrid pool of 20 (the kind with the better fact1 R@5 on OBQA "
    "dev, run as its int8 ONNX export: the reranker a bundle ships). ft-rag is the FT student shown KARD's hybrid "
    "passages (the KA-FT prompt): plain retrieve-then-answer.",
    "- Rerankers: first 3 MiniLM layers, 4 + 4 BM25 candidates per (question, rationale) query labelled by "
    "BM25(rationale), 2 epochs; each epoch a seeded sample of as many queries as train questions (from the "
    "queries of every kept rationale), the kept epoch chosen on 500 dev queries (question-disjoint).",
    "- Back-ends: RD and KARD are scored through each student's exported Q8_0 GGUF on llama.cpp with the settings "
    "stored with the student (prompt budget, passage count, generation cap), the path a bundle answers by; the "
    "answer-only systems through PyTorch. The first 100 test questions of KARD (BM25) are scored by both.",
    "- Every finished part is committed under `docs/results/obqa-full/` (per-question predictions as compact "
    "JSONL, training summaries, curves); this page is made from those files alone, and a part with a committed "
    "result is never redone.",
    "- Statistics: 95% CI by bootstrap over questions (10,000 resamples; paired for differences), exact McNemar on "
    "the discordant questions.",
    "- Command: `OMP_NUM_THREADS=2 .venv/bin/python bench/distill/obqa_full.py` (add `--systems ...` for a part).",
]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render_tables(result: dict[str, Any]) -> str:
    """The measured tables as markdown (the page's prose is written around them by hand)."""
    lines = ["| system | n | accuracy | 95% CI | invalid | forced | contradiction | fact1 shown | acc. fact1 shown / "
             "not | letters A/B/C/D/- |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in SYSTEMS:
        r = result["systems"].get(name)
        if r is None:
            lines.append(f"| {name} | not run yet | | | | | | | | |")
            continue
        n = f"{r['n']}" + ("" if r["complete"] else f" of {r['of']} (running)")
        ci = f"{_pct(r['ci_low'])}-{_pct(r['ci_high'])}" if r["ci_low"] is not None else "-"
        letters = "/".join(str(r["letters"].get(k, 0)) for k in "ABCD-")
        lines.append(f"| {name} | {n} | {_pct(r['accuracy'])} | {ci} | {_pct(r['invalid_rate'])} | "
                     f"{_pct(r['forced_rate'])} | {_pct(r['contradiction_rate'])} | {_pct(r['fact1_shown_rate'])} | "
                     f"{_pct(r['accuracy_fact1_shown'])} / {_pct(r['accuracy_fact1_not_shown'])} | {letters} |")
    if result["comparisons"]:
        lines += ["", "| comparison | difference | 95% CI (paired bootstrap) | McNemar p | n |",
                  "|---|---|---|---|---|"]
        for name, c in result["comparisons"].items():
            lines.append(f"| {name} | {100 * c['difference']:+.1f} pts | {100 * c['ci_low']:+.1f} to "
                         f"{100 * c['ci_high']:+.1f} | {c['mcnemar_p']:.3g} | {c['n']} |")
    if result["training"]:
        lines += ["", "| student | steps | finished | train time | tokens/s | first / last train loss |",
                  "|---|---|---|---|---|---|"]
        for mode, t in result["training"].items():
            tps = "-" if t["tokens_per_s"] is None else f"{t['tokens_per_s']:.0f}"
            lines.append(f"| {mode} | {t['steps']} | {'yes' if t['finished'] else 'no (running)'} | "
                         f"{t['train_seconds'] / 60:.0f} min | {tps} | {t['first_loss']} / {t['last_loss']} |")
    reranker = result.get("reranker")
    if reranker:
        lines += ["", f"| reranker | training queries / epoch (of {reranker['train_queries_available']:,}) | "
                  "dev queries (questions) | steps | train time | "
                  "kept epoch | dev top-1 by epoch | fact1 R@5 on dev, hybrid pool 20 |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind, k in reranker["kinds"].items():
            chosen = " (chosen)" if kind == reranker["chosen"] else ""
            lines.append(f"| {kind}{chosen} | {k['n_train']:,} | {k['n_dev']:,} ({k['n_dev_items']:,}) | "
                         f"{k['steps']:,} | "
                         f"{k['train_seconds'] / 60:.0f} min | {k['best_epoch']} | "
                         f"{' / '.join(f'{v:.3f}' for v in k['dev_top1_by_epoch'])} | "
                         f"{reranker['dev_fact1_r5_hybrid_pool20'][kind]:.3f} |")
    agree = result.get("backend_agreement")
    if agree:
        lines += ["", f"Back-ends: on the first {agree['n']} test questions, {agree['system']} through llama.cpp "
                  f"(Q8_0 GGUF) and through PyTorch (fp32) picked the same letter {agree['same_letter']} times "
                  f"({_pct(agree['rate'])}; accuracy {_pct(agree['accuracy_gguf'])} vs "
                  f"{_pct(agree['accuracy_torch'])})."]
    if result["curves"]:
        lines += ["", "| system | dev accuracy by step |", "|---|---|"]
        for system, points in result["curves"].items():
            pts = ", ".join(f"{p['step']}: {_pct(p['dev_accuracy'])}" for p in sorted(points, key=lambda p: p["step"]))
            lines.append(f"| {system} | {pts} |")
    return "\n".join(lines) + "\n"


RECIPE = ROOT / "docs" / "results" / "obqa-recipe.json"
# What the full run uses when there is no recipe (--recipe none): the paper's letter answers, read by likelihood.
NO_RECIPE = {"answer_format": "letter", "scoring": "letter", "rationale_scoring": "generated", "lr": 1e-3,
             "freeze_layers": 0}


def recipe_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The full run's settings from the recipe chosen on dev: the chosen arm's answer format, scoring, lr and
    frozen layers; RD and KARD read their answer the way that scored best for the recipe's KARD arm.

    Raises ValueError when the recipe run has not finished (the choice would not be the dev-chosen one) or names no
    chosen arm."""
    if not recipe.get("finished"):
        raise ValueError("the recipe chosen on dev is not finished (bench/distill/obqa_recipe.py has arms left): "
                         "finish it first, or pass --recipe none with explicit --answer-format/--scoring/--lr")
    arms, chosen = recipe.get("arms") or {}, recipe.get("chosen")
    if chosen not in arms:
        raise ValueError(f"the recipe names no chosen arm among its arms (chosen: {chosen!r})")
    arm = arms[chosen]
    kard = {k: v for k, v in arms.items() if v.get("mode") == "kard"}
    best_kard = max(kard.values(), key=lambda v: v["accuracy"]) if kard else None
    return {"answer_format": arm["answer_format"], "scoring": "text" if arm["scoring"] == "text" else "letter",
            "rationale_scoring": best_kard["scoring"] if best_kard else "generated", "lr": arm["lr"],
            "freeze_layers": arm.get("freeze_layers", 0)}


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill every setting left unset on the command line from ``--recipe`` (explicit options win)."""
    if str(args.recipe).lower() == "none":
        settings = NO_RECIPE
    else:
        path = Path(args.recipe)
        if not path.is_file():
            raise ValueError(f"{path}: no recipe file (run bench/distill/obqa_recipe.py, or pass --recipe none)")
        settings = recipe_settings(json.loads(path.read_text(encoding="utf-8")))
    for key, value in settings.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obqa", type=Path,
                   default=Path(os.environ.get("KARDLITE_OBQA") or ROOT.parent / "shared" / "data" / "obqa"))
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "obqa-full")
    p.add_argument("--stage", default="all",
                   choices=["all", "data", "reranker", "train", "curves", "eval", "agree", "report"])
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--per-item", type=int, default=1, help="kept rationales per question (the paper: all)")
    p.add_argument("--select", default="shortest", choices=["first", "shortest", "random"])
    p.add_argument("--k", type=int, default=3, help="passages per training prompt (and at test: the student's)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's (--recipe)")
    p.add_argument("--snapshot-every", type=int, default=155, help="steps between learning-curve snapshots")
    p.add_argument("--save-every", type=int, default=10, help="steps between training checkpoints (resume points)")
    p.add_argument("--student", default=None, help="base student (default: the packaged SmolLM2-135M-Instruct)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--dev-limit", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--reranker-queries", type=int, default=None,
                   help="training queries per reranker epoch, a seeded sample (default: one per train question; "
                        "0 = every kept rationale's query)")
    p.add_argument("--reranker-dev-queries", type=int, default=500,
                   help="dev queries that choose the reranker's kept epoch (0 = all)")
    p.add_argument("--report", type=Path, default=ROOT / "docs" / "results" / "obqa-full.md")
    p.add_argument("--results", type=Path, default=None,
                   help="committed per-part results (default: the report's name as a folder beside it)")
    p.add_argument("--recipe", default=str(RECIPE),
                   help="the recipe chosen on dev (bench/distill/obqa_recipe.py's JSON): answer format, scorings, lr "
                        "and frozen layers not given here are taken from it; 'none' = the built-in defaults")
    p.add_argument("--answer-format", default=None, choices=["letter", "text", "both"],
                   help="what the students' targets write after 'Answer:' (default: the recipe's)")
    p.add_argument("--scoring", default=None, choices=["letter", "text"],
                   help="how answer-only systems (base, ft, ft-rag, ka-ft) pick their answer (default: the recipe's)")
    p.add_argument("--freeze-layers", type=int, default=None, help="default: the recipe's")
    p.add_argument("--gen-backend", default="gguf", choices=["gguf", "torch"],
                   help="back-end of the generating systems (rd, kard-*): gguf = the exported Q8_0, as a bundle")
    p.add_argument("--agree-n", type=int, default=100, help="test questions scored by both back-ends (kard-bm25)")
    p.add_argument("--rationale-scoring", default=None, choices=["generated", "text"],
                   help="how rd and kard pick theirs: the generated answer line, or option text after the rationale "
                        "(default: the recipe's)")
    args = p.parse_args()
    try:
        apply_recipe(args)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    random.seed(0)
    run = Run(args)
    systems = set(args.systems.split(","))
    unknown = systems - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    stages = (["data", "reranker", "train", "curves", "eval", "agree", "report"] if args.stage == "all"
              else [args.stage])
    for stage in stages:
        print(f"== {stage}", flush=True)
        if stage == "data":
            stage_data(run, systems)
        elif stage == "reranker":
            if "kard-reranker" in systems:
                stage_reranker(run)
        elif stage == "train":
            stage_train(run, systems)
        elif stage == "curves":
            stage_curves(run, systems)
        elif stage == "eval":
            stage_eval(run, systems)
        elif stage == "agree":
            stage_agree(run, systems)
        else:
            result = stage_report(run, args.report)
            print(json.dumps({k: {m: v.get(m) for m in ("n", "accuracy", "invalid_rate", "forced_rate")}
                              for k, v in result["systems"].items()}, indent=1))


if __name__ == "__main__":
    main()
