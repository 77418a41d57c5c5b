"""``kardlite demo``: the main job. Builds the demo bundle on first use, then starts the web app (demo/app.py) or,
given a question, answers it in the terminal.

``kardlite train demo-adapter`` makes the LoRA adapter the repository ships for the demo student (adapter.py)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kardlite._cli import AnswerFormat, PromptMode, cli_errors
from kardlite.demo.recipe import (
    COMMAND,
    N_DOCS,
    STUDENT_MODE,
    STUDENT_QUERY,
    STUDENT_SETTINGS,
    command_line,
    flatten,
    learnt,
    recipe_from_options,
)
from kardlite.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from kardlite.demo.recipe import StudentRecipe

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


# ---------------------------------------------------------------------------------------------- demo-adapter


class Query(StrEnum):
    """What retrieves a training example's passages."""

    rationale = "rationale"
    question = "question"


def _recipe_help(text: str, default: Any) -> str:
    # parentheses: rich would take "[default: ...]" written here for a markup tag and drop it
    return f"{text} (default: the demo recipe's, {default})"


@cli_errors
def adapter(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="The adapter folder, replaced as a whole (default: the package's "
                                                  "kardlite/demo/adapter, which the demo build merges).")] = None,
    work: Annotated[Path, typer.Option(help="Folder for the stages (knowledge base, examples, training run); "
                                            "re-running resumes there.")] = Path("exports") / "demo-adapter.work",
    mode: Annotated[PromptMode | None, typer.Option(help=_recipe_help("Prompt mode of the training examples "
                                                                      "and of the bundle.", STUDENT_MODE),
                                                    show_default=False)] = None,
    n_docs: Annotated[int | None, typer.Option(min=1, help=_recipe_help("Passages per example (and shown at run "
                                                                        "time).", N_DOCS))] = None,
    query: Annotated[Query | None, typer.Option(help=_recipe_help("What retrieves an example's passages.",
                                                                  STUDENT_QUERY), show_default=False)] = None,
    answer_format: Annotated[AnswerFormat | None, typer.Option(help=_recipe_help(
        "How the student writes its answer after 'Answer:'.", "letter"), show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help=_recipe_help("Learning rate.", STUDENT_SETTINGS["lr"]))]
    = None,
    steps: Annotated[int | None, typer.Option(min=1, help=_recipe_help("Optimiser steps.",
                                                                       STUDENT_SETTINGS["max_steps"]))] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help=_recipe_help("Examples per micro-batch.",
                                                                            STUDENT_SETTINGS["batch_size"]))] = None,
    grad_accum: Annotated[int | None, typer.Option(min=1, help=_recipe_help("Micro-batches per step.",
                                                                            STUDENT_SETTINGS["grad_accum"]))] = None,
    lora_r: Annotated[int | None, typer.Option(min=1, help=_recipe_help("LoRA rank.", STUDENT_SETTINGS["lora_r"]))]
    = None,
    lora_alpha: Annotated[int | None, typer.Option(min=1, help=_recipe_help("LoRA alpha.",
                                                                            STUDENT_SETTINGS["lora_alpha"]))] = None,
    freeze_layers: Annotated[int | None, typer.Option(min=0, help=_recipe_help("Train only decoder layers >= N.",
                                                                               0))] = None,
    max_source_tokens: Annotated[int | None, typer.Option(min=1, help=_recipe_help(
        "Prompt budget (training and run time).", STUDENT_SETTINGS["max_source_tokens"]))] = None,
    max_target_tokens: Annotated[int | None, typer.Option(min=1, help=_recipe_help(
        "Target budget.", STUDENT_SETTINGS["max_target_tokens"]))] = None,
    seed: Annotated[int | None, typer.Option(help=_recipe_help("Seed.", 42))] = None,
    student: Annotated[str | None, typer.Option(help="Base model: a local folder or .gguf (default: the packaged "
                                                     "SmolLM2-135M-Instruct).")] = None,
    warm_start: Annotated[Path | None, typer.Option(help="A finished LoRA run of `kardlite train student` on the "
                                                         "same base (e.g. OpenBookQA): the demo training starts "
                                                         "from it and the adapter stacks both; the manifest "
                                                         "records it.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No stage lines.")] = False,
) -> None:
    """Train the demo student and write the LoRA adapter the repository ships for it.

    Trained with the demo build's own stages and recipe (kardlite/demo/recipe.py); each option overrides one setting.
    Writes adapter.safetensors (the LoRA weights, fp16, at most 20 MB) and adapter.json (the manifest):
    the base model's and the demo data's sha256s, the recipe, the warm start if any, and this command in full.
    The command recorded is checked to reproduce the recipe before anything is trained.
    `kardlite demo` merges the adapter when both sha256s match this installation, else trains the recipe itself;
    `kardlite demo --retrain` trains it from scratch. Stages are kept in --work: re-running resumes.
    """
    from kardlite.demo.adapter import MANIFEST, WEIGHTS, read_manifest
    from kardlite.demo.build import make_demo_adapter

    recipe = recipe_from_options(ctx.params)  # as parse_adapter_command reads the recorded command: one path
    if warm_start is not None and not warm_start.exists():
        raise InputError("not found", path=warm_start, field="--warm-start")
    # the command recorded is checked to reproduce the recipe (check_command) before anything is trained
    path = make_demo_adapter(out, recipe=recipe, work=work, warm_start=warm_start,
                             command=command_line(recipe, warm_start), progress=not quiet)
    manifest = read_manifest(path)
    typer.echo(f"wrote {path / WEIGHTS} ({manifest['adapter']['bytes'] / 1e6:.1f} MB, LoRA r{manifest['lora']['r']}) "
               f"and {path / MANIFEST}\nreproduce with: {manifest['command']}")


def parse_adapter_command(command: str) -> tuple[StudentRecipe, str | None]:
    """The recipe and warm start of a ``kardlite train demo-adapter ...`` command line, parsed by the command's own
    click parser (the ``adapter`` command that ``kardlite.cli`` registers) and read by the code the command runs.

    Raises:
        InputError: another command, or options the CLI refuses (named).
    """
    import shlex

    args, head = shlex.split(command), shlex.split(COMMAND)
    if args[:len(head)] != head:
        raise InputError(f"not a `{COMMAND}` command: {command!r:.80}", field="command")
    one = typer.Typer()
    one.command(head[-1])(adapter)
    cmd = typer.main.get_command(one)
    try:
        parsed = cmd.make_context(" ".join(head), args[len(head):])
    except Exception as err:  # click's usage errors (typer may vendor click: known by their interface)
        if not hasattr(err, "format_message"):
            raise
        raise InputError(f"the command does not parse: {err.format_message()}", field="command") from None
    warm = parsed.params.get("warm_start")
    return recipe_from_options(parsed.params), str(warm) if warm is not None else None


def check_command(manifest: Mapping[str, Any]) -> list[str]:
    """Where the command recorded in an adapter manifest and the manifest disagree (empty: they agree).

    The command is parsed by the real CLI (:func:`parse_adapter_command`) into a recipe by the same code the
    command runs; every recipe field (all ``StudentTrainConfig`` fields, so a default that changed since is
    caught too, except the :data:`~kardlite.demo.recipe.NOT_LEARNT` ones that change how a run goes, not what it
    learns) and the warm start are compared.
    """
    recipe, warm = parse_adapter_command(manifest["command"])
    got, want = flatten(learnt(recipe.to_json()), "recipe"), flatten(learnt(manifest["recipe"]), "recipe")
    problems = [f"{key}: the command gives {got.get(key)!r}, the manifest has {want.get(key)!r}"
                for key in sorted(set(got) | set(want)) if got.get(key) != want.get(key)]
    recorded = (manifest.get("warm_start") or {}).get("run")
    if warm != recorded:
        problems.append(f"warm_start.run: the command gives {warm!r}, the manifest has {recorded!r}")
    return problems
