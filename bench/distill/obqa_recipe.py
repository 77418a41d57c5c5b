"""Choose the student recipe on OpenBookQA dev: which answer format, scoring, learning rate and layers make a 135M
student learn. Small, fast and decisive; resumable arm by arm.

Every arm trains the packaged SmolLM2-135M-Instruct with LoRA on the same 1,000 train questions (the first 1,000
OBQA train questions with a kept KARD-release rationale; OBQA dev is another split, so they are question-disjoint),
in the same seeded order, for the same step budget (one epoch: 125 steps of 8), and is scored on the first 200 OBQA
dev questions in every way that costs no training:

- answer-only arms (FT, KA-FT): the letter's likelihood after ``Answer:`` (letter and both formats), and the
  option's own text by mean log-likelihood (``text``);
- rationale arms (RD, KARD): the answer read from the generated line (``generated``; no line = wrong, counted as
  invalid) and, after the generated rationale, the option's text by mean log-likelihood (``text``).

Each scoring is also applied to the untrained student with the same prompts (``start_accuracy``). Knowledge arms
see the 3 passages BM25 retrieves with the question at test time. Learning curves: the primary scoring at 4 points.

The order is cheapest and most decisive first: FT in the three answer formats, KA-FT in the three, then KARD and RD
in the winning format, KA-FT trained on question-retrieved passages, and the winning FT arm at a second learning
rate and with the lower layers frozen.

Results go to ``docs/results/obqa-recipe/`` as each arm finishes (per-question predictions as compact JSONL, the
training summary and the curve), so a restart regenerates the page from committed files and trains only what has
no committed result; the run folder (``--run``) holds only what can be rebuilt.

    OMP_NUM_THREADS=2 .venv/bin/python bench/distill/obqa_recipe.py                  # everything, resumable
    .venv/bin/python bench/distill/obqa_recipe.py --arms ft-letter,ft-text           # a part
    .venv/bin/python bench/distill/obqa_recipe.py --report-only                      # the page from what is done

Needs the OBQA data (``--obqa``, default ``$KARDLITE_OBQA``) and the train extra.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from obqa_full import _fact1, _norm, bootstrap_ci  # noqa: E402  (the full run's statistics, one copy)

from kardlite._io import atomic_write_text  # noqa: E402

FORMATS = ("letter", "text", "both")
LR = 5e-4  # the learning rate of every arm but the lr arm: the dev probes learnt at 5e-4 where 1e-3 did not
# Arm name -> settings. "best" is resolved at run time: the answer format of the best finished answer-only arm.
ARMS: dict[str, dict[str, Any]] = {
    **{f"ft-{f}": {"mode": "ft", "format": f} for f in FORMATS},
    **{f"ka-ft-{f}": {"mode": "ka-ft", "format": f} for f in FORMATS},
    "kard-best": {"mode": "kard", "format": "best"},
    "rd-best": {"mode": "rd", "format": "best"},
    "ka-ft-question-best": {"mode": "ka-ft", "format": "best", "query": "question"},
    "ft-best-lr1e-3": {"mode": "ft", "format": "best", "lr": 1e-3},
    "ft-best-freeze8": {"mode": "ft", "format": "best", "freeze_layers": 8},
}
OUT = ROOT / "docs" / "results" / "obqa-recipe"
N_DOCS = 3
SOURCE_TOKENS = 384
BATCH = 8


def scorings(mode: str, fmt: str) -> list[str]:
    """The ways an arm's student is scored (no training cost)."""
    if mode in ("rd", "kard"):
        return ["generated", "text"]
    return ["text"] if fmt == "text" else ["letter", "text"]


def primary(mode: str) -> str:
    return "generated" if mode in ("rd", "kard") else "text"


# ----------------------------------------------------------------------------- data


def prepare(obqa: Path, run: Path, n_train: int) -> dict[str, Any]:
    """Train questions, kept rationales, the open-book KB and the example files (cached in ``run``)."""
    from kardlite.data import load_task

    run.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "kardlite.cli"]
    # The first 1,300 train questions hold well over 1,000 with a kept rationale (99% keep rate).
    n_source = int(n_train * 1.3)
    train = run / f"train-{n_source}.jsonl"
    if not train.is_file():
        lines = (obqa / "Main" / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:n_source]
        train.write_text("".join(lines), encoding="utf-8")
        with gzip.open(obqa / "kard_teacher" / "train_rationales.jsonl.gz", "rt", encoding="utf-8") as fh:
            rat = [next(fh) for _ in range(n_source)]
        with gzip.open(run / "rationales.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(rat)
    if not (run / "store").exists():
        subprocess.run([*cli, "rationales", "import", str(run / "rationales.jsonl.gz"), "--tasks", str(train),
                        "--out", str(run / "store"), "--quiet"], check=True)
    if not (run / "filtered" / "kept.jsonl").is_file():
        subprocess.run([*cli, "rationales", "filter", str(run / "store"), "--tasks", str(train), "--out",
                        str(run / "filtered"), "--judge", "none", "--quiet"], check=True)
    kb = run / "kb"
    if not kb.exists():
        from kardlite.kb import KBConfig, KnowledgeBase, read_passages

        KnowledgeBase.build(read_passages(obqa / "Main" / "openbook.txt"), kb, config=KBConfig(), progress=False)
    return {"train": train, "kept": run / "filtered" / "kept.jsonl", "kb": kb,
            "dev": load_task(obqa / "Main" / "dev.jsonl")}


def examples_file(data: dict[str, Any], run: Path, mode: str, query: str, n_train: int) -> Path:
    """One example file per (mode, query): the same questions and the shortest kept rationale of each."""
    from kardlite.data import load_task
    from kardlite.distill.examples import build_examples, read_kept_rationales, save_examples
    from kardlite.kb import KnowledgeBase

    path = run / f"{mode}-{query}.jsonl"
    if path.is_file():
        return path
    kb = KnowledgeBase.load(data["kb"]) if mode in ("kard", "ka-ft") else None
    rows = build_examples(load_task(data["train"]), read_kept_rationales(data["kept"]), mode, kb=kb, k=N_DOCS,
                          retriever="bm25", max_items=n_train, per_item=1, select="shortest", query=query,
                          kb_path=data["kb"])
    save_examples(rows, path)
    return path


# ----------------------------------------------------------------------------- scoring


def dev_passages(data: dict[str, Any], items: list[Any]) -> list[list[Any]]:
    """Test-time passages: BM25 with the linearised question, top 3 (no reranker: the same for every arm)."""
    from kardlite.distill.evaluate import make_retriever
    from kardlite.kb import KnowledgeBase

    retrieve = make_retriever(KnowledgeBase.load(data["kb"]), "bm25")
    return [retrieve(it, N_DOCS) for it in items]


def score(student: Any, items: list[Any], passages: list[list[Any]], mode: str, fmt: str, ways: list[str],
          max_new_tokens: int, facts: dict[str, str]) -> list[dict[str, Any]]:
    """One row per question: the letter each scoring picks (None = no answer), whether the question's gold fact
    (``fact1``) was among the passages shown, and the generated text."""
    from kardlite.answers import forced_context
    from kardlite.data.records import LETTERS
    from kardlite.distill.evaluate import (
        EvalConfig,
        generate,
        score_continuations,
        score_letters,
        score_option_texts,
    )
    from kardlite.prompts import parse_answer

    rows: list[dict[str, Any]] = []
    for b in range(0, len(items), 16):
        batch, ps = items[b:b + 16], passages[b:b + 16]
        prompts = [student.prompt(it, mode, passages=p if mode in ("kard", "ka-ft") else (), max_tokens=SOURCE_TOKENS,
                                  answer_format=fmt) for it, p in zip(batch, ps, strict=True)]
        ids = [student.encode(p) for p in prompts]
        opts = [list(it.options) for it in batch]
        picks: dict[str, list[int | None]] = {}
        outputs: list[str] = [""] * len(batch)
        if mode in ("rd", "kard"):
            gen = generate(student, ids, [len(o) for o in opts],
                           EvalConfig(decoding="greedy", max_new_tokens=max_new_tokens))
            outputs = [g[0] for g in gen]
            picks["generated"] = [parse_answer(t, len(o), o) for t, o in zip(outputs, opts, strict=True)]
            # option text scored after the rationale and "\nAnswer:", as eval and the runtime read a forced answer
            after = [i + student.encode(forced_context(t), special=False)
                     for i, t in zip(ids, outputs, strict=True)]
            sc = score_option_texts(student, after, opts, fmt)
            picks["text"] = [max(range(len(s)), key=s.__getitem__) for s in sc]
        else:
            if "letter" in ways:
                if fmt == "both":
                    conts = [[f" ({LETTERS[i]})" for i in range(len(o))] for o in opts]
                    sc = [[total for _, total in row] for row in score_continuations(student, ids, conts)]
                else:
                    sc = score_letters(student, ids, [len(o) for o in opts])
                picks["letter"] = [max(range(len(s)), key=s.__getitem__) for s in sc]
            sc = score_option_texts(student, ids, opts, fmt)
            picks["text"] = [max(range(len(s)), key=s.__getitem__) for s in sc]
        for j, (it, p) in enumerate(zip(batch, prompts, strict=True)):
            shown = {_norm(x.text) for x in ps[j] if x.id in p.passage_ids}
            row = {"id": it.id, "gold": LETTERS[it.label],
                   "pred": {w: (None if picks[w][j] is None else LETTERS[picks[w][j]]) for w in ways},
                   "fact_shown": facts.get(it.id, "\0") in shown if mode in ("kard", "ka-ft") else None}
            if outputs[j]:
                row["output"] = outputs[j]
            rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Compact JSONL (one line per question), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# ----------------------------------------------------------------------------- arms


def resolve_format(arm: str) -> str | None:
    """The arm's answer format; for "best", the format of the best finished answer-only arm (None: not yet)."""
    fmt = ARMS[arm]["format"]
    if fmt != "best":
        return fmt
    best, best_acc = None, -1.0
    for name in (f"{m}-{f}" for m in ("ft", "ka-ft") for f in FORMATS):
        path = OUT / f"{name}.jsonl"
        if not path.is_file():
            return None  # decide only once every format has been measured
        rows = _read_jsonl(path)
        for way in scorings(ARMS[name]["mode"], ARMS[name]["format"]):
            acc = sum(r["pred"][way] == r["gold"] for r in rows) / len(rows)
            if acc > best_acc:
                best, best_acc = ARMS[name]["format"], acc
    return best


def run_arm(arm: str, data: dict[str, Any], args: argparse.Namespace, dev: list[Any], passages: list[list[Any]],
            facts: dict[str, str]) -> None:
    spec = ARMS[arm]
    mode, query = spec["mode"], spec.get("query", "rationale")
    fmt = resolve_format(arm)
    if fmt is None:
        print(f"skip {arm}: the answer-only arms that choose its format are not all finished", flush=True)
        return
    done = OUT / f"{arm}.jsonl"
    if done.is_file():
        print(f"{arm}: done ({done.relative_to(ROOT)})", flush=True)
        return
    examples = examples_file(data, args.run, mode, query, args.train_questions)
    run_dir = args.run / f"student-{arm}"
    steps = -(-args.train_questions // BATCH)
    snap = max(1, steps // 4)
    cmd = [sys.executable, "-m", "kardlite.cli", "train", "student", str(examples), "--out", str(run_dir),
           "--lr", str(spec.get("lr", LR)), "--max-steps", str(steps), "--batch-size", str(BATCH),
           "--max-source-tokens", str(SOURCE_TOKENS), "--answer-format", fmt, "--save-every", "10",
           "--snapshot-every", str(snap), "--dev-fraction", "0", "--freeze-layers", str(spec.get("freeze_layers", 0))]
    print(f"== {arm}: train ({mode}, {fmt}, {steps} steps)", flush=True)
    subprocess.run(cmd, check=True)

    from kardlite.distill.student import load_student
    from kardlite.distill.train import list_snapshots, snapshot_model

    curve = []
    ways = scorings(mode, fmt)
    for step in [s for s in list_snapshots(run_dir) if s < steps][:3]:
        # each point is kept in the run folder as soon as it is scored: a restart scores only the missing ones
        point_file = run_dir / f"curve-{step:06d}.json"
        if point_file.is_file():
            curve.append(json.loads(point_file.read_text(encoding="utf-8")))
            print(f"   {arm} step {step}: {curve[-1]} (kept)", flush=True)
            continue
        model = snapshot_model(run_dir, step, args.run / "snapshots" / f"{arm}-{step:06d}")
        student = load_student(model)
        rows = score(student, dev, passages, mode, fmt, [primary(mode)], student.info["max_new_tokens"], facts)
        curve.append({"step": step, "accuracy": _accuracy(rows, primary(mode))})
        atomic_write_text(point_file, json.dumps(curve[-1]) + "\n")
        print(f"   {arm} step {step}: {curve[-1]}", flush=True)
    student = load_student(run_dir)
    rows = score(student, dev, passages, mode, fmt, ways, student.info["max_new_tokens"], facts)
    curve.append({"step": steps, "accuracy": _accuracy(rows, primary(mode))})
    hist = json.loads((run_dir / "loss_curve.json").read_text(encoding="utf-8"))
    secs = sum(max(0.0, b["seconds"] - a["seconds"]) for a, b in itertools.pairwise(hist))
    toks = sum(h.get("tokens", 0) for h in hist[1:])
    summary = {"arm": arm, "mode": mode, "answer_format": fmt, "query": query, "lr": spec.get("lr", LR),
               "freeze_layers": spec.get("freeze_layers", 0), "steps": steps, "examples": str(examples.name),
               "train_seconds": round(hist[-1]["seconds"], 1), "tokens_per_s": round(toks / secs, 1) if secs else None,
               "first_loss": hist[0]["train_loss"], "last_loss": hist[-1]["train_loss"], "curve": curve,
               "scorings": ways, "primary": primary(mode), "max_new_tokens": student.info["max_new_tokens"]}
    (OUT / f"{arm}.train.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    _write_jsonl(done, rows)
    print(f"== {arm}: {({w: _accuracy(rows, w) for w in ways})}", flush=True)


def run_start(mode: str, fmt: str, dev: list[Any], passages: list[list[Any]], facts: dict[str, str]) -> Path:
    """The untrained student scored the same ways (start_accuracy), once per (mode, format)."""
    path = OUT / f"start-{mode}-{fmt}.jsonl"
    if not path.is_file():
        from kardlite.distill.student import load_student

        student = load_student(None)
        print(f"== start {mode} {fmt}", flush=True)
        # the untrained model has no target length: the cap is the rationale arms' usual (targets ~130 tokens)
        _write_jsonl(path, score(student, dev, passages, mode, fmt, scorings(mode, fmt), 192, facts))
    return path


def _accuracy(rows: list[dict[str, Any]], way: str) -> float:
    return sum(r["pred"][way] == r["gold"] for r in rows) / len(rows)


# ----------------------------------------------------------------------------- report


def report() -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm in ARMS:
        path, train = OUT / f"{arm}.jsonl", OUT / f"{arm}.train.json"
        if not path.is_file() or not train.is_file():
            continue
        rows, info = _read_jsonl(path), json.loads(train.read_text(encoding="utf-8"))
        start_path = OUT / f"start-{info['mode']}-{info['answer_format']}.jsonl"
        start = _read_jsonl(start_path) if start_path.is_file() else None
        for way in info["scorings"]:
            correct = [r["pred"][way] == r["gold"] for r in rows]
            lo, hi = bootstrap_ci(correct)
            shown = [bool(r["fact_shown"]) for r in rows]
            letters: dict[str, int] = {}
            for r in rows:
                letters[r["pred"][way] or "-"] = letters.get(r["pred"][way] or "-", 0) + 1
            entry = {"n": len(rows), "accuracy": sum(correct) / len(rows), "ci_low": lo, "ci_high": hi,
                     "start_accuracy": _accuracy(start, way) if start else None,
                     "invalid_rate": sum(r["pred"][way] is None for r in rows) / len(rows),
                     "letters": dict(sorted(letters.items())), "mode": info["mode"],
                     "answer_format": info["answer_format"], "scoring": way, "lr": info["lr"],
                     "freeze_layers": info["freeze_layers"], "query": info["query"],
                     "tokens_per_s": info["tokens_per_s"], "train_seconds": info["train_seconds"],
                     "first_loss": info["first_loss"], "last_loss": info["last_loss"],
                     "curve": info["curve"] if way == info["primary"] else None}
            if info["mode"] in ("kard", "ka-ft"):
                with_fact = [c for c, s in zip(correct, shown, strict=True) if s]
                without = [c for c, s in zip(correct, shown, strict=True) if not s]
                entry.update(fact1_shown_rate=sum(shown) / len(rows),
                             accuracy_fact1_shown=sum(with_fact) / len(with_fact) if with_fact else None,
                             accuracy_fact1_not_shown=sum(without) / len(without) if without else None)
            arms[f"{arm}/{way}"] = entry
    learnt = {k: v for k, v in arms.items() if v["start_accuracy"] is not None}
    chosen = max(learnt, key=lambda k: learnt[k]["accuracy"]) if learnt else None
    return {"arms": arms, "chosen": chosen, "finished": all((OUT / f"{a}.jsonl").is_file() for a in ARMS),
            "settings": {"train_questions": 1000, "dev_questions": 200, "steps": 125, "batch": BATCH, "lr": LR,
                         "n_docs": N_DOCS, "source_tokens": SOURCE_TOKENS}}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render_page(result: dict[str, Any]) -> str:
    """The results page: set-up, one row per (arm, scoring), the choice, and what is still running."""
    lines = ["# Choosing the student recipe on OpenBookQA dev", "",
             "_Generated by `bench/distill/obqa_recipe.py` from the committed per-arm results in "
             "[`obqa-recipe/`](obqa-recipe/); the numbers are also in [`obqa-recipe.json`](obqa-recipe.json)._", "",
             "## Set-up", "",
             "- Student: the packaged SmolLM2-135M-Instruct (Q4_1 weights de-quantised; LoRA r16 on every linear "
             "layer, no dropout), AdamW, batch 8, one epoch over 1,000 OBQA train questions (125 steps), the "
             "shortest kept KARD-release rationale per question (rule filter), source budget 384 tokens; the same "
             "questions and order for every arm.",
             f"- Dev: the first 200 OBQA dev questions. Knowledge arms see the {N_DOCS} passages BM25 retrieves with "
             "the question (the open book, 1,326 facts); in training they saw the passages retrieved with the "
             "rationale (KARD's way) unless the arm says `question`.",
             "- Scorings (one trained student, every way): `letter` = the letter's likelihood after `Answer:` "
             "(for the `both` format, of ` (X)`); `text` = mean log-likelihood of what the format writes after "
             "`Answer:` (the option's text, or `(X) text`), after the generated rationale for RD/KARD; "
             "`generated` = the answer parsed from the greedy output (none = wrong, counted as invalid).",
             "- start = the same scoring and prompt on the untrained student. 95% CI: bootstrap over questions.",
             "- Command: `OMP_NUM_THREADS=2 .venv/bin/python bench/distill/obqa_recipe.py` (resumes; "
             "`--report-only` rewrites this page). Machine: 2-core AMD EPYC (AVX2), shared with code work, so "
             "tokens/s here are indicative; bench/train_speed.py measures speed on idle cores.", "",
             "## Results", "",
             "| arm / scoring | mode | format | lr | frozen | dev acc. | 95% CI | start | gain | invalid | "
             "fact1 shown: acc. with / without | curve (step: acc.) | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["arms"].items():
        gain = "-" if r["start_accuracy"] is None else f"{100 * (r['accuracy'] - r['start_accuracy']):+.1f}"
        facts = (f"{_pct(r.get('accuracy_fact1_shown'))} / {_pct(r.get('accuracy_fact1_not_shown'))} "
                 f"(shown {_pct(r.get('fact1_shown_rate'))})") if "fact1_shown_rate" in r else "-"
        curve = ", ".join(f"{c['step']}: {_pct(c['accuracy'])}" for c in r["curve"]) if r["curve"] else ""
        lines.append(f"| {name} | {r['mode']} | {r['answer_format']} | {r['lr']:g} | {r['freeze_layers']} | "
                     f"**{_pct(r['accuracy'])}** | {_pct(r['ci_low'])}-{_pct(r['ci_high'])} | "
                     f"{_pct(r['start_accuracy'])} | {gain} | {_pct(r['invalid_rate'])} | {facts} | {curve} | "
                     f"{r['tokens_per_s'] or '-'} |")
    missing = [a for a in ARMS if not any(k.startswith(a + "/") for k in result["arms"])]
    lines += ["", f"Not finished yet: {', '.join(missing)}." if missing else "Every arm has finished.", ""]
    chosen = result["chosen"]
    if chosen:
        r = result["arms"][chosen]
        verdict = ("meets" if r["accuracy"] - r["start_accuracy"] >= 0.05 else "misses")
        label = "Chosen" if result["finished"] else "Best so far"
        lines += [f"**{label}: `{chosen}`** at {_pct(r['accuracy'])} against {_pct(r['start_accuracy'])} "
                  f"untrained ({verdict} the +5-point bar)."
                  + ("" if result["finished"] else " The choice is provisional until every arm has run.")]
    notes = OUT.parent / f"{OUT.name}.notes.md"
    if notes.is_file():
        lines += ["", notes.read_text(encoding="utf-8")]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obqa", type=Path,
                   default=Path(os.environ.get("KARDLITE_OBQA") or ROOT.parent / "shared" / "data" / "obqa"))
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "obqa-recipe")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--train-questions", type=int, default=1000)
    p.add_argument("--dev-questions", type=int, default=200)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", type=Path, default=OUT, help="where per-arm results and the .json go (a smoke run "
                   "elsewhere keeps the committed ones clean)")
    args = p.parse_args()
    OUT = args.results
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        started = time.time()
        data = prepare(args.obqa, args.run, args.train_questions)
        dev = data["dev"][:args.dev_questions]
        passages = dev_passages(data, dev)
        facts = _fact1(args.obqa / "Additional" / "dev_complete.jsonl")
        for arm in args.arms.split(","):
            if arm not in ARMS:
                raise SystemExit(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
            spec = ARMS[arm]
            fmt = resolve_format(arm)
            if fmt is not None:
                run_start(spec["mode"], fmt, dev, passages, facts)
            run_arm(arm, data, args, dev, passages, facts)
        print(f"done in {time.time() - started:.0f} s", flush=True)
    result = report()
    (OUT.parent / f"{OUT.name}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (OUT.parent / f"{OUT.name}.md").write_text(render_page(result), encoding="utf-8")
    print(json.dumps({k: round(v["accuracy"], 3) for k, v in result["arms"].items()}, indent=1))


if __name__ == "__main__":
    main()
