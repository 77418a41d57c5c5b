"""Retrieval diagnostics for docs/results/obqa-cpu.md: how often BM25 puts a question's ``fact1`` (the open-book
fact it was written from) among the passages the KARD student sees — with the rationale as the query (training)
and with the linearised question as the query (test).

Usage: python bench/distill/obqa_analysis.py RUN_DIR OBQA_DIR [N_TEST]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from kardlite.data import load_obqa
from kardlite.distill.examples import read_examples
from kardlite.kb import KnowledgeBase


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().strip('"').rstrip(".").split())


def main(run: str, obqa: str, n_test: int = 200) -> None:
    run_dir, obqa_dir = Path(run), Path(obqa)
    kb = KnowledgeBase.load(run_dir / "kb")
    fact_train = {it.id: _norm(it.meta["fact1"]) for it in load_obqa(obqa_dir / "Additional/train_complete.jsonl")}
    test = load_obqa(obqa_dir / "Additional/test_complete.jsonl")
    test_ids = [it.id for it in load_obqa(obqa_dir / "Main/test.jsonl")[:n_test]]
    by_id = {it.id: it for it in test}
    out: dict[str, object] = {}
    rows = read_examples(run_dir / "kard.jsonl")
    for k in (1, 3, 5):
        out[f"train_fact1_recall@{k}_rationale_query"] = round(sum(
            fact_train[r["item_id"]] in {_norm(p["text"]) for p in r["passages"][:k]} for r in rows) / len(rows), 3)
        out[f"train_fact1_recall@{k}_question_query"] = round(sum(
            fact_train[r["item_id"]] in {_norm(h["text"]) for h in kb.search(r["item"].linearize(), k, "bm25")}
            for r in rows) / len(rows), 3)
        out[f"test_fact1_recall@{k}_question_query"] = round(sum(
            _norm(by_id[i].meta["fact1"]) in {_norm(h["text"]) for h in kb.search(by_id[i].linearize(), k, "bm25")}
            for i in test_ids) / len(test_ids), 3)
    # what each evaluated KARD system actually showed its student (predictions.jsonl keeps the passages)
    for ev in sorted(run_dir.glob("eval-kard-*")):
        preds = [json.loads(line) for line in (ev / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        shown = [_norm(by_id[r["id"]].meta["fact1"]) in {_norm(p["text"]) for p in r["passages"]} for r in preds]
        hit = [r for r, s in zip(preds, shown, strict=True) if s]
        miss = [r for r, s in zip(preds, shown, strict=True) if not s]
        out[ev.name] = {"n": len(preds), "fact1_shown": round(len(hit) / len(preds), 3),
                        "accuracy_when_shown": round(sum(r["correct"] for r in hit) / max(len(hit), 1), 3),
                        "accuracy_when_not_shown": round(sum(r["correct"] for r in miss) / max(len(miss), 1), 3)}
    # every system: which letters it predicts, and for invalid outputs whether any "answer" was written at all
    # (none = the text ran into the token cap first)
    for ev in sorted(run_dir.glob("eval-*")):
        preds = [json.loads(line) for line in (ev / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        invalid = [r for r in preds if r["invalid"]]
        out[f"{ev.name}_outputs"] = {
            "predictions": dict(sorted(Counter(str(r["prediction"]) for r in preds).items())),
            "invalid": len(invalid),
            "invalid_without_answer_word": sum("answer" not in (r["outputs"] or [""])[0].lower() for r in invalid)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
