"""``kardlite train demo-adapter``: train the demo student with its recipe and write the LoRA adapter the repository
ships for it (adapter.py), and read such a command line back into a recipe to check a manifest against it.

The command, its parser and :func:`make_demo_adapter` live together, apart from the build (build.py), because the
check parses a command with the command's own options: build -> this module -> build would be an import cycle.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kardlite._cli import AnswerFormat, PromptMode, cli_errors
from kardlite.demo.build import _Log, _say, _stage_kb, _stage_student
from kardlite.demo.recipe import (
    COMMAND,
    N_DOCS,
    STUDENT_MODE,
    STUDENT_QUERY,
    STUDENT_SETTINGS,
    StudentRecipe,
    command_line,
    flatten,
    learnt,
    recipe_from_options,
)
from kardlite.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

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


DEFAULT_ADAPTER_WORK = Path("exports") / "demo-adapter.work"


def make_demo_adapter(out: str | Path | None = None, *, recipe: StudentRecipe | None = None,
                      work: str | Path = DEFAULT_ADAPTER_WORK, warm_start: str | Path | None = None,
                      command: str | None = None, progress: bool = True) -> Path:
    """Train the demo student with ``recipe`` and write its LoRA adapter and manifest (kardlite/demo/adapter.py).

    The stages are the demo build's own (knowledge base, demo train rationales -> examples -> ``train_student``),
    kept in ``work`` and resumed when re-run; a finished training run is not trained again.

    Args:
        out: the adapter folder, replaced as a whole (default: the package's ``kardlite/demo/adapter``, which the
            demo build merges).
        recipe: the demo student's recipe (default: :class:`~kardlite.demo.recipe.StudentRecipe`'s defaults).
        work: the folder for the stages (knowledge base, examples, training run).
        warm_start: a finished LoRA run of ``kardlite train student`` on the same base model (its run folder or
            its ``model/``), e.g. on OpenBookQA: the demo training starts from its merged model and the adapter
            stacks both. Recorded in the manifest with its examples' sha256.
        command: the command line recorded in the manifest (default: ``command_line(recipe, warm_start)``); it
            must reproduce the recipe and warm start (checked before training).
        progress: print stage lines.

    Returns:
        ``out``, holding ``adapter.safetensors`` and ``adapter.json``.

    Raises:
        InputError: a recipe that cannot train, that the command does not reproduce, or whose adapter would
            exceed the size limit (all checked before training); a warm start that is not a finished LoRA run on
            the same base.

    Example:
        >>> make_demo_adapter(recipe=StudentRecipe(settings={**STUDENT_SETTINGS, "max_steps": 200}))  # doctest: +SKIP
    """
    from kardlite.demo import adapter as ad
    from kardlite.demo.recipe import command_line

    recipe = recipe or StudentRecipe()
    recipe.check()
    out = Path(out) if out is not None else ad.shipped_adapter_dir()
    work = Path(work)
    cfg = recipe.train_config()
    if not cfg.lora:
        raise InputError("the demo adapter is a LoRA adapter; full fine-tuning has none", field="lora")
    command = command or command_line(recipe, warm_start)
    _check_command(command, recipe, warm_start)
    base = ad.base_weights(cfg.student)
    warm = ad.warm_start_run(warm_start, base) if warm_start is not None else None
    rank = cfg.lora_r + (warm["lora"]["r"] if warm else 0)
    size = ad.lora_bytes(cfg.student, rank, cfg.lora_targets)
    if size > ad.MAX_ADAPTER_BYTES:  # before hours of training, not after
        raise InputError(f"a rank-{rank} adapter on this base is {size / 1e6:.1f} MB, over the "
                         f"{ad.MAX_ADAPTER_BYTES / 1e6:.0f} MB limit; lower --lora-r", field="lora_r")
    log = _Log(progress, total=3)
    _say(progress, f"making the demo adapter at {out}; stages are kept in {work} and reused")
    kb = _stage_kb(work / "kb", log)
    model = _stage_student(work, kb, log, recipe, warm_start=Path(warm["model"]) if warm else None)
    t = log.stage(f"adapter (LoRA r{rank}, fp16) -> {out}", reused=False)
    ad.write_adapter(model.parent, out, recipe=recipe, base=base, warm=warm, command=command)
    log.done(t)
    return out


def _check_command(command: str, recipe: StudentRecipe, warm_start: str | Path | None) -> None:
    """Refuse, before any training, a command line that would not reproduce ``recipe`` (e.g. a recipe with a
    setting that ``kardlite train demo-adapter`` has no option for): the manifest must record one that does."""
    problems = check_command({"command": command, "recipe": recipe.to_json(),
                              "warm_start": {"run": str(warm_start)} if warm_start is not None else None})
    if problems:
        raise InputError(f"the command to record does not reproduce the recipe: {'; '.join(problems)}",
                         field="command")
