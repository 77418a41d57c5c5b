"""How far each ONNX export of one reranker ranks like its fp32 reference: several exports in one run.

For the first ``--queries`` OBQA dev questions, the question's BM25 top ``--candidates`` passages from the KB are
ranked by the reference (``--reference``: the fp32 ONNX export, ``--no-quantize``, or the torch folder) and by
each ``--onnx NAME=DIR``; per export: file size, top-5 overlap with the reference (|top5 ∩ top5_ref| / 5), NDCG@10
with graded gains from the reference order (rank 1 → 10, ..., rank 10 → 1), and the p50 time of one ``rank``
call. A late-interaction reranker has every candidate cached first (``warm``), as the runtime does at load, so its
time is the question's encoding plus MaxSim. bench/rerank.py times torch against one export with cold and warm
caches; this script compares exports with each other (which matmuls to leave fp32: docs/results/reranker-obqa.md).

Usage:
    .venv/bin/python bench/rerank_quant.py --reference runs/rerank-obqa/reranker-li-fp32 \
        --onnx "default=runs/rerank-obqa/reranker-li-int8ffn32" --onnx "all=runs/rerank-obqa/reranker-li-int8all" \
        --kb runs/rerank-obqa/kb --queries 500 --candidates 50 --threads 2 [--json out.json]
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
OBQA = Path(os.environ.get("OBQA") or ROOT.parent / "shared" / "data" / "obqa")  # layout: docs/environment.md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="fp32 ONNX export or torch reranker folder")
    ap.add_argument("--onnx", action="append", default=[], help="NAME=DIR of an ONNX export (repeatable)")
    ap.add_argument("--kb", type=Path, required=True, help="KB folder; candidates = BM25 top-n of the question")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    import numpy as np

    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank.model import Reranker
    from kardlite.rerank.train import ndcg

    exports = []
    for spec in args.onnx:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--onnx wants NAME=DIR, got {spec!r}")
        exports.append((name, Path(folder)))
    kb = KnowledgeBase.load(args.kb)
    items = load_task(OBQA / "Main" / "dev.jsonl")[: args.queries]
    pools = [(it.linearize(), kb.search(it.linearize(), args.candidates, retriever="bm25")) for it in items]
    passages = {h["id"]: h for _, hits in pools for h in hits}

    def load(folder: Path) -> Reranker:
        backend = "onnx" if (_folder_meta(folder).get("onnx")) else "torch"
        rr = Reranker.load(folder, backend=backend, threads=args.threads)
        rr.warm(list(passages.values()))  # a no-op for a cross-encoder
        rr.rank(*pools[0])  # first call allocates
        return rr

    ref = load(args.reference)
    ref_top = [[h["id"] for h in ref.rank(q, hits)] for q, hits in pools]
    rows = []
    for name, folder in exports:
        rr = load(folder)
        if rr.kind != ref.kind:
            raise SystemExit(f"{folder} is a {rr.kind}, the reference a {ref.kind}")
        overlaps, ndcgs, times = [], [], []
        for (q, hits), order in zip(pools, ref_top, strict=True):
            t = time.perf_counter()
            ranked = rr.rank(q, hits)
            times.append(time.perf_counter() - t)
            overlaps.append(len(set(order[:5]) & {h["id"] for h in ranked[:5]}) / 5)
            gain = {pid: max(0, 10 - i) for i, pid in enumerate(order)}
            pos = {h["id"]: -h["rank"] for h in ranked}
            ndcgs.append(ndcg(np.array([pos[i] for i in order], dtype=float),
                              np.array([gain[i] for i in order], dtype=float), k=10))
        onnx_file = folder / rr.meta.get("onnx_file", "model.onnx")
        rows.append({"name": name, "dir": str(folder), "kind": rr.kind,
                     "quantization": (rr.meta.get("onnx") or {}).get("quantization"),
                     "file_mb": onnx_file.stat().st_size / 1e6, "top5_overlap": float(np.mean(overlaps)),
                     "ndcg10": float(np.mean(ndcgs)), "rank_p50_ms": 1000 * statistics.median(times)})

    print(f"{ref.kind} reranker; reference {args.reference}; {len(pools)} OBQA dev questions x BM25 top "
          f"{args.candidates}; threads={args.threads}" + ("; candidates cached (warm)" if ref.kind != "cross-encoder"
                                                           else ""))
    print("| export | ONNX file MB | top-5 overlap | NDCG@10 | rank p50 ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['file_mb']:.1f} | {r['top5_overlap']:.3f} | {r['ndcg10']:.3f} "
              f"| {r['rank_p50_ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"reference": str(args.reference), "questions": len(pools),
                                         "candidates": args.candidates, "rows": rows}, indent=2))


def _folder_meta(folder: Path) -> dict:
    from kardlite._io import read_json

    meta = read_json(folder / "reranker.json")
    return meta if isinstance(meta, dict) else {}


if __name__ == "__main__":
    main()
