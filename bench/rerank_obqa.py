"""OpenBookQA experiment for the KARD reranker: prepare data, then evaluate against BM25 / dense / hybrid.

Steps (commands in docs/results/reranker-obqa.md):
  prepare   build the open-book KB (runs/obqa/kb, if missing) and write kept rationales for a seeded sample of
            train questions (runs/obqa/kept_rationales.jsonl). The filter is a stand-in for the rationale
            stage: drop degenerate texts (short, "repeat of the question", "same as above") and keep a
            rationale only if it names the gold option's text; the first ``--per-question`` that pass are kept.
  evaluate  (a) candidate metrics on the question-disjoint dev queries (top-1/top-3 of the rationale-best
            candidate) for BM25(question), the untrained reranker (fresh head) and the trained one;
            (b) recall@1/3/5 of ``fact1`` on the 500 OBQA dev questions: BM25, dense, hybrid alone, and each
            reranker over a first-stage pool.
  ceiling   what the reranker's target can reach: on the training questions of the kept-rationales file (first
            kept rationale each), recall of ``fact1`` by BM25 / dense / hybrid with the question and with the
            rationale as the query. BM25(rationale) is what the reranker learns to imitate.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OBQA = Path(os.environ.get("OBQA") or ROOT.parent / "shared" / "data" / "obqa")  # layout: docs/environment.md
DEGENERATE = re.compile(r"repeat of|same as (the )?(above|previous)|previous question|already answered", re.I)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip('"').strip()).casefold().rstrip(".")


def prepare(args: argparse.Namespace) -> None:
    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase, read_passages

    if not (args.kb / "manifest.json").is_file():
        t = time.time()
        KnowledgeBase.build(read_passages(OBQA / "Main" / "openbook.txt"), args.kb)
        print(f"built KB {args.kb} in {time.time() - t:.0f}s")
    items = {it.id: it for it in load_task(OBQA / "Main" / "train.jsonl")}
    ids = sorted(items)
    random.Random(args.seed).shuffle(ids)
    wanted = set(ids[: args.questions])
    rows: list[dict] = []
    if args.kept is not None:  # the rationale stage's kept file (item_id, rationale_index, text per line)
        by_item: dict[str, list[dict]] = {}
        for line in args.kept.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r["item_id"] in wanted:
                by_item.setdefault(r["item_id"], []).append(r)
        for iid in sorted(by_item):
            chosen = sorted(by_item[iid], key=lambda r: r["rationale_index"])[: args.per_question]
            rows += [{"item_id": iid, "rationale_index": r["rationale_index"], "text": r["text"]} for r in chosen]
    else:
        with gzip.open(OBQA / "kard_teacher" / "train_rationales.jsonl.gz", "rt", encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                if obj["id"] not in wanted:
                    continue
                item = items[obj["id"]]
                gold = item.options[item.label].casefold()
                n = 0
                for idx, text in enumerate(obj["rationales"]):
                    if len(text.strip()) < 80 or DEGENERATE.search(text) or gold not in text.casefold():
                        continue
                    rows.append({"item_id": obj["id"], "rationale_index": idx, "text": text.strip()})
                    n += 1
                    if n == args.per_question:
                        break
    kept_q = len({r["item_id"] for r in rows})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} rationales for {kept_q}/{len(wanted)} questions -> {args.out}")


def _recall(ranked: list[list[str]], gold: list[str | None], ks: tuple[int, ...]) -> dict[str, float]:
    out = {}
    pairs = [(r, g) for r, g in zip(ranked, gold, strict=True) if g is not None]
    for k in ks:
        out[f"R@{k}"] = sum(g in r[:k] for r, g in pairs) / len(pairs)
    return out


def bm25_question_baseline(kb: Any, queries: list) -> dict[str, float]:
    """BM25 with the question, as a reranker of each query's candidates: the baseline of the candidate metric."""
    import numpy as np

    from kardlite.rerank.train import candidate_hit

    hits = [(candidate_hit(f, s, 1), candidate_hit(f, s, 3))
            for q in queries
            for s, f in [(np.asarray(q.labels), kb.bm25_scores(q.query, q.ids).astype(np.float64))]]
    return {"top1": sum(h[0] for h in hits) / len(hits), "top3": sum(h[1] for h in hits) / len(hits)}


def ceiling(args: argparse.Namespace) -> None:
    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase

    kb = KnowledgeBase.load(args.kb)
    text_to_id = {_norm(p.text): p.id for p in kb}
    items = {it.id: it for it in load_task(OBQA / "Additional" / "train_complete.jsonl")}
    first: dict[str, str] = {}
    for line in args.kept.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        first.setdefault(row["item_id"], row["text"])  # the file lists each question's rationales in order
    ids = sorted(first)
    gold = [text_to_id.get(_norm(items[i].meta.get("fact1", ""))) for i in ids]
    report: dict[str, object] = {"n_questions": len(ids), "n_with_fact1_in_book": sum(g is not None for g in gold)}
    for name, queries in (("question", [items[i].linearize() for i in ids]), ("rationale", [first[i] for i in ids])):
        for retriever in ("bm25", "dense", "hybrid"):
            ranked = [[h["id"] for h in kb.search(q, 20, retriever=retriever)] for q in queries]
            report[f"{retriever}({name})"] = _recall(ranked, gold, (1, 5, 20))
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def evaluate(args: argparse.Namespace) -> None:
    import torch

    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank.data import load_queries
    from kardlite.rerank.model import Reranker
    from kardlite.rerank.retriever import RerankRetriever
    from kardlite.rerank.train import evaluate_queries

    torch.set_num_threads(args.threads)
    kb = KnowledgeBase.load(args.kb)
    text_to_id = {_norm(p.text): p.id for p in kb}
    dev_items = load_task(OBQA / "Additional" / "dev_complete.jsonl")
    if args.limit:
        dev_items = dev_items[: args.limit]  # file order; the first N dev questions
    gold = [text_to_id.get(_norm(it.meta.get("fact1", ""))) for it in dev_items]
    n_gold = sum(g is not None for g in gold)
    rerankers: dict[str, Reranker] = {}
    for spec in args.reranker:
        name, _, path = spec.partition("=")
        backend = "onnx" if any((Path(path) / f).is_file() for f in ("model_quantized.onnx", "model.onnx")) \
            else "torch"
        rerankers[name] = Reranker.load(path, backend=backend, threads=args.threads)
    if args.untrained:
        # the exact starting point of training: same seed, same layers, fresh head
        rerankers["untrained (fresh head)"] = Reranker.from_pretrained(seed=args.seed, num_layers=args.num_layers)
    report: dict[str, object] = {"n_dev_questions": len(dev_items), "n_with_fact1_in_book": n_gold}

    # (a) candidate metrics on the question-disjoint dev queries
    dev_q = [] if args.no_candidates else load_queries(args.data / "dev.jsonl")
    cand: dict[str, dict[str, float]] = {}
    if dev_q:
        cand["BM25(question)"] = bm25_question_baseline(kb, dev_q)
    for name, rr in rerankers.items() if dev_q else ():
        t = time.time()
        m = evaluate_queries(rr, dev_q)
        cand[name] = {"top1": m["top1"], "top3": m["top3"], "ndcg": m["ndcg"], "s": time.time() - t}
        print(name, cand[name], flush=True)
    report["candidates"] = {"n_queries": len(dev_q), "n_questions": len({q.item_id for q in dev_q}), **cand}

    # (b) fact1 recall on OBQA dev
    ks = (1, 3, 5)
    queries = [it.linearize() for it in dev_items]
    recall: dict[str, dict[str, float]] = {}
    for retr in ("bm25", "dense", "hybrid"):
        hits = kb.search_many(queries, max(ks), retr)
        recall[retr] = _recall([[h["id"] for h in hs] for hs in hits], gold, ks)
        pool_hits = kb.search_many(queries, args.pool, retr)
        recall[retr][f"R@{args.pool} (pool)"] = _recall([[h["id"] for h in hs] for hs in pool_hits], gold,
                                                       (args.pool,))[f"R@{args.pool}"]
        print(retr, recall[retr], flush=True)
    for name, rr in rerankers.items():
        for first in args.first_stage:
            t = time.time()
            ret = RerankRetriever(kb, rr, first_stage=first, pool=args.pool)
            hits = ret.search_many(dev_items, max(ks))
            key = f"{name} over {first} pool {args.pool}"
            recall[key] = {**_recall([[h["id"] for h in hs] for hs in hits], gold, ks), "s": time.time() - t}
            print(key, recall[key], flush=True)
    report["fact1_recall"] = recall
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--kb", type=Path, default=ROOT / "runs/rerank-obqa/kb")
    p.add_argument("--kept", type=Path, help="kept-rationales JSONL of the rationale stage (default: read the "
                   "shared teacher file and filter it here)")
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--per-question", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=ROOT / "runs/rerank-obqa/kept_rationales.jsonl")
    e = sub.add_parser("evaluate")
    e.add_argument("--kb", type=Path, default=ROOT / "runs/rerank-obqa/kb")
    e.add_argument("--data", type=Path, default=ROOT / "runs/rerank-obqa/reranker.data")
    e.add_argument("--reranker", action="append", default=[], help="NAME=DIR (torch folder or ONNX export)")
    e.add_argument("--untrained", action="store_true", help="also score the untrained starting point")
    e.add_argument("--first-stage", action="append", default=None, help="bm25/dense/hybrid (repeatable)")
    e.add_argument("--pool", type=int, default=50)
    e.add_argument("--limit", type=int, default=0, help="only the first N OBQA dev questions (0 = all 500)")
    e.add_argument("--no-candidates", action="store_true", help="skip the candidate metrics (a)")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--seed", type=int, default=42)
    e.add_argument("--num-layers", type=int, default=None, help="layers of the untrained starting point")
    e.add_argument("--out", type=Path, default=ROOT / "runs/rerank-obqa/eval.json")
    c = sub.add_parser("ceiling")
    c.add_argument("--kb", type=Path, default=ROOT / "runs/rerank-obqa/kb")
    c.add_argument("--kept", type=Path, default=ROOT / "runs/rerank-obqa/kept_rationales.jsonl")
    c.add_argument("--out", type=Path, default=ROOT / "runs/rerank-obqa/ceiling.json")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "ceiling":
        ceiling(args)
    else:
        args.first_stage = args.first_stage or ["hybrid"]
        evaluate(args)


if __name__ == "__main__":
    main()
