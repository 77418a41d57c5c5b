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

# 2. examples: the same 80 questions, first kept rationale each; KARD retrieves 5 facts by the rationale
N=${N_QUESTIONS:-80}
for mode in ft rd kard; do
  [ -f "$R/$mode.jsonl" ] || $K distill build --tasks "$OBQA/Main/train.jsonl" --rationales "$R/filtered/kept.jsonl" \
      --mode $mode --kb "$R/kb" --k 5 --retriever bm25 --max-items $N --per-item 1 --out "$R/$mode.jsonl"
done

# 3+4. two streams side by side (one torch thread each; a third process got OOM-killed next to the other jobs).
#      Train: LoRA r16/a32, 1 epoch (76 train questions = 10 steps of 8), source <= 384 tokens, target <= 128
#      tokens (the rationale is cut, never the answer line), lr 1e-3. Evaluate on the first 200 test questions.
TRAIN="--epochs 1 --batch-size 8 --max-source-tokens 384 --max-target-tokens 128 --lr 1e-3 --save-every 2"
T="--tasks $OBQA/Main/test.jsonl --limit 200"
( $K train student "$R/ft.jsonl" --out "$R/student-ft" $TRAIN
  $K eval --model "$R/student-ft" $T --out "$R/eval-ft"
  $K eval --model smollm2 --mode ft $T --max-source-tokens 384 --out "$R/eval-base-ft"
  $K train student "$R/kard.jsonl" --out "$R/student-kard" $TRAIN ) > "$R/stream-a.log" 2>&1 &
( $K train student "$R/rd.jsonl" --out "$R/student-rd" $TRAIN ) > "$R/stream-b.log" 2>&1 &
wait
( $K eval --model "$R/student-rd" $T --max-new-tokens 128 --out "$R/eval-rd" ) > "$R/stream-b.log" 2>&1 &
( $K eval --model "$R/student-kard" $T --kb "$R/kb" --retriever bm25 --n-docs 5 --max-new-tokens 128 \
      --out "$R/eval-kard-bm25" ) > "$R/stream-a.log" 2>&1 &
wait
$K eval report "$R/eval-base-ft" "$R/eval-ft" "$R/eval-rd" "$R/eval-kard-bm25" --out "$R/report.md"
