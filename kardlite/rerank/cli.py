"""CLI of the reranker stage: ``kardlite train reranker`` and ``kardlite rerank search|export``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from kardlite._cli import FirstStage, cli_errors, renamed, setting_option
from kardlite.errors import InputError
from kardlite.settings import DEFAULTS

app = typer.Typer(help="The KARD reranker: search a knowledge base through it, export it to ONNX. Train it with "
                       "`kardlite train reranker`; evaluate a student with it: `kardlite eval --retriever reranker`.",
                  no_args_is_help=True)


class Labels(StrEnum):
    bm25 = "bm25"
    dense = "dense"


class RerankerKind(StrEnum):
    cross_encoder = "cross-encoder"
    late_interaction = "late-interaction"


class Objective(StrEnum):
    kl = "kl"
    ce = "ce"


class Backend(StrEnum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class Quantization(StrEnum):
    avx2 = "avx2"
    avx512 = "avx512"
    avx512_vnni = "avx512_vnni"
    arm64 = "arm64"


@cli_errors
def train(
    kb: Annotated[Path, typer.Option(help="Knowledge-base folder (its BM25 index gives candidates and labels).",
                                     exists=True)],
    out: Annotated[Path, typer.Option(help="Output reranker folder.")],
    tasks: Annotated[Path | None, typer.Option(help="Training questions (any kardlite task format).", exists=True)]
    = None,
    rationales: Annotated[Path | None, typer.Option(help="Kept rationales JSONL: item_id, rationale_index, text.",
                                                    exists=True)] = None,
    data: Annotated[Path | None, typer.Option(help="Folder for train.jsonl/dev.jsonl (default: <out>.data). "
                                                   "Reused when it exists and --tasks is not given.")] = None,
    pool: Annotated[int, typer.Option(help="Depth of each BM25 list candidates are drawn from.")] = 32,
    from_rationale: Annotated[int, typer.Option(help="Candidates from BM25(rationale).")] = 4,
    from_question: Annotated[int, typer.Option(help="Candidates from BM25(question).")] = 4,
    dev_fraction: Annotated[float, typer.Option(help="Share of questions held out as dev.")] = 0.1,
    labels: Annotated[Labels, typer.Option(help="Candidate labels: bm25 (the paper's: BM25 of the rationale) or "
                                                "dense (scaled cosine of the rationale under the KB's encoder).")]
    = Labels.bm25,
    base_model: Annotated[str | None, typer.Option(help="HF id or folder (default: packaged all-MiniLM-L6-v2).")]
    = None,
    kind: Annotated[RerankerKind, typer.Option(
        help="cross-encoder, or late-interaction (ColBERT-style, the paper's: ranks well from few training "
             "steps, and with the KB cached at load reranks 50 passages in ~10 ms on 2 cores).")]
    = RerankerKind.cross_encoder,
    dim: Annotated[int, typer.Option(help="Late interaction: size of the projected token vectors.")] = 128,
    objective: Annotated[Objective, typer.Option(help="kl (the paper's distillation) or ce (cross-entropy to the "
                                                      "best candidate).")] = Objective.kl,
    tau1: Annotated[float, typer.Option(help="Temperature on BM25 labels (start).")] = 2.0,
    tau1_end: Annotated[float | None, typer.Option(help="Anneal tau1 linearly to this.")] = None,
    tau2: Annotated[float, typer.Option(help="Temperature on reranker logits (start).")] = 1.0,
    tau2_end: Annotated[float | None, typer.Option(help="Anneal tau2 linearly to this.")] = None,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1e-4,
    head_lr_mult: Annotated[float, typer.Option(help="LR multiplier for the fresh head (the linear head on the "
                                                     "mean-pooled states, or the late-interaction projection).")]
    = 1.0,
    epochs: Annotated[int, typer.Option()] = 2,
    queries_per_batch: Annotated[int, typer.Option(help="Queries per step (each with its <= 8 candidates).")] = 8,
    max_length: Annotated[int, typer.Option(help="Token cap for question + passage.")] = 128,
    lora_r: Annotated[int, typer.Option(help="LoRA rank; 0 = full fine-tuning.")] = 0,
    num_layers: Annotated[int | None, typer.Option(help="Keep only the first N encoder layers (faster).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads.", min=1)] = None,
    max_train_queries: Annotated[int, typer.Option(help="Cap on training queries, a seeded sample (0 = all).",
                                                   min=0)] = 0,
    max_dev_queries: Annotated[int, typer.Option(help="Cap on the dev queries that choose the kept epoch, a seeded "
                                                 "sample (0 = all).", min=0)] = 0,
    seed: Annotated[int, typer.Option()] = 42,
    device: Annotated[str, typer.Option(help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or "
                                             "cuda:N.")] = "auto",
    checkpoint_every: Annotated[int, typer.Option(
        help="Steps between resume checkpoints (<out>.checkpoint; 0 = at each epoch's end only). Running the same "
             "command again after an interruption continues from the last one.", min=0)] = 500,
    questions: Annotated[Path | None, typer.Option("--questions", hidden=True, exists=True,
                                                   help="Deprecated: --tasks.")] = None,
) -> None:
    """Build candidates labelled by rationale BM25 (question-disjoint split), then train the reranker."""
    from kardlite.data import load_task
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank.data import CandidateConfig, build_queries, read_rationales, save_queries, split_by_item
    from kardlite.rerank.train import RerankTrainConfig, resolve_device, train_reranker

    tasks = renamed(tasks, questions, new="--tasks", old="--questions")
    data_dir = data or out.with_name(out.name + ".data")
    config = RerankTrainConfig(base_model=base_model, kind=kind.value, dim=dim,  # type: ignore[arg-type]
                               objective=objective.value, tau1=tau1, tau1_end=tau1_end,  # type: ignore[arg-type]
                               tau2=tau2, tau2_end=tau2_end, lr=lr, head_lr_mult=head_lr_mult, epochs=epochs,
                               queries_per_batch=queries_per_batch, max_length=max_length,
                               lora={"r": lora_r, "alpha": 2 * lora_r, "dropout": 0.1} if lora_r else None,
                               num_layers=num_layers, seed=seed, threads=threads, max_train_queries=max_train_queries,
                               max_dev_queries=max_dev_queries,
                               device=device, checkpoint_every=checkpoint_every)
    cand = CandidateConfig(pool=pool, from_rationale=from_rationale, from_question=from_question, seed=seed,
                           dev_fraction=dev_fraction, labels=labels.value)  # type: ignore[arg-type]
    config.validate()
    cand.validate()
    resolve_device(device)  # a missing GPU fails here, before the candidates are built
    if tasks is not None or rationales is not None:
        if tasks is None or rationales is None:
            raise InputError("give both --tasks and --rationales (or neither, to reuse --data)", field="tasks")
        knowledge = KnowledgeBase.load(kb)
        queries = build_queries(knowledge, load_task(tasks), read_rationales(rationales), cand)
        tr, dev = split_by_item(queries, dev_fraction, seed)
        data_dir.mkdir(parents=True, exist_ok=True)
        save_queries(data_dir / "train.jsonl", tr)
        save_queries(data_dir / "dev.jsonl", dev)
        typer.echo(f"{len(tr)} train / {len(dev)} dev queries ({len({q.item_id for q in dev})} dev questions) "
                   f"-> {data_dir}")
    elif not (data_dir / "train.jsonl").is_file():
        raise InputError(f"no training data at {data_dir}; give --tasks and --rationales", field="data")
    path = train_reranker(data_dir, out, config, on_no_gain=lambda msg: typer.echo(f"warning: {msg}", err=True))
    meta = json.loads((path / "reranker.json").read_text())
    training = meta.get("training") or {}
    history = training.get("dev") or []
    typer.echo(f"saved {path}" + (f"; dev (kept epoch {training.get('best_epoch')}) "
                                  f"{history[training.get('best_epoch', -1)]}" if history else ""))


@app.command()
@cli_errors
def search(
    query: Annotated[str, typer.Argument(help="The query (a linearised question).")],
    kb: Annotated[Path, typer.Option(help="Knowledge-base folder.", exists=True)],
    reranker: Annotated[Path, typer.Option(help="Reranker folder (torch) or its ONNX export.", exists=True)],
    n_docs: Annotated[int, typer.Option("--n-docs", "-k", help="Passages to keep.")] = DEFAULTS.n_docs,
    first_stage: Annotated[FirstStage | None, setting_option("first_stage", default_note="auto")] = None,
    pool: Annotated[int, typer.Option(help="First-stage candidates to rerank.")] = DEFAULTS.pool,
    backend: Annotated[Backend, typer.Option(help="auto: onnx when the folder has an ONNX model, else torch.")]
    = Backend.auto,
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON lines.")] = False,
) -> None:
    """Retrieve a pool from the KB, rerank it, print the top n-docs."""
    from kardlite.kb import KnowledgeBase
    from kardlite.rerank.base import Reranker
    from kardlite.rerank.encoder import ONNX_NAMES
    from kardlite.rerank.retriever import RerankRetriever

    name = backend.value
    if backend == Backend.auto:
        name = "onnx" if any((reranker / n).is_file() for n in ONNX_NAMES) else "torch"
    kb_obj = KnowledgeBase.load(kb)
    stage = DEFAULTS.updated(mode="kard", first_stage=first_stage.value if first_stage else None).resolve(
        has_dense=kb_obj.has_dense).first_stage  # auto: hybrid with a dense index, else bm25 (as eval and bundles)
    rr = RerankRetriever(kb_obj, Reranker.load(reranker, backend=name),  # type: ignore[arg-type]
                         first_stage=stage, pool=pool)  # type: ignore[arg-type]
    for hit in rr(query, n_docs):
        if as_json:
            typer.echo(json.dumps(hit, ensure_ascii=False))
        else:
            typer.echo(f"{hit['rank']:>3}  {hit['score']:8.3f}  {hit['id']}  {hit['text'][:100]}")


@app.command()
@cli_errors
def export(
    model_dir: Annotated[Path, typer.Argument(help="Trained reranker folder.", exists=True)],
    out_dir: Annotated[Path, typer.Argument(help="Export folder.")],
    quantize: Annotated[bool, typer.Option(help="Dynamic int8 quantisation.")] = True,
    quantization: Annotated[Quantization, typer.Option(help="optimum's int8 preset: avx2 runs on any x86-64 laptop "
                                                            "of the last decade; arm64 for Apple silicon / ARM.")]
    = Quantization.avx2,
    quantize_ffn: Annotated[bool, typer.Option(help="Quantise the feed-forward matmuls too (smaller; rankings "
                                                    "further from fp32).")] = False,
) -> None:
    """Export a trained reranker to ONNX (int8 by default), loadable without torch."""
    from kardlite.rerank.onnx import export_reranker_onnx

    typer.echo(str(export_reranker_onnx(model_dir, out_dir, quantize, quantization=quantization.value,  # type: ignore[arg-type]
                                        quantize_ffn=quantize_ffn)))
