"""The OpenBookQA warm start of the shipped demo adapter: a KA-FT student on OBQA, then `kardlite train demo-adapter
--warm-start` on top of it.

    python bench/distill/demo_warm_start.py --obqa OBQA_DIR --run runs/obqa-warm
    kardlite train demo-adapter ... --warm-start runs/obqa-warm/student      (the command in adapter.json)

The OBQA part uses the recipe script's own data stages (bench/distill/obqa_recipe.py): the first 1,000 train
questions, each with the open-book facts BM25 retrieves for its question (3), and the option's text as target;
125 LoRA steps of 8 at lr 1e-3 (about 7 minutes on 2 cores). OBQA_DIR holds ``Main/`` (train.jsonl,
openbook.txt) and ``kard_teacher/train_rationales.jsonl.gz``; no OBQA file enters the repository or the adapter
(the adapter's manifest records the warm start's examples sha256).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import obqa_recipe  # noqa: E402  (its data stages, one copy)

TRAIN_QUESTIONS = 1000
STEPS = 125


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--obqa", type=Path, required=True, help="the OpenBookQA folder (Main/, kard_teacher/)")
    ap.add_argument("--run", type=Path, default=Path("runs/obqa-warm"), help="data and the student's run folder")
    args = ap.parse_args()
    data = obqa_recipe.prepare(args.obqa, args.run, TRAIN_QUESTIONS)
    examples = obqa_recipe.examples_file(data, args.run, "ka-ft", "question", TRAIN_QUESTIONS)
    subprocess.run([sys.executable, "-m", "kardlite.cli", "train", "student", str(examples),
                    "--out", str(args.run / "student"), "--lr", "1e-3", "--max-steps", str(STEPS),
                    "--batch-size", "8", "--max-source-tokens", "384", "--answer-format", "text",
                    "--save-every", "10", "--dev-fraction", "0"], check=True)
    print(f"warm start ready: {args.run / 'student'}")


if __name__ == "__main__":
    main()
