"""``kardlite demo``: the main job. Builds the demo bundle on first use, then starts the web app (demo/app.py) or,
given a question, answers it in the terminal.

``kardlite train demo-adapter``, which makes the LoRA adapter the repository ships for the demo student, is in
train_adapter.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kardlite._cli import cli_errors
from kardlite.errors import InputError

DEFAULT_DIR = Path("exports") / "demo"


@cli_errors
def demo(
    question: Annotated[str | None, typer.Argument(help="Answer this question in the terminal instead of starting "
                                                        "the web app ('example' = the first demo test question).")]
    = None,
    bundle: Annotated[Path | None, typer.Option(help="A bundle folder (default: the demo bundle, built on first "
                                                      "use at exports/demo).", exists=True)] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Build the fast, untrained demo bundle (like KARDLITE_FAST=1): "
                                                      "about a minute instead of up to ten.")] = False,
    host: Annotated[str, typer.Option(help="Interface for the web app (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the web app.")] = 7860,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).", min=1)] = None,
    audit_log: Annotated[Path | None, typer.Option(help="Append one JSONL record per answer (question, passages, "
                                                        "rationale, answer) to this file.")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train the demo student here, from scratch, with the "
                                                            "shipped adapter's recipe (kardlite/demo/adapter/"
                                                            "adapter.json) instead of merging the adapter.")]
    = False,
) -> None:
    """Start the demo web app on the embedded demo bundle (built on first use), or answer one QUESTION."""
    from kardlite.demo import DISCLAIMER
    from kardlite.demo.build import build_demo_bundle

    if retrain and (fast or bundle is not None):
        raise InputError("--retrain builds the full demo bundle: drop --fast and --bundle", field="--retrain")
    typer.echo(f"kardlite demo — {DISCLAIMER}")
    path = bundle or build_demo_bundle(DEFAULT_DIR, fast=True if fast else None, retrain=retrain)
    if question is None:
        from kardlite.demo.app import main as run_app  # gradio: the `app` extra (MissingExtraError names it)

        run_app(["--bundle", str(path), "--host", host, "--port", str(port)] + (
            ["--threads", str(threads)] if threads else []) + (["--audit-log", str(audit_log)] if audit_log else []))
        return
    _answer(path, question, threads, audit_log)


def _answer(path: Path, question: str, threads: int | None, audit_log: Path | None = None) -> None:
    """Stream one answer to the terminal: the passages, the rationale as it is written, the answer, the timings."""
    from kardlite.demo import demo_questions
    from kardlite.runtime import load

    options: list[str] | None = None
    if question == "example":
        item = demo_questions("test")[1]
        question, options = item.question, list(item.options)
    with load(path, threads=threads, audit_log=audit_log) as pipe:
        typer.echo(f"{pipe!r}\n\nQuestion: {question}")
        for i, option in enumerate(options or []):
            typer.echo(f"  {'ABCDEFGHIJ'[i]}. {option}")
        for event in pipe.stream(question, options):
            if event["type"] == "passages":
                typer.echo("\nPassages shown to the student:")
                for p in event["passages"]:
                    rerank = "" if p["rerank_score"] is None else f", rerank {p['rerank_score']:.3f}"
                    typer.echo(f"  [{p['rank']}] {p['title']} ({p['id']}; first stage {p['first_stage_score']:.4f}"
                               f"{rerank})")
                typer.echo("\nRationale: ", nl=False)
            elif event["type"] == "token" and event["sample"] == 0:
                typer.echo(event["text"], nl=False)
            elif event["type"] == "answer":
                a = event["answer"]
                said = f"{a['letter']}. {a['answer']}" if a["letter"] else (a["answer"] or "no valid answer")
                typer.echo(f"\n\nAnswer: {said}")
                typer.echo("Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in a["timings"].items()))
        if pipe.audit is not None:
            typer.echo(f"Logged to {pipe.audit.path}")
