"""Which reranker kind the demo bundle should train: cross-encoder vs late interaction at the demo's settings.

Each variant is trained as the demo build trains its reranker (same demo KB, candidates, split and
``kardlite.demo.build.RERANK_SETTINGS``, with the changes named in ``VARIANTS``), exported to int8 ONNX
with the bundle's default export, and compared on:
  - the question-disjoint dev queries: top-1 / top-3 of the rationale-best candidate (``evaluate_queries``);
  - the demo's dev + test questions: recall of a gold passage among the first 1 / 2 (the bundle shows 2) / 5
    passages, the hybrid pool (50, as in the bundle) reranked, next to hybrid alone;
  - first stage + rerank latency per question (int8 ONNX, p50 over those questions; a late-interaction
    reranker is warmed with the KB first, as the runtime does at load).

Usage:
    nice .venv/bin/python bench/demo_reranker.py --threads 2 [--work runs/demo-reranker] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> changes to RERANK_SETTINGS
VARIANTS: dict[str, dict] = {"cross-encoder": {"kind": "cross-encoder"},
                             "cross-encoder-head20": {"kind": "cross-encoder", "head_lr_mult": 20.0},
                             "late-interaction-untrained": {"kind": "late-interaction", "untrained": True},
                             "late-interaction": {"kind": "late-interaction"},
                             "late-interaction-3-epochs": {"kind": "late-interaction", "epochs": 3},
                             "late-interaction-head10": {"kind": "late-interaction", "head_lr_mult": 10.0}}
KS = (1, 2, 5)
POOL = 50  # the demo bundle's pool (export_bundle's default)


def _gold_recall(ranked: list[list[str]], gold: list[set[str]]) -> dict[str, float]:
    return {f"R@{k}": round(sum(bool(g & set(r[:k])) for r, g in zip(ranked, gold, strict=True)) / len(gold), 3)
            for k in KS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "demo-reranker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import torch

    from kardlite.demo import demo_passages, demo_questions
    from kardlite.demo.build import RERANK_SETTINGS
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank import RerankRetriever
    from kardlite.rerank.data import CandidateConfig, build_queries, split_by_item
    from kardlite.rerank.model import Reranker
    from kardlite.rerank.onnx import export_reranker_onnx
    from kardlite.rerank.train import RerankTrainConfig, evaluate_queries, train_reranker

    torch.set_num_threads(args.threads)
    work: Path = args.work
    kb_dir = work / "kb"
    kb = KnowledgeBase.load(kb_dir) if (kb_dir / "manifest.json").is_file() else \
        KnowledgeBase.build(demo_passages(), kb_dir, progress=False)
    items = demo_questions("train")
    rationales = [(it.id, i, text) for it in items for i, text in enumerate(it.meta.get("rationales", []))]
    queries = build_queries(kb, items, rationales, CandidateConfig(), progress=False)
    train, dev = split_by_item(queries, dev_fraction=0.1)  # as the demo build
    held_out = demo_questions("dev") + demo_questions("test")
    gold = [set(it.meta["passage_ids"]) for it in held_out]
    first = [[h["id"] for h in kb.search(it.linearize(), k=POOL, retriever="hybrid")] for it in held_out]
    results: dict = {"settings": RERANK_SETTINGS, "threads": args.threads, "n_train": len(train),
                     "n_dev": len(dev), "n_held_out": len(held_out), "pool": POOL,
                     "hybrid": {"gold": _gold_recall(first, gold)}}
    print(f"{len(train)} train / {len(dev)} dev queries; {len(held_out)} dev+test questions; hybrid pool {POOL}")
    print("| reranker | train s | dev top-1 / top-3 | gold R@1 / R@2 / R@5 | retrieve + rerank p50 ms (int8) |")
    print("|---|---|---|---|---|")
    h = results["hybrid"]["gold"]
    print(f"| hybrid alone | - | - | {h['R@1']:.3f} / {h['R@2']:.3f} / {h['R@5']:.3f} | - |")
    for name, change in VARIANTS.items():
        out = work / name
        cfg = RerankTrainConfig(**{**RERANK_SETTINGS, **{k: v for k, v in change.items() if k != "untrained"}})
        if (out / "reranker.json").is_file():
            pass  # reused
        elif change.get("untrained"):  # the starting point: the same layers with a fresh head, no step taken
            Reranker.from_pretrained(kind=cfg.kind, num_layers=cfg.num_layers, max_length=cfg.max_length,
                                     dim=cfg.dim, seed=cfg.seed).save(out)
        else:
            train_reranker((train, dev), out, cfg, progress=False)
        train_s = json.loads((out / "reranker.json").read_text(encoding="utf-8")).get("training", {}).get(
            "train_seconds", 0.0)
        onnx_dir = work / f"{name}-int8"
        if not (onnx_dir / "reranker.json").is_file():
            export_reranker_onnx(out, onnx_dir)
        rr = Reranker.load(onnx_dir, backend="onnx", threads=args.threads)
        dev_m = evaluate_queries(Reranker.load(out), dev)
        rr.warm(kb)
        retriever = RerankRetriever(kb, rr, first_stage="hybrid", pool=POOL)
        ranked, times = [], []
        for it in held_out:
            t = time.perf_counter()
            hits = retriever(it, n_docs=max(KS))
            times.append((time.perf_counter() - t) * 1000)
            ranked.append([x["id"] for x in hits])
        g = _gold_recall(ranked, gold)
        p50 = statistics.median(times)
        results[name] = {"train_s": round(train_s, 1), "dev": {k: round(v, 3) for k, v in dev_m.items()},
                         "gold": g, "retrieve_rerank_p50_ms": round(p50, 1)}
        print(f"| {name} | {train_s:.0f} | {dev_m['top1']:.3f} / {dev_m['top3']:.3f} | "
              f"{g['R@1']:.3f} / {g['R@2']:.3f} / {g['R@5']:.3f} | {p50:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
