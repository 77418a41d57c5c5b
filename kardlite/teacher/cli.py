"""``kardlite teach``: write teacher rationales for a task into an append-only store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from kardlite._cli import TaskFormat, cli_errors, renamed


class BackendName(StrEnum):
    openai = "openai"
    llamacpp = "llamacpp"


class Kind(StrEnum):
    rationalize = "rationalize"
    cot = "cot"


@cli_errors
def teach(
    out: Annotated[Path, typer.Option("--out", help="The rationale store (JSONL, appended to; resumable).")],
    tasks: Annotated[Path | None, typer.Option(help="The task file (OBQA, MedQA, StrategyQA or generic JSONL/CSV).",
                                               exists=True)] = None,
    backend: Annotated[BackendName, typer.Option(help="openai: any OpenAI-compatible endpoint; llamacpp: a GGUF.")]
    = BackendName.openai,
    n: Annotated[int, typer.Option("--n", help="Samples per question.")] = 2,
    model: Annotated[str | None, typer.Option(help="openai: model name (or $KARDLITE_TEACHER_MODEL); "
                                                   "llamacpp: GGUF path (default: packaged SmolLM2).")] = None,
    base_url: Annotated[str | None, typer.Option(help="openai: endpoint root (or $OPENAI_BASE_URL).")] = None,
    api_key: Annotated[str | None, typer.Option(help="openai: API key (or $OPENAI_API_KEY).")] = None,
    task_format: Annotated[TaskFormat, typer.Option("--format", help="Task file format.")] = TaskFormat.auto,
    prompt: Annotated[str, typer.Option(help="Worked examples: obqa, medical, generic, or a prompt file.")]
    = "generic",
    kind: Annotated[Kind, typer.Option(help="rationalize (KARD: answer shown) or cot (answer hidden).")]
    = Kind.rationalize,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per rationale.")] = 256,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Base seed (a distinct seed per request is derived).")] = None,
    concurrency: Annotated[int, typer.Option(help="openai: requests in flight.")] = 4,
    max_retries: Annotated[int, typer.Option(help="openai: retries per request on 429/5xx/timeouts.")] = 6,
    timeout: Annotated[float, typer.Option(help="openai: seconds per request.")] = 120.0,
    threads: Annotated[int | None, typer.Option(help="llamacpp: CPU threads.", min=1)] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions.")] = None,
    price_in: Annotated[float | None, typer.Option(help="Price per million input tokens, for the cost line.")]
    = None,
    price_out: Annotated[float | None, typer.Option(help="Price per million output tokens.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--quiet", help="Progress bar.")] = True,
    task_arg: Annotated[Path | None, typer.Argument(metavar="[TASK]", hidden=True, exists=True,
                                                    help="Deprecated: use --tasks.")] = None,
) -> None:
    """Ask a teacher for N rationales per question of the --tasks file; re-running skips what the store has."""
    from kardlite.data import load_task
    from kardlite.teacher import get_teacher

    task = renamed(tasks, task_arg, new="--tasks", old="the TASK argument", required=True)
    items = load_task(task, task_format.value)[:limit]
    sampling = {"temperature": temperature, "max_tokens": max_tokens, "top_p": top_p, "seed": seed}
    if backend == BackendName.openai:
        teacher = get_teacher("openai", model=model, base_url=base_url, api_key=api_key, concurrency=concurrency,
                              max_retries=max_retries, timeout=timeout, **sampling)
    else:
        teacher = get_teacher("llamacpp", model_path=model, n_threads=threads,
                              **{**sampling, "seed": 0 if seed is None else seed})
    prices = (price_in or 0.0, price_out or 0.0) if price_in is not None or price_out is not None else None
    summary = teacher.generate(items, n, store=out, prompt=prompt, kind=kind.value, progress=progress,
                               prices=prices)
    typer.echo(summary.line())
