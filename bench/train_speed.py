"""Training throughput of the default student on a CPU: tokens/s of whole optimiser steps, per variant, side by side.

Every variant trains the packaged SmolLM2-135M-Instruct on the same real OpenBookQA examples (FT, RD or KARD shape:
first kept KARD-release rationale of the first train questions; KARD with 5 BM25 passages retrieved by the
rationale), in the same seeded order, for the same number of examples, each in its own subprocess (so its peak
RSS is its own). Reported per variant: real (non-padding) tokens/s over the steps after the first, padding share,
peak RSS, dev loss after the same examples (a fixed, question-disjoint dev slice), the model FLOP/s as
6 x 135M x tokens/s (the cost of a full fine-tuning step per token; LoRA and frozen layers do less real work for
the same useful tokens) beside the machine's fp32 peak, and the ratio to the baseline (main's defaults before
this bench) measured in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/train_speed.py                      # all variants, KARD shape
    .venv/bin/python bench/train_speed.py --shapes ft,rd,kard --variants baseline,default
    .venv/bin/python bench/train_speed.py --examples 96 --out docs/results/train-speed.json

Needs the OBQA data (``--obqa``, default ``$KARDLITE_OBQA``; layout: docs/environment.md) and the train extra.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_PARAMS = 134.5e6  # SmolLM2-135M, embeddings tied
# Each variant: StudentTrainConfig fields. "baseline" is main's defaults before this bench (fixed 256-token target
# budget, no length grouping, no token cap, LoRA r16 on every linear layer with dropout 0.05).
BASELINE = {"group_by_length": False, "max_batch_tokens": None, "max_target_tokens": 256, "lora_dropout": 0.05}
# The baseline runs the code of this revision (main before the target-position loss and right padding; the same
# code the 1.36x of the previous run was measured against, with the settings above).
BASELINE_REF = "551328f"
VARIANTS: dict[str, dict[str, object]] = {
    "baseline": BASELINE,
    "group": {**BASELINE, "group_by_length": True},
    "group+cap2048": {**BASELINE, "group_by_length": True, "max_batch_tokens": 2048},
    "group+cap2048+nodrop": {**BASELINE, "group_by_length": True, "max_batch_tokens": 2048, "lora_dropout": 0.0},
    "default": {},  # StudentTrainConfig's defaults as they are now: group, cap 2048, no dropout, data budget
    "default+cap2048": {"max_batch_tokens": 2048},
    "default+cap512": {"max_batch_tokens": 512},
    "default+cap1024": {"max_batch_tokens": 1024},
    "default+cap768": {"max_batch_tokens": 768},
    "default+attn-lora": {"lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "default+freeze4": {"freeze_layers": 4},
    "default+cap1024+freeze4": {"max_batch_tokens": 1024, "freeze_layers": 4},
    "default+freeze8": {"freeze_layers": 8},
    "default+freeze15": {"freeze_layers": 15},
    "default+r8-attn": {"lora_r": 8, "lora_alpha": 16, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "default+ckpt": {"gradient_checkpointing": True},
    "default+pack": {"pack": True},
    "default+nogroup+pack": {"group_by_length": False, "pack": True},
    "default+cap1024+pack": {"max_batch_tokens": 1024, "pack": True},
    "full-ft": {"lora": False, "lr": 1e-5},
}


def _checkout(ref: str, work: Path) -> Path:
    """The tree of git revision ``ref`` (its own kardlite and bench), extracted once under ``work``: the baseline
    runs the old code itself, not today's code with old settings."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True,
                         check=True).stdout.strip()
    tree = work / f"ref-{sha}"
    if not (tree / "kardlite").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


def prepare(obqa: Path, work: Path, n_questions: int) -> dict[str, Path]:
    """Examples files for the three shapes from the first ``n_questions`` OBQA train questions (cached in work)."""
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "kardlite.cli"]
    tasks = work / "train.jsonl"
    if not tasks.is_file():
        lines = (obqa / "Main" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:n_questions]
        tasks.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with gzip.open(obqa / "kard_teacher" / "train_rationales.jsonl.gz", "rt", encoding="utf-8") as fh:
            rat = [next(fh) for _ in range(n_questions)]
        with gzip.open(work / "rationales.jsonl.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(rat)
    if not (work / "store").exists():
        _run([*cli, "rationales", "import", str(work / "rationales.jsonl.gz"), "--task", str(tasks),
              "--out", str(work / "store"), "--quiet"])
    if not (work / "filtered" / "kept.jsonl").is_file():
        _run([*cli, "rationales", "filter", str(work / "store"), "--task", str(tasks), "--out",
              str(work / "filtered"), "--judge", "none", "--quiet"])
    if not (work / "kb").exists():
        _run([sys.executable, "-c", "from kardlite.kb import KBConfig, KnowledgeBase, read_passages; "
              f"KnowledgeBase.build(read_passages({str(obqa / 'Main' / 'openbook.txt')!r}), {str(work / 'kb')!r}, "
              "config=KBConfig())"])
    out = {}
    for mode in ("ft", "rd", "kard"):
        path = work / f"{mode}.jsonl"
        if not path.is_file():
            kept = str(work / "filtered" / "kept.jsonl")
            _run([*cli, "distill", "build", "--tasks", str(tasks), "--rationales", kept, "--mode", mode,
                  "--kb", str(work / "kb"), "--k", "5", "--per-item", "1", "--out", str(path)])
        out[mode] = path
    return out


def one(examples: Path, variant: str, n_examples: int, batch_size: int, out: Path) -> dict[str, object]:
    """Train one variant (in this process) and return its measurements."""
    import resource

    import torch

    from kardlite.distill.train import StudentTrainConfig, train_student

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows = examples.read_text(encoding="utf-8").splitlines()
    # Dev slice: the last 16 questions' rows; train: the first n_examples rows of the others (same for every variant).
    qids = [json.loads(r)["item_id"] for r in rows]
    dev_q = set(list(dict.fromkeys(qids))[-16:])
    subset = [r for r, q in zip(rows, qids, strict=True) if q not in dev_q][:n_examples] + \
             [r for r, q in zip(rows, qids, strict=True) if q in dev_q]
    data = out / "examples.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    data.write_text("\n".join(subset) + "\n", encoding="utf-8")
    frac = len(dev_q) / len(set(q for q in qids if q in dev_q) | set(json.loads(r)["item_id"] for r in subset))
    fields = dict(VARIANTS[variant])
    lr = float(fields.pop("lr", 1e-3))
    cfg = StudentTrainConfig(max_steps=n_examples // batch_size, batch_size=batch_size, lr=lr, max_source_tokens=384,
                             dev_fraction=frac, save_every=10_000, seed=42, **fields)
    started = time.time()
    train_student(data, out / "run", cfg)
    wall = time.time() - started
    history = json.loads((out / "run" / "loss_curve.json").read_text(encoding="utf-8"))
    manifest = json.loads((out / "run" / "manifest.json").read_text(encoding="utf-8"))
    timed = history[1:]  # the first step pays one-off costs (allocator warm-up, graph set-up)
    seconds = history[-1]["seconds"] - history[0]["seconds"]
    tokens = sum(h["tokens"] for h in timed)
    padded = sum(h["padded_tokens"] for h in history)
    return {
        "variant": variant, "config": VARIANTS[variant], "steps": len(history), "examples": n_examples,
        "tokens_per_s": tokens / seconds, "target_tokens_per_s": sum(h["target_tokens"] for h in timed) / seconds,
        "padding_share": 1 - sum(h["tokens"] for h in history) / padded,
        "seconds_per_step": seconds / len(timed), "dev_loss": history[-1].get("dev_loss"),
        "final_train_loss": history[-1]["train_loss"], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        / 1e6, "wall_s": wall, "n_dev_questions": manifest["data"]["n_dev_questions"],
        "truncated_targets": manifest["data"]["truncated_targets"],
    }


def _peak_flops() -> tuple[float, str]:
    """fp32 peak of this machine's cores: cores x GHz x FLOP/cycle (AVX-512: 64, AVX2 + FMA: 32, else 16)."""
    info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split())
    mhz = max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M))
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 16
    cores = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    return cores * mhz * 1e6 * per_cycle, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obqa", type=Path,
                        default=Path(os.environ.get("KARDLITE_OBQA") or ROOT.parent / "shared" / "data" / "obqa"))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "train-speed")
    parser.add_argument("--shapes", default="kard")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--examples", type=int, default=48, help="training examples per variant (multiple of batch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the results JSON here too")
    parser.add_argument("--baseline-ref", default=BASELINE_REF,
                        help="git revision whose own code runs the 'baseline' variant ('' = this checkout)")
    parser.add_argument("--one", nargs=3, metavar=("EXAMPLES", "VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:
        result = one(Path(args.one[0]), args.one[1], args.examples, args.batch_size, Path(args.one[2]))
        print("RESULT " + json.dumps(result), flush=True)
        return

    files = prepare(args.obqa, args.work, n_questions=200)
    peak, peak_text = _peak_flops()
    results: dict[str, list[dict[str, object]]] = {}
    for shape in args.shapes.split(","):
        results[shape] = []
        for variant in args.variants.split(","):
            if variant not in VARIANTS:
                raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
            out = args.work / "runs" / f"{shape}-{variant}"
            shutil.rmtree(out, ignore_errors=True)
            script = Path(__file__)
            if variant == "baseline" and args.baseline_ref:
                script = _checkout(args.baseline_ref, args.work) / "bench" / "train_speed.py"
            proc = subprocess.run([sys.executable, str(script), "--examples", str(args.examples), "--batch-size",
                                   str(args.batch_size), "--one", str(files[shape]), variant, str(out)],
                                  capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{shape}/{variant} failed (exit {proc.returncode})")
            results[shape].append(json.loads(line[7:]))
            shutil.rmtree(out, ignore_errors=True)  # a merged model is ~0.5 GB
            r = results[shape][-1]
            print(f"{shape:5s} {variant:22s} {r['tokens_per_s']:7.1f} tok/s  pad {r['padding_share']:.2f}  "
                  f"rss {r['peak_rss_gb']:.2f} GB  dev {r['dev_loss']:.4f}", flush=True)

    print(f"\nmachine fp32 peak: {peak / 1e9:.0f} GFLOP/s ({peak_text})")
    header = (f"{'shape':5s} {'variant':22s} {'tok/s':>7s} {'x base':>6s} {'tgt tok/s':>9s} {'pad':>5s} {'s/step':>6s} "
              f"{'RSS GB':>6s} {'dev loss':>8s} {'6N GFLOP/s':>10s} {'% peak':>6s}")
    print(header)
    for shape, rows in results.items():
        base = next((r for r in rows if r["variant"] == "baseline"), rows[0])
        for r in rows:
            flops = 6 * N_PARAMS * r["tokens_per_s"]
            r["ratio_to_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["model_gflops"] = flops / 1e9
            r["share_of_peak"] = flops / peak
            print(f"{shape:5s} {r['variant']:22s} {r['tokens_per_s']:7.1f} {r['ratio_to_baseline']:6.2f} "
                  f"{r['target_tokens_per_s']:9.1f} {r['padding_share']:5.2f} {r['seconds_per_step']:6.2f} "
                  f"{r['peak_rss_gb']:6.2f} {r['dev_loss']:8.4f} {flops / 1e9:10.1f} {100 * flops / peak:6.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine_peak_gflops": peak / 1e9, "machine": peak_text, "examples": args.examples,
                   "batch_size": args.batch_size, "threads": os.environ.get("OMP_NUM_THREADS"), "results": results}
        args.out.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
