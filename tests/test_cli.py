"""Every ``kardlite`` command follows one convention: a user error is one ``error:`` line on stderr and exit 2.

The commands are found by walking the typer app, so a command added later is covered without editing this file.
Everything runs in-process (typer's CliRunner) and fails before any model is loaded.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.models import ArgumentInfo, OptionInfo
from typer.testing import CliRunner, Result

from kardlite.cli import app


@dataclass
class Param:
    name: str  # the option's first name ("--tasks"), or "" for an argument
    kind: Any  # the value type without None / list
    required: bool
    hidden: bool
    flag: bool


def _params(callback: Callable[..., Any]) -> list[Param]:
    """A command's parameters, read from its signature as typer reads them."""
    out = []
    for p in inspect.signature(callback, eval_str=True).parameters.values():
        if p.annotation is typer.Context:
            continue
        base, info = typing.get_args(p.annotation)[:2] if typing.get_origin(p.annotation) is typing.Annotated \
            else (p.annotation, p.default)
        kinds = [a for a in (typing.get_args(base) or (base,)) if a is not type(None)]
        kind = typing.get_args(kinds[0])[0] if typing.get_origin(kinds[0]) is list else kinds[0]
        required = p.default is inspect.Parameter.empty
        if isinstance(info, OptionInfo):
            # typer.Option("--name", ...) in Annotated: the name arrives as the default
            names = [info.default, *(info.param_decls or ())]
            decls = [d.split("/")[0] for d in names if isinstance(d, str) and d.startswith("--")]
            out.append(Param(decls[0] if decls else "--" + p.name.replace("_", "-"), kind, required,
                             bool(info.hidden), kind is bool))
        elif isinstance(info, ArgumentInfo):
            out.append(Param("", kind, required, bool(info.hidden), False))
    return out


def _commands(t: typer.Typer = app, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], list[Param]]]:
    """Every command of the app, found by walking its registered commands and sub-apps."""
    out = []
    if path and t.registered_callback is not None and t.info.invoke_without_command:
        out.append((path, _params(t.registered_callback.callback)))  # a group that is also a command
    for info in t.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
        out.append(((*path, name), _params(info.callback)))  # type: ignore[arg-type]
    for group in t.registered_groups:
        out.extend(_commands(group.typer_instance, (*path, group.name)))  # type: ignore[arg-type]
    return out


COMMANDS = _commands()
IDS = [" ".join(path) for path, _ in COMMANDS]


def _value(param: Param, missing: Path) -> str:
    if param.kind is Path:
        return str(missing / (param.name.strip("-") or "arg"))
    if isinstance(param.kind, type) and issubclass(param.kind, enum.Enum):
        return next(iter(param.kind)).value
    if param.kind in (int, float):
        return "1"
    return "some text"


def _args(params: list[Param], missing: Path) -> list[str]:
    """Arguments that parse, with EVERY visible path (required or not) pointing at a file that does not exist."""
    args: list[str] = []
    for param in params:
        if param.hidden or param.flag or not (param.required or param.kind is Path):
            continue
        value = _value(param, missing)
        args.extend([param.name, value] if param.name else [value])
    return args


def _run(args: list[str], **kwargs: Any) -> Result:
    return CliRunner().invoke(app, args, prog_name="kardlite", **kwargs)


def _assert_one_line_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_walk_finds_every_stage() -> None:
    names = set(IDS)
    assert {"kb build", "teach", "rationales filter", "distill build", "train student", "train reranker", "eval",
            "eval report", "rerank search", "rerank export", "export gguf", "export bundle", "ask", "demo",
            "info"} <= names


@pytest.mark.parametrize(("path", "params"), COMMANDS, ids=IDS)
def test_missing_files_are_one_line_errors(path: tuple[str, ...], params: list[Param], tmp_path: Path) -> None:
    # Under a plain file: an input there does not exist, and an output there cannot be written.
    (tmp_path / "a-file").write_text("x")
    missing = tmp_path / "a-file" / "missing"
    args = _args(params, missing)
    if not any(str(missing) in a for a in args):
        pytest.fail(f"kardlite {' '.join(path)} takes no path; give this test another bad input for it")
    line = _assert_one_line_error(_run([*path, *args]))
    assert str(tmp_path / "a-file") in line


@pytest.mark.parametrize(("path", "params"), COMMANDS, ids=IDS)
def test_bad_arguments_are_one_line_errors(path: tuple[str, ...], params: list[Param]) -> None:
    _assert_one_line_error(_run([*path, "--no-such-option", "1"]))
    for param in params:  # a value outside a choice's list is refused, and the line names the choices
        if param.name and isinstance(param.kind, type) and issubclass(param.kind, enum.Enum):
            line = _assert_one_line_error(_run([*path, param.name, "no-such-choice"]))
            assert next(iter(param.kind)).value in line


def test_kardlite_errors_inside_commands_are_one_line(tmp_path: Path) -> None:
    # Existing but invalid inputs: the command itself raises an InputError or ArtifactError.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q"\n', encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ["kb", "info", str(empty)],
        ["kb", "build", str(bad), str(tmp_path / "kb"), "--format", "jsonl", "--no-dense"],
        ["rationales", "stats", str(bad)],
        ["rerank", "search", "q", "--kb", str(empty), "--reranker", str(empty)],
        ["rerank", "export", str(empty), str(tmp_path / "onnx")],
        ["distill", "build", "--tasks", str(bad), "--rationales", str(bad), "--out", str(tmp_path / "ex.jsonl")],
        ["ask", str(empty), "why?"],
        ["info", str(empty)],
        ["eval", "--bundle", str(empty), "--tasks", str(bad), "--out", str(tmp_path / "ev"), "--n-docs", "3"],
        ["eval", "--model", "smollm2", "--tasks", str(bad), "--out", str(tmp_path / "ev"), "--no-write-card"],
    ]
    for args in cases:
        _assert_one_line_error(_run(args))


def test_help_lists_choices_and_panels_in_pipeline_order() -> None:
    result = _run(["--help"], terminal_width=120)
    assert result.exit_code == 0
    out = result.output
    assert out.index("Knowledge and rationales") < out.index("Students and reranker") < out.index("Export and run")
    rows = re.findall(r"^│ ([a-z]+) {2,}", out[out.index("Knowledge and rationales"):], flags=re.M)
    assert rows[:10] == ["kb", "teach", "rationales", "distill", "train", "rerank", "eval", "export", "ask", "demo"]
    help_text = _run(["rerank", "search", "--help"], terminal_width=200).output
    assert "bm25" in help_text and "hybrid" in help_text and "onnx" in help_text
    assert "eval" not in _run(["rerank", "--help"]).output.split("Commands")[-1]


def test_old_option_spellings_still_work_with_a_warning(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "q1", "question": "Which is a metal?", "options": ["iron", "wood"],
                                 "answer": "A"}) + "\n", encoding="utf-8")
    store = tmp_path / "store.jsonl"
    store.write_text("not a store\n", encoding="utf-8")
    # --task (old) reaches the same code as --tasks: the bad store is reported after the warning
    for spelling in ("--task", "--tasks"):
        result = _run(["rationales", "filter", str(store), spelling, str(tasks), "--judge", "none",
                                     "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "store" in result.stderr.splitlines()[-1]
        assert ("warning: --task is deprecated; use --tasks" in result.stderr) == (spelling == "--task")
    both = _run(["rationales", "filter", str(tasks), "--task", str(tasks), "--tasks", str(tasks),
                               "--out", str(tmp_path / "o")])
    assert "give --tasks only" in _assert_one_line_error(both)
    neither = _run(["rationales", "filter", str(tasks), "--out", str(tmp_path / "o")])
    assert "missing option --tasks" in _assert_one_line_error(neither)


THREADED = [(path, params) for path, params in COMMANDS if any(p.name == "--threads" for p in params)]


def test_walk_finds_every_command_with_threads() -> None:
    assert {" ".join(path) for path, _ in THREADED} >= {"ask", "export gguf", "export bundle", "train reranker",
                                                       "teach", "demo"}


@pytest.mark.parametrize("threads", ["0", "-1"])
@pytest.mark.parametrize(("path", "params"), THREADED, ids=[" ".join(p) for p, _ in THREADED])
def test_a_thread_count_that_is_not_positive_is_refused(path: tuple[str, ...], params: list[Param], threads: str,
                                                        tmp_path: Path) -> None:
    # --threads first: it is checked before the other arguments (which point at nothing here)
    args = _args(params, tmp_path / "missing")
    line = _assert_one_line_error(_run([*path, "--threads", threads, *args]))
    assert "Invalid value for '--threads'" in line and "1" in line, line  # "... greater than or equal to 1"
