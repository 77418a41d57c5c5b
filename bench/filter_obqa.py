"""Keep rates and cost of the three rationale filters on OBQA train with KARD's released rationales.

    nice .venv/bin/python bench/filter_obqa.py --questions 300 --judge-per-question 2
    nice .venv/bin/python bench/filter_obqa.py --rules --out docs/results/filter-obqa.json
    nice .venv/bin/python bench/filter_obqa.py --draw-sample   # the seeded sample that was hand-labelled

``--rules`` compares the rule filters (degenerate and stated; no judge) before and after their rewrite on all
99,140 rationales (keep rate, share of kept texts with no parsed answer) and, on the hand-labelled sample in
bench/data/filter_labels_obqa.jsonl, each rule's precision and recall. The "before" rules are this file's copy
of the rules as they were (``_Old``), so both sides run on the same data in one process.

Without ``--rules``: samples questions (seeded), imports their rationales into a temporary store, then runs
(a) degenerate, (b) stated-answer and (c) the judge, each on ALL sampled rationales independently (not chained), so
each filter's keep rate stands on its own; then the chained pipeline's numbers. The judge sees only the first
``--judge-per-question`` rationales of each question to bound CPU time (printed in the output).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from kardlite.data import load_task
from kardlite.data.records import LETTERS, QAItem
from kardlite.prompts import parse_answer
from kardlite.rationales.filter import Judge, check_answer, degenerate_reason, stated_answer
from kardlite.rationales.store import read_store
from kardlite.teacher import get_teacher

OBQA = Path(os.environ.get("OBQA") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "obqa")
LABELS = Path(__file__).resolve().parent / "data" / "filter_labels_obqa.jsonl"
DEFECTS = ("none", "refers-to-other-question", "refusal", "contradicts-gold", "self-contradiction", "degenerate")


class _Old:
    """The rules as they were before the rewrite (kardlite/rationales/filter.py and prompts.parse_answer at
    commit f3288a1), kept verbatim here as the "before" side of the comparison. Not linear-time: for benchmark
    data only."""

    REFERS = re.compile(
        r"\b(?:same|identical|repeat(?:ed)?|repetition|duplicate|similar)\b[^.\n]{0,40}\b(?:question|one)\b"
        r"|\b(?:previous|above|first|earlier|preceding|last)\s+(?:question|explanation|answer|response)\b"
        r"|\bas (?:explained|mentioned|stated) (?:above|before|earlier|previously)\b", re.IGNORECASE)
    REFUSAL = re.compile(
        r"^\s*(?:I'm sorry|I am sorry|I apologi[sz]e|Sorry,)|\bas an AI\b|\bI (?:cannot|can't|can not) "
        r"(?:help|assist|answer|provide|generate)", re.IGNORECASE)
    _L = r"\(?([A-J])\)?(?![A-Za-z])"
    _C = r"(?:correct|right|best)"
    STATED: ClassVar[list[re.Pattern[str]]] = [re.compile(p, re.IGNORECASE) for p in (
        r"\b(?:correct|right|best|final)\s+(?:answer|option|choice)\s+(?:is|would be|must be)\s*[:：]?\s*"
        r"(?:option|choice)?\s*" + _L,
        r"\b(?:so|thus|hence|therefore),?\s+the\s+answer\s+(?:is|would be|must be)\s*[:：]?\s*(?:option|choice)?\s*"
        + _L,
        r"(?:\b(?:option|choice)\s*)?\(?\b([A-J])\)?\s+is\s+the\s+" + _C + r"\s+(?:answer|option|choice)\b",
        r"\b(?:so|thus|hence|therefore|in conclusion),?\s+(?:the\s+)?(?:option|choice|answer)\s*" + _L +
        r"\s+is\s+(?:the\s+)?" + _C + r"\b",
    )]
    ANSWER_TEXT = re.compile(r"\b(?:correct|right|best)?\s*answer\s+is\s*[:：]?\s*[\"'“]?([^\"”\n]{2,120})",
                             re.IGNORECASE)
    ANSWER = re.compile(r"answer\s*(?:is)?\s*[:：]?\s*\(?\s*([A-Z])\s*\)?(?![A-Za-z])", re.IGNORECASE)

    @staticmethod
    def _norm(text: str) -> str:
        return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())

    @classmethod
    def degenerate_reason(cls, text: str) -> str | None:
        stripped = text.strip()
        if not stripped:
            return "empty"
        if len(stripped) < 40 or len(stripped.split()) < 8:
            return "too short"
        if cls.REFERS.search(stripped):
            return "refers to another question"
        if cls.REFUSAL.search(stripped):
            return "refusal"
        return None

    @classmethod
    def parse_answer(cls, text: str, n_options: int) -> int | None:
        valid = LETTERS[:n_options]
        found = None
        for match in cls.ANSWER.finditer(text):
            letter = match.group(1)
            if letter.upper() in valid and (letter.isupper() or ":" in match.group(0)):
                found = valid.index(letter.upper())
        return found

    @classmethod
    def stated_answer(cls, text: str, item: QAItem) -> int | None:
        n = len(item.options)
        found: list[tuple[int, int]] = []
        for pattern in cls.STATED:
            for m in pattern.finditer(text):
                letter = m.group(1)
                if letter.isupper() and letter in LETTERS[:n]:
                    found.append((m.start(1), LETTERS.index(letter)))
        options = [cls._norm(o) for o in item.options]
        for m in cls.ANSWER_TEXT.finditer(text):
            said = cls._norm(m.group(1))
            hits = [i for i, o in enumerate(options)
                    if o and (said.startswith(o) or (len(said) > 3 and o.startswith(said)))]
            if len(hits) == 1:
                found.append((m.start(1), hits[0]))
        parsed = cls.parse_answer(text, n)
        if parsed is not None:
            found.append((text.lower().rfind("answer"), parsed))
        return max(found)[1] if found else None


def _rules(text: str, item: QAItem) -> dict[str, Any]:
    """Every rule's verdict on one rationale, old and new, each on its own (not chained)."""
    old_deg = _Old.degenerate_reason(text)
    old_said = _Old.stated_answer(text, item)
    new_deg = degenerate_reason(text)
    verdict, reason = check_answer(text, item)
    return {
        "old.refers": old_deg == "refers to another question",
        "old.refusal": old_deg == "refusal",
        "old.too_short": old_deg in ("empty", "too short"),
        "old.stated": old_said is not None and old_said != item.label,
        "old.answer_parsed": old_said is not None,
        "new.refers": new_deg == "refers to another question",
        "new.refusal": new_deg == "refusal",
        "new.too_short": new_deg in ("empty", "too short"),
        "new.stated": verdict == "fail" and reason is not None and reason.startswith("states"),
        "new.rules_out_gold": verdict == "fail" and reason is not None and reason.startswith("rules out"),
        "new.endorses_other": verdict == "fail" and reason is not None and reason.startswith("calls"),
        "new.answer_parsed": verdict == "pass" or (reason or "").startswith("states"),
        "new.verdict": verdict,
    }


# Which labelled defect each rule is meant to catch.
_TARGET = {"refers": "refers-to-other-question", "refusal": "refusal", "too_short": "degenerate",
           "stated": "contradicts-gold", "rules_out_gold": "contradicts-gold", "endorses_other": "contradicts-gold"}


def _load(obqa: Path) -> tuple[dict[str, QAItem], list[tuple[str, int, str]]]:
    items = {it.id: it for it in load_task(obqa / "Main" / "train.jsonl")}
    rows = []
    with gzip.open(obqa / "kard_teacher" / "train_rationales.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            rows.extend((rec["id"], i, t) for i, t in enumerate(rec["rationales"]))
    return items, rows


def _strata(verdicts: dict[str, Any]) -> str:
    if any(verdicts[k] for k in ("old.refers", "old.refusal", "new.refers", "new.refusal")):
        return "degenerate-flagged"
    if any(verdicts[k] for k in ("old.stated", "new.stated", "new.rules_out_gold", "new.endorses_other")):
        return "answer-flagged"
    return "unflagged"


SAMPLE_SIZES = {"degenerate-flagged": 40, "answer-flagged": 80, "unflagged": 80}


def draw_sample(obqa: Path, seed: int) -> list[dict[str, Any]]:
    """The seeded stratified sample: every rationale falls in one stratum by the rules (old or new) that flag it;
    each stratum is sampled uniformly without replacement (SAMPLE_SIZES), so every rule has positives and
    population estimates can weight each stratum by its size."""
    items, rows = _load(obqa)
    by_stratum: dict[str, list[tuple[str, int]]] = {k: [] for k in SAMPLE_SIZES}
    for qid, i, text in rows:
        by_stratum[_strata(_rules(text, items[qid]))].append((qid, i))
    rng = random.Random(seed)
    out = []
    for name, size in SAMPLE_SIZES.items():
        for qid, i in sorted(rng.sample(by_stratum[name], min(size, len(by_stratum[name])))):
            out.append({"item_id": qid, "sample": i, "stratum": name, "stratum_size": len(by_stratum[name])})
    return out


def _prf(flags: list[bool], truth: list[bool], weights: list[float]) -> dict[str, Any]:
    tp = sum(w for f, t, w in zip(flags, truth, weights, strict=True) if f and t)
    fp = sum(w for f, t, w in zip(flags, truth, weights, strict=True) if f and not t)
    fn = sum(w for f, t, w in zip(flags, truth, weights, strict=True) if not f and t)
    return {"precision": round(tp / (tp + fp), 3) if tp + fp else None,
            "recall": round(tp / (tp + fn), 3) if tp + fn else None}


def rules_bench(obqa: Path, labels_path: Path, cache: Path | None = None) -> dict[str, Any]:
    """Rule filters before -> after on every rationale, and per-rule precision/recall on the labelled sample.

    ``cache``: a JSON file of every rationale's rule verdicts, written on the first run and read on later ones
    (the rules cost about a minute of CPU over the 99,140 texts)."""
    items, rows = _load(obqa)
    t = time.perf_counter()
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text())
        verdicts = {(q, i): v for q, i, v in saved["verdicts"]}
        seconds = saved["seconds"]
    else:
        verdicts = {(qid, i): _rules(text, items[qid]) for qid, i, text in rows}
        seconds = time.perf_counter() - t
        if cache is not None:
            cache.write_text(json.dumps({"seconds": seconds, "verdicts": [[q, i, v] for (q, i), v in
                                                                           verdicts.items()]}))
    results: dict[str, Any] = {"rationales": len(rows), "questions": len({q for q, _, _ in rows}),
                               "wall_seconds_all_rules_old_and_new": round(seconds, 1)}
    # Whole-set numbers: the rule pipeline (degenerate then stated) as `kardlite rationales filter --judge none`
    # runs it, before and after.
    for side in ("old", "new"):
        drop_keys = [k for k in _TARGET if f"{side}.{k}" in next(iter(verdicts.values()))]
        kept = [v for v in verdicts.values() if not any(v[f"{side}.{k}"] for k in drop_keys)]
        counts = {k: sum(v[f"{side}.{k}"] for v in verdicts.values()) for k in drop_keys}
        no_answer = sum(not v[f"{side}.answer_parsed"] for v in kept)
        entry = {"kept": len(kept), "keep_rate": round(len(kept) / len(rows), 4), "flagged_by_rule": counts,
                 "kept_without_parsed_answer": no_answer,
                 "kept_without_parsed_answer_rate": round(no_answer / len(kept), 4)}
        if side == "new":
            by_verdict = Counter(v["new.verdict"] for v in kept)
            entry["kept_by_answer_check"] = dict(by_verdict.most_common())
            unchecked = by_verdict.get("none stated", 0)
            entry["kept_unchecked"] = unchecked
            entry["kept_unchecked_rate"] = round(unchecked / len(kept), 4)
        results[side] = entry

    # The inputs that hung the old patterns (issue #13), at 100k characters, through the new rules: CPU seconds.
    sun = next(iter(items.values()))
    adversarial = {"answer + spaces + !": "answer" + " " * 100_000 + "!",
                   "the correct answer is + spaces + !": "the correct answer is" + " " * 100_000 + "!",
                   "'Option (A), ' repeated": "Option (A), " * 8_000}
    results["adversarial_100k_cpu_seconds_new_rules"] = {}
    for name, text in adversarial.items():
        c = time.process_time()
        parse_answer(text, 4)
        degenerate_reason(text)
        check_answer(text, sun)
        results["adversarial_100k_cpu_seconds_new_rules"][name] = round(time.process_time() - c, 3)

    labels = [json.loads(line) for line in labels_path.read_text().splitlines() if line.strip()]
    for lab in labels:
        if lab["defect"] not in DEFECTS:
            raise ValueError(f"{labels_path}: unknown defect {lab['defect']!r}")
    sample = [verdicts[(lab["item_id"], lab["sample"])] for lab in labels]
    n_in = Counter(lab["stratum"] for lab in labels)
    weights = [lab["stratum_size"] / n_in[lab["stratum"]] for lab in labels]
    ones = [1.0] * len(labels)
    table = []
    for side in ("old", "new"):
        for rule, defect in _TARGET.items():
            key = f"{side}.{rule}"
            if key not in sample[0]:
                continue
            flags = [v[key] for v in sample]
            truth = [lab["defect"] == defect for lab in labels]
            table.append({"rule": key, "target": defect, "flagged_in_sample": sum(flags),
                          "true_positives": sum(f and t for f, t in zip(flags, truth, strict=True)),
                          "defects_in_sample": sum(truth), "sample": _prf(flags, truth, ones),
                          "population_weighted": _prf(flags, truth, weights)})
        # The whole rule pipeline against "should be dropped" (any defect).
        drop_keys = [f"{side}.{k}" for k in _TARGET if f"{side}.{k}" in sample[0]]
        flags = [any(v[k] for k in drop_keys) for v in sample]
        truth = [not lab["keep"] for lab in labels]
        table.append({"rule": f"{side}.any", "target": "drop (any defect)", "flagged_in_sample": sum(flags),
                      "true_positives": sum(f and t for f, t in zip(flags, truth, strict=True)),
                      "defects_in_sample": sum(truth), "sample": _prf(flags, truth, ones),
                      "population_weighted": _prf(flags, truth, weights)})
    results["labelled_sample"] = {"size": len(labels), "by_stratum": dict(n_in),
                                  "stratum_sizes": {lab["stratum"]: lab["stratum_size"] for lab in labels},
                                  "defects": dict(Counter(lab["defect"] for lab in labels).most_common()),
                                  "keep": sum(lab["keep"] for lab in labels)}
    results["rules"] = table
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--judge-per-question", type=int, default=2)
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--obqa", type=Path, default=OBQA, help="the OpenBookQA folder (Main/, kard_teacher/)")
    ap.add_argument("--rules", action="store_true", help="rule filters before/after and precision/recall")
    ap.add_argument("--labels", type=Path, default=LABELS, help="hand labels for --rules")
    ap.add_argument("--cache", type=Path, default=None, help="--rules: reuse (or write) every text's rule verdicts")
    ap.add_argument("--draw-sample", action="store_true", help="print the seeded labelling sample as JSONL")
    args = ap.parse_args()
    obqa_dir = args.obqa
    if args.draw_sample:
        for row in draw_sample(obqa_dir, args.seed):
            print(json.dumps(row))
        return
    if args.rules:
        results = rules_bench(obqa_dir, args.labels, args.cache)
        _print_rules(results)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        return

    items = load_task(obqa_dir / "Main" / "train.jsonl")
    sample = sorted(random.Random(args.seed).sample(range(len(items)), args.questions))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "all.jsonl"
        get_teacher("import", source=obqa_dir / "kard_teacher" / "train_rationales.jsonl.gz").generate(
            items, store=store, progress=False)
        wanted = {items[i].id for i in sample}
        by_id = {it.id: it for it in items}
        rows = [s for s in read_store(store).samples if s["item_id"] in wanted]
        chosen = [by_id[i] for i in sorted(wanted)]
        print(f"OBQA train: {len(chosen)} questions (seed {args.seed}), {len(rows)} rationales")
        results: dict = {"questions": len(chosen), "rationales": len(rows)}

        t = time.perf_counter()
        deg = [degenerate_reason(r["text"]) for r in rows]
        dt = time.perf_counter() - t
        keep = sum(d is None for d in deg)
        results["a_degenerate"] = {"keep_rate": keep / len(rows), "ms_per_rationale": 1000 * dt / len(rows)}
        print(f"(a) degenerate: keep {keep}/{len(rows)} = {keep / len(rows):.2%}, "
              f"{1000 * dt / len(rows):.3f} ms/rationale")

        t = time.perf_counter()
        said = [stated_answer(r["text"], by_id[r["item_id"]]) for r in rows]
        dt = time.perf_counter() - t
        n_stated = sum(s is not None for s in said)
        contra = sum(s is not None and s != by_id[r["item_id"]].label for s, r in zip(said, rows, strict=True))
        results["b_stated"] = {"keep_rate": 1 - contra / len(rows), "with_a_stated_answer": n_stated / len(rows),
                               "contradicting": contra, "ms_per_rationale": 1000 * dt / len(rows)}
        print(f"(b) stated answer: {n_stated} ({n_stated / len(rows):.1%}) state a final answer, {contra} contradict "
              f"gold; keep {1 - contra / len(rows):.2%}, {1000 * dt / len(rows):.3f} ms/rationale")

        t = time.perf_counter()
        judge = Judge(args.judge, batch_size=args.batch_size)
        load_s = time.perf_counter() - t
        sub = [r for r in rows if r["sample"] < args.judge_per_question]
        t = time.perf_counter()
        picks = judge.predict([(by_id[r["item_id"]], r["text"]) for r in sub], progress=True)
        dt = time.perf_counter() - t
        keep = sum(p == by_id[r["item_id"]].label for p, r in zip(picks, sub, strict=True))
        letters = {chr(65 + k): picks.count(k) for k in range(4)}
        gold = {chr(65 + k): sum(by_id[r["item_id"]].label == k for r in sub) for k in range(4)}
        results["c_judge"] = {"model": args.judge, "limited_to": f"{len(chosen)} questions x first "
                              f"{args.judge_per_question} rationales = {len(sub)}", "keep_rate": keep / len(sub),
                              "s_per_rationale": dt / len(sub), "load_s": load_s, "picks": letters, "gold": gold}
        print(f"(c) judge {args.judge} (LIMITED to {len(chosen)} questions x first {args.judge_per_question} "
              f"rationales = {len(sub)}): keep {keep}/{len(sub)} = {keep / len(sub):.2%}, "
              f"{dt / len(sub):.3f} s/rationale (load {load_s:.1f} s); picks {letters}, gold {gold}")

        # The chained pipeline (a -> b -> c, as `kardlite rationales filter` runs it) on the judged subset, from the
        # per-filter verdicts above (the judge is not run twice).
        verdict = {(r["item_id"], r["sample"]): d is None and (s is None or s == by_id[r["item_id"]].label)
                   for r, d, s in zip(rows, deg, said, strict=True)}
        kept = {q.id: 0 for q in chosen}
        for p, r in zip(picks, sub, strict=True):
            kept[r["item_id"]] += verdict[(r["item_id"], r["sample"])] and p == by_id[r["item_id"]].label
        hist: dict[int, int] = {}
        for v in kept.values():
            hist[v] = hist.get(v, 0) + 1
        total = sum(kept.values())
        results["chained"] = {"keep_rate": total / len(sub), "questions_with_none_kept": hist.get(0, 0),
                              "kept_per_question_histogram": dict(sorted(hist.items()))}
        print(f"chained a->b->c on those {len(sub)}: keep {total / len(sub):.2%}; questions left with none: "
              f"{hist.get(0, 0)}/{len(chosen)}; kept per question {dict(sorted(hist.items()))}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _print_rules(r: dict[str, Any]) -> None:
    print(f"OBQA train: {r['rationales']} rationales of {r['questions']} questions "
          f"(all rules, old and new: {r['wall_seconds_all_rules_old_and_new']} s wall)")
    for side in ("old", "new"):
        e = r[side]
        print(f"{side}: keep {e['kept']} ({e['keep_rate']:.2%}); flagged {e['flagged_by_rule']}; kept without a "
              f"parsed answer {e['kept_without_parsed_answer']} ({e['kept_without_parsed_answer_rate']:.1%})"
              + (f"; unchecked {e['kept_unchecked']} ({e['kept_unchecked_rate']:.1%}), "
                 f"by check {e['kept_by_answer_check']}" if side == "new" else ""))
    print(f"adversarial 100k inputs, new rules, CPU s: {r['adversarial_100k_cpu_seconds_new_rules']}")
    ls = r["labelled_sample"]
    print(f"labelled sample: {ls['size']} ({ls['by_stratum']}), defects {ls['defects']}")
    print(f"{'rule':22} {'target':26} {'flag':>4} {'tp':>3} {'def':>3}  {'P':>5} {'R':>5}  {'P(w)':>5} {'R(w)':>5}")
    for row in r["rules"]:
        s, w = row["sample"], row["population_weighted"]

        def f(x: float | None) -> str:
            return "  -  " if x is None else f"{x:.3f}"
        print(f"{row['rule']:22} {row['target']:26} {row['flagged_in_sample']:>4} {row['true_positives']:>3} "
              f"{row['defects_in_sample']:>3}  {f(s['precision'])} {f(s['recall'])}  {f(w['precision'])} "
              f"{f(w['recall'])}")


if __name__ == "__main__":
    main()
