"""Quantisation fidelity: does the exported student answer like the PyTorch fp32 student it came from?

Takes a finished greedy ``kardlite eval`` run of a generating (rd/kard) student, exports that student to GGUF
(f16, Q8_0, Q4_K_M, each verified by ``kardlite.export``) unless ``--gguf-dir`` already holds them, and replays
**the exact prompts of the run** (``predictions.jsonl`` keeps each prompt text, passages included) through
llama.cpp with the same decoding: greedy, the run's ``max_new_tokens``, stop at an end-of-generation token or
once a complete ``Answer: X`` is written (as ``kardlite eval`` does). Prints, per format, accuracy, invalid rate,
agreement of the predicted letter with fp32, and accuracy difference to fp32 in points; writes the rows to
``--out`` (one JSONL per format, resumable) and the summary to ``<out>/summary.json``.

    nice .venv/bin/python bench/quant_fidelity.py --eval runs/distill-obqa/eval-kard-bm25 \
        --student runs/distill-obqa/student-kard \
        --tasks $OBQA/Main/test.jsonl --out runs/distill-obqa/quant-kard-bm25
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _generate(llm, prompt: str, n_options: int, max_new: int) -> str:
    import llama_cpp

    from kardlite.distill.evaluate import _answer_done

    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    vocab = llm._model.vocab
    out: list[int] = []
    for tok in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(vocab, tok):
            break
        out.append(tok)
        if len(out) >= max_new:
            break
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        if _answer_done(text, n_options):
            break
    return llm.detokenize(out).decode("utf-8", errors="replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", type=Path, required=True, help="a finished greedy rd/kard `kardlite eval` folder")
    ap.add_argument("--student", type=Path, required=True, help="the student folder that eval ran")
    ap.add_argument("--tasks", type=Path, required=True, help="the test questions that eval ran (for option counts)")
    ap.add_argument("--gguf-dir", type=Path, help="folder with student-{f16,Q8_0,Q4_K_M}.gguf (default: export)")
    ap.add_argument("--formats", default="f16,Q8_0,Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from kardlite._llama import load_llama
    from kardlite.data import load_task
    from kardlite.data.records import LETTERS
    from kardlite.prompts import parse_answer

    settings = json.loads((args.eval / "eval.json").read_text(encoding="utf-8"))
    if settings.get("mode") not in ("rd", "kard") or settings.get("decoding") != "greedy":
        sys.exit(f"{args.eval}: needs a greedy rd/kard evaluation (got {settings.get('mode')}, "
                 f"{settings.get('decoding')})")
    reference = {r["id"]: r for r in _rows(args.eval / "predictions.jsonl")}
    ids = [i for i in settings["items"] if i in reference]
    if len(ids) < len(settings["items"]):
        print(f"note: the fp32 run is partial ({len(ids)}/{len(settings['items'])}); comparing those")
    max_new = int(settings["max_new_tokens"])
    formats = [f for f in args.formats.split(",") if f]

    args.out.mkdir(parents=True, exist_ok=True)
    gguf_dir = args.gguf_dir or args.out / "gguf"
    if not all((gguf_dir / f"student-{f}.gguf").is_file() for f in formats):
        from kardlite.export.gguf import export_gguf

        t0 = time.perf_counter()
        model_dir = args.student / "model" if (args.student / "model").is_dir() else args.student
        report = export_gguf(model_dir, gguf_dir, quants=[f for f in formats if f != "f16"], threads=args.threads)
        print(f"exported and verified in {time.perf_counter() - t0:.0f} s:",
              {q: (r["bytes"], r["verify"] and r["verify"].get("agreement")) for q, r in report.items()})

    n_opts = {it.id: len(it.options) for it in load_task(args.tasks)}
    fp32 = {i: reference[i]["prediction"] for i in ids}
    gold = {i: reference[i]["gold"] for i in ids}
    summary: dict[str, dict] = {"fp32": {"n": len(ids), "accuracy": sum(fp32[i] == gold[i] for i in ids) / len(ids),
                                         "invalid_rate": sum(fp32[i] is None for i in ids) / len(ids)}}
    for fmt in formats:
        path = args.out / f"{fmt}.jsonl"
        done = {r["id"]: r for r in _rows(path)} if path.is_file() else {}
        llm = load_llama(gguf_dir / f"student-{fmt}.gguf", n_ctx=2048, n_threads=args.threads)
        t0, n_new = time.perf_counter(), 0
        with open(path, "a", encoding="utf-8") as fh:
            for i in ids:
                if i in done:
                    continue
                ref = reference[i]
                text = _generate(llm, ref["prompt"], n_opts[i], max_new)
                pred = parse_answer(text, n_opts[i])
                row = {"id": i, "gold": gold[i], "prediction": None if pred is None else LETTERS[pred],
                       "fp32_prediction": fp32[i], "output": text, "fp32_output": ref["outputs"][0]}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                done[i] = row
                n_new += 1
        llm.close()
        rows = [done[i] for i in ids]
        n = len(rows)
        acc = sum(r["prediction"] == r["gold"] for r in rows) / n
        summary[fmt] = {"n": n, "accuracy": acc, "invalid_rate": sum(r["prediction"] is None for r in rows) / n,
                        "agreement_with_fp32": sum(r["prediction"] == r["fp32_prediction"] for r in rows) / n,
                        "same_output_as_fp32": sum(r["output"].strip() == r["fp32_output"].strip() for r in rows) / n,
                        "delta_points": round(100 * (acc - summary["fp32"]["accuracy"]), 1),
                        "seconds": round(time.perf_counter() - t0, 1), "generated_now": n_new}
    (args.out / "summary.json").write_text(json.dumps({"eval": str(args.eval), "student": str(args.student),
                                                      "results": summary}, indent=2) + "\n", encoding="utf-8")
    print(f"{'format':8} {'n':>4} {'accuracy':>9} {'invalid':>8} {'agree':>7} {'same text':>10} {'Δ pts':>6}")
    for fmt, s in summary.items():
        print(f"{fmt:8} {s['n']:>4} {s['accuracy']:>9.3f} {s['invalid_rate']:>8.3f} "
              f"{s.get('agreement_with_fp32', 1.0):>7.3f} {s.get('same_output_as_fp32', 1.0):>10.3f} "
              f"{s.get('delta_points', 0.0):>6}")


if __name__ == "__main__":
    main()
