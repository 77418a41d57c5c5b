#!/usr/bin/env bash
# The OBQA CPU run of docs/results/obqa-cpu.md: FT, RD and KARD (BM25) students from SmolLM2-135M-Instruct,
# same 400 train questions x 1 kept rationale, LoRA, 1 epoch; evaluated on the first 200 Main/test questions
# next to the untrained base. Every step resumes (re-run the script after an interruption).
set -euo pipefail
OBQA=${OBQA:-../shared/data/obqa}
R=${RUN:-runs/distill-obqa}
K="nice -n 10 .venv/bin/kardlite"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
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

# 2. examples: the same 400 questions, first kept rationale each; KARD retrieves 5 facts by the rationale
for mode in ft rd kard; do
  [ -f "$R/$mode.jsonl" ] || $K distill build --tasks "$OBQA/Main/train.jsonl" --rationales "$R/filtered/kept.jsonl" \
      --mode $mode --kb "$R/kb" --k 5 --retriever bm25 --max-items 400 --per-item 1 --out "$R/$mode.jsonl"
done

# 3. students: LoRA r16/a32, 1 epoch (48 steps of 8), source <= 384 tokens, lr 5e-4 (LoRA; see report)
for mode in ft rd kard; do
  $K train student "$R/$mode.jsonl" --out "$R/student-$mode" --epochs 1 --batch-size 8 \
      --max-source-tokens 384 --max-target-tokens 192 --lr 5e-4 --save-every 8
done

# 4. evaluation on the first 200 test questions
T="--tasks $OBQA/Main/test.jsonl --limit 200"
$K eval --model smollm2 --mode ft $T --max-source-tokens 384 --out "$R/eval-base-ft"
$K eval --model "$R/student-ft" $T --out "$R/eval-ft"
$K eval --model "$R/student-rd" $T --max-new-tokens 192 --out "$R/eval-rd"
$K eval --model "$R/student-kard" $T --kb "$R/kb" --retriever bm25 --n-docs 5 --max-new-tokens 192 \
    --out "$R/eval-kard-bm25"
$K eval report "$R/eval-base-ft" "$R/eval-ft" "$R/eval-rd" "$R/eval-kard-bm25" --out "$R/report.md"
