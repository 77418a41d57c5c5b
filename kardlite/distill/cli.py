"""CLI for the student stage: ``kardlite distill build``, ``kardlite train student``, ``kardlite eval`` (+ ``report``).

Thin wrappers over ``kardlite.distill``; heavy imports happen inside the commands. Any deliberate kardlite
error is printed as one line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from kardlite._cli import FirstStage, PromptMode, TaskFormat, cli_errors
from kardlite.errors import InputError

distill_app = typer.Typer(help="Build student training examples (FT, RD, KARD).", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a student (`kardlite eval --model ... --tasks ... --out ...`), or compare runs "
                            "(`kardlite eval report`).", invoke_without_command=True)


class EvalRetriever(StrEnum):
    bm25 = "bm25"
    dense = "dense"
    hybrid = "hybrid"
    reranker = "reranker"


class Select(StrEnum):
    first = "first"
    shortest = "shortest"
    random = "random"


class AnswerScoring(StrEnum):
    generated = "generated"
    letter = "letter"
    text = "text"


class AnswerFormatChoice(StrEnum):
    letter = "letter"
    text = "text"
    both = "both"


class EvalBackend(StrEnum):
    torch = "torch"
    gguf = "gguf"


class Decoding(StrEnum):
    greedy = "greedy"
    sc = "sc"


def _load_kb(path: Path) -> Any:
    from kardlite.errors import ArtifactError

    if not path.exists():
        raise ArtifactError(f"{path}: knowledge base not found (build it with `kardlite kb build`)")
    from kardlite.kb import KnowledgeBase

    return KnowledgeBase.load(path)


@distill_app.command("build")
@cli_errors
def build(
    tasks: Annotated[Path, typer.Option(help="Training questions (any format `load_task` reads).", exists=True)],
    rationales: Annotated[Path, typer.Option(help="Kept-rationales JSONL (item id, rationale index, text).",
                                             exists=True)],
    out: Annotated[Path, typer.Option(help="Examples JSONL to write (a .meta.json is written beside it).")],
    mode: Annotated[PromptMode, typer.Option(help="ka-ft: kard's passages with an answer-only target.")]
    = PromptMode.kard,
    kb: Annotated[Path | None, typer.Option(help="Knowledge base folder (kard, ka-ft).", exists=True)] = None,
    k: Annotated[int, typer.Option(help="Passages per rationale (kard).")] = 5,
    retriever: Annotated[FirstStage, typer.Option(help="bm25 is the paper's; the query is the rationale.")]
    = FirstStage.bm25,
    max_items: Annotated[int | None, typer.Option(help="First N questions with a kept rationale.")] = None,
    per_item: Annotated[int | None, typer.Option(help="Keep M kept rationales per question (default: all).")] = None,
    select: Annotated[Select, typer.Option(help="Which M: first (teacher order), shortest or random (seeded).")
                      ] = Select.first,
    seed: Annotated[int, typer.Option(help="Seed for --select random.")] = 42,
    task_format: Annotated[TaskFormat, typer.Option("--format", help="Task file format.")] = TaskFormat.auto,
) -> None:
    """Build FT / RD / KARD training examples with provenance."""
    from kardlite.data import load_task
    from kardlite.distill.examples import build_examples, read_kept_rationales, save_examples

    items = load_task(tasks, task_format.value)
    kept = read_kept_rationales(rationales)
    kb_obj = _load_kb(kb) if (kb is not None and mode in ("kard", "ka-ft")) else None
    rows = build_examples(items, kept, mode.value, kb=kb_obj, k=k, retriever=retriever.value, max_items=max_items,
                          per_item=per_item, select=select.value, seed=seed, kb_path=kb)
    sources = {"tasks": tasks, "rationales": rationales}
    save_examples(rows, out, sources=sources)
    typer.echo(f"{len(rows)} {mode.value} examples from {len({r['item_id'] for r in rows})} questions -> {out}")


@cli_errors
def train_student_cmd(
    examples: Annotated[Path, typer.Argument(help="Examples JSONL from `kardlite distill build`.", exists=True)],
    out: Annotated[Path, typer.Option(help="Run directory (re-run with the same one to resume).")],
    student: Annotated[str | None, typer.Option(help="HF id or path; default: packaged SmolLM2.")] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper 1e-4, constant).")] = 1e-4,
    epochs: Annotated[float, typer.Option(help="Epochs (paper 3).")] = 3.0,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimiser steps (CPU).")] = None,
    batch_size: Annotated[int, typer.Option(help="Micro-batch per process.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimiser step.")] = 1,
    max_source_tokens: Annotated[int, typer.Option(help="Prompt budget (paper 512).")] = 512,
    max_target_tokens: Annotated[int | None, typer.Option(
        help="Target cap (rationale + answer); default: from the data, cutting at most 1% of targets.")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(
        help="Tokens per forward pass; a micro-batch over it is split (same result, less memory: 512 "
             "keeps a 135M student under 3 GB).")] = 2048,
    group_by_length: Annotated[bool, typer.Option(help="Batches of similar length (less padding).")] = True,
    freeze_layers: Annotated[int, typer.Option(help="Train only decoder layers >= N (faster backward).")] = 0,
    answer_format: Annotated[AnswerFormatChoice, typer.Option(
        help="The answer after 'Answer:' in targets: the letter, the option's text, or both ('(B) text').")
    ] = AnswerFormatChoice.letter,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    lora_r: Annotated[int, typer.Option()] = 16,
    lora_alpha: Annotated[int, typer.Option()] = 32,
    lora_dropout: Annotated[float, typer.Option()] = 0.0,
    seed: Annotated[int, typer.Option()] = 42,
    dev_fraction: Annotated[float, typer.Option(help="Share of questions held out for the dev loss.")] = 0.05,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 25,
    eval_every: Annotated[int, typer.Option(help="Dev loss every N steps (0: at the end only).")] = 0,
    snapshot_every: Annotated[int, typer.Option(help="Keep the trainable weights every N steps (learning curves)."
                                                )] = 0,
) -> None:
    """Fine-tune a student (LoRA by default) and save a merged model. Multi-GPU: `accelerate launch -m kardlite.cli
    train student ...`."""
    from kardlite.distill.train import StudentTrainConfig, train_student

    cfg = StudentTrainConfig(student=student, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                             grad_accum=grad_accum, max_source_tokens=max_source_tokens,
                             max_target_tokens=max_target_tokens, max_batch_tokens=max_batch_tokens,
                             group_by_length=group_by_length, freeze_layers=freeze_layers, lora=not full,
                             lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, seed=seed,
                             dev_fraction=dev_fraction, save_every=save_every,
                             eval_every=eval_every, snapshot_every=snapshot_every,
                             answer_format=answer_format.value)
    model_dir = train_student(examples, out, cfg)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    typer.echo(f"saved {model_dir} (steps {manifest['steps']}, metrics {manifest['metrics']})")


@eval_app.callback()
@cli_errors
def eval_cmd(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Student folder/HF id; 'smollm2' = base.")] = None,
    tasks: Annotated[Path | None, typer.Option(help="Test questions (any format `load_task` reads).", exists=True)]
    = None,
    out: Annotated[Path | None, typer.Option(help="Results folder (re-run the same command to resume).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N questions.")] = None,
    mode: Annotated[PromptMode | None, typer.Option(help="Default: the student's training mode.")] = None,
    kb: Annotated[Path | None, typer.Option(help="Knowledge base folder (kard, ka-ft).", exists=True)] = None,
    retriever: Annotated[EvalRetriever | None, typer.Option(help="What picks the passages [default: bm25].")]
    = None,
    n_docs: Annotated[int | None, typer.Option(help="Passages shown; default: as in training.")] = None,
    pool: Annotated[int, typer.Option(help="Candidates the reranker picks from.")] = 100,
    first_stage: Annotated[FirstStage, typer.Option(help="What builds the reranker's pool.")] = FirstStage.bm25,
    reranker: Annotated[Path | None, typer.Option(help="Trained reranker folder, torch or its ONNX export "
                                                       "(retriever 'reranker').", exists=True)] = None,
    decoding: Annotated[Decoding | None, typer.Option(help="greedy (default) or sc (self-consistency).")] = None,
    samples: Annotated[int, typer.Option(help="Samples for self-consistency.")] = 5,
    max_new_tokens: Annotated[int | None, typer.Option(help="Generation cap; default: the student's.")] = None,
    answer_scoring: Annotated[AnswerScoring | None, typer.Option(
        help="generated (rd/kard default: parse, force at the cap), letter (ft/ka-ft default) or text "
             "(option-text likelihood).")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_source_tokens: Annotated[int | None, typer.Option(help="Default: the training budget.")] = None,
    seed: Annotated[int, typer.Option()] = 42,
    name: Annotated[str | None, typer.Option(help="System name in reports; default: the out folder's name.")] = None,
    backend: Annotated[EvalBackend, typer.Option(help="torch (batched PyTorch) or gguf (llama.cpp, as the runtime: "
                                                      "faster generation on a CPU).")] = EvalBackend.torch,
    gguf: Annotated[Path | None, typer.Option(help="The student's GGUF for --backend gguf (default: export a Q8_0 "
                                                   "copy into --out).")] = None,
    task_format: Annotated[TaskFormat, typer.Option("--format", help="Task file format.")] = TaskFormat.auto,
) -> None:
    """Evaluate a student: accuracy, invalid-output rate, per-question JSONL."""
    if ctx.invoked_subcommand is not None:
        return
    if model is None or tasks is None or out is None:
        raise InputError("kardlite eval needs --model, --tasks and --out (or use `kardlite eval report`)")
    from kardlite.data import load_task
    from kardlite.distill.evaluate import EvalConfig, evaluate, make_retriever
    from kardlite.distill.student import load_student

    items = load_task(tasks, task_format.value)
    if limit:
        items = items[:limit]
    student = load_student(model)
    from kardlite.prompts import ANSWER_ONLY_MODES, KNOWLEDGE_MODES

    resolved = (mode.value if mode else None) or student.info.get("mode")
    # Options that a mode would silently ignore are refused: a run must record what it really did.
    ignored = {"--kb": kb, "--retriever": retriever, "--n-docs": n_docs, "--reranker": reranker}
    if resolved not in KNOWLEDGE_MODES and (given := [k for k, v in ignored.items() if v is not None]):
        raise InputError(f"mode {resolved!r} uses no knowledge, so {', '.join(given)} would be ignored; drop them",
                         field=given[0].lstrip("-"))
    gen = {"--decoding": decoding, "--max-new-tokens": max_new_tokens}
    if resolved in ANSWER_ONLY_MODES and (given := [k for k, v in gen.items() if v is not None]):
        raise InputError(f"mode {resolved!r} generates nothing (its answer is scored), so {', '.join(given)} would "
                         "be ignored; drop them", field=given[0].lstrip("-"))
    retriever_name = retriever.value if retriever else "bm25"
    cfg = EvalConfig(mode=mode.value if mode else None, decoding=decoding.value if decoding else "greedy",
                     samples=samples, max_new_tokens=max_new_tokens,
                     answer_scoring=answer_scoring.value if answer_scoring else None, batch_size=batch_size,
                     max_source_tokens=max_source_tokens, retriever=retriever_name, n_docs=n_docs, pool=pool,
                     first_stage=first_stage.value, reranker=str(reranker) if reranker else None, seed=seed, name=name,
                     backend=backend.value, gguf=str(gguf) if gguf else None)
    kb_obj = _load_kb(kb) if kb is not None else None
    retrieve = None
    if retriever_name == "reranker" and kb_obj is not None:
        if reranker is None:
            raise InputError("--retriever reranker needs --reranker PATH", field="reranker")
        from kardlite.rerank.model import Reranker

        rr_backend = "onnx" if any(reranker.glob("*.onnx")) else "torch"
        retrieve = make_retriever(kb_obj, "reranker", pool=pool, first_stage=first_stage.value,
                                  reranker=Reranker.load(reranker, backend=rr_backend))
    metrics = evaluate(student, items, out, cfg, kb=kb_obj, retrieve=retrieve)
    typer.echo(f"{metrics['name']}: accuracy {metrics['accuracy']:.3f}, invalid {metrics['invalid_rate']:.3f}, "
               f"forced {metrics['forced_rate']:.3f}, n {metrics['n']} -> {out}")


@eval_app.command("report")
@cli_errors
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Evaluation folders to put side by side.", exists=True)],
    out: Annotated[Path, typer.Option(help="Markdown report (a CSV is written beside it).")],
) -> None:
    """Compare evaluated systems in one markdown table (+ CSV)."""
    import warnings

    from kardlite.distill.evaluate import write_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_report(runs, out)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)
    sys.stdout.write(path.read_text(encoding="utf-8"))
