"""Build the embedded demo bundle: the whole KARD pipeline, small, on the shipped demo data and packaged models.

Stages (each writes its own folder under ``<out>.work/`` and is skipped when that folder is complete, so an
interrupted build resumes where it stopped)::

    1 kb         demo passages -> KnowledgeBase (BM25 + int8 MiniLM + HNSW)
    2 reranker   demo train rationales -> candidates labelled by rationale-BM25 -> late interaction -> int8 ONNX
    3 student    demo train rationales + rationale-retrieved passages -> SmolLM2-135M + LoRA (KARD examples)
    4 bundle     export_bundle: merged student -> Q4_K_M GGUF (verified), reranker -> int8 ONNX, KB copied;
                 manifest.json gets a ``demo`` section recording the mode that built it

``fast=True`` (or ``KARDLITE_FAST=1``) trains nothing: the first-stage hybrid retriever without a reranker and
the packaged base SmolLM2 GGUF as the student. It exists so tests and CI get a real bundle in about a minute;
its answers are those of an untrained 135M model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

from kardlite._io import read_json, write_jsonl

Mode = Literal["fast", "full"]

# Small settings that fit the "at most 10 minutes on 2 cores" budget of a first start. Training cost dominates:
# a reranker step (8 queries x 8 candidates x 128 tokens) costs a few seconds on 2 cores and a student step
# (4 examples x ~500 tokens, LoRA, backward through all 30 layers) tens of seconds. So the reranker keeps 2 of
# MiniLM's 6 layers and sees each of the ~200 training queries once; the student takes 12 LoRA steps (48 of the
# 216 examples) at a high LoRA learning rate: enough to learn the explain-then-"Answer: X" format and the use of
# passages, not the medicine.
# The reranker is late interaction: its MaxSim over MiniLM token vectors ranks well from the first step, and the
# runtime caches the KB's passage vectors at load, so a question costs one short encoding (~30 ms first stage +
# rerank of the pool of 50). A cross-encoder's fresh head needs hundreds of steps: at this budget it stayed at
# chance and pushed the gold passage out of the two shown (bench/demo_reranker.py, docs/results/reranker-obqa.md).
RERANK_SETTINGS: dict[str, Any] = {"kind": "late-interaction", "objective": "kl", "epochs": 1,
                                   "queries_per_batch": 8, "max_length": 128, "num_layers": 2, "lr": 2e-4}
# The prompt budget is the runtime's as well (the bundle carries it), so training and inference see one prompt.
STUDENT_SETTINGS: dict[str, Any] = {"max_steps": 12, "batch_size": 4, "grad_accum": 1, "lr": 5e-4,
                                    "max_source_tokens": 384, "max_target_tokens": 160, "lora_r": 16,
                                    "lora_alpha": 32, "dev_fraction": 0.0, "save_every": 4}
# Passages per training example, and so shown at run time (the trained student records it; the fast mode's base
# model has no record, so the bundle is given it): demo questions name one or two gold passages each.
N_DOCS = 2
FAST_MAX_NEW_TOKENS = 128  # the untrained base of the fast mode rarely ends with an answer line: keep it short
QUANT = "Q4_K_M"


def is_fast() -> bool:
    """Whether ``KARDLITE_FAST=1`` asks for the fast (untrained) demo bundle."""
    return os.environ.get("KARDLITE_FAST", "").strip().lower() in ("1", "true", "yes")


def bundle_mode(path: str | Path) -> Mode | None:
    """The mode recorded in a complete demo bundle at ``path``, or None when there is no complete bundle."""
    manifest = Path(path) / "manifest.json"
    # A bundle from before manifests had a digest (bundle.sha256) would be refused by the runtime: rebuild it.
    if not manifest.is_file() or not (Path(path) / "bundle.sha256").is_file():
        return None
    try:
        mode = read_json(manifest).get("demo", {}).get("mode")
    except Exception:  # an unreadable manifest means: not a usable bundle, rebuild
        return None
    return mode if mode in ("fast", "full") else None


def build_demo_bundle(out: str | Path = "exports/demo", *, fast: bool | None = None, progress: bool = True) -> Path:
    """Build (or reuse) the demo bundle that ``kardlite demo`` and the notebooks load.

    A complete bundle at ``out`` is reused in seconds: any complete bundle when ``fast``, a full-mode one
    otherwise (a fast bundle is upgraded by a full build). Intermediate stages live in ``<out>.work/`` and are
    reused stage by stage.

    Args:
        out: the bundle folder.
        fast: skip training (no reranker, the base SmolLM2 as student); None = read ``KARDLITE_FAST``.
        progress: print stage lines and show progress bars.

    Returns:
        ``out`` as a Path, holding a bundle that ``kardlite.runtime.load`` opens.

    Example:
        >>> from kardlite.demo.build import build_demo_bundle
        >>> bundle = build_demo_bundle(fast=True)          # doctest: +SKIP
    """
    fast = is_fast() if fast is None else fast
    mode: Mode = "fast" if fast else "full"
    out = Path(out)
    have = bundle_mode(out)
    if have == "full" or (have == "fast" and fast):
        _say(progress, f"demo bundle ({have} mode) ready at {out}")
        return out
    work = out.with_name(out.name + ".work")
    log = _Log(progress, total=3 if fast else 4)
    started = time.perf_counter()
    _say(progress, f"building the demo bundle ({mode} mode) at {out}; stages are kept in {work} and reused")

    kb = _stage_kb(work / "kb", log)
    reranker = None if fast else _stage_reranker(work, kb, log)
    student = _stage_student_fast(log) if fast else _stage_student(work, kb, log)
    _stage_bundle(out, kb, reranker, student, mode, log, started)
    seconds = time.perf_counter() - started
    _say(progress, f"demo bundle ({mode} mode) built in {seconds:.0f} s: {out}")
    return out


# ---------------------------------------------------------------------------------------------------- stages
class _Log:
    """Numbered stage lines with their wall time."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.n = enabled, total, 0

    def stage(self, name: str, reused: bool, note: str = "reused") -> float:
        self.n += 1
        _say(self.enabled, f"[{self.n}/{self.total}] {name}" + (f" ({note})" if reused else " ..."))
        return time.perf_counter()

    def done(self, started: float) -> None:
        _say(self.enabled, f"      done in {time.perf_counter() - started:.1f} s")


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, flush=True)


def _stage_kb(path: Path, log: _Log) -> Any:
    from kardlite.demo import demo_passages
    from kardlite.kb import KnowledgeBase

    if (path / "manifest.json").is_file():
        log.stage("knowledge base", reused=True)
        return KnowledgeBase.load(path)
    t = log.stage(f"knowledge base ({len(demo_passages())} passages: BM25 + dense + HNSW)", reused=False)
    kb = KnowledgeBase.build(demo_passages(), path, progress=log.enabled)  # atomic: complete or absent
    log.done(t)
    return kb


def _rationales(work: Path) -> Path:
    """The demo train rationales as a kept-rationales JSONL (they stand in for a filtered teacher's output)."""
    from kardlite.demo import demo_questions

    path = work / "rationales.jsonl"
    if not path.is_file():
        rows = [{"item_id": it.id, "rationale_index": i, "text": text, "kept": True}
                for it in demo_questions("train") for i, text in enumerate(it.meta.get("rationales", []))]
        write_jsonl(path, rows)
    return path


def _stage_reranker(work: Path, kb: Any, log: _Log) -> Path:
    torch_dir = work / "reranker"
    if (torch_dir / "reranker.json").is_file():  # train_reranker writes its folder atomically
        log.stage("reranker", reused=True)
        return torch_dir
    from kardlite.demo import demo_questions
    from kardlite.rerank.data import CandidateConfig, build_queries, read_rationales, split_by_item
    from kardlite.rerank.train import RerankTrainConfig, train_reranker

    t = log.stage("reranker (late interaction trained to score passages from the question as BM25 scores "
                  "them against the rationale)", reused=False)
    queries = build_queries(kb, demo_questions("train"), read_rationales(_rationales(work)), CandidateConfig(),
                            progress=log.enabled)
    train, dev = split_by_item(queries, dev_fraction=0.1)
    # expected here (bench/demo_reranker.py): on the demo's 22 dev queries 25 steps do not beat the start
    train_reranker((train, dev), torch_dir, RerankTrainConfig(**RERANK_SETTINGS), progress=log.enabled,
                   on_no_gain=lambda msg: _say(log.enabled, f"      note: {msg}"))
    log.done(t)
    return torch_dir


def _stage_student(work: Path, kb: Any, log: _Log) -> Path:
    from kardlite.distill import StudentTrainConfig, build_examples, read_kept_rationales, save_examples, train_student

    run = work / "student"
    if (run / "manifest.json").is_file() and (run / "model" / "config.json").is_file():
        log.stage("student", reused=True)
        return run / "model"
    t = log.stage(f"student (SmolLM2-135M + LoRA, KARD, {STUDENT_SETTINGS['max_steps']} steps)", reused=False)
    examples = work / "examples.jsonl"
    if not examples.is_file():
        from kardlite.demo import demo_questions

        rows = build_examples(demo_questions("train"), read_kept_rationales(_rationales(work)), "kard", kb=kb,
                              k=N_DOCS, retriever="bm25", kb_path=kb.path)
        save_examples(rows, examples)
    steps: list[float] = []

    def on_step(step: int, loss: float) -> None:
        steps.append(loss)
        _say(log.enabled, f"      step {step}/{STUDENT_SETTINGS['max_steps']}  loss {loss:.3f}")

    model = train_student(examples, run, StudentTrainConfig(**STUDENT_SETTINGS), on_step=on_step)
    log.done(t)
    return Path(model)


def _stage_student_fast(log: _Log) -> Path:
    from kardlite._llama import packaged_smollm2

    log.stage("student: the packaged base SmolLM2-135M-Instruct GGUF", reused=True, note="fast mode: not trained")
    return packaged_smollm2()


def _stage_bundle(out: Path, kb: Any, reranker: Path | None, student: Path, mode: Mode, log: _Log,
                  started: float) -> None:
    from kardlite.export.bundle import MANIFEST, export_bundle, write_manifest

    what = "copying the GGUF" if student.suffix == ".gguf" else f"{QUANT} GGUF export checked against PyTorch"
    t = log.stage(f"bundle ({what}; reranker to int8 ONNX)" if reranker else f"bundle ({what})", reused=False)
    export_bundle(student, kb.path, out.parent, name=out.name, reranker_dir=reranker, quant=QUANT, mode="kard",
                  max_tokens=STUDENT_SETTINGS["max_source_tokens"], n_docs=N_DOCS,
                  settings={"max_new_tokens": FAST_MAX_NEW_TOKENS} if mode == "fast" else None)
    # Stamped last: a bundle without this stamp is treated as incomplete and rebuilt.
    manifest = read_json(out / MANIFEST)
    manifest["demo"] = {"mode": mode, "build_seconds": round(time.perf_counter() - started, 1),
                        "student": "packaged base SmolLM2-135M-Instruct, untrained" if mode == "fast"
                        else "SmolLM2-135M-Instruct + LoRA, KARD-distilled on the demo train rationales",
                        "reranker": "late interaction on MiniLM-L6 cut to 2 layers, KL to rationale-BM25"
                        if reranker else None,
                        "settings": {"reranker": RERANK_SETTINGS, "student": STUDENT_SETTINGS} if mode == "full"
                        else None}
    write_manifest(out, manifest)  # with its digest, or the runtime would refuse the edited manifest
    log.done(t)
