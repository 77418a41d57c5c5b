"""Write, execute and clean the tutorial notebooks. The cell sources live here; the committed ``.ipynb`` files are
generated from them (so a change is one diff in this file) and then executed so they carry a real run's outputs.

    .venv/bin/python notebooks/_make.py write                  # (re)write every .ipynb, no outputs
    KARDLITE_FAST=1 .venv/bin/python notebooks/_make.py run    # execute in place (fast mode), keep outputs
    .venv/bin/python notebooks/_make.py run 02_data_and_kb     # one notebook, full mode
    .venv/bin/python notebooks/_make.py strip                  # only strip metadata

Executed notebooks keep their outputs (they teach) but no cell metadata, no widget state and only a minimal
notebook metadata (the kernel name), so re-runs give small diffs. The leading underscore keeps this file out of
the numbered tutorials.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL = {"name": "python3", "display_name": "Python 3 (kardlite .venv)", "language": "python"}
MODE_LINE = "*Committed outputs: "  # the intro cell's last line, rewritten by `run` with the mode that made them

PARAMS_COMMON = '''\
# Parameters: the only cell to edit. KARDLITE_FAST=1 (CI) runs the same steps on a tiny budget.
import os
from pathlib import Path

FAST = os.environ.get("KARDLITE_FAST", "") == "1"
WORK = Path(os.environ.get("KARDLITE_WORK", "../runs/notebooks")) / ("fast" if FAST else "full")
SHARED = Path("../../shared/data/obqa")  # benchmark data beside the repo, when present (never copied into it)
'''

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {}

PARAMS_BUNDLE = """\
BUNDLE = Path(os.environ.get("KARDLITE_BUNDLE", "../exports/demo"))  # built on first use (fast: ~1 min, full: <10)
"""

NOTEBOOKS["01_quickstart"] = [
    ("md", """\
# 01 · Quickstart: ask the demo bundle

A **bundle** is everything the CPU runtime needs in one folder: the student as a quantised GGUF, the knowledge
base (passages, BM25, int8 encoder, HNSW) and the reranker as int8 ONNX, with a manifest of checksums and
settings. `build_demo_bundle` makes the demo one from the embedded data and the packaged models (the first time;
afterwards it is reused), `kardlite.runtime.load` opens it, and `ask` runs retrieve → rerank → reason.

**Educational demo, not medical advice.**

""" + MODE_LINE + "*"),
    ("code", PARAMS_COMMON + PARAMS_BUNDLE + '''\
SAMPLES = 3                        # self-consistency votes in the last cell
MAX_NEW_TOKENS = 64 if FAST else 128
'''),
    ("code", '''\
import pandas as pd

from kardlite.demo import demo_questions
from kardlite.demo.build import build_demo_bundle
from kardlite.runtime import load

pipe = load(build_demo_bundle(BUNDLE, fast=FAST))
print(pipe)
print(pipe.manifest.get("demo"))
'''),
    ("code", '''\
item = demo_questions("test")[1]
answer = pipe.ask(item.question, list(item.options), max_new_tokens=MAX_NEW_TOKENS)
print(item.linearize())
print(f"\\nstudent: {answer['letter']} (gold {item.answer_letter}), valid={answer['valid']}")
print("rationale:", answer["rationale"])
'''),
    ("md", "What the student was shown (after the first stage and, when the bundle has one, the reranker):"),
    ("code", '''\
pd.DataFrame([{"rank": p["rank"], "id": p["id"], "title": p["title"], "first stage": round(p["first_stage_score"], 4),
               "rerank": p["rerank_score"] and round(p["rerank_score"], 3), "gold": p["id"] in item.meta["passage_ids"]}
              for p in answer["passages"]])
'''),
    ("code", '''\
pd.Series(answer["timings"], name="seconds").round(3).to_frame().T.assign(**answer["tokens"])
'''),
    ("md", "`stream` yields the passages first, then each piece of text as it is generated, then the Answer:"),
    ("code", '''\
for event in pipe.stream("Which diuretics act on the thick ascending limb of the loop of Henle?",
                         max_new_tokens=MAX_NEW_TOKENS):
    if event["type"] == "passages":
        print("passages:", [p["id"] for p in event["passages"]])
    elif event["type"] == "token":
        print(event["text"], end="", flush=True)
'''),
    ("md", "Self-consistency: several sampled rationales, answers by majority vote."),
    ("code", '''\
voted = pipe.ask(item.question, list(item.options), samples=SAMPLES, max_new_tokens=MAX_NEW_TOKENS)
print("votes:", voted["votes"], "-> answer", voted["letter"], f"(gold {item.answer_letter})")
pipe.close()
'''),
]

NOTEBOOKS["02_data_and_kb"] = [
    ("md", """\
# 02 · Data and knowledge base

Task records, the knowledge base (BM25 + dense + hybrid), and how often first-stage retrieval finds the passage a
question needs. With the OpenBookQA data beside the repo (`../shared/data/obqa`) the knowledge base is the open
book (1,326 facts) and the gold passage is each dev question's `fact1`; without it, the embedded demo data, whose
questions name their gold passages.

""" + MODE_LINE + "*"),
    ("code", PARAMS_COMMON + '''\
MAX_QUESTIONS = 100 if FAST else None  # dev questions scored for recall (None = all)
KS = (1, 3, 5, 20)
'''),
    ("code", '''\
import pandas as pd

from kardlite import load_task
from kardlite.demo import demo_passages, demo_questions
from kardlite.kb import KnowledgeBase, read_passages
'''),
    ("md", """\
## Task records

Every loader returns `QAItem`s: id, question, options, label (0-based) and whatever else the source carried in
`meta`. `linearize()` is the question as prompts and retrievers see it: the stem, then `A. ...`, `B. ...`."""),
    ("code", '''\
if (SHARED / "Main").is_dir():
    task = "OpenBookQA dev"
    items = load_task(SHARED / "Additional" / "dev_complete.jsonl")[:MAX_QUESTIONS]
    passages = read_passages(SHARED / "Main" / "openbook.txt")
    # fact1 is the book's line without its quotes: match on normalised text.
    by_text = {p.text.strip().strip('"').lower().rstrip(". "): p.id for p in passages}
    gold = [{by_text.get(it.meta["fact1"].strip().strip('"').lower().rstrip(". "))} for it in items]
else:
    task = "kardlite demo (test split)"
    items = demo_questions("test")[:MAX_QUESTIONS]
    passages = demo_passages()
    gold = [set(it.meta["passage_ids"]) for it in items]
print(f"{task}: {len(items)} questions, {len(passages)} passages, gold found for "
      f"{sum(None not in g for g in gold)} questions")
print(items[0].linearize(), "\\n-> gold answer", items[0].answer_letter)
'''),
    ("md", """\
## Build the knowledge base

One folder: passages in SQLite, a BM25 index (k1 0.9, b 0.4 as in Lucene), an int8 ONNX MiniLM encoder and an
HNSW index over its embeddings. `KnowledgeBase.load(path)` opens it again in well under a second."""),
    ("code", '''\
kb = KnowledgeBase.build(passages, WORK / "02_data_and_kb" / "kb", progress=False)
print(kb)
pd.Series(kb.manifest["build"]["seconds"], name="seconds").round(2)
'''),
    ("code", '''\
query = items[0].linearize()
pd.DataFrame([{"retriever": r, "rank": h["rank"], "id": h["id"], "score": round(h["score"], 4),
               "gold": h["id"] in gold[0], "text": h["text"][:90]}
              for r in ("bm25", "dense", "hybrid") for h in kb.search(query, k=3, retriever=r)])
'''),
    ("md", """\
## Retrieval recall

Recall@k: the share of questions whose gold passage is among the first k hits, with the linearised question as
the query (what KARD's first stage does at test time, before the reranker)."""),
    ("code", '''\
queries = [it.linearize() for it in items]
recall = {}
for retriever in ("bm25", "dense", "hybrid"):
    hits = kb.search_many(queries, k=max(KS), retriever=retriever)
    recall[retriever] = {f"R@{k}": sum(bool(g & {h["id"] for h in hs[:k]}) for g, hs in zip(gold, hits)) / len(gold)
                         for k in KS}
recall = pd.DataFrame(recall).T.round(3)
recall
'''),
    ("code", '''\
ax = recall.T.plot(kind="bar", rot=0, ylim=(0, 1), figsize=(7, 3.5), title=f"first-stage recall, {task}")
ax.set_ylabel("recall");
'''),
]

NOTEBOOKS["03_teacher"] = [
    ("md", """\
# 03 · Teacher rationales and filtering

KARD starts with a large teacher writing step-by-step rationales for the training questions, shown the question,
the options **and the gold answer**. Here: (1) a real local teacher, a GGUF served by llama.cpp's
OpenAI-compatible server (`kardlite.teacher._server`, which applies the AMX crash fix) and called through the
`openai` backend, exactly as a remote API or vLLM would be; (2) the rationales released with the KARD paper,
imported as if a teacher had just written them; (3) the filters that keep only rationales supporting the gold
answer, and their keep rates.

The local teacher here is the packaged 135M SmolLM2, which is far too small to be a good teacher: the point is
the plumbing. Point `base_url`/`model` at a real endpoint for real rationales.

""" + MODE_LINE + "*"),
    ("code", PARAMS_COMMON + '''\
N_QUESTIONS = 3 if FAST else 12         # questions sent to the local teacher
SAMPLES = 1 if FAST else 2              # rationales per question (the paper: 10-20 from gpt-3.5-turbo)
MAX_TOKENS = 48 if FAST else 160
RELEASE_SAMPLES = 2 if FAST else 20     # rationales per question imported from the KARD release
OUT = WORK / "03_teacher"
'''),
    ("code", '''\
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import matplotlib.pyplot as plt
import pandas as pd

from kardlite import load_task
from kardlite.demo import demo_questions
from kardlite.rationales.filter import filter_rationales
from kardlite.rationales.store import read_store
from kardlite.teacher import get_teacher
'''),
    ("md", """\
## 1. A local teacher behind an OpenAI-compatible server

Start the server on 127.0.0.1 and a free port, wait until it answers, then use the ordinary `openai` backend.
Samples go to an append-only store: re-running skips what is already there."""),
    ("code", '''\
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "kardlite.teacher._server", "--port", str(port),
                           "--model_alias", "smollm2", "--n_ctx", "2048", "--n_threads", "2"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base_url = f"http://127.0.0.1:{port}/v1"
for _ in range(240):
    try:
        urllib.request.urlopen(f"{base_url}/models", timeout=2).read()
        break
    except OSError:
        assert server.poll() is None, "the teacher server exited"
        time.sleep(0.5)
print("teacher server up at", base_url)
'''),
    ("code", '''\
items = demo_questions("train")[:N_QUESTIONS]
OUT.mkdir(parents=True, exist_ok=True)
local_store = OUT / "local.store.jsonl"
teacher = get_teacher("openai", model="smollm2", base_url=base_url, api_key="local", temperature=1.0,
                      max_tokens=MAX_TOKENS, seed=0, concurrency=1)
try:
    print(teacher.generate(items, SAMPLES, store=local_store, prompt="medical", progress=False).line())
finally:
    server.terminate()
    server.wait(timeout=30)
sample = read_store(local_store).samples[0]
print(items[0].linearize(), "\\n-> gold", items[0].answer_letter, "\\n\\nteacher:", sample["text"])
'''),
    ("md", """\
## 2. The KARD release as a teacher

With the OpenBookQA data present: the paper's gpt-3.5-turbo rationales for all 4,957 train questions (20 each).
Without it: the demo's hand-written train rationales, written to the same compact format first. Either way the
import checks that rationales and questions line up, and writes the same kind of store as a live teacher."""),
    ("code", '''\
if (SHARED / "Main").is_dir():
    release_items = load_task(SHARED / "Main" / "train.jsonl")
    source = SHARED / "kard_teacher" / "train_rationales.jsonl.gz"
else:
    import json
    release_items = demo_questions("train")
    source = OUT / "demo_release.jsonl"
    source.write_text("".join(json.dumps({"id": it.id, "teacher_model": "hand-written",
                                          "rationales": it.meta["rationales"]}) + "\\n" for it in release_items))
release_store = OUT / "release.store.jsonl"
print(get_teacher("import", source=source).generate(release_items, RELEASE_SAMPLES, store=release_store,
                                                     progress=False).line())
'''),
    ("md", """\
## 3. Filtering

`degenerate` drops empty, too short, refusing or "same as above" texts; `stated` drops rationales that state
another final answer than the gold one; `judge` (a small LM reads the rationale and picks a letter) keeps only
those whose letter is the gold one. The judge runs on the local teacher's few samples; on the release, only the
two cheap filters run here (the judge over 99k rationales is a benchmark job)."""),
    ("code", '''\
local = filter_rationales(local_store, items, OUT / "local.filtered", judge="smollm2", progress=False)
release = filter_rationales(release_store, release_items, OUT / "release.filtered", judge=None,
                            filters=("degenerate", "stated"), progress=False)
rates = pd.DataFrame({name: {f: t["keep_rate"] for f, t in stats["filters"].items()} | {"overall": stats["keep_rate"]}
                      for name, stats in (("local teacher", local), ("KARD release", release))}).T
rates
'''),
    ("code", '''\
dropped = pd.read_json(OUT / "release.filtered" / "dropped.jsonl", lines=True)
# (the demo's hand-written rationales may all pass: an empty file still gives the columns)
dropped = dropped.reindex(columns=["item_id", "filter", "reason", "text"])
dropped.groupby("filter").head(2)
'''),
    ("code", '''\
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
rates.T.plot(kind="bar", rot=0, ylim=(0, 1), ax=axes[0], title="keep rate per filter")
per_q = pd.Series(release["kept_per_question_histogram"]).rename(int).sort_index()
per_q.plot(kind="bar", ax=axes[1], rot=0, title="KARD release: kept rationales per question")
axes[1].set_xlabel("kept rationales"); axes[1].set_ylabel("questions")
plt.tight_layout()
'''),
    ("code", '''\
if not FAST:  # keep the full run's stores for notebook 04; CI's tiny ones are scratch
    print("stores kept in", OUT)
else:
    shutil.rmtree(OUT)
'''),
]

NOTEBOOKS["04_student"] = [
    ("md", """\
# 04 · Students: fine-tuning vs reasoning distillation vs KARD

Three students of the same base (SmolLM2-135M-Instruct, LoRA) on the same questions, as in the paper:

| student | learns to write | from |
|---|---|---|
| **FT** (fine-tuning) | the answer letter | the question |
| **RD** (reasoning distillation) | the teacher's rationale, then the answer | the question |
| **KARD** | the teacher's rationale, then the answer | the question **plus passages retrieved with the rationale** |

At test time KARD's student gets passages retrieved with the question (notebook 05 adds the reranker). Data: the
demo's train questions and their two hand-written, teacher-style rationales each; test: the demo test split.
On a CPU this is a tiny slice with a few dozen steps, so the numbers show the pipeline, not the paper's gaps.

""" + MODE_LINE + "*"),
    ("code", PARAMS_COMMON + '''\
N_TRAIN = 8 if FAST else 108           # training questions (2 rationales each)
MAX_STEPS = 1 if FAST else 40          # optimiser steps per student
BATCH = 2 if FAST else 4
N_TEST = 2 if FAST else 27             # demo test questions evaluated (greedy)
MAX_NEW_TOKENS = 32 if FAST else 160
N_DOCS = 2                             # passages shown to the KARD student
OUT = WORK / "04_student"
'''),
    ("code", '''\
import matplotlib.pyplot as plt
import pandas as pd

from kardlite.demo import demo_passages, demo_questions
from kardlite.distill import StudentTrainConfig, build_examples, save_examples, train_student
from kardlite.distill.evaluate import EvalConfig, evaluate, write_report
from kardlite.kb import KnowledgeBase
'''),
    ("code", '''\
train = demo_questions("train")[:N_TRAIN]
test = demo_questions("test")[:N_TEST]
rationales = {it.id: list(enumerate(it.meta["rationales"])) for it in train}  # item id -> [(index, text)]
kb = KnowledgeBase.build(demo_passages(), OUT / "kb", progress=False)
examples = {}
for mode in ("ft", "rd", "kard"):
    rows = build_examples(train, rationales, mode, kb=kb if mode == "kard" else None, k=N_DOCS)
    examples[mode] = save_examples(rows, OUT / f"{mode}.jsonl")
    print(f"{mode}: {len(rows)} examples")
row = [r for r in build_examples(train[:1], rationales, "kard", kb=kb, k=N_DOCS)][0]
print("\\nKARD example: rationale ->", row["rationale"][:120], "...\\npassages retrieved with it:",
      [p["id"] for p in row["passages"]])
'''),
    ("md", """\
## Train

`train_student` is one readable loop (AdamW, constant lr, loss on the target tokens only, a checkpoint every few
steps); re-running with the same folder resumes, and a finished run is not trained again."""),
    ("code", '''\
cfg = dict(max_steps=MAX_STEPS, batch_size=BATCH, lr=3e-4, max_source_tokens=384, max_target_tokens=160,
           dev_fraction=0.0, save_every=MAX_STEPS)
models = {mode: train_student(examples[mode], OUT / mode, StudentTrainConfig(**cfg)) for mode in examples}
curves = pd.concat({mode: pd.read_json(OUT / mode / "loss_curve.json") for mode in models}, names=["student"])
ax = curves.reset_index("student").pivot(index="step", columns="student", values="train_loss").plot(
    figsize=(7, 3.5), title="training loss (target tokens)", marker="o")
ax.set_ylabel("cross-entropy");
'''),
    ("md", "## Evaluate on the demo test questions (greedy decoding; KARD retrieves with the question, hybrid)"),
    ("code", '''\
runs = []
for mode, model in models.items():
    ecfg = EvalConfig(max_new_tokens=MAX_NEW_TOKENS, retriever="hybrid", n_docs=N_DOCS, name=f"{mode} student")
    evaluate(model, test, OUT / f"eval-{mode}", ecfg, kb=kb if mode == "kard" else None)
    runs.append(OUT / f"eval-{mode}")
report = write_report(runs, OUT / "report.md")
pd.read_csv(report.with_suffix(".csv"))
'''),
    ("code", '''\
pred = pd.read_json(OUT / "eval-kard" / "predictions.jsonl", lines=True)
print(pred.iloc[0].to_dict())
'''),
]

NOTEBOOKS["05_reranker"] = [
    ("md", r"""# 05 · The reranker

At test time there is no rationale to search with, so KARD trains a reranker that scores a passage **from the
question alone** the way BM25 would score it **against the rationale**. For one training query (a question with
one of its rationales) with candidates $d_1..d_n$ (4 from BM25 on the rationale, 4 from BM25 on the question),
the labels are $s_i = \mathrm{BM25}(\text{rationale}, d_i)$ and the reranker $f(q, d_i)$ is trained with

$$\mathcal{L} = \mathrm{KL}\big(\mathrm{softmax}(s/\tau_1)\ \|\ \mathrm{softmax}(f/\tau_2)\big)$$

(the paper's objective; `objective="ce"` gives the reference code's cross-entropy to the best candidate).
Metrics on **question-disjoint** dev queries: does the rationale's best passage rank first (top-1) or in the top 3
among the candidates, NDCG with the labels as gains, and the KL itself.

""" + MODE_LINE + "*"),
    ("code", PARAMS_COMMON + '''\
EPOCHS = 1 if FAST else 3
NUM_LAYERS = 1 if FAST else 3        # MiniLM layers kept (of 6): fewer = faster reranking on a CPU
MAX_TRAIN_QUERIES = 24 if FAST else 0  # 0 = all
OUT = WORK / "05_reranker"
'''),
    ("code", '''\
import matplotlib.pyplot as plt
import pandas as pd

from kardlite.demo import demo_passages, demo_questions
from kardlite.kb import KnowledgeBase
from kardlite.rerank import RerankRetriever, Reranker
from kardlite.rerank.data import CandidateConfig, build_queries, split_by_item
from kardlite.rerank.train import RerankTrainConfig, evaluate_queries, train_reranker
'''),
    ("code", '''\
items = demo_questions("train")
kb = KnowledgeBase.build(demo_passages(), OUT / "kb", progress=False)
rationales = [(it.id, i, text) for it in items for i, text in enumerate(it.meta["rationales"])]
queries = build_queries(kb, items, rationales, CandidateConfig(pool=32, from_rationale=4, from_question=4),
                        progress=False)
train, dev = split_by_item(queries, dev_fraction=0.2)
q = dev[0]
print(f"{len(train)} train / {len(dev)} dev queries; one of them:\\n", q.query[:200], "...")
pd.DataFrame({"candidate": q.ids, "from": q.origin, "label = BM25(rationale, d)": q.labels}).round(2)
'''),
    ("md", "## Before training: the untrained cross-encoder (fresh 1-logit head) on the dev queries"),
    ("code", '''\
cfg = RerankTrainConfig(objective="kl", epochs=EPOCHS, num_layers=NUM_LAYERS, lr=1e-4, queries_per_batch=8,
                        max_train_queries=MAX_TRAIN_QUERIES)
before = evaluate_queries(Reranker.from_pretrained(num_layers=NUM_LAYERS), dev)
before
'''),
    ("code", '''\
model_dir = train_reranker((train, dev), OUT / "reranker", cfg, progress=False)
after = evaluate_queries(Reranker.load(model_dir), dev)
metrics = pd.DataFrame({"before": before, "after": after}).drop("n").round(3)
metrics
'''),
    ("code", '''\
log = pd.read_json(model_dir / "train_log.jsonl", lines=True)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
metrics.loc[["top1", "top3", "ndcg"]].plot(kind="bar", rot=0, ylim=(0, 1), ax=axes[0], title="dev ranking metrics")
log[log.event == "step"].plot(x="step", y="loss", ax=axes[1], title="training loss (KL)", legend=False)
plt.tight_layout()
'''),
    ("md", "## In the pipeline: first stage (hybrid, 50 candidates) → reranker → the passages the student sees"),
    ("code", '''\
test_item = demo_questions("test")[0]
retriever = RerankRetriever(kb, Reranker.load(model_dir), first_stage="hybrid", pool=50)
print(test_item.linearize(), "\\ngold passages:", test_item.meta["passage_ids"])
pd.DataFrame([{"rank": h["rank"], "id": h["id"], "rerank": round(h["scores"]["rerank"], 3),
               "bm25": round(h["scores"].get("bm25", 0.0), 2), "dense": round(h["scores"].get("dense", 0.0), 3),
               "text": h["text"][:80]} for h in retriever(test_item, n_docs=3)])
'''),
]


NOTEBOOKS["06_export"] = [
    ("md", """\
# 06 · Export: the bundle, its size and its latency on a CPU

`export_bundle` gathers a trained system into one folder: the merged student converted to GGUF and quantised
(checked against the PyTorch model), the knowledge base as built, the reranker as int8 ONNX, and a manifest
listing every file with its sha256. `kardlite.runtime.load` checks those sums and needs no torch. Here: what is in
the demo bundle, how big each part is, and where the time of one answer goes. In full mode the student is also
exported at other quantisations to compare size and speed.

""" + MODE_LINE + "*"),
    ("code", PARAMS_COMMON + PARAMS_BUNDLE + '''\
N_QUESTIONS = 3 if FAST else 12         # demo test questions timed per bundle
QUANTS = ("Q8_0", "Q4_0")               # other quantisations to compare (full mode: needs the trained student)
OUT = WORK / "06_export"
'''),
    ("code", '''\
import time

import matplotlib.pyplot as plt
import pandas as pd

from kardlite.demo import demo_questions
from kardlite.demo.build import build_demo_bundle
from kardlite.export.bundle import export_bundle, read_manifest
from kardlite.runtime import load

bundle = build_demo_bundle(BUNDLE, fast=FAST)
manifest = read_manifest(bundle)
{k: manifest[k] for k in ("name", "prompt", "retrieval", "decoding")} | {"student": {
    k: manifest["student"][k] for k in ("quant", "parameters", "architecture", "layers")}}
'''),
    ("code", '''\
files = pd.DataFrame([{"part": rel.split("/")[0], "file": rel, "MB": f["bytes"] / 1e6}
                      for rel, f in manifest["files"].items()])
sizes = files.groupby("part")["MB"].sum().round(2).sort_values(ascending=False)
sizes.plot(kind="barh", figsize=(6, 2.5), title=f"bundle size by part: {sizes.sum():.0f} MB")
sizes.to_frame()
'''),
    ("md", "## Where the time goes (greedy, one sample, the bundle's settings)"),
    ("code", '''\
def time_bundle(path):  # load once, then ask the first N demo test questions
    started = time.perf_counter()
    pipe = load(path)
    loaded = time.perf_counter() - started
    rows = []
    for item in demo_questions("test")[:N_QUESTIONS]:
        a = pipe.ask(item.question, list(item.options))
        rows.append({**a["timings"], "prompt tokens": a["tokens"]["prompt"], "new tokens": a["tokens"]["generated"],
                     "decode tok/s": a["tokens"]["decode_per_s"], "correct": a["letter"] == item.answer_letter})
    pipe.close()
    return loaded, pd.DataFrame(rows)

load_s, timings = time_bundle(bundle)
print(f"load {load_s:.2f} s (with sha256 checks); accuracy on {len(timings)} questions: {timings.correct.mean():.2f}")
timings.round(3)
'''),
    ("code", '''\
stages = ["retrieve", "rerank", "prompt", "prefill", "generate"]
ax = (timings[stages].mean() * 1000).plot(kind="barh", figsize=(6, 2.5), title="mean ms per stage of one answer")
ax.set_xscale("log"); ax.set_xlabel("ms (log scale)");
'''),
    ("md", "## Other quantisations of the same student (full mode)"),
    ("code", '''\
source = manifest["student"]["source"]
if "folder" not in source:
    print("this bundle's student is a ready GGUF (fast mode): no trained student folder to re-export")
else:
    rows = [{"quant": manifest["student"]["quant"], "MB": manifest["files"]["student.gguf"]["bytes"] / 1e6,
             "s/answer": timings.total.mean(), "accuracy": timings.correct.mean()}]
    for quant in QUANTS:
        path = export_bundle(source["folder"], bundle / "kb", OUT, name=f"demo-{quant}", quant=quant,
                             reranker_dir=bundle / "reranker" if manifest["retrieval"]["reranker"] else None,
                             max_tokens=manifest["prompt"]["max_tokens"], n_docs=manifest["retrieval"]["n_docs"])
        _, t = time_bundle(path)
        rows.append({"quant": quant, "MB": (path / "student.gguf").stat().st_size / 1e6, "s/answer": t.total.mean(),
                     "accuracy": t.correct.mean()})
    quants = pd.DataFrame(rows).set_index("quant").round(3)
    quants.plot(kind="bar", subplots=True, layout=(1, 3), figsize=(10, 3), legend=False, rot=0)
    display(quants)
'''),
]

# ------------------------------------------------------------------------------------------------------ machinery
def _notebook(cells: list[tuple[str, str]]):  # -> nbformat.NotebookNode
    import nbformat.v4 as v4

    nb = v4.new_notebook()
    nb.cells = [v4.new_markdown_cell(src) if kind == "md" else v4.new_code_cell(src) for kind, src in cells]
    return strip(nb)


def strip(nb):  # -> nbformat.NotebookNode
    """Drop cell metadata, ids and widget state; keep outputs and the kernel name only."""
    nb.metadata = {"kernelspec": dict(KERNEL), "language_info": {"name": "python"}}
    for i, cell in enumerate(nb.cells):
        cell.metadata = {}
        cell.id = f"c{i:02d}"  # stable ids: no random churn in diffs
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") in ("display_data", "execute_result"):
                out.metadata = {}
            # One output per stream, as Jupyter shows it (streamed tokens would otherwise be one output each).
            if out.get("output_type") == "stream" and outputs and outputs[-1].get("output_type") == "stream" \
                    and outputs[-1].name == out.name:
                outputs[-1].text += out.text
            else:
                outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
    return nb


def execute(path: Path, *, timeout: int = 900):  # -> nbformat.NotebookNode
    """Run a notebook top to bottom in a fresh kernel (this interpreter's, i.e. the venv's) from its folder.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the message shows the cell and the traceback).
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(path.parent)}},
                   allow_errors=False).execute()
    return nb


def main(argv: list[str]) -> None:
    import nbformat

    cmd, names = (argv[0] if argv else "write"), argv[1:] or sorted(NOTEBOOKS)
    for name in names:
        path = HERE / f"{name}.ipynb"
        if cmd == "write":
            nbformat.write(_notebook(NOTEBOOKS[name]), path)
        elif cmd == "strip":
            nbformat.write(strip(nbformat.read(path, as_version=4)), path)
        elif cmd == "run":
            mode = "fast" if os.environ.get("KARDLITE_FAST") == "1" else "full"
            nbformat.write(_notebook(NOTEBOOKS[name]), path)
            started = time.perf_counter()
            nb = execute(path)
            seconds = time.perf_counter() - started
            intro = nb.cells[0]
            intro.source = intro.source[: intro.source.rindex(MODE_LINE)] + (
                f"{MODE_LINE}a {mode}-mode run (`KARDLITE_FAST={int(mode == 'fast')}`) on a 2-core CPU, "
                f"{seconds / 60:.1f} min; regenerate with `notebooks/_make.py run {name}`.*")
            nbformat.write(strip(nb), path)
            print(f"{name}: {mode} mode, {seconds:.0f} s", flush=True)
        else:
            raise SystemExit(f"unknown command {cmd!r}: write, run or strip")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are noise in committed outputs
    main(sys.argv[1:])
