"""Reranker latency and int8 fidelity: torch fp32 vs ONNX int8, side by side in one run.

For each query (OBQA dev questions, linearised) and each candidate count (20/50/100 passages of the open book,
the query's BM25 top list when a KB is given, else a seeded sample), it times one ``rank`` call per backend
(p50/p90 over the queries) and compares the int8 ranking with the fp32 one: top-5 overlap (|top5_int8 ∩
top5_fp32| / 5) and NDCG@10 of the int8 order with graded gains from the fp32 order (fp32 rank 1 → 10, rank
2 → 9, ..., rank 10 → 1, others 0).

A late-interaction reranker (``reranker.json`` kind "late-interaction", or ``--kind late-interaction`` for a fresh
one) is timed twice per query and backend: cold (passage cache emptied first, so every candidate is encoded) and
warm (the candidates pre-filled with ``warm()``, as a runtime that warms its KB at load time; only the question is
encoded). Fidelity is measured on the warm rankings (a cache hit gives the same scores as a fresh encoding).

Usage:
    nice .venv/bin/python bench/rerank.py --reranker runs/obqa/reranker [--onnx runs/obqa/reranker-int8] \
        [--kb runs/obqa/kb] [--threads 2] [--queries 30]
Without ``--onnx`` the int8 export is written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OBQA = Path(os.environ.get("OBQA") or ROOT.parent / "shared" / "data" / "obqa")  # layout: docs/environment.md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reranker", type=Path, help="trained reranker folder (default: a fresh, untrained one)")
    ap.add_argument("--onnx", type=Path, help="its ONNX int8 export (default: export now to a temp folder)")
    ap.add_argument("--kb", type=Path, help="KB folder; candidates = BM25 top-n of the question")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--sizes", default="20,50,100")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--kind", default="cross-encoder", choices=["cross-encoder", "late-interaction"],
                    help="kind of the fresh reranker built when --reranker is not given")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import torch

    from kardlite.data import load_task
    from kardlite.kb.ingest import read_passages
    from kardlite.rerank.model import Reranker
    from kardlite.rerank.onnx import export_reranker_onnx
    from kardlite.rerank.train import ndcg

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="rerank-bench.")
    src = args.reranker
    if src is None:
        src = Path(tmp.name) / "fresh"
        Reranker.from_pretrained(max_length=args.max_length, kind=args.kind).save(src)
    onnx_dir = args.onnx
    if onnx_dir is None:
        onnx_dir = Path(tmp.name) / "int8"
        export_reranker_onnx(src, onnx_dir, quantize=True)
    fp32 = Reranker.load(src, backend="torch")
    int8 = Reranker.load(onnx_dir, backend="onnx", threads=args.threads)

    items = load_task(OBQA / "Main" / "dev.jsonl")[: args.queries]
    sizes = [int(s) for s in args.sizes.split(",")]
    kb = None
    if args.kb:
        from kardlite.kb import KnowledgeBase

        kb = KnowledgeBase.load(args.kb)
    book = read_passages(OBQA / "Main" / "openbook.txt")
    rng = random.Random(0)

    def candidates(query: str, n: int) -> list:
        if kb is not None:
            hits = kb.search(query, n, retriever="bm25")
            if len(hits) >= n:
                return hits
        return rng.sample(book, n)

    late = fp32.kind == "late-interaction"
    if late != (int8.kind == "late-interaction"):
        raise SystemExit(f"--reranker is a {fp32.kind} but --onnx is a {int8.kind}")
    # warm-up: first calls allocate
    q0 = items[0].linearize()
    for backend in (fp32, int8):
        backend.rank(q0, candidates(q0, 20))
        backend.clear_cache()

    def timed(rr: Reranker, q: str, cands: list) -> tuple[list, float, float | None]:
        """(hits, seconds, warm seconds): a late-interaction reranker is timed cold, then warm."""
        if not late:
            t = time.perf_counter()
            hits = rr.rank(q, cands)
            return hits, time.perf_counter() - t, None
        rr.clear_cache()
        t = time.perf_counter()
        rr.rank(q, cands)
        cold = time.perf_counter() - t
        rr.clear_cache()
        rr.warm(cands)
        t = time.perf_counter()
        hits = rr.rank(q, cands)
        return hits, cold, time.perf_counter() - t

    results = []
    for n in sizes:
        w_fp, w_q = [], []
        t_fp, t_q, overlaps, ndcgs = [], [], [], []
        for item in items:
            q = item.linearize()
            cands = candidates(q, n)
            h_fp, cold, warm = timed(fp32, q, cands)
            t_fp.append(cold)
            w_fp.append(warm)
            h_q, cold, warm = timed(int8, q, cands)
            t_q.append(cold)
            w_q.append(warm)
            top_fp = [h["id"] for h in h_fp[:5]]
            top_q = [h["id"] for h in h_q[:5]]
            overlaps.append(len(set(top_fp) & set(top_q)) / 5)
            gain = {h["id"]: max(0, 11 - h["rank"]) for h in h_fp}
            order_scores = {h["id"]: -h["rank"] for h in h_q}
            ids = list(gain)
            ndcgs.append(ndcg(np.array([order_scores[i] for i in ids], dtype=float),
                              np.array([gain[i] for i in ids], dtype=float), k=10))
        row = {"candidates": n, "queries": len(items),
               "torch_fp32_p50_ms": 1000 * statistics.median(t_fp),
               "torch_fp32_p90_ms": 1000 * float(np.percentile(t_fp, 90)),
               "onnx_int8_p50_ms": 1000 * statistics.median(t_q),
               "onnx_int8_p90_ms": 1000 * float(np.percentile(t_q, 90)),
               "speedup_p50": statistics.median(t_fp) / statistics.median(t_q),
               "top5_overlap": float(np.mean(overlaps)), "ndcg10": float(np.mean(ndcgs))}
        if late:
            row.update({"torch_fp32_warm_p50_ms": 1000 * statistics.median(w_fp),
                        "torch_fp32_warm_p90_ms": 1000 * float(np.percentile(w_fp, 90)),
                        "onnx_int8_warm_p50_ms": 1000 * statistics.median(w_q),
                        "onnx_int8_warm_p90_ms": 1000 * float(np.percentile(w_q, 90))})
        results.append(row)

    # an --onnx folder exported with --no-quantize is fp32: say so in the headers (the JSON keys stay "int8")
    prec = "int8" if (int8.meta.get("onnx") or {}).get("quantized", True) else "fp32"
    print(f"{fp32.kind} reranker {src} vs {onnx_dir} ({int8.meta.get('onnx_file')}, {prec}), threads={args.threads}, "
          f"max_length={fp32.max_length}, candidates={'KB BM25 top-n' if kb else 'random open-book facts'}")
    if late:
        print("late interaction: cold = empty passage cache, warm = candidates pre-filled with warm(); fidelity "
              "from the warm rankings")
        print("| candidates | torch fp32 cold p50 / p90 ms | torch fp32 warm p50 / p90 ms "
              f"| ONNX {prec} cold p50 / p90 ms | ONNX {prec} warm p50 / p90 ms | {prec} top-5 overlap "
              f"| {prec} NDCG@10 |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['candidates']} | {r['torch_fp32_p50_ms']:.0f} / {r['torch_fp32_p90_ms']:.0f} "
                  f"| {r['torch_fp32_warm_p50_ms']:.1f} / {r['torch_fp32_warm_p90_ms']:.1f} "
                  f"| {r['onnx_int8_p50_ms']:.0f} / {r['onnx_int8_p90_ms']:.0f} "
                  f"| {r['onnx_int8_warm_p50_ms']:.1f} / {r['onnx_int8_warm_p90_ms']:.1f} "
                  f"| {r['top5_overlap']:.3f} | {r['ndcg10']:.3f} |")
    else:
        print(f"| candidates | torch fp32 p50 / p90 ms | ONNX {prec} p50 / p90 ms | fp32/{prec} (p50) "
              f"| {prec} top-5 overlap | {prec} NDCG@10 |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['candidates']} | {r['torch_fp32_p50_ms']:.0f} / {r['torch_fp32_p90_ms']:.0f} "
                  f"| {r['onnx_int8_p50_ms']:.0f} / {r['onnx_int8_p90_ms']:.0f} | {r['speedup_p50']:.2f}x "
                  f"| {r['top5_overlap']:.3f} | {r['ndcg10']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
