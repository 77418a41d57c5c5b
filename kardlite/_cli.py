"""What every stage's CLI shares, so that all commands behave alike.

- A user error is one line on stderr, ``error: <message>``, and exit status 2, never a traceback: a
  :class:`~kardlite.errors.KardliteError` (InputError, ArtifactError, MissingExtraError) or a missing or unreadable
  file raised inside a command (:func:`cli_errors`, on every command), and a usage error such as a bad option value
  or a missing input path (:class:`OneLineErrorsGroup`, the root command's class).
- Choices are StrEnums, so ``--help`` lists them and a typo is a usage error.
- One input has one option name everywhere (``--tasks`` for a task file); old spellings stay as hidden, deprecated
  aliases (:func:`renamed`), so existing scripts keep working.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar, get_args

import typer
from typer.core import TyperGroup

from kardlite import settings
from kardlite.errors import InputError, KardliteError, printable

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Help panels of ``kardlite --help``, in pipeline order.
PANEL_DATA = "1. Knowledge and rationales"
PANEL_TRAIN = "2. Students and reranker"
PANEL_SHIP = "3. Export and run"
# Top-level commands in the order a project runs them; ``kardlite --help`` lists them so.
PIPELINE_ORDER = ("kb", "teach", "rationales", "distill", "train", "rerank", "eval", "export", "ask", "demo", "info")


def _choices(name: str, values: tuple[str, ...], doc: str) -> type[StrEnum]:
    enum = StrEnum(name, {v.replace("-", "_"): v for v in values})  # type: ignore[misc]
    enum.__doc__ = doc
    return enum


# Choices of the inference settings, from kardlite.settings (not restated).
Decoding = _choices("Decoding", get_args(settings.Decoding), "greedy, or self-consistency sampling.")
AnswerScoring = _choices("AnswerScoring", get_args(settings.AnswerScoring), "How the answer is read.")
NoAnswer = _choices("NoAnswer", get_args(settings.NoAnswer), "What an output without an answer line gets.")
AnswerFormat = _choices("AnswerFormat", settings.ANSWER_FORMATS, "How a student writes its answer after 'Answer:'.")


class TaskFormat(StrEnum):
    """Task file formats ``kardlite.data.load_task`` reads."""

    auto = "auto"
    obqa = "obqa"
    strategyqa = "strategyqa"
    medqa = "medqa"
    medqa_hf = "medqa-hf"
    generic = "generic"


FirstStage = _choices("FirstStage", settings.FIRST_STAGES, "First-stage retrievers of a knowledge base.")


PromptMode = _choices("PromptMode", settings.MODES, "Prompt formats (kardlite.prompts.MODES): question -> answer, "
                      "-> rationale + answer, + passages -> rationale + answer, + passages -> answer.")


def setting_option(name: str, *param_decls: str, hidden: bool = False, default_note: str = "the student's") -> Any:
    """A typer option for the ``InferenceSettings`` field ``name``: its help text from the dataclass, its default
    None (= the student's recorded settings, else the dataclass default, resolved in one place)."""
    from dataclasses import fields

    from kardlite.settings import InferenceSettings

    field = next((f for f in fields(InferenceSettings) if f.name == name), None)
    if field is None:
        raise KeyError(f"InferenceSettings has no field {name!r}")
    fallback = "" if field.default is None else f", else {field.default}"
    return typer.Option(*param_decls, help=f"{field.metadata['help'][:1].upper()}{field.metadata['help'][1:]}. "
                                           f"[default: {default_note}{fallback}]", hidden=hidden, show_default=False)


def fail(err: KardliteError) -> typer.Exit:
    """Print ``error: <message>`` to stderr and return the Exit to raise (``raise fail(err) from None``)."""
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code=2)


def cli_errors(fn: F) -> F:
    """Decorate a command: a KardliteError or a missing/unreadable file becomes one ``error:`` line and exit 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KardliteError as err:
            raise fail(err) from None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {printable(where + str(err.strerror or err))}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def renamed(value: T | None, old_value: T | None, *, new: str, old: str, required: bool = False) -> T | None:
    """The value of an input that has a new option name and a hidden, deprecated old one.

    Args:
        value: what the new option got.
        old_value: what the old spelling got (a warning says it is deprecated).
        new: the new name, e.g. ``--tasks``.
        old: the old spelling, e.g. ``--task`` or ``TASK`` for a former argument.
        required: an InputError when neither is given.

    Raises:
        InputError: both spellings given, or neither when ``required``.
    """
    if old_value is not None:
        if value is not None:
            raise InputError(f"give {new} only ({old} is its old, deprecated spelling)", field=new)
        typer.echo(f"warning: {old} is deprecated; use {new}", err=True)
        return old_value
    if value is None and required:
        raise InputError(f"missing option {new}", field=new)
    return value


class OneLineErrorsGroup(TyperGroup):
    """The root command: usage errors (bad option value, missing path, unknown option) as one ``error:`` line.

    Click would print a usage box over several lines; here the line names the command's ``--help`` instead.
    ``--help`` lists the commands in :data:`PIPELINE_ORDER` (others after them).
    """

    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {name: i for i, name in enumerate(PIPELINE_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        except Exception as err:
            # Click's usage errors (typer may vendor click, so they are recognised by their interface).
            code = getattr(err, "exit_code", None)
            if not (hasattr(err, "format_message") and isinstance(code, int)):
                raise
            message = printable(" ".join(err.format_message().split()))  # type: ignore[attr-defined]
            ctx = getattr(err, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {message}{hint}", err=True)
            sys.exit(code)
        # In this mode click returns a command's value, or the code of a typer.Exit raised inside it.
        sys.exit(rv if isinstance(rv, int) else 0)
