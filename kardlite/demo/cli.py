"""``kardlite demo``: the main job. Builds the demo bundle on first use, then starts the web app (demo/app.py) or,
given a question, answers it in the terminal. ``kardlite demo eval`` scores the bundle on the demo's dev and test
questions (demo/evaluate.py); the app's About this bundle tab shows the result.

``kardlite train demo-adapter``, which makes the LoRA adapter the repository ships for the demo student, is in
train_adapter.py."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from kardlite._cli import cli_errors
from kardlite.errors import InputError

DEFAULT_DIR = Path("exports") / "demo"


class _QuestionOrCommand(TyperGroup):
    """``kardlite demo [QUESTION] [OPTIONS]`` and ``kardlite demo eval [OPTIONS]`` on one name.

    Click would read ``eval`` as the QUESTION (a group's own arguments are parsed first), and, since a group stops
    reading options at its first argument, ``demo example --bundle X`` would look for a command ``--bundle``.
    So: when the first word names a sub-command, the group's argument is left out of parsing (it stays unset);
    otherwise options may follow the question, as they did when ``demo`` was a plain command. The question
    ``eval`` itself is the command: ask it in other words.
    """

    allow_interspersed_args = True
    _SUB = "kardlite.demo.subcommand"  # in ctx.meta: the first word named a sub-command

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        # typer vendors its own click: parameters are told apart by their kind, not by class
        return [p for p in params if p.param_type_name != "argument"] if ctx.meta.get(self._SUB) else params

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not (args and args[0] in self.commands):
            return super().parse_args(ctx, args)
        ctx.meta[self._SUB] = True
        ctx.allow_interspersed_args = False
        rest = super().parse_args(ctx, args)
        for param in super().get_params(ctx):
            if param.param_type_name == "argument" and param.name:
                ctx.params.setdefault(param.name, None)
        return rest


app = typer.Typer(cls=_QuestionOrCommand, invoke_without_command=True,
                  help="Start the demo web app on the embedded demo bundle (built on first use), answer one "
                       "QUESTION, or score the bundle (`kardlite demo eval`).")


class Split(StrEnum):
    """Which demo questions ``kardlite demo eval`` asks."""

    dev = "dev"
    test = "test"
    both = "both"


@app.callback()
@cli_errors
def demo(
    ctx: typer.Context,
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
    if ctx.invoked_subcommand is not None:
        return
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


@app.command("eval")
@cli_errors
def eval_cmd(
    bundle: Annotated[Path | None, typer.Option(help="A bundle folder (default: the demo bundle, built on first "
                                                      "use at exports/demo).", exists=True)] = None,
    fast: Annotated[bool, typer.Option("--fast", help="Build the fast, untrained demo bundle when there is none "
                                                      "(like KARDLITE_FAST=1).")] = False,
    split: Annotated[Split, typer.Option(help="The demo questions to ask.")] = Split.both,
    limit: Annotated[int | None, typer.Option(help="Only the first N questions of each split (a quick look; the "
                                                   "summary says so).", min=1)] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per question (majority vote). [default: the "
                                                     "bundle's decoding]", min=1)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).", min=1)] = None,
    out: Annotated[Path | None, typer.Option(help="Summary JSON (default: <bundle>-eval.json beside the bundle, "
                                                  "where the app reads it); the rows go beside it as .jsonl.")]
    = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Score the bundle on the demo dev and test questions through the runtime (as the app asks them): accuracy
    with a 95% CI, gold passage shown, invalid and forced rates, median answer time. Re-run to resume."""
    from kardlite.demo.build import build_demo_bundle
    from kardlite.demo.evaluate import SPLITS, eval_paths, evaluate_demo

    path = bundle or build_demo_bundle(DEFAULT_DIR, fast=True if fast else None, progress=progress)
    splits = SPLITS if split == Split.both else (split.value,)
    summary = evaluate_demo(path, splits=splits, limit=limit, samples=samples, threads=threads, out=out,
                            progress=progress)
    for name, m in summary["results"].items():
        typer.echo(_result_line(name, m))
    written = Path(out) if out is not None else eval_paths(path)[0]
    typer.echo(f"wrote {written} and {written.with_suffix('.jsonl')} (one row per question)")


def _result_line(name: str, m: dict[str, Any]) -> str:
    """One split's numbers on one line."""
    if not m["n"]:
        return f"{name}: no questions"
    lo, hi = m["accuracy_ci95"]
    return (f"{name}: accuracy {m['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}) on {m['n']} of {m['questions']} "
            f"questions; gold passage shown {m['gold_shown_rate']:.3f}, invalid {m['invalid_rate']:.3f}, "
            f"forced {m['forced_rate']:.3f}, median answer {m['p50_seconds']:.2f} s")


def _answer(path: Path, question: str, threads: int | None, audit_log: Path | None = None) -> None:
    """Stream one answer to the terminal: the passages, the rationale as it is written, the answer, the timings."""
    from kardlite.demo import demo_questions
    from kardlite.demo.view import ANSWER_ONLY_NOTE
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
                if pipe.answer_only and options:
                    typer.echo(f"\n{ANSWER_ONLY_NOTE}", nl=False)
                else:
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
