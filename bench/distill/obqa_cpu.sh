#!/usr/bin/env bash
# The OBQA CPU run of docs/results/obqa-cpu.md: FT, RD and KARD students from SmolLM2-135M-Instruct, the same
# N train questions x 1 kept rationale (N_QUESTIONS, default 300), LoRA, 1 epoch; evaluated on the first 200
# Main/test questions next to the untrained base; KARD with BM25 and with the trained reranker (RERANKER, from
# bench/rerank_obqa.py + `kardlite train reranker`); then the KARD student's GGUF exports replay its prompts
# (bench/quant_fidelity.py). Every step resumes (re-run the script after an interruption).
set -euo pipefail
OBQA=${OBQA:?set OBQA to the OpenBookQA folder (layout: docs/environment.md)}
R=${RUN:-runs/distill-obqa}
K="nice -n 10 .venv/bin/kardlite"
# Torch threads: 2 on an idle 2-core machine (the report's run); 1 when the cores are shared with other jobs
# (2 OpenMP threads then stall at every barrier).
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$R"

# 1. rationales: the teacher stage's importer and filter (degenerate + stated-answer rules; no LM judge, too slow
#    for 99k rationales on 2 cores), then the open book as a KB (BM25 + int8 MiniLM dense + hybrid)
[ -e "$R/teacher_store" ] || $K rationales import "$OBQA/kard_teacher/train_rationales.jsonl.gz" \
    --tasks "$OBQA/Main/train.jsonl" --out "$R/teacher_store" --quiet
[ -f "$R/filtered/kept.jsonl" ] || $K rationales filter "$R/teacher_store" --tasks "$OBQA/Main/train.jsonl" \
    --out "$R/filtered" --judge none --quiet
[ -d "$R/kb" ] || .venv/bin/python -c "
from kardlite.kb import KBConfig, KnowledgeBase, read_passages
KnowledgeBase.build(read_passages('$OBQA/Main/openbook.txt'), '$R/kb', config=KBConfig())"

# 2. examples: the same N questions (the first N train questions), first kept rationale each; KARD retrieves 5
#    facts by the rationale
N=${N_QUESTIONS:-300}
for mode in ft rd kard; do
  [ -f "$R/$mode.jsonl" ] || $K distill build --tasks "$OBQA/Main/train.jsonl" --rationales "$R/filtered/kept.jsonl" \
      --mode $mode --kb "$R/kb" --k 5 --retriever bm25 --max-items $N --per-item 1 --out "$R/$mode.jsonl"
done

# 3. students, LoRA r16/a32/dropout 0.05 on all linear projections, 1 epoch (95% train / 5% dev questions),
#    micro-batch 8, source <= 384 tokens, target <= 128 tokens (the rationale is cut, never the answer line),
#    lr 1e-3 constant (10x the paper's 1e-4: one epoch of a few dozen LoRA steps, not 3 epochs of thousands)
COMMON="--epochs 1 --batch-size 8 --max-source-tokens 384 --max-target-tokens 128 --lr 1e-3 --save-every 10"
for mode in ft rd kard; do
  $K train student "$R/$mode.jsonl" --out "$R/student-$mode" $COMMON
done

# 4. evaluation on the first 200 Main/test questions (re-running a command resumes it)
T="--tasks $OBQA/Main/test.jsonl --limit 200"
$K eval --model smollm2 --mode ft $T --max-source-tokens 384 --out "$R/eval-base-ft"
$K eval --model "$R/student-ft" $T --out "$R/eval-ft"
$K eval --model "$R/student-rd" $T --max-new-tokens 128 --out "$R/eval-rd"
$K eval --model "$R/student-kard" $T --kb "$R/kb" --retriever bm25 --n-docs 5 --max-new-tokens 128 \
    --out "$R/eval-kard-bm25"
# the reranker's first stage and pool were chosen on OBQA dev (docs/results/reranker-obqa.md), not on test
RERANKER=${RERANKER:-runs/rerank-obqa/reranker-full-int8}
$K eval --model "$R/student-kard" $T --kb "$R/kb" --retriever reranker --reranker "$RERANKER" \
    --first-stage ${FIRST_STAGE:-hybrid} --pool ${POOL:-20} --n-docs 5 --max-new-tokens 128 --out "$R/eval-kard-reranker"
$K eval report "$R/eval-base-ft" "$R/eval-ft" "$R/eval-rd" "$R/eval-kard-bm25" "$R/eval-kard-reranker" \
    --out "$R/report.md"

# 5. quantisation fidelity: the KARD (BM25) student exported to GGUF Q8_0/Q4_K_M replays the same prompts
nice -n 10 .venv/bin/python bench/quant_fidelity.py --eval "$R/eval-kard-bm25" --student "$R/student-kard" \
    --tasks "$OBQA/Main/test.jsonl" --formats Q8_0,Q4_K_M --out "$R/quant-kard-bm25"

# 6. diagnostics: fact1 recall of what each KARD system showed, letter counts, and the forced-answer accuracy
.venv/bin/python bench/distill/obqa_analysis.py "$R" "$OBQA" 200 > "$R/analysis.json"
for s in rd:rd kard-bm25:kard kard-reranker:kard; do
  .venv/bin/python bench/distill/forced_answer.py "$R/eval-${s%%:*}" "$R/student-${s##*:}" "$OBQA/Main/test.jsonl"
done
