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

from kardlite._cli import (
    AnswerFormat,
    AnswerScoring,
    Decoding,
    FirstStage,
    NoAnswer,
    PromptMode,
    TaskFormat,
    cli_errors,
    renamed,
    setting_option,
)
from kardlite.distill.train import StudentTrainConfig
from kardlite.errors import InputError
from kardlite.settings import DEFAULTS

distill_app = typer.Typer(help="Build student training examples (FT, RD, KARD).", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a student (`kardlite eval --model ... --tasks ... --out ...`) or a bundle "
                            "(`kardlite eval --bundle ...`: its card records the numbers), or compare runs "
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


class EvalBackend(StrEnum):
    torch = "torch"
    gguf = "gguf"


_TRAIN = StudentTrainConfig()  # the training defaults the options show (one place: the dataclass)
_TRAIN_ANSWER_FORMAT = AnswerFormat(_TRAIN.answer_format)


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
    n_docs: Annotated[int, typer.Option(help="Passages per rationale (kard, ka-ft); the trained student is shown as "
                                             "many at test time.")] = DEFAULTS.n_docs,
    k: Annotated[int | None, typer.Option("--k", hidden=True, help="Deprecated spelling of --n-docs.")] = None,
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
    if k is not None:
        n_docs = renamed(None, k, new="--n-docs", old="--k") or n_docs
    kb_obj = _load_kb(kb) if (kb is not None and mode in ("kard", "ka-ft")) else None
    rows = build_examples(items, kept, mode.value, kb=kb_obj, k=n_docs, retriever=retriever.value, max_items=max_items,
                          per_item=per_item, select=select.value, seed=seed, kb_path=kb)
    sources = {"tasks": tasks, "rationales": rationales}
    save_examples(rows, out, sources=sources)
    typer.echo(f"{len(rows)} {mode.value} examples from {len({r['item_id'] for r in rows})} questions -> {out}")


@cli_errors
def train_student_cmd(
    examples: Annotated[Path, typer.Argument(help="Examples JSONL from `kardlite distill build`.", exists=True)],
    out: Annotated[Path, typer.Option(help="Run directory (re-run with the same one to resume).")],
    student: Annotated[str | None, typer.Option(help="HF id or path; default: packaged SmolLM2.")] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (paper 1e-4, constant).")] = _TRAIN.lr,
    epochs: Annotated[float, typer.Option(help="Epochs (paper 3).")] = _TRAIN.epochs,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimiser steps (CPU).")] = _TRAIN.max_steps,
    batch_size: Annotated[int, typer.Option(help="Micro-batch per process.")] = _TRAIN.batch_size,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimiser step.")] = _TRAIN.grad_accum,
    max_source_tokens: Annotated[int, typer.Option(help="Prompt budget (paper 512).")] = _TRAIN.max_source_tokens,
    max_target_tokens: Annotated[int | None, typer.Option(
        help="Target cap (rationale + answer); default: from the data, cutting at most 1% of targets.")]
    = _TRAIN.max_target_tokens,
    max_batch_tokens: Annotated[int | None, typer.Option(
        help="Tokens per forward pass; a micro-batch over it is split (same result, less memory: 512 "
             "keeps a 135M student at ~3 GB peak).")] = _TRAIN.max_batch_tokens,
    group_by_length: Annotated[bool, typer.Option(help="Batches of similar length (less padding).")]
    = _TRAIN.group_by_length,
    freeze_layers: Annotated[int, typer.Option(help="Train only decoder layers >= N (faster backward).")]
    = _TRAIN.freeze_layers,
    pack: Annotated[bool, typer.Option(help="Decoders: several short examples per row instead of padding "
                                            "(same loss; see bench/train_speed.py for when it pays).")]
    = _TRAIN.pack,
    answer_format: Annotated[AnswerFormat, typer.Option(
        help="The answer after 'Answer:' in targets: the letter, the option's text, or both ('(B) text').")
    ] = _TRAIN_ANSWER_FORMAT,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = not _TRAIN.lora,
    lora_r: Annotated[int, typer.Option()] = _TRAIN.lora_r,
    lora_alpha: Annotated[int, typer.Option()] = _TRAIN.lora_alpha,
    lora_dropout: Annotated[float, typer.Option()] = _TRAIN.lora_dropout,
    seed: Annotated[int, typer.Option()] = _TRAIN.seed,
    dev_fraction: Annotated[float, typer.Option(help="Share of questions held out for the dev loss.")]
    = _TRAIN.dev_fraction,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = _TRAIN.save_every,
    eval_every: Annotated[int, typer.Option(help="Dev loss every N steps (0: at the end only).")] = _TRAIN.eval_every,
    snapshot_every: Annotated[int, typer.Option(help="Keep the trainable weights every N steps (learning curves)."
                                                )] = _TRAIN.snapshot_every,
) -> None:
    """Fine-tune a student (LoRA by default) and save a merged model. Multi-GPU: `accelerate launch -m kardlite.cli
    train student ...`."""
    from kardlite.distill.train import StudentTrainConfig, train_student

    cfg = StudentTrainConfig(student=student, lr=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                             grad_accum=grad_accum, max_source_tokens=max_source_tokens,
                             max_target_tokens=max_target_tokens, max_batch_tokens=max_batch_tokens,
                             group_by_length=group_by_length, freeze_layers=freeze_layers, pack=pack, lora=not full,
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
    mode: Annotated[PromptMode | None, setting_option("mode")] = None,
    kb: Annotated[Path | None, typer.Option(help="Knowledge base folder (kard, ka-ft).", exists=True)] = None,
    n_docs: Annotated[int | None, setting_option("n_docs")] = None,
    first_stage: Annotated[FirstStage | None, setting_option("first_stage")] = None,
    pool: Annotated[int | None, setting_option("pool")] = None,
    reranker: Annotated[Path | None, typer.Option(help="Trained reranker folder, torch or its ONNX export (a "
                                                       "bundle's reranker/): the pool is reranked.", exists=True)]
    = None,
    rerank: Annotated[bool | None, setting_option("rerank", "--rerank/--no-rerank")] = None,
    decoding: Annotated[Decoding | None, setting_option("decoding")] = None,
    samples: Annotated[int | None, setting_option("samples")] = None,
    top_k: Annotated[int | None, setting_option("top_k")] = None,
    top_p: Annotated[float | None, setting_option("top_p")] = None,
    temperature: Annotated[float | None, setting_option("temperature")] = None,
    max_new_tokens: Annotated[int | None, setting_option("max_new_tokens")] = None,
    answer_format: Annotated[AnswerFormat | None, setting_option("answer_format")] = None,
    answer_scoring: Annotated[AnswerScoring | None, setting_option("answer_scoring")] = None,
    no_answer: Annotated[NoAnswer | None, setting_option("no_answer")] = None,
    max_source_tokens: Annotated[int | None, setting_option("max_source_tokens")] = None,
    seed: Annotated[int | None, setting_option("seed")] = None,
    batch_size: Annotated[int, typer.Option(help="Questions per forward pass.")] = 8,
    name: Annotated[str | None, typer.Option(help="System name in reports; default: the out folder's name.")] = None,
    backend: Annotated[EvalBackend, typer.Option(help="torch (batched PyTorch) or gguf (llama.cpp, as the runtime: "
                                                      "faster generation on a CPU).")] = EvalBackend.torch,
    gguf: Annotated[Path | None, typer.Option(help="The student's GGUF for --backend gguf (default: export a Q8_0 "
                                                   "copy into --out; a bundle's student.gguf scores the bundle).")]
    = None,
    task_format: Annotated[TaskFormat, typer.Option("--format", help="Task file format.")] = TaskFormat.auto,
    bundle: Annotated[Path | None, typer.Option(
        help="Evaluate this bundle instead of a student: every question through the runtime, with the bundle's own "
             "settings and parts, and the numbers recorded in its card (card.json).", exists=True)] = None,
    split: Annotated[str | None, typer.Option(help="With --bundle: the evaluation's label in the card (an earlier "
                                                   "one of this label is replaced). [default: test]")] = None,
    task_name: Annotated[str | None, typer.Option(help="With --bundle: the task's name in the card. [default: the "
                                                       "--tasks file's name]")] = None,
    write_card: Annotated[bool | None, typer.Option(
        "--write-card/--no-write-card", help="With --bundle: record the numbers in the bundle's card (re-seals its "
                                             "manifest, so a signature must be made again). [default: write]")] = None,
    threads: Annotated[int | None, typer.Option(help="With --bundle: CPU threads.", min=1)] = None,
    retriever: Annotated[EvalRetriever | None, typer.Option(
        hidden=True, help="Deprecated: --first-stage X (no --reranker) or --reranker PATH.")] = None,
) -> None:
    """Evaluate a student: accuracy, invalid-output rate, per-question JSONL. Unset settings are the student's own
    (kardlite_student.json), the ones `kardlite export bundle` ships. With --bundle, evaluate the bundle itself and
    record the numbers in its evaluation card."""
    if ctx.invoked_subcommand is not None:
        return
    if bundle is not None:
        # The shipped system is measured as it is: an option that would change it is refused, not ignored.
        changed = {"--model": model, "--mode": mode, "--kb": kb, "--n-docs": n_docs, "--first-stage": first_stage,
                   "--pool": pool, "--reranker": reranker, "--rerank": rerank, "--decoding": decoding,
                   "--samples": samples, "--top-k": top_k, "--top-p": top_p, "--temperature": temperature,
                   "--max-new-tokens": max_new_tokens, "--answer-format": answer_format,
                   "--answer-scoring": answer_scoring, "--no-answer": no_answer,
                   "--max-source-tokens": max_source_tokens, "--seed": seed, "--gguf": gguf, "--retriever": retriever,
                   "--backend": backend if backend != EvalBackend.torch else None}
        if given := [k for k, v in changed.items() if v is not None]:
            raise InputError(f"--bundle measures the bundle with its own student, parts and settings; drop "
                             f"{', '.join(given)}", field=given[0].lstrip("-"))
        if tasks is None or out is None:
            raise InputError("kardlite eval --bundle needs --tasks and --out")
        _eval_bundle(bundle, tasks, out, task_format=task_format, limit=limit, split=split or "test",
                     task_name=task_name, write_card=write_card is not False, threads=threads, name=name)
        return
    card_options = {"--split": split, "--task-name": task_name, "--write-card": write_card, "--threads": threads}
    if given := [k for k, v in card_options.items() if v is not None]:
        raise InputError(f"{', '.join(given)} apply to a bundle's evaluation (--bundle) only", field=given[0][2:])
    if model is None or tasks is None or out is None:
        raise InputError("kardlite eval needs --model, --tasks and --out, or --bundle, --tasks and --out (or use "
                         "`kardlite eval report`)")
    from kardlite.data import load_task
    from kardlite.distill.evaluate import EvalConfig, evaluate
    from kardlite.distill.student import load_student

    if retriever is not None:
        new = "--reranker PATH" if retriever == EvalRetriever.reranker else f"--first-stage {retriever.value}"
        typer.echo(f"warning: --retriever is deprecated; use {new}", err=True)
    items = load_task(tasks, task_format.value)
    if limit:
        items = items[:limit]
    student = load_student(model)
    from kardlite.prompts import ANSWER_ONLY_MODES, KNOWLEDGE_MODES

    resolved = (mode.value if mode else None) or student.info.get("mode")
    # Options that a mode would silently ignore are refused: a run must record what it really did.
    ignored = {"--kb": kb, "--retriever": retriever, "--n-docs": n_docs, "--reranker": reranker,
               "--first-stage": first_stage, "--pool": pool}
    if resolved not in KNOWLEDGE_MODES and (given := [k for k, v in ignored.items() if v is not None]):
        raise InputError(f"mode {resolved!r} uses no knowledge, so {', '.join(given)} would be ignored; drop them",
                         field=given[0].lstrip("-"))
    gen = {"--decoding": decoding, "--max-new-tokens": max_new_tokens, "--no-answer": no_answer}
    if resolved in ANSWER_ONLY_MODES and (given := [k for k, v in gen.items() if v is not None]):
        raise InputError(f"mode {resolved!r} generates nothing (its answer is scored), so {', '.join(given)} would "
                         "be ignored; drop them", field=given[0].lstrip("-"))
    value = lambda e: e.value if e is not None else None  # noqa: E731 - enum option -> its string or None
    cfg = EvalConfig(mode=value(mode), decoding=value(decoding), samples=samples, top_k=top_k, top_p=top_p,
                     temperature=temperature, max_new_tokens=max_new_tokens, answer_scoring=value(answer_scoring),
                     batch_size=batch_size, max_source_tokens=max_source_tokens, retriever=value(retriever),
                     n_docs=n_docs, pool=pool, first_stage=value(first_stage),
                     reranker=str(reranker) if reranker else None, seed=seed, name=name, backend=backend.value,
                     gguf=str(gguf) if gguf else None, rerank=rerank, no_answer=value(no_answer),
                     answer_format=value(answer_format))
    kb_obj = _load_kb(kb) if kb is not None else None
    metrics = evaluate(student, items, out, cfg, kb=kb_obj)
    typer.echo(f"{metrics['name']}: accuracy {metrics['accuracy']:.3f}, invalid {metrics['invalid_rate']:.3f}, "
               f"forced {metrics['forced_rate']:.3f}, n {metrics['n']} -> {out}")


def _eval_bundle(bundle: Path, tasks: Path, out: Path, *, task_format: TaskFormat, limit: int | None, split: str,
                 task_name: str | None, write_card: bool, threads: int | None, name: str | None) -> None:
    """``kardlite eval --bundle``: the runtime answers every question; the numbers go to --out and the card."""
    from kardlite.bundle_format import SIGNATURE_FILE
    from kardlite.card import CARD_FILE, Task, data_files
    from kardlite.data import load_task
    from kardlite.distill.bundle_eval import evaluate_bundle

    items = load_task(tasks, task_format.value)
    if limit:
        items = items[:limit]
    signed = (bundle / SIGNATURE_FILE).is_file()
    metrics, card = evaluate_bundle(bundle, items, out, task=Task(task_name or tasks.name, data_files([tasks])),
                                    split=split, write_card=write_card, threads=threads, name=name)
    cal = metrics["calibration"]
    typer.echo(f"{metrics['name']}: accuracy {100 * metrics['accuracy']:.1f}% (95% CI {100 * metrics['ci_low']:.1f}-"
               f"{100 * metrics['ci_high']:.1f}%), invalid {metrics['invalid_rate']:.3f}, forced "
               f"{metrics['forced_rate']:.3f}, ECE {cal['ece']:.3f}, n {metrics['n']} -> {out}")
    if card is not None:
        typer.echo(f"card: {bundle / CARD_FILE} records {split!r} ({len(card.evaluations)} evaluation(s))")
        if signed:
            typer.echo(f"warning: {bundle / SIGNATURE_FILE} was removed with the old manifest; sign the bundle again "
                       "(kardlite export sign)", err=True)


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
