#!/usr/bin/env bash
# The OBQA CPU run of docs/results/obqa-cpu.md: FT, RD and KARD (BM25) students from SmolLM2-135M-Instruct,
# same 80 train questions x 1 kept rationale, LoRA, 1 epoch; evaluated on the first 200 Main/test questions
# next to the untrained base. Every step resumes (re-run the script after an interruption).
set -euo pipefail
OBQA=${OBQA:-../shared/data/obqa}
R=${RUN:-runs/distill-obqa}
K="nice -n 10 .venv/bin/kardlite"
# One torch thread: on 2 cores shared with other jobs, 2 OpenMP threads stall at every barrier.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$R"

# 1. rationales: the teacher stage's importer and filter (degenerate + stated-answer rules; no LM judge, too slow
#    for 99k rationales on 2 shared cores), then the open book as a BM25-only KB
[ -e "$R/teacher_store" ] || $K rationales import "$OBQA/kard_teacher/train_rationales.jsonl.gz" \
    --task "$OBQA/Main/train.jsonl" --out "$R/teacher_store" --quiet
[ -f "$R/filtered/kept.jsonl" ] || $K rationales filter "$R/teacher_store" --task "$OBQA/Main/train.jsonl" \
    --out "$R/filtered" --judge none --quiet
[ -d "$R/kb" ] || .venv/bin/python -c "
from kardlite.kb import KBConfig, KnowledgeBase, read_passages
KnowledgeBase.build(read_passages('$OBQA/Main/openbook.txt'), '$R/kb', config=KBConfig(dense=None))"

# 2. examples: the same 80 questions (the first 80 train questions), first kept rationale each; KARD retrieves 5 facts by the rationale
N=${N_QUESTIONS:-80}
for mode in ft rd kard; do
  [ -f "$R/$mode.jsonl" ] || $K distill build --tasks "$OBQA/Main/train.jsonl" --rationales "$R/filtered/kept.jsonl" \
      --mode $mode --kb "$R/kb" --k 5 --retriever bm25 --max-items $N --per-item 1 --out "$R/$mode.jsonl"
done

# 3. students, LoRA r16/a32/dropout 0.05 on all linear projections, 1 epoch (76 train + 4 dev questions = 10 steps
#    of 8 examples), source <= 384 tokens, target <= 128 tokens (the rationale is cut, never the answer line),
#    lr 1e-3 constant. FT and RD ran side by side with micro-batch 8; KARD with micro-batch 2 x 4 accumulation
#    (the same 8 examples per step, loss normalised over the window) after a batch-8 KARD run was OOM-killed at
#    9.3 GB next to the other jobs on the machine.
COMMON="--epochs 1 --max-source-tokens 384 --max-target-tokens 128 --lr 1e-3 --save-every 2"
$K train student "$R/ft.jsonl" --out "$R/student-ft" --batch-size 8 $COMMON
$K train student "$R/rd.jsonl" --out "$R/student-rd" --batch-size 8 $COMMON
$K train student "$R/kard.jsonl" --out "$R/student-kard" --batch-size 2 --grad-accum 4 $COMMON

# 4. evaluation on the first 200 Main/test questions (re-running a command resumes it)
T="--tasks $OBQA/Main/test.jsonl --limit 200"
$K eval --model smollm2 --mode ft $T --max-source-tokens 384 --out "$R/eval-base-ft"
$K eval --model "$R/student-ft" $T --out "$R/eval-ft"
$K eval --model "$R/student-rd" $T --max-new-tokens 128 --out "$R/eval-rd"
$K eval --model "$R/student-kard" $T --kb "$R/kb" --retriever bm25 --n-docs 5 --max-new-tokens 128 \
    --out "$R/eval-kard-bm25"
$K eval report "$R/eval-base-ft" "$R/eval-ft" "$R/eval-rd" "$R/eval-kard-bm25" --out "$R/report.md"
