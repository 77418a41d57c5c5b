"""Train and evaluate OpenBookQA rerankers on a lent GPU: ``pack`` here (CPU), ``run`` there.

The GPU machine has torch and transformers but no hnswlib, bm25s, onnxruntime or llama.cpp, no internet and only
what travels with the repository. So ``pack`` does every step that needs the knowledge base here, and writes
plain files (JSON, gzipped JSONL, safetensors; no pickles) that ``run`` reads with the library's torch code only.

  pack  --out gpu_pack   (here, with the project venv; about 50 MB)
        base/      the packaged all-MiniLM-L6-v2 (``kardlite.rerank.model.default_base_model()``): config.json,
                   tokenizer files, and model.safetensors converted to float16 (the fp32 file is 87 MB, too big
                   to carry). ``run`` converts it back to float32 before training, so **the GPU runs start from
                   the fp16-rounded weights (loaded as fp32)**, not bit-for-bit from the CPU runs' base
                   (relative rounding error <= 2^-11 per weight).
        data/c8/   the reranker data of the CPU runs, runs/rerank-obqa/reranker.data/{train,dev}.jsonl (gzipped,
                   content unchanged; sha256 of the plain files in manifest.json): per (question, kept
                   rationale) 4 candidates from BM25(rationale) top-32 + 4 from BM25(question) top-32, labels =
                   BM25(rationale, candidate); question-disjoint split (seed 42, 10% of questions as dev).
        data/c32/  the same queries with 16 + 16 candidates from the same two top-32 lists, built here with
                   ``kardlite.rerank.data.build_queries`` from the same kept rationales
                   (runs/rerank-obqa/kept_rationales.jsonl), questions (Main/train.jsonl) and KB
                   (runs/rerank-obqa/kb); same item-id split. ``pack`` first rebuilds c8 the same way and checks
                   that it equals the CPU runs' files, so both variants come from one recipe.
        data/c32d/ c32's queries and candidates with dense-rationale labels (DENSE_FROM below; an experiment
                   outside KARD's BM25 labels).
        eval/questions.jsonl.gz  the 500 OBQA dev questions (Additional/dev_complete.jsonl: Main/dev.jsonl plus
                   ``fact1``), one line each: ``id``, ``query`` (the linearised question), ``fact1_id`` (the KB
                   passage whose text is ``fact1``, matched as bench/rerank_obqa.py ``evaluate`` does) and
                   ``pools``: ``hybrid`` and ``bm25`` top-20 first-stage lists of {"id", "text"}, ``text`` being
                   exactly what the reranker scores for that hit (``Passage.contents``).
        manifest.json  sizes and sha256 of every file, settings, versions, BM25(question) on the dev
                   candidates, and the first-stage recall computed here (the same numbers as the CPU runs'
                   eval-*-pool20.json).

  run   --pack gpu_pack --out DIR [--configs a,b] [--smoke] [--stop-after SECONDS]
        imports only torch, transformers, safetensors, numpy, tqdm and kardlite's reranker modules. For each named
        config of GRID below: ``train_reranker(..., RerankTrainConfig(device=...))`` from the pack's base (model
        folders under /tmp, never in DIR), then on the same device: candidate top-1/top-3 on the c8 and c32 dev
        queries (the c8 numbers compare across configs; training's own dev history is also kept), and fact1
        R@1/3/5 after reranking the hybrid and the BM25 pool of 20 (stable sort by score, as ``Reranker.rank``).
        The first stages alone (pool order) are reported too. After each config DIR/results.json is rewritten
        atomically and one markdown table row is printed, so a run cut short keeps what it finished.
        ``--smoke``: 8 training queries (2 steps of 4), 1 epoch, 8 dev queries, the first 20 dev questions (a test
        of the script, not a result). ``--stop-after``: do not start a new config after that many seconds.

Device command (repository root, gpu_pack carried):
    PYTHONUNBUFFERED=1 python3 bench/rerank_gpu.py run --pack gpu_pack --out "$OUT"
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUNS = ROOT / "runs" / "rerank-obqa"
KS = (1, 3, 5)
POOL = 20
from kardlite._io import atomic_write_json, sha256_file, sha256_text  # noqa: E402  (after the sys.path line)

FORBIDDEN = ("hnswlib", "bm25s", "llama_cpp", "onnxruntime")  # absent on the GPU machine

# The CPU runs' settings (runs/rerank-obqa/reranker-full and reranker-li, reranker.json "training"), shared by
# every config; each config below changes only what its name says.
COMMON: dict[str, Any] = {"objective": "kl", "tau1": 2.0, "tau2": 1.0, "lr": 2e-4, "weight_decay": 0.01,
                          "warmup": 0.05, "queries_per_batch": 8, "max_length": 128, "grad_clip": 1.0, "seed": 42,
                          "eval_batch_size": 256}
CE: dict[str, Any] = {"kind": "cross-encoder", "head_lr_mult": 20.0}
LI: dict[str, Any] = {"kind": "late-interaction", "dim": 128, "head_lr_mult": 10.0}
# name -> (candidate variant, training settings). num_layers None = all 6 layers of all-MiniLM-L6-v2.
GRID: dict[str, tuple[str, dict[str, Any]]] = {
    # replication of the CPU cross-encoder (reranker-full: 3 layers, 2 epochs, 442 steps)
    "ce-L3-c8": ("c8", {**CE, "num_layers": 3, "epochs": 2}),
    "ce-L6-c8": ("c8", {**CE, "num_layers": None, "epochs": 4}),
    "ce-L6-c32": ("c32", {**CE, "num_layers": None, "epochs": 4}),
    # the CPU late-interaction run (reranker-li) had 3 layers and 2 epochs; these use all 6 and 4
    "li-L6-c8": ("c8", {**LI, "num_layers": None, "epochs": 4}),
    "li-L6-c32": ("c32", {**LI, "num_layers": None, "epochs": 4}),
    # extras, run only when named in --configs
    "li-L3-c8": ("c8", {**LI, "num_layers": 3, "epochs": 2}),
    "ce-L6-c32-e8": ("c32", {**CE, "num_layers": None, "epochs": 8}),
    "li-L6-c32-e8": ("c32", {**LI, "num_layers": None, "epochs": 8}),
    # dense-rationale labels (DENSE_FROM), extras
    "li-L6-c32d": ("c32d", {**LI, "num_layers": None, "epochs": 4}),
    "ce-L6-c32d": ("c32d", {**CE, "num_layers": None, "epochs": 4}),
}
DEFAULT_CONFIGS = ("ce-L3-c8", "ce-L6-c8", "ce-L6-c32", "li-L6-c8", "li-L6-c32")
VARIANTS = {"c8": {"pool": 32, "from_rationale": 4, "from_question": 4},
            "c32": {"pool": 32, "from_rationale": 16, "from_question": 16}}
# label variants: the same queries and candidates as the named variant, labels = scale * cos(dense(rationale),
# dense(passage)) from the KB's own encoder instead of BM25(rationale) (bench/rerank_obqa.py ceiling: the rationale
# finds fact1 more often through the dense retriever). The scale is set in pack so that softmax(labels / tau1)
# gives the best candidate the same mean probability as the BM25 labels do: only the ranking source changes.
DENSE_FROM = {"c32d": "c32"}
ALL_VARIANTS = (*VARIANTS, *DENSE_FROM)
SPLIT = {"seed": 42, "dev_fraction": 0.1}  # the CLI's defaults, used for runs/rerank-obqa/reranker.data


def say(msg: str) -> None:
    print(msg, flush=True)


def _write_split(folder: Path, split: str, text: str, info: dict[str, Any]) -> None:
    """One split of a data variant: gzipped JSONL, and the sha256 of the plain text in the variant's info."""
    _write_gz(folder / f"{split}.jsonl.gz", text.encode("utf-8"))
    info[f"{split}_plain_sha256"] = sha256_text(text)


def _jsonl(queries: list) -> str:
    return "".join(json.dumps(q.to_dict(), ensure_ascii=False) + "\n" for q in queries)


def _write_gz(path: Path, data: bytes) -> None:
    # mtime=0: the same content gives the same bytes, so the manifest's hashes are reproducible
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)


# ----------------------------------------------------------------------------------------------- pack (here)

def pack(args: argparse.Namespace) -> None:
    import numpy as np
    from rerank_obqa import OBQA, _norm, _recall, bm25_question_baseline
    from safetensors.numpy import load_file, save_file

    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank.data import CandidateConfig, build_queries, read_rationales, split_by_item
    from kardlite.rerank.model import default_base_model

    started = time.time()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "base").mkdir(parents=True)
    manifest: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "kb": str(args.kb),
                                "rationales": str(args.kept), "questions": str(OBQA / "Main" / "train.jsonl")}

    # (a) base model: fp16 weights, original config and tokenizer
    src = Path(default_base_model())
    tensors = load_file(str(src / "model.safetensors"))
    half, worst = {}, 0.0
    for name, t in tensors.items():
        if t.dtype == np.float32:
            h = t.astype(np.float16)
            if not np.isfinite(h).all():
                raise SystemExit(f"{name} overflows float16")
            worst = max(worst, float(np.max(np.abs(h.astype(np.float32) - t) / np.maximum(np.abs(t), 1e-3))))
            half[name] = h
        else:
            half[name] = t  # embeddings.position_ids (int64)
    save_file(half, str(out / "base" / "model.safetensors"), metadata={"format": "pt"})
    base_files = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
    for name in base_files:
        shutil.copyfile(src / name, out / "base" / name)
    manifest["base"] = {"source": str(src), "source_sha256": sha256_file(src / "model.safetensors"),
                        "stored_as": "float16 (run converts back to float32)",
                        "max_relative_rounding_error": worst}
    say(f"base: {src} -> fp16 ({(out / 'base' / 'model.safetensors').stat().st_size / 1e6:.1f} MB)")

    # (b) reranker data: rebuild c8 with the CLI's recipe, check it against the CPU runs' files, then c32
    kb = KnowledgeBase.load(args.kb)
    items = load_task(OBQA / "Main" / "train.jsonl")
    rationales = read_rationales(args.kept)
    manifest["data"] = {}
    built: dict[str, tuple[list, list]] = {}
    for variant, cand in VARIANTS.items():
        t = time.time()
        queries = build_queries(kb, items, rationales, CandidateConfig(**cand, seed=SPLIT["seed"],
                                                                       dev_fraction=SPLIT["dev_fraction"]),
                                progress=False)
        train, dev = split_by_item(queries, SPLIT["dev_fraction"], SPLIT["seed"])
        built[variant] = (train, dev)
        folder = out / "data" / variant
        folder.mkdir(parents=True)
        info: dict[str, Any] = {"candidates": cand, "split": SPLIT, "n_train": len(train), "n_dev": len(dev),
                                "n_dev_items": len({q.item_id for q in dev}),
                                "candidates_per_query": sorted({len(q.ids) for q in queries})}
        for split, qs in (("train", train), ("dev", dev)):
            text = _jsonl(qs)
            if variant == "c8":
                cpu = args.data / f"{split}.jsonl"
                same = cpu.read_text(encoding="utf-8") == text
                if not same and not args.allow_mismatch:
                    raise SystemExit(f"rebuilt c8 {split} differs from {cpu}: the recipe does not match; "
                                     "--allow-mismatch packs the CPU file anyway")
                info[f"{split}_equals_cpu_runs_file"] = same
                text = cpu.read_text(encoding="utf-8")  # the CPU runs' exact file in any case
            _write_split(folder, split, text, info)
        info["dev_bm25_question"] = base = bm25_question_baseline(kb, dev)
        manifest["data"][variant] = info
        say(f"data {variant}: {len(train)} train / {len(dev)} dev queries, candidates {info['candidates_per_query']},"
            f" dev BM25(question) top1 {base['top1']:.3f} top3 {base['top3']:.3f} ({time.time() - t:.0f}s)")

    for variant, source in DENSE_FROM.items():
        t = time.time()
        train, dev = built[source]
        text_of = {(str(i), int(k)): r for i, k, r in rationales}
        # passages re-encoded here, as for the GPU runs' pack (the KB's stored vectors, which
        # KnowledgeBase.dense_scores and labels="dense" use, differ slightly: int8 activations are scaled per batch)
        encoder = kb._encoder
        passages = sorted({x for q in train + dev for x in q.texts})
        rats = sorted({text_of[(q.item_id, q.rationale_index)] for q in train + dev})
        pvec = dict(zip(passages, encoder.encode(passages, batch_size=64), strict=True))
        rvec = dict(zip(rats, encoder.encode(rats, batch_size=64), strict=True))
        cos = {id(q): [float(rvec[text_of[(q.item_id, q.rationale_index)]] @ pvec[x]) for x in q.texts]
               for q in train + dev}

        def best_mass(labels: list[list[float]]) -> float:
            m = [np.exp((np.asarray(v) - max(v)) / COMMON["tau1"]) for v in labels]
            return float(np.mean([x.max() / x.sum() for x in m]))

        target = best_mass([q.labels for q in train])
        lo, hi = 1.0, 1000.0  # mass grows with the scale: bisect in log space
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if best_mass([[mid * c for c in cos[id(q)]] for q in train]) < target else (lo, mid)
        scale = (lo * hi) ** 0.5

        folder = out / "data" / variant
        folder.mkdir(parents=True)
        info = {"from": source, "labels": "scale * cos(dense(rationale), dense(passage)), KB encoder",
                "scale": scale, "best_candidate_mass_tau1": target, "n_train": len(train), "n_dev": len(dev)}
        for split, qs in (("train", train), ("dev", dev)):
            rescaled = [dataclasses.replace(q, labels=[scale * c for c in cos[id(q)]]) for q in qs]
            _write_split(folder, split, _jsonl(rescaled), info)
            if split == "dev":
                info["dev_bm25_question"] = base = bm25_question_baseline(kb, rescaled)
        manifest["data"][variant] = info
        say(f"data {variant}: labels from dense(rationale), scale {scale:.1f} (best-candidate mass {target:.3f}); "
            f"dev BM25(question) top1 {base['top1']:.3f} top3 {base['top3']:.3f} ({time.time() - t:.0f}s)")

    # (c) evaluation pools on the 500 OBQA dev questions (bench/rerank_obqa.py evaluate's gold and pools)
    text_to_id = {_norm(p.text): p.id for p in kb}
    dev_items = load_task(OBQA / "Additional" / "dev_complete.jsonl")
    queries_text = [it.linearize() for it in dev_items]
    pools = {name: kb.search_many(queries_text, POOL, name) for name in ("hybrid", "bm25")}  # type: ignore[arg-type]
    (out / "eval").mkdir()
    rows = []
    for i, it in enumerate(dev_items):
        gold = text_to_id.get(_norm(it.meta.get("fact1", "")))
        rows.append({"id": it.id, "query": queries_text[i], "fact1_id": gold,
                     "pools": {name: [{"id": h["id"], "text": f"{h['title']}. {h['text']}" if h["title"] else h["text"]}
                                      for h in hits[i]] for name, hits in pools.items()}})
    _write_gz(out / "eval" / "questions.jsonl.gz",
              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    manifest["eval"] = {"source": str(OBQA / "Additional" / "dev_complete.jsonl"), "n_questions": len(rows),
                        "n_with_fact1": sum(r["fact1_id"] is not None for r in rows), "pool": POOL,
                        "first_stage": {name: first_stage_recall(rows, name, _recall) for name in pools}}
    say(f"eval: {len(rows)} questions; first stage {json.dumps(manifest['eval']['first_stage'])}")

    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest["files"] = {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}
    total = sum(v["bytes"] for v in manifest["files"].values())
    manifest["total_bytes"] = total
    manifest["versions"] = _versions()
    atomic_write_json(out / "manifest.json", manifest)
    # what travels to the GPU machine (this, the repository and nothing else) must stay under 64 MiB
    say(f"pack {out}: {len(files) + 1} files, {total / 1e6:.1f} MB ({time.time() - started:.0f}s)"
        + (" -- over 60 MB: it may not travel with the repository" if total > 60e6 else ""))


def first_stage_recall(rows: list[dict[str, Any]], pool: str, recall: Any) -> dict[str, float]:
    ranked = [[h["id"] for h in r["pools"][pool]] for r in rows]
    return {k: round(v, 4) for k, v in recall(ranked, [r["fact1_id"] for r in rows], (*KS, POOL)).items()}


def _versions() -> dict[str, str]:
    from kardlite._versions import package_versions

    return package_versions("torch", "transformers", "tokenizers", "safetensors", "numpy", "peft")


# ------------------------------------------------------------------------------------------ run (the GPU machine)

def _unpack_base(pack_dir: Path, work: Path) -> Path:
    """The pack's fp16 base as an fp32 model folder (transformers 5 would otherwise load it as fp16)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    base = work / "base-fp32"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    tensors = load_file(str(pack_dir / "base" / "model.safetensors"))
    save_file({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in tensors.items()},
              str(base / "model.safetensors"), metadata={"format": "pt"})
    for f in (pack_dir / "base").iterdir():
        if f.name != "model.safetensors":
            shutil.copyfile(f, base / f.name)
    return base


class _Ticker:
    """Prints the latest training step from the train log every ``every`` seconds (the run is read via a tail)."""

    def __init__(self, name: str, log_path: Path, total: int, every: float = 15.0) -> None:
        self.name, self.log_path, self.total, self.every = name, log_path, total, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        last = -1
        while not self._stop.wait(self.every):
            try:
                lines = self.log_path.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            steps = [json.loads(x) for x in lines[-20:] if '"event": "step"' in x]
            if steps and steps[-1]["step"] != last:
                s = steps[-1]
                last = s["step"]
                say(f"  [{self.name}] step {s['step'] + 1}/{self.total} epoch {s['epoch']} loss {s['loss']:.4f} "
                    f"({s['elapsed_s']:.0f}s)")


def _rerank_recall(rr: Any, rows: list[dict[str, Any]], pool: str, batch_size: int, recall: Any) -> dict[str, float]:
    """fact1 R@k after reranking each question's pool: all pairs scored in batches, then a stable sort per question."""
    import numpy as np

    pairs = [(r["query"], h["text"]) for r in rows for h in r["pools"][pool]]
    scores = rr.score_pairs(pairs, batch_size=batch_size)
    ranked, pos = [], 0
    for r in rows:
        hits = r["pools"][pool]
        s = scores[pos:pos + len(hits)]
        pos += len(hits)
        ranked.append([hits[j]["id"] for j in np.argsort(-s, kind="stable")])
    return {k: round(v, 4) for k, v in recall(ranked, [r["fact1_id"] for r in rows], KS).items()}


def _cpu_check(rr: Any, model_dir: Path, rows: list[dict[str, Any]], batch_size: int) -> dict[str, float]:
    """The saved folder scored on the CPU vs the device-resident model: the first 10 questions' hybrid pools."""
    import numpy as np

    from kardlite.rerank.model import Reranker

    pairs = [(r["query"], h["text"]) for r in rows[:10] for h in r["pools"]["hybrid"]]
    on_device = rr.score_pairs(pairs, batch_size=batch_size)
    on_cpu = Reranker.load(model_dir).score_pairs(pairs, batch_size=batch_size)
    return {"pairs": len(pairs), "max_abs_diff": float(np.max(np.abs(on_device - on_cpu))),
            "score_spread": float(np.ptp(on_cpu))}


def run(args: argparse.Namespace) -> None:
    if args.work:
        _run(args, Path(args.work))
        return
    # The trained models are 0.5 GB per config: without --work they live only as long as the run.
    with tempfile.TemporaryDirectory(prefix="kardlite-gpu-") as tmp:
        _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> None:
    import torch
    import transformers
    from rerank_obqa import _recall

    from kardlite.rerank.data import load_queries
    from kardlite.rerank.model import Reranker
    from kardlite.rerank.train import RerankTrainConfig, evaluate_queries, resolve_device, train_reranker

    transformers.utils.logging.disable_progress_bar()  # transformers 5 draws one per model load and save
    started = time.time()
    names = [n.strip() for n in args.configs.split(",") if n.strip()] if args.configs else list(DEFAULT_CONFIGS)
    unknown = [n for n in names if n not in GRID]
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; known: {', '.join(GRID)}")
    pack_dir: Path = args.pack
    manifest = json.loads((pack_dir / "manifest.json").read_text(encoding="utf-8"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"
    say(f"device {device} ({device_name}); torch {torch.__version__}; configs {', '.join(names)}; work {work}")

    base = _unpack_base(pack_dir, work)
    data = {v: (load_queries(pack_dir / "data" / v / "train.jsonl.gz"),
                load_queries(pack_dir / "data" / v / "dev.jsonl.gz")) for v in ALL_VARIANTS
            if (pack_dir / "data" / v).is_dir()}
    with gzip.open(pack_dir / "eval" / "questions.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(x) for x in fh if x.strip()]
    if args.smoke:
        data = {v: (tr[:8], dv[:8]) for v, (tr, dv) in data.items()}
        rows = rows[:20]
    results: dict[str, Any] = {
        "device": device, "device_name": device_name, "versions": _versions(), "smoke": args.smoke,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "pack": {"created": manifest.get("created"), "total_bytes": manifest.get("total_bytes"),
                 "base": manifest.get("base")},
        "settings": {"common": COMMON, "grid": {n: {"data": GRID[n][0], **GRID[n][1]} for n in names},
                     "variants": VARIANTS, "pool": POOL, "n_eval_questions": len(rows),
                     "n_train": {v: len(tr) for v, (tr, _) in data.items()},
                     "n_dev": {v: len(dv) for v, (_, dv) in data.items()}},
        "first_stage": {p: first_stage_recall(rows, p, _recall) for p in ("hybrid", "bm25")},
        "dev_bm25_question": {v: manifest["data"][v]["dev_bm25_question"] for v in data},
        "configs": {},
    }
    atomic_write_json(out / "results.json", results)
    fs = results["first_stage"]
    say("| config | device | train s | wall s | dev c8 top1/top3 | dev own top1/top3 (epoch) | "
        "hybrid20 R@1/3/5 | bm25-20 R@1/3/5 |")
    say("|---|---|---|---|---|---|---|---|")
    say(f"| first stage (pool order) | - | - | - | - | - | {_r(fs['hybrid'])} | {_r(fs['bm25'])} |")
    for name in names:
        elapsed = time.time() - started
        if args.stop_after and elapsed > args.stop_after:
            say(f"stop: {elapsed:.0f}s > --stop-after {args.stop_after}s; not starting {name}")
            results["configs"][name] = {"skipped": f"--stop-after reached at {elapsed:.0f}s"}
            atomic_write_json(out / "results.json", results)
            continue
        variant, settings = GRID[name]
        train, dev = data[variant]
        settings = {**COMMON, **settings}
        if args.smoke:
            settings.update(epochs=1, queries_per_batch=4)
        cfg = RerankTrainConfig(base_model=str(base), device=device, **settings)
        model_dir = work / "models" / name
        steps = -(-len(train) // cfg.queries_per_batch) * cfg.epochs
        say(f"[{name}] training: {variant}, {len(train)} queries, {steps} steps, {cfg.kind}, "
            f"layers {cfg.num_layers or 'all'}, {cfg.epochs} epoch(s)")
        t0 = time.time()
        try:
            with _Ticker(name, model_dir.with_name(model_dir.name + ".train_log.jsonl"), steps):
                train_reranker((train, dev), model_dir, cfg, progress=False)
            train_s = time.time() - t0
            meta = json.loads((model_dir / "reranker.json").read_text(encoding="utf-8"))
            tr = meta["training"]
            rr = Reranker.load(model_dir)
            rr.model.to(device)
            t1 = time.time()
            dev_eval = {v: evaluate_queries(rr, data[v][1], batch_size=args.eval_batch_size) for v in data}
            pools = {p: _rerank_recall(rr, rows, p, args.eval_batch_size, _recall) for p in ("hybrid", "bm25")}
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            eval_s = time.time() - t1
            best = tr["dev"][tr["best_epoch"]] if tr["dev"] else {}
            entry = {"data": variant, "settings": settings, "device": tr.get("device"),
                     "dtype": str(next(rr.model.parameters()).dtype), "steps": tr["steps"],
                     "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                     "wall_s": round(time.time() - t0, 1), "best_epoch": tr["best_epoch"],
                     "dev_own": {"best": best, "history": tr["dev"]},
                     "dev": {v: {k: round(m[k], 4) for k in ("top1", "top3", "ndcg", "kl", "n")}
                             for v, m in dev_eval.items()},
                     "fact1_recall": {f"{p}-{POOL}": r for p, r in pools.items()}}
            if device != "cpu":
                entry["cpu_check"] = _cpu_check(rr, model_dir, rows, args.eval_batch_size)
            results["configs"][name] = entry
            d8 = entry["dev"]["c8"]
            say(f"| {name} | {device_name} | {entry['train_s']:.0f} | {entry['wall_s']:.0f} | "
                f"{d8['top1']:.3f}/{d8['top3']:.3f} | {best.get('top1', float('nan')):.3f}/"
                f"{best.get('top3', float('nan')):.3f} ({tr['best_epoch']}) | {_r(pools['hybrid'])} | "
                f"{_r(pools['bm25'])} |")
            del rr
        except Exception as err:  # one failing config must not lose the others
            traceback.print_exc()
            results["configs"][name] = {"error": f"{type(err).__name__}: {err}", "wall_s": round(time.time() - t0, 1)}
            say(f"| {name} | {device_name} | failed: {type(err).__name__}: {str(err)[:120]} |")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        results["wall_s"] = round(time.time() - started, 1)
        atomic_write_json(out / "results.json", results)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    results["forbidden_modules_imported"] = loaded
    results["wall_s"] = round(time.time() - started, 1)
    atomic_write_json(out / "results.json", results)
    say(f"done in {results['wall_s']:.0f}s -> {out / 'results.json'}"
        + (f"; WARNING imported {loaded}" if loaded else ""))


def _r(m: dict[str, float]) -> str:
    return "/".join(f"{m[f'R@{k}']:.3f}" for k in KS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="write the pack (here, with the project venv)")
    p.add_argument("--out", type=Path, default=ROOT / "gpu_pack")
    p.add_argument("--kb", type=Path, default=RUNS / "kb")
    p.add_argument("--kept", type=Path, default=RUNS / "kept_rationales.jsonl")
    p.add_argument("--data", type=Path, default=RUNS / "reranker.data", help="the CPU runs' c8 data folder")
    p.add_argument("--allow-mismatch", action="store_true", help="pack even if the rebuilt c8 differs")
    r = sub.add_parser("run", help="train and evaluate the grid (on the GPU machine)")
    r.add_argument("--pack", type=Path, default=ROOT / "gpu_pack")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--configs", default="", help=f"comma-separated names (default: {','.join(DEFAULT_CONFIGS)}); "
                   f"known: {','.join(GRID)}")
    r.add_argument("--smoke", action="store_true", help="tiny run to test the script")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--eval-batch-size", type=int, default=256)
    r.add_argument("--stop-after", type=float, default=0, help="seconds; start no config after this (0 = off)")
    r.add_argument("--work", default="", help="folder for the fp32 base and the trained models (default: a "
                   "temporary folder, removed at the end)")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
