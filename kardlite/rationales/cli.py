"""``kardlite rationales``: import existing rationales, filter a store, show what a store holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kardlite._cli import TaskFormat, cli_errors, renamed

app = typer.Typer(help="Teacher rationales: import, filter, stats.", no_args_is_help=True)


@app.command("import")
@cli_errors
def import_(
    source: Annotated[Path, typer.Argument(help="KARD release folder (NNNNN.json), compact JSONL(.gz) or a store.",
                                           exists=True)],
    out: Annotated[Path, typer.Option("--out", help="The rationale store to append to.")],
    tasks: Annotated[Path | None, typer.Option(help="The task file the rationales belong to (same order).",
                                               exists=True)] = None,
    task_format: Annotated[TaskFormat, typer.Option("--format", help="Task file format.")] = TaskFormat.auto,
    n: Annotated[int | None, typer.Option("--n", help="Keep only the first N rationales per question.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--quiet", help="Progress bar.")] = True,
    task: Annotated[Path | None, typer.Option("--task", hidden=True, exists=True, help="Deprecated: --tasks.")]
    = None,
) -> None:
    """Copy existing rationales into a store, checking they align with the --tasks file."""
    from kardlite.data import load_task
    from kardlite.teacher import get_teacher

    items = load_task(renamed(tasks, task, new="--tasks", old="--task", required=True), task_format.value)
    summary = get_teacher("import", source=source).generate(items, n, store=out, progress=progress)
    typer.echo(summary.line())


@app.command("filter")
@cli_errors
def filter_(
    store: Annotated[Path, typer.Argument(help="The rationale store.", exists=True)],
    out: Annotated[Path, typer.Option("--out", help="Output folder: kept.jsonl, dropped.jsonl, stats.json.")],
    tasks: Annotated[Path | None, typer.Option(help="The task file with gold answers.", exists=True)] = None,
    judge: Annotated[str, typer.Option(help="smollm2 (packaged), none, a .gguf, a local HF folder or hub id.")]
    = "smollm2",
    task_format: Annotated[TaskFormat, typer.Option("--format", help="Task file format.")] = TaskFormat.auto,
    no_stated: Annotated[bool, typer.Option("--no-stated", help="Skip the stated-answer filter.")] = False,
    min_chars: Annotated[int, typer.Option(help="Degenerate filter: fewest characters.")] = 40,
    min_words: Annotated[int, typer.Option(help="Degenerate filter: fewest words.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Judge batch size.")] = 8,
    progress: Annotated[bool, typer.Option("--progress/--quiet", help="Progress bars.")] = True,
    task: Annotated[Path | None, typer.Option("--task", hidden=True, exists=True, help="Deprecated: --tasks.")]
    = None,
) -> None:
    """Keep the rationales of STORE that support the gold answer; write kept/dropped files and stats."""
    from kardlite.data import load_task
    from kardlite.rationales.filter import filter_rationales

    filters = ["degenerate"] + ([] if no_stated else ["stated"]) + ([] if judge == "none" else ["judge"])
    items = load_task(renamed(tasks, task, new="--tasks", old="--task", required=True), task_format.value)
    stats = filter_rationales(store, items, out, judge=None if judge == "none" else judge, filters=filters,
                              min_chars=min_chars, min_words=min_words, batch_size=batch_size, progress=progress)
    typer.echo(f"kept {stats['kept']}/{stats['rationales']} ({stats['keep_rate']:.1%}); "
               f"{stats['questions_with_none_kept']} of {stats['questions']} questions left with none; "
               f"kept per question: {stats['kept_per_question_histogram']}")
    for name, f in stats["filters"].items():
        typer.echo(f"  {name}: kept {f['kept']}/{f['seen']} ({f['ms_per_rationale']} ms/rationale)")
    if stats.get("kept_by_answer_check"):
        checks = ", ".join(f"{k} {v}" for k, v in stats["kept_by_answer_check"].items())
        typer.echo(f"  answer check among kept: {checks}")


@app.command()
@cli_errors
def stats(
    store: Annotated[Path, typer.Argument(help="The rationale store.", exists=True)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Counts, teachers and token usage of a store."""
    from collections import Counter

    from kardlite.rationales.store import read_store

    contents = read_store(store)
    samples = contents.samples
    per_item = Counter(s["item_id"] for s in samples)
    usage_in = sum((s.get("usage") or {}).get("prompt_tokens", 0) or 0 for s in samples)
    usage_out = sum((s.get("usage") or {}).get("completion_tokens", 0) or 0 for s in samples)
    info = {
        "samples": len(samples),
        "items": len(per_item),
        "samples_per_item": dict(sorted(Counter(per_item.values()).items())),
        "teachers": dict(Counter(f"{s.get('backend')}:{s.get('model')}" for s in samples)),
        "finish_reasons": dict(Counter(str(s.get("finish_reason")) for s in samples)),
        "prompt_tokens": usage_in,
        "completion_tokens": usage_out,
        "prompts": len(contents.prompts),
        "duplicates": contents.duplicates,
        "torn_tail": contents.torn_tail,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key}: {value}")
