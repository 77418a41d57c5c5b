"""Evaluation back-ends side by side: batched PyTorch (``kardlite.distill.evaluate``) vs the Q8_0 GGUF in llama.cpp.

For the first ``--limit`` questions of a task file, builds each question's prompt once (``Student.prompt``, the
student's mode; KARD with BM25 over ``--kb``), then, batch by batch and interleaved so that both back-ends see
the same machine load:

- PyTorch greedy generation (``evaluate.generate``, left-padded batches of ``--batch-size``) and the GGUF
  back-end's greedy generation (``kardlite.distill.gguf_eval.GGUFBackend.generate``), both capped at
  ``--max-new-tokens`` and stopped after a complete ``Answer: X``;
- letter log-probabilities after the FT-style ``Answer:`` cue (``evaluate.score_letters`` vs
  ``GGUFBackend.score_letters``).

Prints and writes (``--out``, JSON; per-question rows in ``<out>.rows.jsonl``): same parsed letter (an invalid
output counts as its own value), same letter where both are valid, identical text, letter log-prob differences,
and wall seconds per question for each back-end. The GGUF is exported (Q8_0, verified) when ``--gguf`` is absent.

    OMP_NUM_THREADS=2 .venv/bin/python bench/eval_backends.py --student runs/x/student-rd \
        --tasks $OBQA/Main/test.jsonl --limit 100 --out docs/results/eval-backends.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, required=True, help="a trained rd/kard student folder")
    ap.add_argument("--tasks", type=Path, required=True, help="test questions")
    ap.add_argument("--gguf", type=Path, help="the student's Q8_0 GGUF (default: export to <out>.gguf/)")
    ap.add_argument("--kb", type=Path, help="knowledge base for a kard student (BM25, linearised question)")
    ap.add_argument("--mode", help="prompt mode (default: the student's)")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    args = ap.parse_args()

    import torch

    from kardlite._io import atomic_write_json
    from kardlite.data import load_task
    from kardlite.distill.evaluate import EvalConfig, generate, make_retriever, score_letters
    from kardlite.distill.gguf_eval import GGUFBackend
    from kardlite.distill.student import load_student
    from kardlite.prompts import parse_answer

    torch.set_num_threads(args.threads)
    items = load_task(args.tasks)[: args.limit]
    t0 = time.perf_counter()
    student = load_student(args.student)
    torch_load = time.perf_counter() - t0
    mode = args.mode or student.info.get("mode") or "rd"
    budget = int(student.info.get("max_source_tokens") or 512)
    gguf = args.gguf
    export_s = None
    if gguf is None:
        from kardlite.export.gguf import export_gguf

        t0 = time.perf_counter()
        out = export_gguf(student.name, args.out.with_suffix(".gguf"), quants=("Q8_0",), keep_f16=False,
                          threads=args.threads)
        export_s = time.perf_counter() - t0
        gguf = Path(out["Q8_0"]["path"])
    t0 = time.perf_counter()
    backend = GGUFBackend(gguf, threads=args.threads, n_ctx=2048)
    gguf_load = time.perf_counter() - t0

    retrieve = None
    if mode == "kard":
        from kardlite.kb import KnowledgeBase

        retrieve = make_retriever(KnowledgeBase.load(args.kb), "bm25")
    prompts = [student.prompt(it, mode, passages=retrieve(it, 5) if retrieve else (), max_tokens=budget).text
               for it in items]
    letter_prompts = [student.prompt(it, "ft", max_tokens=budget).text for it in items]
    n_opts = [len(it.options) for it in items]
    cfg = EvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    rows, clock = [], {"torch_generate": 0.0, "gguf_generate": 0.0, "torch_letters": 0.0, "gguf_letters": 0.0}
    load_before = os.getloadavg()[0]
    for b in range(0, len(items), args.batch_size):
        sl = slice(b, b + args.batch_size)
        t0 = time.perf_counter()
        pt = generate(student, [student.encode(p) for p in prompts[sl]], n_opts[sl], cfg)
        clock["torch_generate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        gg = backend.generate(prompts[sl], n_opts[sl], max_new_tokens=args.max_new_tokens)
        clock["gguf_generate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        pl = score_letters(student, [student.encode(p) for p in letter_prompts[sl]], n_opts[sl])
        clock["torch_letters"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        gl = backend.score_letters(letter_prompts[sl], n_opts[sl])
        clock["gguf_letters"] += time.perf_counter() - t0
        for it, n, a, g, la, lg in zip(items[sl], n_opts[sl], pt, gg, pl, gl, strict=True):
            rows.append({"id": it.id, "torch": a[0], "gguf": g[0], "torch_letter": parse_answer(a[0], n),
                         "gguf_letter": parse_answer(g[0], n), "torch_letter_logprobs": la,
                         "gguf_letter_logprobs": lg})
        print(f"{len(rows)}/{len(items)}  torch {clock['torch_generate']:.0f}s  gguf {clock['gguf_generate']:.0f}s",
              flush=True)
    backend.close()

    n = len(rows)
    clean = student.tokenizer.clean_up_tokenization
    both_valid = [r for r in rows if r["torch_letter"] is not None and r["gguf_letter"] is not None]
    diffs = [abs(a - b) for r in rows for a, b in zip(r["torch_letter_logprobs"], r["gguf_letter_logprobs"],
                                                       strict=True)]

    def argmax(v: list[float]) -> int:
        return max(range(len(v)), key=v.__getitem__)

    summary = {
        "student": str(args.student), "gguf": str(gguf), "mode": mode, "tasks": str(args.tasks), "n": n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": args.threads,
        "same_letter": round(sum(r["torch_letter"] == r["gguf_letter"] for r in rows) / n, 4),
        "same_letter_both_valid": round(sum(r["torch_letter"] == r["gguf_letter"] for r in both_valid)
                                        / max(len(both_valid), 1), 4),
        "both_valid": len(both_valid),
        "torch_invalid": sum(r["torch_letter"] is None for r in rows),
        "gguf_invalid": sum(r["gguf_letter"] is None for r in rows),
        # transformers' decode drops spaces before punctuation (clean_up_tokenization_spaces); llama.cpp does not
        "identical_text": round(sum(r["torch"] == clean(r["gguf"]) for r in rows) / n, 4),
        "letter_logprob_abs_diff_max": round(max(diffs), 4),
        "letter_logprob_abs_diff_mean": round(sum(diffs) / len(diffs), 4),
        "same_best_letter_by_logprob": round(sum(argmax(r["torch_letter_logprobs"]) == argmax(r["gguf_letter_logprobs"])
                                                 for r in rows) / n, 4),
        "seconds_per_question": {k: round(v / n, 3) for k, v in clock.items()},
        "load_seconds": {"torch": round(torch_load, 2), "gguf": round(gguf_load, 2)},
        "export_seconds": None if export_s is None else round(export_s, 1),
        "loadavg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".rows.jsonl"), "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    atomic_write_json(args.out, summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
