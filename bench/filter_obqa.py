"""Keep rates and cost of the three rationale filters on OBQA train with KARD's released rationales.

    nice .venv/bin/python bench/filter_obqa.py --questions 300 --judge-per-question 2

Samples questions (seeded), imports their rationales into a temporary store, then runs (a) degenerate,
(b) stated-answer and (c) the judge, each on ALL sampled rationales independently (not chained), so each
filter's keep rate stands on its own; then the chained pipeline's numbers. The judge sees only the first
``--judge-per-question`` rationales of each question to bound CPU time (printed in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from kardlite.data import load_task
from kardlite.rationales.filter import Judge, degenerate_reason, stated_answer
from kardlite.rationales.store import read_store
from kardlite.teacher import get_teacher

OBQA = Path(os.environ.get("OBQA") or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "obqa")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--judge-per-question", type=int, default=2)
    ap.add_argument("--judge", default="smollm2")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = ap.parse_args()

    items = load_task(OBQA / "Main" / "train.jsonl")
    sample = sorted(random.Random(args.seed).sample(range(len(items)), args.questions))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "all.jsonl"
        get_teacher("import", source=OBQA / "kard_teacher" / "train_rationales.jsonl.gz").generate(
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


if __name__ == "__main__":
    main()
