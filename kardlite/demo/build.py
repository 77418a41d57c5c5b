"""Build the embedded demo bundle: the whole KARD pipeline, small, on the shipped demo data and packaged models.

Stages (each writes its own folder under ``<out>.work/`` and is skipped when that folder is complete, so an
interrupted build resumes where it stopped)::

    1 kb         demo passages -> KnowledgeBase (BM25 + int8 MiniLM + HNSW)
    2 reranker   demo train rationales -> candidates labelled by rationale-BM25 -> late interaction -> int8 ONNX
    3 student    the shipped LoRA adapter (kardlite/demo/adapter, see adapter.py) merged into SmolLM2-135M when
                 it matches the installed base model and demo data; else demo train rationales + rationale-retrieved
                 passages -> SmolLM2-135M + LoRA (KARD examples), trained here
    4 bundle     export_bundle: merged student -> Q4_K_M GGUF (verified), reranker -> int8 ONNX, KB copied;
                 manifest.json gets a ``demo`` section recording the mode that built it

``fast=True`` (or ``KARDLITE_FAST=1``) trains nothing: the first-stage hybrid retriever without a reranker and
the packaged base SmolLM2 GGUF as the student. It exists so tests and CI get a real bundle in about a minute;
its answers are those of an untrained 135M model; it never reads the shipped adapter.

The student's recipe (prompt mode, passages per example, training settings) is
:class:`~kardlite.demo.recipe.StudentRecipe`, its defaults in one place (kardlite/demo/recipe.py): the demo build,
``--retrain`` and ``kardlite train demo-adapter`` (train_adapter.py, ``make_demo_adapter``) all read it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kardlite._io import read_json, write_jsonl
from kardlite.demo.recipe import (
    N_DOCS,
    STUDENT_MODE,
    STUDENT_QUERY,
    STUDENT_RETRIEVER,
    STUDENT_SETTINGS,
    StudentRecipe,
    learnt,
)
from kardlite.errors import InputError

Mode = Literal["fast", "full"]

# Small settings that fit the "at most 10 minutes on 2 cores" budget of a first start. Training cost dominates:
# a reranker step (8 queries x 8 candidates x 128 tokens) costs a few seconds on 2 cores and a student step
# (4 examples x ~500 tokens, LoRA, backward through all 30 layers) tens of seconds. So the reranker keeps 2 of
# MiniLM's 6 layers and sees each of the ~200 training queries once; the student's recipe (kardlite/demo/recipe.py,
# STUDENT_SETTINGS) takes 12 LoRA steps, unless the repository ships an adapter trained longer (adapter.py).
# The reranker is late interaction: its MaxSim over MiniLM token vectors ranks well from the first step, and the
# runtime caches the KB's passage vectors at load, so a question costs one short encoding (~30 ms first stage +
# rerank of the pool of 50). A cross-encoder's fresh head needs hundreds of steps: at this budget it stayed at
# chance and pushed the gold passage out of the two shown (bench/demo_reranker.py, docs/results/reranker-obqa.md).
RERANK_SETTINGS: dict[str, Any] = {"kind": "late-interaction", "objective": "kl", "epochs": 1,
                                   "queries_per_batch": 8, "max_length": 128, "num_layers": 2, "lr": 2e-4}
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


def build_demo_bundle(out: str | Path = "exports/demo", *, fast: bool | None = None, progress: bool = True,
                      retrain: bool = False, adapter: str | Path | None = None) -> Path:
    """Build (or reuse) the demo bundle that ``kardlite demo`` and the notebooks load.

    A complete bundle at ``out`` is reused in seconds: any complete bundle when ``fast``, a full-mode one
    otherwise (a fast bundle is upgraded by a full build) whose student came the way this build would make it:
    from the same shipped adapter, or trained here when there is no usable adapter (or ``retrain``).
    Intermediate stages live in ``<out>.work/`` and are reused stage by stage.

    The full build's student is the shipped LoRA adapter (``kardlite/demo/adapter``) merged into the base model,
    without training, when its manifest's base-model and demo-data sha256s match this installation; a mismatch
    is printed (which file differs) and the student is trained here instead, with the adapter's recipe.

    Args:
        out: the bundle folder.
        fast: skip training (no reranker, the base SmolLM2 as student); None = read ``KARDLITE_FAST``.
        progress: print stage lines and show progress bars.
        retrain: ignore the shipped adapter and train the student from scratch with its manifest's recipe (the
            defaults, :class:`StudentRecipe`, when there is no adapter); a bundle made from the adapter is rebuilt.
        adapter: the adapter folder (default: the shipped ``kardlite/demo/adapter``; absent = train).

    Returns:
        ``out`` as a Path, holding a bundle that ``kardlite.runtime.load`` opens.

    Raises:
        ArtifactError: the adapter's files are corrupt (the message names the file and field).

    Example:
        >>> from kardlite.demo.build import build_demo_bundle
        >>> bundle = build_demo_bundle(fast=True)          # doctest: +SKIP
    """
    fast = is_fast() if fast is None else fast
    if fast and retrain:
        raise InputError("retrain builds the full bundle; the fast one trains nothing", field="retrain")
    mode: Mode = "fast" if fast else "full"
    out = Path(out)
    have = bundle_mode(out)
    if have == "fast" and fast:
        _say(progress, f"demo bundle ({have} mode) ready at {out}")
        return out
    # The fast mode never reads the adapter: it stays a one-minute build that trains and merges nothing.
    plan = None if fast else _student_plan(adapter, retrain, progress)
    if have == "full" and (plan is None or _same_student(out, plan)):
        _say(progress, f"demo bundle ({have} mode) ready at {out}")
        return out
    work = out.with_name(out.name + ".work")
    log = _Log(progress, total=3 if fast else 4)
    started = time.perf_counter()
    _say(progress, f"building the demo bundle ({mode} mode) at {out}; stages are kept in {work} and reused")

    kb = _stage_kb(work / "kb", log)
    reranker = None if fast else _stage_reranker(work, kb, log)
    if plan is None:
        student = _stage_student_fast(log)
    elif plan.adapter is not None:
        student = _stage_student_adapter(work, plan, log)
    else:
        student = _stage_student(work, kb, log, plan.recipe)
    _stage_bundle(out, kb, reranker, student, mode, log, started, plan)
    seconds = time.perf_counter() - started
    _say(progress, f"demo bundle ({mode} mode) built in {seconds:.0f} s: {out}")
    return out


@dataclass
class _StudentPlan:
    """Where the full build's student comes from: the verified adapter manifest (merge it) or None (train)."""

    recipe: StudentRecipe
    adapter: dict[str, Any] | None = None
    adapter_dir: Path | None = None


def _student_plan(adapter: str | Path | None, retrain: bool, progress: bool) -> _StudentPlan:
    from kardlite.demo import adapter as shipped
    from kardlite.errors import ArtifactError

    folder = Path(adapter) if adapter is not None else shipped.shipped_adapter_dir()
    if not (folder / shipped.MANIFEST).is_file():
        return _StudentPlan(StudentRecipe())  # no adapter: train, exactly as before adapters existed
    if retrain:
        try:
            manifest = shipped.read_manifest(folder, check_weights=False)
        except (ArtifactError, InputError) as err:
            _say(progress, f"note: retrain: cannot read the adapter's recipe ({err}); training with the defaults")
            return _StudentPlan(StudentRecipe())
        _say(progress, f"retrain: training the student from scratch with the recipe in {folder / shipped.MANIFEST}"
                       " instead of merging the adapter")
        if manifest.get("warm_start"):
            _say(progress, f"note: the adapter was warm-started from {manifest['warm_start']['run']}; this training "
                           "starts from the base model (to reproduce the warm start: the command in adapter.json)")
        return _StudentPlan(shipped.manifest_recipe(manifest))
    manifest = shipped.read_manifest(folder)  # a corrupt adapter is an error that names its file and field
    problems = shipped.mismatches(manifest, folder)
    if problems:
        _say(progress, f"note: the shipped adapter does not fit this installation ({'; '.join(problems)}); "
                       "training the student here instead, with the adapter's recipe")
        return _StudentPlan(shipped.manifest_recipe(manifest))
    return _StudentPlan(shipped.manifest_recipe(manifest), manifest, folder)


def _same_student(out: Path, plan: _StudentPlan) -> bool:
    """Whether the full bundle at ``out`` has the student this plan would make (merged from the same adapter,
    or trained here)."""
    try:
        demo = read_json(out / "manifest.json").get("demo", {})
    except Exception:
        return False
    made = demo.get("adapter")
    if plan.adapter is None:
        # trained here: with the same recipe (a bundle from before recipes were recorded was made with the defaults)
        same = learnt(demo["recipe"]) == learnt(plan.recipe.to_json()) if "recipe" in demo \
            else plan.recipe.is_default()
        return made is None and same  # one merged from an adapter is not kept
    return isinstance(made, dict) and made.get("sha256") == plan.adapter["adapter"]["sha256"]


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


def _stage_student(work: Path, kb: Any, log: _Log, recipe: StudentRecipe | None = None,
                   warm_start: Path | None = None) -> Path:
    """Train the demo student with ``recipe`` (from ``warm_start``, a merged student folder, when given).

    The default recipe keeps the folders it always had (``examples.jsonl``, ``student/``); any other recipe gets
    its own, named by its digest, so a finished run of one recipe is never taken for another's.
    """
    from kardlite.distill import build_examples, read_kept_rationales, save_examples, train_student

    recipe = recipe or StudentRecipe()
    cfg = recipe.train_config(student=str(warm_start) if warm_start is not None else None)
    default = recipe.is_default() and warm_start is None
    run = work / ("student" if default else f"student-{recipe.key(str(warm_start or ''))}")
    if (run / "manifest.json").is_file() and (run / "model" / "config.json").is_file():
        log.stage("student", reused=True)
        return run / "model"
    base = "SmolLM2-135M" if recipe.settings.get("student") is None else Path(str(recipe.settings["student"])).name
    base += f" warm-started from {warm_start}" if warm_start is not None else ""
    t = log.stage(f"student ({base} + LoRA, {recipe.mode.upper()}, {cfg.max_steps} steps)", reused=False)
    same_examples = (recipe.mode, recipe.n_docs, recipe.query) == (STUDENT_MODE, N_DOCS, STUDENT_QUERY)
    examples = work / ("examples.jsonl" if same_examples else
                       f"examples-{recipe.mode}-k{recipe.n_docs}-{recipe.query}.jsonl")
    if not examples.is_file():
        from kardlite.demo import demo_questions

        rows = build_examples(demo_questions("train"), read_kept_rationales(_rationales(work)), recipe.mode,
                              kb=kb, k=recipe.n_docs, retriever=STUDENT_RETRIEVER, kb_path=kb.path,
                              query=recipe.query)
        save_examples(rows, examples)
    steps: list[float] = []

    def on_step(step: int, loss: float) -> None:
        steps.append(loss)
        _say(log.enabled, f"      step {step}/{cfg.max_steps}  loss {loss:.3f}")

    model = train_student(examples, run, cfg, on_step=on_step)
    log.done(t)
    return Path(model)


def _stage_student_adapter(work: Path, plan: _StudentPlan, log: _Log) -> Path:
    """The shipped adapter merged into the base model: a student folder like a trained one, without training."""
    from kardlite.demo.adapter import merge_adapter
    from kardlite.distill.student import STUDENT_FILE

    assert plan.adapter is not None and plan.adapter_dir is not None
    folder = work / "student-adapter"
    sha = plan.adapter["adapter"]["sha256"]
    try:
        merged = read_json(folder / STUDENT_FILE).get("adapter", {}).get("sha256")
    except Exception:  # absent or unreadable: merge (again)
        merged = None
    if merged == sha and (folder / "config.json").is_file():
        log.stage("student (the shipped LoRA adapter, merged)", reused=True)
        return folder
    t = log.stage(f"student (the shipped LoRA adapter, r{plan.adapter['lora']['r']}, merged into the base model: "
                  "no training; `kardlite demo --retrain` trains it instead)", reused=False)
    merge_adapter(plan.adapter_dir, folder, manifest=plan.adapter)
    log.done(t)
    return folder


def _stage_student_fast(log: _Log) -> Path:
    from kardlite._llama import packaged_smollm2

    log.stage("student: the packaged base SmolLM2-135M-Instruct GGUF", reused=True, note="fast mode: not trained")
    return packaged_smollm2()


def _stage_bundle(out: Path, kb: Any, reranker: Path | None, student: Path, mode: Mode, log: _Log,
                  started: float, plan: _StudentPlan | None = None) -> None:
    from kardlite.export.bundle import MANIFEST, export_bundle, write_manifest

    what = "copying the GGUF" if student.suffix == ".gguf" else f"{QUANT} GGUF export checked against PyTorch"
    t = log.stage(f"bundle ({what}; reranker to int8 ONNX)" if reranker else f"bundle ({what})", reused=False)
    if plan is None:  # fast mode: the base model has no record of its own, so the bundle is told how to prompt it
        export_bundle(student, kb.path, out.parent, name=out.name, reranker_dir=reranker, quant=QUANT, mode="kard",
                      max_tokens=STUDENT_SETTINGS["max_source_tokens"], n_docs=N_DOCS,
                      settings={"max_new_tokens": FAST_MAX_NEW_TOKENS})
    else:  # the student's own record (kardlite_student.json) says the rest: answer format, generation cap, ...
        cfg = plan.recipe.train_config()
        export_bundle(student, kb.path, out.parent, name=out.name, reranker_dir=reranker, quant=QUANT,
                      max_tokens=cfg.max_source_tokens, n_docs=plan.recipe.n_docs,
                      settings={"mode": plan.recipe.mode})
    # Stamped last: a bundle without this stamp is treated as incomplete and rebuilt.
    manifest = read_json(out / MANIFEST)
    if plan is None:
        described = "packaged base SmolLM2-135M-Instruct, untrained"
    elif plan.adapter is not None:
        described = ("SmolLM2-135M-Instruct + the shipped LoRA adapter (kardlite/demo/adapter), merged: "
                     f"{_trained_on(plan.recipe)}" + (" after a warm start" if plan.adapter.get("warm_start") else ""))
    else:
        described = f"SmolLM2-135M-Instruct + LoRA, {_trained_on(plan.recipe)}"
    manifest["demo"] = {"mode": mode, "build_seconds": round(time.perf_counter() - started, 1),
                        "student": described,
                        "reranker": "late interaction on MiniLM-L6 cut to 2 layers, KL to rationale-BM25"
                        if reranker else None,
                        "settings": {"reranker": RERANK_SETTINGS, "student": dict(plan.recipe.settings)}
                        if plan is not None else None}
    if plan is not None:
        manifest["demo"]["recipe"] = plan.recipe.to_json()
        manifest["demo"]["adapter"] = None if plan.adapter is None else {
            "sha256": plan.adapter["adapter"]["sha256"], "command": plan.adapter["command"],
            "warm_start": plan.adapter.get("warm_start")}
    write_manifest(out, manifest)  # with its digest, or the runtime would refuse the edited manifest
    log.done(t)


def _trained_on(recipe: StudentRecipe) -> str:
    """What the demo student learnt from, in words: only RD and KARD (and KA-FT's rationale query) use rationales."""
    if recipe.mode in ("rd", "kard"):
        source = "to write the demo train rationales"
    elif recipe.mode == "ka-ft" and recipe.query == "rationale":
        source = "on the demo train questions with the passages their rationales retrieve"
    elif recipe.mode == "ka-ft":
        source = "on the demo train questions with the passages they retrieve"
    else:
        source = "on the demo train questions"
    return f"{recipe.mode.upper()}-distilled {source}"
