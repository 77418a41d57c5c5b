# %% [markdown]
# # 01 · Quickstart: ask the demo bundle
#
# A **bundle** is everything the CPU runtime needs in one folder: the student as a quantised GGUF, the knowledge
# base (passages, BM25, int8 encoder, HNSW) and the reranker as int8 ONNX, with a manifest of checksums and
# settings. `build_demo_bundle` makes the demo one from the embedded data and the packaged models (the first time;
# afterwards it is reused), `kardlite.runtime.load` opens it, and `ask` runs retrieve → rerank → reason.
#
# **Educational demo, not medical advice.**
#
# *Committed outputs: full mode (`KARDLITE_FAST=0`), made by `python notebooks/build.py --full`.*

# %%
# Parameters: the only cell to edit. KARDLITE_FAST=1 (CI) runs the same steps on a tiny budget.
import os
from pathlib import Path

FAST = os.environ.get("KARDLITE_FAST", "") == "1"
WORK = Path(os.environ.get("KARDLITE_WORK", "../runs/notebooks")) / ("fast" if FAST else "full")
BUNDLE = Path(os.environ.get("KARDLITE_BUNDLE", "../exports/demo"))  # built on first use (fast: ~1 min, full: <10)
SAMPLES = 3                        # self-consistency votes in the last cell
MAX_NEW_TOKENS = 64 if FAST else 128

# %%
import matplotlib.pyplot as plt
import pandas as pd

from kardlite.demo import demo_questions
from kardlite.demo.build import build_demo_bundle
from kardlite.runtime import load

pipe = load(build_demo_bundle(BUNDLE, fast=FAST))
print(pipe)
print(pipe.manifest.get("demo"))

# %%
item = demo_questions("test")[1]
answer = pipe.ask(item.question, list(item.options), max_new_tokens=MAX_NEW_TOKENS)
print(item.linearize())
print(f"\nstudent: {answer['letter']} (gold {item.answer_letter}), valid={answer['valid']}")
print("rationale:", answer["rationale"])

# %% [markdown]
# What the student was shown (after the first stage and, when the bundle has one, the reranker):

# %%
pd.DataFrame([{"rank": p["rank"], "id": p["id"], "title": p["title"], "first stage": round(p["first_stage_score"], 4),
               "rerank": p["rerank_score"] and round(p["rerank_score"], 3), "gold": p["id"] in item.meta["passage_ids"]}
              for p in answer["passages"]])

# %% [markdown]
# Where the time of that answer went, stage by stage, and the token counts: `prefill` reads the prompt until the
# first new token, `decode` writes the rest.

# %%
t = answer["timings"]
timings = pd.Series({"retrieve": t["retrieve"], "rerank": t["rerank"], "prompt": t["prompt"], "prefill": t["prefill"],
                     "decode": t["generate"] - t["prefill"]}, name="seconds")
ax = timings.plot(kind="barh", figsize=(6, 2.5), title=f"one answer: {t['total']:.2f} s in total")
ax.set_xlabel("seconds")
plt.show()
pd.Series(answer["tokens"], name="tokens").to_frame().T

# %% [markdown]
# `stream` yields the passages first, then each piece of text as it is generated, then the Answer:

# %%
for event in pipe.stream("Which diuretics act on the thick ascending limb of the loop of Henle?",
                         max_new_tokens=MAX_NEW_TOKENS):
    if event["type"] == "passages":
        print("passages:", [p["id"] for p in event["passages"]])
    elif event["type"] == "token":
        print(event["text"], end="", flush=True)

# %% [markdown]
# Self-consistency: several sampled rationales, answers by majority vote.

# %%
voted = pipe.ask(item.question, list(item.options), samples=SAMPLES, max_new_tokens=MAX_NEW_TOKENS)
print("votes:", voted["votes"], "-> answer", voted["letter"], f"(gold {item.answer_letter})")
pipe.close()

# %% [markdown]
# ## What the numbers say
#
# These outputs come from the **full** demo bundle: SmolLM2-135M with the shipped LoRA adapter merged (an
# OpenBookQA warm start, then KA-FT on the demo's 108 train questions), the trained late-interaction reranker and
# the hybrid first stage, quantised to Q4_K_M.
#
# - **Retrieval works**: the gold passage (the thiazides' site of action) is ranked first of the two shown, for a
#   question that never names thiazides.
# - **The student does not use it**: it answers C (acetazolamide) where the passage it reads names
#   hydrochlorothiazide and says thiazides lower urinary calcium; the gold answer is B. On all 27 demo test
#   questions this student is right 25.9% of the time, chance for four options (`kardlite demo eval`; dev 48.1%;
#   see the README). A 135M model fitted to a hundred questions memorises them more than it learns to read.
# - **It writes no rationale**: the demo student is answer-only (KA-FT). Each option's text is scored right after
#   the prompt, so the rationale is empty, nothing is generated (0 tokens) and an answer costs one prompt evaluation
#   (*prefill*, 348 tokens), under a second on 2 cores. For the same reason the self-consistency cell has no vote
#   to take: scoring is deterministic, so one reading is made and `votes` is None. Without options (the `stream`
#   cell) the student does generate, and answers in the few words it was trained to write.
#
# With `KARDLITE_FAST=1` the notebook uses the fast bundle instead: the untrained SmolLM2 and no reranker. It writes
# a rationale, but it rarely ends with a readable answer line.
