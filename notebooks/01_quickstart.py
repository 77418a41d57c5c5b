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
# *Committed outputs: fast mode (`KARDLITE_FAST=1`), made by `python notebooks/build.py --fast`.*

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
# These outputs come from the **fast** demo bundle: the packaged SmolLM2-135M as it was released (not trained for
# KARD) and no reranker.
#
# - **Retrieval already works**: the hybrid first stage put the gold passage (the thiazides' site of action) first
#   of the two shown, for a question that never names thiazides.
# - **The untrained student does not**: it has never learned to end with `Answer: X`. It wrote prose naming
#   option A (wrong; the gold answer is B) without a statement the answer reader accepts, so the answer is
#   *invalid* and counts as wrong; the three sampled rationales were all invalid as well, so the vote is empty.
#   Training the student on KARD examples (notebook 04, the full demo bundle) teaches the format and the use of
#   the passages; a 135M model still often gets the medicine wrong.
# - **Time**: reading the prompt (*prefill*, 357 tokens) took most of the answer and retrieval a few tens of
#   milliseconds, so the number of passages shown sets the latency. The seconds here are inflated: the run shared
#   2 cores with other jobs. On an idle 2-core machine the same kind of answer takes about 3 s, prefill about
#   1.2 s and decoding about 100 tokens/s (`docs/results/edge-cpu.md`).
#
# With `KARDLITE_FAST=0` the notebook builds (once, up to 10 minutes) and uses the trained demo bundle: a student
# distilled with KARD and the late-interaction reranker.
